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
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

import httpx

#: Longest one server-side wait.
_WAIT_S = 55


def _path(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


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
            self._answer = await self.sandbox._client._json(
                "GET",
                f"/sandboxes/{self.sandbox.sandbox_id}/processes/{self.process_id}",
                params={"wait_s": _WAIT_S},
            )
        outcome: Dict[str, Any] = self._answer["outcome"]
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
        http = self.sandbox._client._http
        async with http.stream("GET", url, params={"follow": "true"}, timeout=None) as r:
            if r.status_code >= 400:
                await r.aread()
                from ._errors import error_for

                raise error_for(r)
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event:
                    data = json.loads(line[5:].strip())
                    if event == "end":
                        self._answer = dict(self._answer, outcome=data)
                        return
                    yield event, data


class Sandbox:
    """A live sandbox; an async context manager that terminates it on exit."""

    def __init__(self, client: Any, view: Dict[str, Any]) -> None:
        self._client = client
        self.sandbox_id: str = view["sandbox_id"]
        self.view = view

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.terminate()

    async def refresh(self) -> Dict[str, Any]:
        self.view = await self._client._json("GET", f"/sandboxes/{self.sandbox_id}")
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
        """Starts `cmd` (an argv list); `wait_s` (0-55) waits for it."""
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
        answer = await self._client._json("POST", f"/sandboxes/{self.sandbox_id}/exec", json=body)
        return SandboxProcess(self, answer)

    async def run(self, cmd: List[str], **options: Any) -> SandboxProcess:
        """`exec` and wait for the end."""
        proc = await self.exec(cmd, **options)
        await proc.wait()
        return proc

    async def read_file(self, path: str) -> bytes:
        r: httpx.Response = await self._client._request(
            "GET", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}"
        )
        return r.content

    async def write_file(self, path: str, data: Union[str, bytes]) -> Dict[str, Any]:
        content = data.encode() if isinstance(data, str) else data
        stat: Dict[str, Any] = await self._client._json(
            "PUT", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}", content=content
        )
        return stat

    async def list_files(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        params = {"path": path} if path else None
        listed = await self._client._json("GET", f"/sandboxes/{self.sandbox_id}/files", params=params)
        return list(listed["entries"])

    async def remove(self, path: str) -> bool:
        r = await self._client._json("DELETE", f"/sandboxes/{self.sandbox_id}/files/{_path(path)}")
        return bool(r["deleted"])

    async def keepalive(self, extend_s: int = 0) -> Dict[str, Any]:
        self.view = await self._client._json(
            "POST", f"/sandboxes/{self.sandbox_id}/keepalive", json={"extend_s": extend_s}
        )
        return self.view

    async def snapshot(self) -> str:
        """Snapshots the workdir; the snapshot id."""
        info = await self._client._json("POST", f"/sandboxes/{self.sandbox_id}/snapshot")
        return str(info["snapshot_id"])

    async def fork(self, count: int = 1) -> List["Sandbox"]:
        forked = await self._client._json(
            "POST", f"/sandboxes/{self.sandbox_id}/fork", json={"count": count}
        )
        return [Sandbox(self._client, v) for v in forked["sandboxes"]]

    async def terminate(self) -> Dict[str, Any]:
        """Ends it (idempotent)."""
        self.view = await self._client._json("DELETE", f"/sandboxes/{self.sandbox_id}")
        return self.view
