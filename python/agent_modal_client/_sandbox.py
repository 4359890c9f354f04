"""Sandbox sessions: `await client.create_sandbox(...)` -> a `Sandbox`
(`AsyncClient`), `client.create_sandbox(...)` -> a `SyncSandbox` (`Client`,
the same methods without `await`; a `with` block terminates it).

    async with await client.create_sandbox(timeout_s=600) as sb:
        await sb.write_file("test_x.py", "def test_x(): assert 1")
        proc = await sb.exec(["python3", "-m", "pytest", "-q"])
        async for stream, text in proc:       # live output
            print(stream, text, end="")
        outcome = await proc.wait()           # {"kind": "exited", "code": 0}

Every process ends with one typed outcome: `{"kind": "exited", "code"}`,
`{"kind": "signaled", "signal"}`, `{"kind": "timed_out", "after_s"}`,
`{"kind": "out_of_memory"}`, `{"kind": "disk_quota_exceeded", "limit_mib"}` or
`{"kind": "sandbox_ended", "reason"}`.
"""

import json
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ._core import MAX_ANSWER_BYTES, MAX_FILE_BYTES, LineSplitter, Op, as_bytes, as_json, as_object, no_answer, seg, subpath
from ._errors import error_for

#: Longest one server-side wait.
_WAIT_S = 55


def _path(path: str) -> str:
    """Workdir-relative, or absolute in the sandbox (`/tmp/x`)."""
    return subpath(path, keep_root=True)


# Each operation once, as an `Op`; `Sandbox` awaits them, `SyncSandbox`
# performs them.


def _view_op(method: str, sandbox_id: str, suffix: str = "", **kwargs: Any) -> Op[Dict[str, Any]]:
    return Op(method, f"/sandboxes/{sandbox_id}{suffix}", as_object({"sandbox_id": str}), **kwargs)


def _exec_op(sandbox_id: str, cmd: List[str], stdin: Optional[str], stdin_open: bool,
             env: Optional[Dict[str, str]], cwd: Optional[str], timeout_s: Optional[int],
             wait_s: int) -> Op[Dict[str, Any]]:
    if isinstance(cmd, (str, bytes)):
        raise TypeError(f"cmd is an argv list, such as {str(cmd).split()!r}, not a string; "
                        f"for a shell line use ['sh', '-c', {cmd!r}]")
    body = {k: v for k, v in {"cmd": list(cmd), "stdin": stdin, "stdin_open": stdin_open, "env": env,
                               "cwd": cwd, "timeout_s": timeout_s, "wait_s": wait_s}.items()
            if v is not None}
    return Op("POST", f"/sandboxes/{sandbox_id}/exec", as_object({"process_id": str}), json=body)


def _process_op(sandbox_id: str, process_id: str) -> Op[Dict[str, Any]]:
    return Op("GET", f"/sandboxes/{sandbox_id}/processes/{process_id}", as_object({"process_id": str}),
              params={"wait_s": _WAIT_S}, timeout=_WAIT_S + 30.0)


def _stdin_op(sandbox_id: str, process_id: str, data: Union[str, bytes], eof: bool) -> Op[Any]:
    if isinstance(data, bytes):
        import base64

        body: Dict[str, Any] = {"data_b64": base64.b64encode(data).decode(), "eof": eof}
    else:
        body = {"data": data, "eof": eof}
    return Op("POST", f"/sandboxes/{sandbox_id}/processes/{process_id}/stdin", as_json, json=body)


def _kill_op(sandbox_id: str, process_id: str, signal: Union[int, str]) -> Op[Any]:
    return Op("POST", f"/sandboxes/{sandbox_id}/processes/{process_id}/kill", as_json,
              json={"signal": signal})


def _read_op(sandbox_id: str, path: str) -> Op[bytes]:
    return Op("GET", f"/sandboxes/{sandbox_id}/files/{_path(path)}", as_bytes, max_bytes=MAX_FILE_BYTES)


def _write_op(sandbox_id: str, path: str, data: Union[str, bytes]) -> Op[Dict[str, Any]]:
    content = data.encode() if isinstance(data, str) else data
    return Op("PUT", f"/sandboxes/{sandbox_id}/files/{_path(path)}", as_object(), content=content)


def _list_op(sandbox_id: str, path: Optional[str]) -> Op[Dict[str, Any]]:
    return Op("GET", f"/sandboxes/{sandbox_id}/files", as_object({"entries": list}),
              params={"path": path} if path else None)


def _remove_op(sandbox_id: str, path: str) -> Op[Dict[str, Any]]:
    return Op("DELETE", f"/sandboxes/{sandbox_id}/files/{_path(path)}", as_object({"deleted": bool}))


def _snapshot_op(sandbox_id: str) -> Op[Dict[str, Any]]:
    return Op("POST", f"/sandboxes/{sandbox_id}/snapshot", as_object({"snapshot_id": str}))


def _fork_op(sandbox_id: str, count: int) -> Op[Dict[str, Any]]:
    return Op("POST", f"/sandboxes/{sandbox_id}/fork", as_object({"sandboxes": list}), json={"count": count})


def _outcome(answer: Dict[str, Any], url: str) -> Dict[str, Any]:
    outcome = answer["outcome"]
    if not isinstance(outcome, dict):
        raise no_answer("GET", url, f"`outcome` is not an object: {outcome!r:.80}")
    return outcome


class _Output:
    """Reads a process's output stream (SSE): `(stream, text)` per chunk
    the process wrote, and at the end its outcome."""

    def __init__(self, url: str, process_id: str) -> None:
        self.url = url
        self._lines = LineSplitter(f"the output of process {process_id}")
        self._event: Optional[str] = None
        self.outcome: Optional[Dict[str, Any]] = None

    def feed(self, chunk: bytes) -> List[Tuple[str, str]]:
        out: List[Tuple[str, str]] = []
        for line in self._lines.feed(chunk):
            if line.startswith("event:"):
                self._event = line[6:].strip()
            elif line.startswith("data:") and self._event:
                try:
                    data = json.loads(line[5:].strip())
                except (ValueError, RecursionError):
                    data = None
                if self._event == "end":
                    if not isinstance(data, dict):
                        raise no_answer("GET", self.url, f"the end event is not an outcome: {line!r:.80}")
                    self.outcome = data
                    return out
                if not isinstance(data, str):
                    raise no_answer("GET", self.url, f"a {self._event} event is not a JSON string: {line!r:.80}")
                out.append((self._event, data))
        return out


class _Process:
    """What both kinds of process handle hold."""

    def __init__(self, sandbox_id: str, answer: Dict[str, Any]) -> None:
        self.sandbox_id = sandbox_id
        self.process_id: str = answer["process_id"]
        self._answer = answer

    @property
    def outcome(self) -> Optional[Dict[str, Any]]:
        """How it ended, once it has."""
        return self._answer.get("outcome")

    @property
    def stdout(self) -> Optional[str]:
        return self._answer.get("stdout")

    @property
    def stderr(self) -> Optional[str]:
        return self._answer.get("stderr")

    def _output_url(self) -> str:
        return f"/sandboxes/{self.sandbox_id}/processes/{self.process_id}/output"


class SandboxProcess(_Process):
    """A process started by `Sandbox.exec`: `await wait()`, `async for
    (stream, text) in process`."""

    def __init__(self, sandbox: "Sandbox", answer: Dict[str, Any]) -> None:
        super().__init__(sandbox.sandbox_id, answer)
        self.sandbox = sandbox

    async def wait(self) -> Dict[str, Any]:
        """Waits for it to end (server-side waits of 55 s); its outcome. Its
        output is then in `stdout` and `stderr`."""
        op = _process_op(self.sandbox_id, self.process_id)
        while self._answer.get("outcome") is None:
            self._answer = await self.sandbox._client._perform(op)
        return _outcome(self._answer, op.path)

    async def write_stdin(self, data: Union[str, bytes] = b"", eof: bool = False) -> None:
        """Writes to its stdin (started with `stdin_open=True`)."""
        await self.sandbox._client._perform(_stdin_op(self.sandbox_id, self.process_id, data, eof))

    async def kill(self, signal: Union[int, str] = "KILL") -> None:
        await self.sandbox._client._perform(_kill_op(self.sandbox_id, self.process_id, signal))

    def __aiter__(self) -> AsyncIterator[Tuple[str, str]]:
        return self._follow()

    async def _follow(self) -> AsyncIterator[Tuple[str, str]]:
        """`(stream, text)` as the process writes, until it ends (then its
        outcome is set)."""
        output = _Output(self._output_url(), self.process_id)
        client = self.sandbox._client
        async with client._http.stream("GET", output.url, params={"follow": "true"}, timeout=None) as r:
            if r.status_code >= 400:
                raise error_for(await client._read(r, MAX_ANSWER_BYTES))
            async for chunk in r.aiter_bytes():
                for item in output.feed(chunk):
                    yield item
                if output.outcome is not None:
                    self._answer = dict(self._answer, outcome=output.outcome)
                    return


class SyncSandboxProcess(_Process):
    """A process started by `SyncSandbox.exec`: `wait()`, `for (stream,
    text) in process`."""

    def __init__(self, sandbox: "SyncSandbox", answer: Dict[str, Any]) -> None:
        super().__init__(sandbox.sandbox_id, answer)
        self.sandbox = sandbox

    def wait(self) -> Dict[str, Any]:
        """Waits for it to end (server-side waits of 55 s); its outcome. Its
        output is then in `stdout` and `stderr`."""
        op = _process_op(self.sandbox_id, self.process_id)
        while self._answer.get("outcome") is None:
            self._answer = self.sandbox._client._perform(op)
        return _outcome(self._answer, op.path)

    def write_stdin(self, data: Union[str, bytes] = b"", eof: bool = False) -> None:
        """Writes to its stdin (started with `stdin_open=True`)."""
        self.sandbox._client._perform(_stdin_op(self.sandbox_id, self.process_id, data, eof))

    def kill(self, signal: Union[int, str] = "KILL") -> None:
        self.sandbox._client._perform(_kill_op(self.sandbox_id, self.process_id, signal))

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        """`(stream, text)` as the process writes, until it ends (then its
        outcome is set)."""
        output = _Output(self._output_url(), self.process_id)
        client = self.sandbox._client
        with client._http.stream("GET", output.url, params={"follow": "true"}, timeout=None) as r:
            if r.status_code >= 400:
                raise error_for(client._read(r, MAX_ANSWER_BYTES))
            for chunk in r.iter_bytes():
                yield from output.feed(chunk)
                if output.outcome is not None:
                    self._answer = dict(self._answer, outcome=output.outcome)
                    return


def _sandbox_id(view: Dict[str, Any]) -> str:
    sandbox_id = view.get("sandbox_id")
    if not isinstance(sandbox_id, str):
        raise no_answer("GET", "/sandboxes", f"a sandbox without a `sandbox_id`: {view!r:.80}")
    return sandbox_id


class Sandbox:
    """A live sandbox (`AsyncClient`); an async context manager that
    terminates it on exit."""

    def __init__(self, client: Any, view: Dict[str, Any]) -> None:
        self._client = client
        self.sandbox_id: str = _sandbox_id(view)
        self.view = view

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.terminate()

    async def refresh(self) -> Dict[str, Any]:
        self.view = await self._client._perform(_view_op("GET", self.sandbox_id))
        return self.view

    async def exec(self, cmd: List[str], *, stdin: Optional[str] = None, stdin_open: bool = False,
                   env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                   timeout_s: Optional[int] = None, wait_s: int = 0) -> SandboxProcess:
        """Starts `cmd` (an argv list, such as `["ls", "-la"]`; a shell
        line goes as `["sh", "-c", line]`); `wait_s` (0-55) waits for it."""
        op = _exec_op(self.sandbox_id, cmd, stdin, stdin_open, env, cwd, timeout_s, wait_s)
        return SandboxProcess(self, await self._client._perform(op))

    async def run(self, cmd: List[str], **options: Any) -> SandboxProcess:
        """`exec` and wait for the end."""
        proc = await self.exec(cmd, **options)
        await proc.wait()
        return proc

    async def read_file(self, path: str) -> bytes:
        data: bytes = await self._client._perform(_read_op(self.sandbox_id, path))
        return data

    async def write_file(self, path: str, data: Union[str, bytes]) -> Dict[str, Any]:
        written: Dict[str, Any] = await self._client._perform(_write_op(self.sandbox_id, path, data))
        return written

    async def list_files(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        return list((await self._client._perform(_list_op(self.sandbox_id, path)))["entries"])

    async def remove(self, path: str) -> bool:
        return bool((await self._client._perform(_remove_op(self.sandbox_id, path)))["deleted"])

    async def keepalive(self, extend_s: int = 0) -> Dict[str, Any]:
        self.view = await self._client._perform(
            _view_op("POST", self.sandbox_id, "/keepalive", json={"extend_s": extend_s}))
        return self.view

    async def snapshot(self) -> str:
        """Snapshots the workdir; the snapshot id."""
        return str((await self._client._perform(_snapshot_op(self.sandbox_id)))["snapshot_id"])

    async def fork(self, count: int = 1) -> List["Sandbox"]:
        forked = await self._client._perform(_fork_op(self.sandbox_id, count))
        return [Sandbox(self._client, v if isinstance(v, dict) else {}) for v in forked["sandboxes"]]

    async def terminate(self) -> Dict[str, Any]:
        """Ends it (idempotent)."""
        self.view = await self._client._perform(_view_op("DELETE", self.sandbox_id))
        return self.view


class SyncSandbox:
    """A live sandbox (`Client`): `Sandbox`'s methods without `await`; a
    context manager that terminates it on exit."""

    def __init__(self, client: Any, view: Dict[str, Any]) -> None:
        self._client = client
        self.sandbox_id: str = _sandbox_id(view)
        self.view = view

    def __enter__(self) -> "SyncSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"SyncSandbox({self.sandbox_id!r})"

    def refresh(self) -> Dict[str, Any]:
        self.view = self._client._perform(_view_op("GET", self.sandbox_id))
        return self.view

    def exec(self, cmd: List[str], *, stdin: Optional[str] = None, stdin_open: bool = False,
             env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
             timeout_s: Optional[int] = None, wait_s: int = 0) -> SyncSandboxProcess:
        """Starts `cmd` (an argv list, such as `["ls", "-la"]`; a shell
        line goes as `["sh", "-c", line]`); `wait_s` (0-55) waits for it."""
        op = _exec_op(self.sandbox_id, cmd, stdin, stdin_open, env, cwd, timeout_s, wait_s)
        return SyncSandboxProcess(self, self._client._perform(op))

    def run(self, cmd: List[str], **options: Any) -> SyncSandboxProcess:
        """`exec` and wait for the end."""
        proc = self.exec(cmd, **options)
        proc.wait()
        return proc

    def read_file(self, path: str) -> bytes:
        data: bytes = self._client._perform(_read_op(self.sandbox_id, path))
        return data

    def write_file(self, path: str, data: Union[str, bytes]) -> Dict[str, Any]:
        written: Dict[str, Any] = self._client._perform(_write_op(self.sandbox_id, path, data))
        return written

    def list_files(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        return list(self._client._perform(_list_op(self.sandbox_id, path))["entries"])

    def remove(self, path: str) -> bool:
        return bool(self._client._perform(_remove_op(self.sandbox_id, path))["deleted"])

    def keepalive(self, extend_s: int = 0) -> Dict[str, Any]:
        self.view = self._client._perform(
            _view_op("POST", self.sandbox_id, "/keepalive", json={"extend_s": extend_s}))
        return self.view

    def snapshot(self) -> str:
        """Snapshots the workdir; the snapshot id."""
        return str(self._client._perform(_snapshot_op(self.sandbox_id))["snapshot_id"])

    def fork(self, count: int = 1) -> List["SyncSandbox"]:
        forked = self._client._perform(_fork_op(self.sandbox_id, count))
        return [SyncSandbox(self._client, v if isinstance(v, dict) else {}) for v in forked["sandboxes"]]

    def terminate(self) -> Dict[str, Any]:
        """Ends it (idempotent)."""
        self.view = self._client._perform(_view_op("DELETE", self.sandbox_id))
        return self.view


# What both clients send for the sandbox calls that are not a sandbox's own.


def create_sandbox_op(options: Mapping[str, Any]) -> Op[Dict[str, Any]]:
    body = {k: v for k, v in options.items() if v is not None}
    return Op("POST", "/sandboxes", as_object({"sandbox_id": str}), json=body)


def get_sandbox_op(sandbox_id: str) -> Op[Dict[str, Any]]:
    return _view_op("GET", seg(sandbox_id))


def list_sandboxes_op() -> Op[Dict[str, Any]]:
    return Op("GET", "/sandboxes", as_object({"sandboxes": list}))


def diff_snapshots_op(a: str, b: str) -> Op[Dict[str, Any]]:
    return Op("GET", f"/snapshots/{seg(a)}/diff/{seg(b)}", as_object())
