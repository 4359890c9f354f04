"""Sandbox sessions: `await client.create_sandbox(...)` -> a `Sandbox`.

    async with await client.create_sandbox(timeout_s=600) as sb:
        await sb.write_file("test_x.py", "def test_x(): assert 1")
        proc = await sb.exec(["python3", "-m", "pytest", "-q"])
        async for stream, text in proc:       # live output
            print(stream, text, end="")
        outcome = await proc.wait()           # {"kind": "exited", "code": 0}

Every process ends with one typed outcome: `{"kind": "exited", "code"}`,
`{"kind": "signaled", "signal"}`, `{"kind": "timed_out", "after_s"}`,
`{"kind": "out_of_memory"}` or `{"kind": "sandbox_ended", "reason"}`.
"""

import json
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from ._core import MAX_ANSWER_BYTES, MAX_FILE_BYTES, Kind, LineSplitter, Op, as_object, no_answer, subpath
from ._errors import error_for

#: Longest one server-side wait.
_WAIT_S = 55


def _path(path: str) -> str:
    """Workdir-relative, or absolute in the sandbox (`/tmp/x`)."""
    return subpath(path, keep_root=True)


async def _object(client: Any, method: str, path: str, required: Mapping[str, Kind], **kwargs: Any) -> Dict[str, Any]:
    """A request whose answer is a JSON object with the `required` fields
    (else `APIError`)."""
    answer: Dict[str, Any] = await client._perform(Op(method, path, as_object(required), **kwargs))
    return answer


class SandboxProcess:
    """A process started by `Sandbox.exec`."""

    def __init__(self, sandbox: "Sandbox", answer: Dict[str, Any]) -> None:
        self.sandbox = sandbox
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

    async def wait(self) -> Dict[str, Any]:
        """Waits for it to end (server-side waits of 55 s); its outcome. Its
        output is then in `stdout` and `stderr`."""
        while self._answer.get("outcome") is None:
            self._answer = await _object(
                self.sandbox._client,
                "GET",
                f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}",
                {"process_id": str},
                params={"wait_s": _WAIT_S},
            )
        outcome = self._answer["outcome"]
        if not isinstance(outcome, dict):
            raise no_answer("GET", f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}",
                            f"`outcome` is not an object: {outcome!r:.80}")
        return outcome

    async def write_stdin(self, data: Union[str, bytes] = b"", eof: bool = False) -> None:
        """Writes to its stdin (started with `stdin_open=True`)."""
        if isinstance(data, bytes):
            import base64

            body: Dict[str, Any] = {"data_b64": base64.b64encode(data).decode(), "eof": eof}
        else:
            body = {"data": data, "eof": eof}
        await self.sandbox._client._json(
            "POST",
            f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}/stdin",
            json=body,
        )

    async def kill(self, signal: Union[int, str] = "KILL") -> None:
        await self.sandbox._client._json(
            "POST",
            f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}/kill",
            json={"signal": signal},
        )

    def __aiter__(self) -> AsyncIterator[Tuple[str, str]]:
        return self._follow()

    async def _follow(self) -> AsyncIterator[Tuple[str, str]]:
        """`(stream, text)` as the process writes, until it ends (then its
        outcome is set)."""
        url = f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}/output"
        client = self.sandbox._client
        async with client._http.stream("GET", url, params={"follow": "true"}, timeout=None) as r:
            if r.status_code >= 400:
                raise error_for(await client._read(r, MAX_ANSWER_BYTES))
            event = None
            lines = LineSplitter(f"the output of process {self.process_id}")
            async for chunk in r.aiter_bytes():
                for line in lines.feed(chunk):
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        try:
                            data = json.loads(line[5:].strip())
                        except (ValueError, RecursionError):
                            data = None
                        if event == "end":
                            if not isinstance(data, dict):
                                raise no_answer("GET", url, f"the end event is not an outcome: {line!r:.80}")
                            self._answer = dict(self._answer, outcome=data)
                            return
                        if not isinstance(data, str):
                            raise no_answer("GET", url, f"a {event} event is not a JSON string: {line!r:.80}")
                        yield event, data


class Sandbox:
    """A live sandbox; an async context manager that terminates it on exit."""

    def __init__(self, client: Any, view: Dict[str, Any]) -> None:
        self._client = client
        sandbox_id = view.get("sandbox_id")
        if not isinstance(sandbox_id, str):
            raise no_answer("GET", "/sandboxes", f"a sandbox without a `sandbox_id`: {view!r:.80}")
        self.sandbox_id: str = sandbox_id
        self.view = view

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.terminate()

    async def refresh(self) -> Dict[str, Any]:
        self.view = await _object(self._client, "GET", f"/sandboxes/{self.sandbox_id}", {})
        return self.view

    async def exec(
        self,
        cmd: List[str],
        *,
        stdin: Optional[str] = None,
        stdin_open: bool = False,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        timeout_s: Optional[int] = None,
        wait_s: int = 0,
    ) -> SandboxProcess:
        """Starts `cmd` (an argv list, such as `["ls", "-la"]`; a shell
        line goes as `["sh", "-c", line]`); `wait_s` (0-55) waits for it."""
        if isinstance(cmd, (str, bytes)):
            raise TypeError(f"cmd is an argv list, such as {str(cmd).split()!r}, not a string; "
                            f"for a shell line use ['sh', '-c', {cmd!r}]")
        body = {
            k: v
            for k, v in {
                "cmd": list(cmd),
                "stdin": stdin,
                "stdin_open": stdin_open,
                "env": env,
                "cwd": cwd,
                "timeout_s": timeout_s,
                "wait_s": wait_s,
            }.items()
            if v is not None
        }
        answer = await _object(self._client, "POST", f"/sandboxes/{self.sandbox_id}/exec",
                               {"process_id": str}, json=body)
        return SandboxProcess(self, answer)

    async def run(self, cmd: List[str], **options: Any) -> SandboxProcess:
        """`exec` and wait for the end."""
        proc = await self.exec(cmd, **options)
        await proc.wait()
        return proc

    async def read_file(self, path: str) -> bytes:
        r: httpx.Response = await self._client._request(
            "GET", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}", max_bytes=MAX_FILE_BYTES
        )
        return r.content

    async def write_file(self, path: str, data: Union[str, bytes]) -> Dict[str, Any]:
        content = data.encode() if isinstance(data, str) else data
        return await _object(
            self._client, "PUT", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}", {}, content=content
        )

    async def list_files(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        params = {"path": path} if path else None
        listed = await _object(self._client, "GET", f"/sandboxes/{self.sandbox_id}/files",
                               {"entries": list}, params=params)
        return list(listed["entries"])

    async def remove(self, path: str) -> bool:
        r = await _object(self._client, "DELETE", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}",
                          {"deleted": bool})
        return bool(r["deleted"])

    async def keepalive(self, extend_s: int = 0) -> Dict[str, Any]:
        self.view = await _object(
            self._client, "POST", f"/sandboxes/{self.sandbox_id}/keepalive", {}, json={"extend_s": extend_s}
        )
        return self.view

    async def snapshot(self) -> str:
        """Snapshots the workdir; the snapshot id."""
        info = await _object(self._client, "POST", f"/sandboxes/{self.sandbox_id}/snapshot",
                             {"snapshot_id": str})
        return str(info["snapshot_id"])

    async def fork(self, count: int = 1) -> List["Sandbox"]:
        forked = await _object(
            self._client, "POST", f"/sandboxes/{self.sandbox_id}/fork", {"sandboxes": list}, json={"count": count}
        )
        return [Sandbox(self._client, v if isinstance(v, dict) else {}) for v in forked["sandboxes"]]

    async def terminate(self) -> Dict[str, Any]:
        """Ends it (idempotent)."""
        self.view = await _object(self._client, "DELETE", f"/sandboxes/{self.sandbox_id}", {})
        return self.view
