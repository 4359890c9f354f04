"""Every endpoint once, as a function returning an `Op`: its route, body and
how to read its answer. `Client` and `AsyncClient` expose each as a method
of the same name and arguments (see `_sync.py` and `_async.py`).

Names of results: a call's value is `result` (in its record); a map's
values are `results` (`run_parallel(..., wait=True)` and the pages of
`get_results`); the seed's `GET /status/{id}` of a finished map keeps them in
`result` (that is the seed's contract, so `get_task_status` leaves it so)."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

import httpx

from ._core import CLEANUP_TIMEOUT_S, MAX_FILE_BYTES, Op, as_bytes, as_dict, as_list, as_object
from ._core import check_fields, drop_none, no_answer, seg, subpath, wait_request_timeout

_NULL = type(None)
#: A task's record: what the clients read of it.
_RECORD = as_object({"task_id": str, "status": str})
#: A map as submitted.
_MAP = as_object({"task_id": str, "num_tasks": int, "status": str},
                 {"results": list, "next_offset": (int, _NULL)})


def _keyed(key: Optional[str]) -> Optional[Dict[str, str]]:
    return {"idempotency-key": key} if key else None

# The seed's methods.


def deploy_function(
    function_code: str,
    function_name: str,
    gpu: Optional[Any] = None,
    image_config: Optional[Dict[str, Any]] = None,
    timeout: Optional[int] = None,
    retries: Optional[Any] = None,
    secrets: Optional[List[str]] = None,
    volumes: Optional[Any] = None,
    **options: Any,
) -> Op[Dict[str, Any]]:
    """Deploys a function from a code string (`POST /deploy-function`);
    further options (`cpu`, `memory`, `max_concurrency`, `limits`,
    `backend`, ...) go as keyword arguments. `{"function_id",
    "function_name", "status": "registered", "warnings"}`."""
    body = drop_none(
        {
            "function_code": function_code,
            "function_name": function_name,
            "gpu": gpu,
            "image_config": image_config,
            "timeout": timeout,
            "retries": retries,
            "secrets": secrets,
            "volumes": volumes,
            **options,
        }
    )
    return Op("POST", "/deploy-function", as_dict, json=body)


def run_parallel(
    function_name: str,
    inputs: Iterable[Any],
    wait: bool = False,
    wait_timeout: Optional[float] = None,
    inputs_as: Optional[str] = None,
    idempotency_key: Optional[str] = None,
) -> Op[Dict[str, Any]]:
    """Maps the function over `inputs` (`POST /run-parallel`); with `wait`,
    the answer's `results` are the first page of results in input order.
    `inputs_as` says how each input is passed: `"argument"` (the default:
    `f(input)`), `"args"` (a list: `f(*input)`, a starmap) or `"kwargs"` (an
    object: `f(**input)`); an input of another shape is refused
    (`ValidationError`, its `field` naming it: `inputs[i]`). The request
    body is at most 32 MiB (`APIError` 413 past it): `Function.map` sends
    larger maps in chunks. With `idempotency_key`, the same request sent
    again is answered with the first one's map."""
    body = drop_none(
        {"function_name": function_name, "inputs": list(inputs), "wait": wait,
         "wait_timeout": wait_timeout,
         "inputs_as": None if inputs_as == "argument" else inputs_as}
    )
    return Op("POST", "/run-parallel", _MAP, json=body, headers=_keyed(idempotency_key),
              timeout=wait_request_timeout(wait, wait_timeout))


def encode(value: Any) -> bytes:
    """`value` as JSON, as a request body holds it (`TypeError` or
    `ValueError` for what JSON cannot carry)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def submit_map(
    function_name: str, inputs: Sequence[bytes], inputs_as: Optional[str], idempotency_key: str
) -> Op[Dict[str, Any]]:
    """`run_parallel` of inputs already encoded (`encode`), without a wait:
    the body is made of them as they are (so that its size is known)."""
    head = encode(drop_none({"function_name": function_name,
                             "inputs_as": None if inputs_as == "argument" else inputs_as}))
    content = head[:-1] + b',"inputs":[' + b",".join(inputs) + b"]}"
    headers = {"content-type": "application/json", "idempotency-key": idempotency_key}
    return Op("POST", "/run-parallel", _MAP, content=content, headers=headers)


def spawn_task(
    function_name: str,
    args: Optional[List[Any]] = None,
    kwargs: Optional[Dict[str, Any]] = None,
    wait: bool = False,
    wait_timeout: Optional[float] = None,
    idempotency_key: Optional[str] = None,
) -> Op[Dict[str, Any]]:
    """Starts one call (`POST /spawn-task`); its record (with `wait`, once
    finished or after `wait_timeout` seconds). With `idempotency_key`, the
    same request sent again is answered with the first one's task."""
    body = drop_none(
        {"function_name": function_name, "args": list(args or []), "kwargs": kwargs or {},
         "wait": wait, "wait_timeout": wait_timeout}
    )
    return Op("POST", "/spawn-task", _RECORD, json=body, headers=_keyed(idempotency_key),
              timeout=wait_request_timeout(wait, wait_timeout))


def get_task_status(task_id: str) -> Op[Dict[str, Any]]:
    """A task's record (`GET /status/{task_id}`): a call's value in
    `result`; a finished map's results in `result` too (the seed's
    contract) up to 10,000, else `results_url` (see `iter_results`)."""
    return Op("GET", f"/status/{seg(task_id)}", _RECORD)


def register_webhook(
    task_id: Optional[str], webhook_url: str, sandbox_id: Optional[str] = None
) -> Op[Dict[str, Any]]:
    """Registers a completion webhook for a task (`POST /webhook`), or with
    `sandbox_id` (and `task_id=None`) one for a sandbox's life
    (`sandbox.expiring`, then `sandbox.ended`); the answer's `secret` (shown
    only here) verifies deliveries (`verify_webhook`)."""
    body = drop_none({"task_id": None if task_id is None else str(task_id),
                      "sandbox_id": sandbox_id, "webhook_url": webhook_url})
    return Op("POST", "/webhook", as_dict, json=body)


# Tasks: waits, results, cancellation, logs.


def wait_tasks(
    task_ids: Iterable[str], mode: str = "all", timeout: Optional[float] = None
) -> Op[Dict[str, Any]]:
    """One server-side wait (`POST /tasks/wait`), at most `timeout` seconds
    (default 55): `done` says whether all (or, with `mode="any"`, one) of
    the tasks finished; `tasks` has a summary line per task."""
    body = drop_none({"task_ids": [str(t) for t in task_ids], "mode": mode, "timeout_s": timeout})
    return Op("POST", "/tasks/wait", _waited, json=body, timeout=wait_request_timeout(True, timeout or 55.0))


def _waited(response: httpx.Response) -> Dict[str, Any]:
    outcome = check_fields(response, as_dict(response), {"done": bool, "tasks": list}, {})
    for task in outcome["tasks"]:
        if not isinstance(task, dict):
            raise no_answer("POST", "/tasks/wait", f"a task's summary is not an object: {task!r:.80}")
        check_fields(response, task, {"task_id": str, "status": str}, {})
    return outcome


def get_results(task_id: str, offset: int = 0, limit: int = 1000) -> Op[Dict[str, Any]]:
    """A page of a map's results in input order: `{"results", "offset",
    "limit", "total", "next_offset"}` (while the map runs, what is finished
    so far from `offset` on)."""
    return Op("GET", f"/status/{seg(task_id)}/results",
              as_object({"results": list}, {"next_offset": (int, _NULL)}),
              params={"offset": offset, "limit": limit})


def cancel(task_id: str) -> Op[Dict[str, Any]]:
    """Cancels a task; its final record."""
    return Op("POST", f"/tasks/{seg(task_id)}/cancel", as_dict)


def cancel_quietly(task_id: str) -> Op[bool]:
    """`cancel`, whatever the answer (cleaning up after an error), with a
    short timeout; whether the server answered it (a 5xx is not an
    answer: the cancel may not have happened)."""
    return Op("POST", f"/tasks/{seg(task_id)}/cancel", lambda r: r.status_code < 500,
              allow=tuple(range(400, 600)), timeout=CLEANUP_TIMEOUT_S)


def logs(task_id: str) -> Op[Dict[str, str]]:
    """What a task printed so far: `{"stdout": ..., "stderr": ...}` (see
    `follow_logs` to follow it line by line)."""
    return Op("GET", f"/tasks/{seg(task_id)}/logs", as_dict)


def list_tasks(status: Optional[str] = None, offset: int = 0, limit: int = 100) -> Op[Dict[str, Any]]:
    """Tasks, newest first, optionally by status (`{"tasks", "total", ...}`)."""
    params = drop_none({"status": status, "offset": offset, "limit": limit})
    return Op("GET", "/tasks", as_dict, params=params)


# Functions.


def list_functions() -> Op[List[Dict[str, Any]]]:
    """The deployed functions (without their source)."""
    return Op("GET", "/functions", as_list)


def get_function(function_name: str) -> Op[Dict[str, Any]]:
    """One deployed function (`NotFoundError` if there is none)."""
    return Op("GET", f"/functions/{seg(function_name)}", as_dict)


def undeploy_function(function_name: str) -> Op[Dict[str, Any]]:
    """Undeploys a function; what it was."""
    return Op("DELETE", f"/functions/{seg(function_name)}", as_dict)


# Agent tools: the operations an agent host sees over MCP, one request each.

#: The longest any tool waits before answering (a call still running is
#: answered with its id).
TOOL_WAIT_S = 55.0


def list_tools() -> Op[List[Dict[str, Any]]]:
    """The agent tools (`GET /tools`): each one's `name`, `description`,
    `input_schema` and `output_schema` (JSON Schema), as MCP lists them."""
    return Op("GET", "/tools", as_list)


def call_tool(
    name: str, arguments: Optional[Mapping[str, Any]] = None, idempotency_key: Optional[str] = None
) -> Op[Dict[str, Any]]:
    """Calls agent tool `name` with `arguments` (`POST /tools/{name}`) and
    returns its structured answer; a refused argument raises
    `ValidationError` naming it, an unknown tool `NotFoundError`. A tool
    that creates work takes `idempotency_key` (a retry with the same key
    and arguments gets the first answer)."""
    return Op("POST", f"/tools/{seg(name)}", as_dict, json=dict(arguments or {}),
              headers=_keyed(idempotency_key), timeout=wait_request_timeout(True, TOOL_WAIT_S))


def run_code(
    code: str,
    language: str = "python",
    stdin: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    network: bool = False,
    timeout_s: Optional[int] = None,
    wait_s: Optional[int] = None,
) -> Op[Dict[str, Any]]:
    """Runs a snippet once (`language` `"python"` or `"sh"`) in a sandbox
    made for it, with nothing to deploy or clean up (the `run_code` tool):
    `{"outcome", "stdout", "stderr", "sandbox_id", "process_id"}`, the
    outcome typed (`{"kind": "exited", "code": 0}`, `"timed_out"`, ...).
    One still running after `wait_s` (default 55) is answered without an
    outcome; `call_tool("wait_sandbox_process", ...)` waits for it."""
    body = drop_none({"code": code, "language": language, "stdin": stdin,
                      "env": dict(env) if env else None, "network": network or None,
                      "timeout_s": timeout_s, "wait_s": wait_s})
    return Op("POST", "/tools/run_code", as_object({"sandbox_id": str}), json=body,
              timeout=wait_request_timeout(True, float(wait_s) if wait_s is not None else TOOL_WAIT_S))


# Secrets.


def create_secret(name: str, values: Mapping[str, str]) -> Op[Dict[str, Any]]:
    """Stores a secret (replacing one of the same name): string values by
    key, e.g. `{"API_KEY": "..."}`. Functions deployed with
    `secrets=[name]` get them as environment variables. `{"name", "keys"}`."""
    return Op("PUT", f"/secrets/{seg(name)}", as_dict, json=dict(values))


def list_secrets() -> Op[List[Dict[str, Any]]]:
    """The secrets by name and keys (`[{"name", "keys"}]`); values are never
    shown."""
    return Op("GET", "/secrets", as_list)


def delete_secret(name: str) -> Op[Dict[str, Any]]:
    """Deletes a secret (`NotFoundError` if there is none)."""
    return Op("DELETE", f"/secrets/{seg(name)}", as_dict)


# Volumes: versioned state keys and files.


def _state(volume: str, key: str) -> str:
    return f"/volumes/{seg(volume)}/state/{subpath(key)}"


def _file(volume: str, path: str) -> str:
    return f"/volumes/{seg(volume)}/files/{subpath(path)}"


def _entry_or_none(response: Any) -> Optional[Dict[str, Any]]:
    return None if response.status_code == 404 else as_dict(response)


def list_volumes() -> Op[List[str]]:
    """The names of the volumes that exist."""
    return Op("GET", "/volumes", lambda r: list(as_object({"volumes": list})(r)["volumes"]))


def volume_get(volume: str, key: str) -> Op[Optional[Dict[str, Any]]]:
    """`{"key", "value", "version"}`, or None when the key is absent."""
    return Op("GET", _state(volume, key), _entry_or_none, allow=(404,))


def volume_put(
    volume: str, key: str, value: Any, expected_version: Optional[int] = None
) -> Op[Dict[str, Any]]:
    """Writes a value; with `expected_version` only if the key still has
    it (0: only if absent), else `ConflictError`."""
    headers = {}
    if expected_version == 0:
        headers["if-none-match"] = "*"
    elif expected_version is not None:
        headers["if-match"] = str(expected_version)
    return Op("PUT", _state(volume, key), as_dict, json={"value": value}, headers=headers)


def volume_delete(volume: str, key: str) -> Op[Dict[str, Any]]:
    """Deletes a key: `{"deleted": bool, "key"}`."""
    return Op("DELETE", _state(volume, key), as_dict)


def volume_list_page(
    volume: str, prefix: str = "", after: Optional[str] = None, limit: Optional[int] = None
) -> Op[Dict[str, Any]]:
    """One page of the state entries under `prefix`, in key order, those
    after the key `after`: `{"entries": [{"key", "value", "version"}],
    "next_after"}`, at most `limit` (default 1000, at most 10,000) and about
    8 MiB of values; `next_after` (only when more follow) is the `after` of
    the next page. `volume_list` reads every page."""
    params = drop_none({"prefix": prefix, "after": after, "limit": limit})
    return Op("GET", f"/volumes/{seg(volume)}/state",
              as_object({"entries": list}, {"next_after": (str, _NULL)}), params=params)


def file_put(volume: str, path: str, data: Union[bytes, str]) -> Op[Dict[str, Any]]:
    """Writes a file (atomically; text is written as UTF-8): `{"path",
    "size", "modified_ms"}`."""
    content = data.encode() if isinstance(data, str) else bytes(data)
    return Op("PUT", _file(volume, path), as_dict, content=content,
              headers={"content-type": "application/octet-stream"})


def file_get(volume: str, path: str) -> Op[bytes]:
    """A file's content (`NotFoundError` if there is none); at most 256
    MiB, the server's largest file, are read."""
    return Op("GET", _file(volume, path), as_bytes, max_bytes=MAX_FILE_BYTES)


def file_delete(volume: str, path: str) -> Op[Dict[str, Any]]:
    """Deletes a file: `{"deleted": bool, "path"}`."""
    return Op("DELETE", _file(volume, path), as_dict)


def _file_page(response: httpx.Response) -> Dict[str, Any]:
    """A page of files as `{"files", "next_after"}`: the next page's `after`
    from the answer's `Link: <...?after=...>; rel="next"` (or, should the
    link not say, the last path of this page), present only when more
    follow."""
    files = as_list(response)
    page: Dict[str, Any] = {"files": files}
    link = response.links.get("next")
    if link is not None:
        after = parse_qs(urlsplit(link.get("url", "")).query, keep_blank_values=True).get("after")
        if after:
            page["next_after"] = after[0]
        elif files:
            last = files[-1]
            if not isinstance(last, dict) or not isinstance(last.get("path"), str):
                raise no_answer("GET", response.request.url.path, f"a file is not {{path, ...}}: {last!r:.80}")
            page["next_after"] = last["path"]
    return page


def file_list_page(
    volume: str, prefix: str = "", after: Optional[str] = None, limit: Optional[int] = None
) -> Op[Dict[str, Any]]:
    """One page of the files under `prefix`, sorted by path, those after the
    path `after`: `{"files": [{"path", "size", "modified_ms"}],
    "next_after"}`, at most `limit` (default 1000, at most 10,000);
    `next_after` (only when more follow, from the answer's `Link` header)
    is the `after` of the next page. `NotFoundError` for a volume that does
    not exist. `file_list` reads every page."""
    params = drop_none({"prefix": prefix, "after": after, "limit": limit})
    return Op("GET", f"/volumes/{seg(volume)}/files", _file_page, params=params)
