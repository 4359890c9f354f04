"""`ModalAgentClient`: the seed's methods and arguments over the HTTP API."""

import asyncio
from typing import Any, AsyncIterator, Dict, Iterable, List, Optional, Tuple
from urllib.parse import quote

import httpx

import os

from ._errors import ServerUnreachableError, TaskFailedError, TimeoutError, error_for

#: Longest one server-side wait (under common 60 s proxy limits).
WAIT_SLICE_S = 55.0


def _drop_none(body: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class ModalAgentClient:
    """An async client of one modal-agents server; use it as an async
    context manager (or call `aclose`)."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        # The CLI's variables: MODAL_AGENTS_URL, MODAL_AGENTS_TOKEN.
        api_url = api_url or os.environ.get("MODAL_AGENTS_URL") or "http://127.0.0.1:8080"
        if token is None:
            token = os.environ.get("MODAL_AGENTS_TOKEN")
        if not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        headers = {"user-agent": "agent-modal-client/0.1"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self._max_retries = max_retries

    async def __aenter__(self) -> "ModalAgentClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = 0.1
        for attempt in range(self._max_retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.ConnectError as e:
                raise ServerUnreachableError(
                    f"cannot reach the modal-agents server at {self._http.base_url} ({e}); "
                    "is it running? MODAL_AGENTS_URL (or api_url) says where it is"
                ) from e
            if response.status_code not in (429, 503) or attempt == self._max_retries:
                break
            retry_after = response.headers.get("retry-after", "")
            wait = min(float(retry_after), 60.0) if retry_after.isdigit() else delay
            await asyncio.sleep(wait)
            delay = min(delay * 2, 10.0)
        if response.status_code >= 400:
            raise error_for(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._request(method, path, **kwargs)).json()

    # The seed's methods.

    async def deploy_function(
        self,
        function_code: str,
        function_name: str,
        gpu: Optional[Any] = None,
        image_config: Optional[Dict[str, Any]] = None,
        timeout: Optional[int] = None,
        retries: Optional[Any] = None,
        secrets: Optional[List[str]] = None,
        volumes: Optional[Any] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Deploys a function from a code string (`POST /deploy-function`);
        further options (`cpu`, `memory`, `max_concurrency`, `limits`,
        `backend`, ...) go as keyword arguments."""
        body = _drop_none(
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
        return await self._json("POST", "/deploy-function", json=body)

    async def run_parallel(
        self,
        function_name: str,
        inputs: Iterable[Any],
        wait: bool = False,
        wait_timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Maps the function over `inputs` (`POST /run-parallel`); with
        `wait`, the answer carries the results in input order."""
        body = _drop_none(
            {"function_name": function_name, "inputs": list(inputs), "wait": wait,
             "wait_timeout": wait_timeout}
        )
        return await self._json("POST", "/run-parallel", json=body)

    async def spawn_task(
        self,
        function_name: str,
        args: Optional[List[Any]] = None,
        kwargs: Optional[Dict[str, Any]] = None,
        wait: bool = False,
        wait_timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Starts one call (`POST /spawn-task`); its record."""
        body = _drop_none(
            {"function_name": function_name, "args": args or [], "kwargs": kwargs or {},
             "wait": wait, "wait_timeout": wait_timeout}
        )
        return await self._json("POST", "/spawn-task", json=body)

    async def get_task_status(self, task_id: str) -> Dict[str, Any]:
        """A task's record (`GET /status/{task_id}`); a finished map's
        results are in `result` up to 10,000 (else see `results_url`)."""
        return await self._json("GET", f"/status/{quote(str(task_id), safe='')}")

    async def register_webhook(self, task_id: str, webhook_url: str) -> Dict[str, Any]:
        """Registers a completion webhook (`POST /webhook`); the answer's
        `secret` (shown only here) verifies deliveries (`verify_webhook`)."""
        return await self._json(
            "POST", "/webhook", json={"task_id": str(task_id), "webhook_url": webhook_url}
        )

    # Waiting, results, logs, cancellation.

    async def wait_tasks(
        self, task_ids: Iterable[str], mode: str = "all", timeout: Optional[float] = None
    ) -> Dict[str, Any]:
        """One server-side wait (`POST /tasks/wait`), at most `timeout`
        seconds (default 55): `done` says whether all (or, with
        `mode="any"`, one) of the tasks finished."""
        body = _drop_none(
            {"task_ids": [str(t) for t in task_ids], "mode": mode, "timeout_s": timeout}
        )
        return await self._json("POST", "/tasks/wait", json=body)

    async def wait(
        self, task_id: str, timeout: Optional[float] = None, raise_on_failure: bool = False
    ) -> Dict[str, Any]:
        """Waits for a task to finish (the server waits; nothing polls) and
        returns its record; `TimeoutError` past `timeout`, and with
        `raise_on_failure` a `TaskFailedError` if it did not complete."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = WAIT_SLICE_S if deadline is None else max(0.0, min(WAIT_SLICE_S, deadline - loop.time()))
            outcome = await self.wait_tasks([task_id], timeout=left)
            if outcome["done"]:
                break
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
        record = await self.get_task_status(task_id)
        if raise_on_failure and record["status"] != "completed":
            raise TaskFailedError(record)
        return record

    async def get_results(self, task_id: str, offset: int = 0, limit: int = 1000) -> Dict[str, Any]:
        """A page of a map's results in input order."""
        return await self._json(
            "GET", f"/status/{quote(str(task_id), safe='')}/results",
            params={"offset": offset, "limit": limit},
        )

    async def iter_results(self, task_id: str, page_size: int = 1000) -> AsyncIterator[Any]:
        """Every result of a map in input order, page by page (a failed
        input is `{"error": {...}}` in its place)."""
        offset: Optional[int] = 0
        while offset is not None:
            page = await self.get_results(task_id, offset, page_size)
            for item in page["results"]:
                yield item
            offset = page.get("next_offset")

    async def cancel(self, task_id: str) -> Dict[str, Any]:
        """Cancels a task; its final record."""
        return await self._json("POST", f"/tasks/{quote(str(task_id), safe='')}/cancel")

    async def logs(self, task_id: str) -> Dict[str, str]:
        """What a task printed: `{"stdout": ..., "stderr": ...}`."""
        return await self._json("GET", f"/tasks/{quote(str(task_id), safe='')}/logs")

    async def list_tasks(
        self, status: Optional[str] = None, offset: int = 0, limit: int = 100
    ) -> Dict[str, Any]:
        params = _drop_none({"status": status, "offset": offset, "limit": limit})
        return await self._json("GET", "/tasks", params=params)

    async def list_functions(self) -> List[Dict[str, Any]]:
        return await self._json("GET", "/functions")

    async def undeploy_function(self, function_name: str) -> Dict[str, Any]:
        return await self._json("DELETE", f"/functions/{quote(function_name, safe='')}")

    # Volumes: versioned state and files.

    def _state(self, volume: str, key: str) -> str:
        return f"/volumes/{quote(volume, safe='')}/state/{quote(key, safe='/')}"

    async def volume_get(self, volume: str, key: str) -> Optional[Dict[str, Any]]:
        """`{"key", "value", "version"}`, or None when the key is absent."""
        response = await self._http.get(self._state(volume, key))
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise error_for(response)
        return response.json()

    async def volume_put(
        self, volume: str, key: str, value: Any, expected_version: Optional[int] = None
    ) -> Dict[str, Any]:
        """Writes a value; with `expected_version` only if the key still has
        it (0: only if absent), else `ConflictError`."""
        headers = {}
        if expected_version == 0:
            headers["if-none-match"] = "*"
        elif expected_version is not None:
            headers["if-match"] = str(expected_version)
        return await self._json(
            "PUT", self._state(volume, key), json={"value": value}, headers=headers
        )

    async def volume_delete(self, volume: str, key: str) -> Dict[str, Any]:
        return await self._json("DELETE", self._state(volume, key))

    async def volume_list(self, volume: str, prefix: str = "") -> List[Dict[str, Any]]:
        listed = await self._json(
            "GET", f"/volumes/{quote(volume, safe='')}/state", params={"prefix": prefix}
        )
        return listed["entries"]

    async def file_put(self, volume: str, path: str, data: bytes) -> Dict[str, Any]:
        return await self._json(
            "PUT", f"/volumes/{quote(volume, safe='')}/files/{quote(path, safe='/')}",
            content=data, headers={"content-type": "application/octet-stream"},
        )

    async def file_get(self, volume: str, path: str) -> bytes:
        response = await self._request(
            "GET", f"/volumes/{quote(volume, safe='')}/files/{quote(path, safe='/')}"
        )
        return response.content


# Sandboxes (the Sandbox class is in _sandbox.py).


async def _create_sandbox(client: "ModalAgentClient", **options: Any) -> Any:
    from ._sandbox import Sandbox

    body = {k: v for k, v in options.items() if v is not None}
    view = await client._json("POST", "/sandboxes", json=body)
    return Sandbox(client, view)


ModalAgentClient.create_sandbox = _create_sandbox  # type: ignore[attr-defined]
ModalAgentClient.create_sandbox.__doc__ = """Creates a sandbox (`POST /sandboxes`; options: timeout_s,
idle_timeout_s, memory, cpu, network, volumes, secrets, env, workdir, name, tags,
from_snapshot, image); a `Sandbox`, also an async context manager that terminates it."""


async def _list_sandboxes(client: "ModalAgentClient") -> List[Dict[str, Any]]:
    return (await client._json("GET", "/sandboxes"))["sandboxes"]


async def _diff_snapshots(client: "ModalAgentClient", a: str, b: str) -> Dict[str, Any]:
    return await client._json("GET", f"/snapshots/{quote(a)}/diff/{quote(b)}")


ModalAgentClient.list_sandboxes = _list_sandboxes  # type: ignore[attr-defined]
ModalAgentClient.diff_snapshots = _diff_snapshots  # type: ignore[attr-defined]


class StatusMonitor:
    """Watches many tasks at once and yields each one's final status once,
    as they finish, from server-side waits (no polling):

        async for task_id, status in StatusMonitor(client, ids):
            ...
    """

    def __init__(self, client: ModalAgentClient, task_ids: Iterable[str]) -> None:
        self._client = client
        self._pending = [str(t) for t in task_ids]

    def __aiter__(self) -> AsyncIterator[Tuple[str, str]]:
        return self._watch()

    async def _watch(self) -> AsyncIterator[Tuple[str, str]]:
        while self._pending:
            outcome = await self._client.wait_tasks(self._pending, mode="any")
            for task in outcome["tasks"]:
                if task["status"] in ("completed", "failed", "cancelled"):
                    self._pending.remove(task["task_id"])
                    yield task["task_id"], task["status"]
