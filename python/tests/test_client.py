"""agent_modal_client against the real `modal-agents serve` (started by
tests/python_client.rs, which passes MODAL_AGENTS_URL and MODAL_AGENTS_TOKEN)."""

import asyncio
import base64
import http.server
import json
import os
import threading

import httpx
import pytest

from agent_modal_client import (
    AuthenticationError,
    ConflictError,
    ModalAgentClient,
    NotFoundError,
    StatusMonitor,
    TaskFailedError,
    ValidationError,
    WebhookVerificationError,
    verify_webhook,
)

URL = os.environ.get("MODAL_AGENTS_URL", "http://127.0.0.1:8080")
TOKEN = os.environ.get("MODAL_AGENTS_TOKEN")


def run(coro):
    return asyncio.run(coro)


def test_the_seed_basic_usage_runs_unchanged():
    async def main():
        async with ModalAgentClient(api_url=URL, token=TOKEN) as client:
            # Deploy a function
            deploy_result = await client.deploy_function(
                function_code='''
def process_data(data):
    return data * 2
''',
                function_name="process_data",
                gpu="T4"
            )

            # Run in parallel
            result = await client.run_parallel(
                function_name="process_data",
                inputs=[1, 2, 3, 4, 5],
                wait=True
            )
            print(result)
            return deploy_result, result

    deployed, result = run(main())
    assert deployed["status"] == "registered"
    assert result["status"] == "completed"
    assert result["results"] == [2, 4, 6, 8, 10]


def test_spawn_wait_status_results_logs_and_cancel():
    async def main():
        async with ModalAgentClient(URL, token=TOKEN) as client:
            await client.deploy_function(
                "import time\ndef nap(s):\n    print('napping', s)\n    time.sleep(s)\n    return s\n",
                "nap",
            )
            spawned = await client.spawn_task("nap", args=[0.1])
            record = await client.wait(spawned["task_id"], timeout=30)
            assert record["status"] == "completed" and record["result"] == 0.1
            assert "napping 0.1" in (await client.logs(spawned["task_id"]))["stdout"]

            mapped = await client.run_parallel("nap", [0] * 2500)
            await client.wait(mapped["task_id"], timeout=60)
            status = await client.get_task_status(mapped["task_id"])
            assert status["result"] == [0] * 2500, "the seed's status carries a map's results"
            seen = [r async for r in client.iter_results(mapped["task_id"], page_size=1000)]
            assert seen == [0] * 2500

            long = await client.spawn_task("nap", args=[60])
            cancelled = await client.cancel(long["task_id"])
            assert cancelled["status"] == "cancelled"
            with pytest.raises(TaskFailedError) as failed:
                await client.wait(long["task_id"], raise_on_failure=True)
            assert failed.value.record["status"] == "cancelled"

            ids = [(await client.spawn_task("nap", args=[s]))["task_id"] for s in (0.3, 0.0, 0.1)]
            finished = [task_id async for task_id, status in StatusMonitor(client, ids)]
            assert sorted(finished) == sorted(ids)

    run(main())


def test_errors_are_typed_and_are_httpx_errors():
    async def main():
        async with ModalAgentClient(URL, token=TOKEN) as client:
            with pytest.raises(ValidationError) as bad:
                await client.deploy_function("def f(x): return x", "f", timeout=0)
            assert bad.value.field == "timeout" and bad.value.status == 422
            assert "86400" in bad.value.detail
            assert isinstance(bad.value, httpx.HTTPError), "the seed catches httpx.HTTPError"
            with pytest.raises(NotFoundError):
                await client.get_task_status("6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11")
            with pytest.raises(ValidationError) as hook:
                await client.register_webhook("not-a-task", "https://example.com/hook")
            assert hook.value.field == "task_id"
        async with ModalAgentClient(URL, token="wrong-token-0123456789") as stranger:
            with pytest.raises(AuthenticationError):
                await stranger.list_functions()

    run(main())


def test_volumes_state_with_versions_and_files():
    async def main():
        async with ModalAgentClient(URL, token=TOKEN) as client:
            first = await client.volume_put("py-team", "plan", {"step": 1}, expected_version=0)
            assert first["version"] == 1
            with pytest.raises(ConflictError):
                await client.volume_put("py-team", "plan", {"step": 2}, expected_version=7)
            await client.volume_put("py-team", "plan", {"step": 2}, expected_version=1)
            assert (await client.volume_get("py-team", "plan"))["value"] == {"step": 2}
            assert await client.volume_get("py-team", "absent") is None
            assert [e["key"] for e in await client.volume_list("py-team")] == ["plan"]
            await client.file_put("py-team", "notes/a.txt", b"hello")
            assert await client.file_get("py-team", "notes/a.txt") == b"hello"

    run(main())


class _Flaky(http.server.BaseHTTPRequestHandler):
    answers = []

    def do_GET(self):  # noqa: N802 - http.server's name
        status = self.answers.pop(0) if self.answers else 200
        body = json.dumps([] if status == 200 else {"title": "busy", "detail": "later"}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if status in (429, 503):
            self.send_header("retry-after", "0")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_429_and_503_are_retried():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _Flaky.answers = [503, 429, 200]
        assert run(ModalAgentClient(url).list_functions()) == []

        async def gives_up():
            async with ModalAgentClient(url, max_retries=1) as client:
                _Flaky.answers = [503, 503, 200]
                await client.list_functions()

        with pytest.raises(httpx.HTTPError) as e:
            run(gives_up())
        assert e.value.status == 503
    finally:
        server.shutdown()


def test_webhook_signatures_verify():
    # The Standard Webhooks reference example.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = '{"test": 2432232314}'
    verify_webhook(secret, headers, body, now=1614265330)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body + " ", now=1614265330)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body, now=1614265330 + 3600)
    other = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(other, headers, body, now=1614265330)


def test_sandboxes_exec_follow_files_snapshot_fork_and_terminate_on_exit():
    async def main():
        async with ModalAgentClient(api_url=URL, token=TOKEN) as client:
            async with await client.create_sandbox(timeout_s=120) as sb:
                await sb.write_file("app.py", "print('hello from the sandbox')\n")
                proc = await sb.exec(["sh", "-c", "python3 app.py; echo oops >&2; exit 3"])
                chunks = [chunk async for chunk in proc]
                # Chunks are as the process wrote them (print may write the
                # line and its newline apart): joined per stream.
                out = "".join(text for stream, text in chunks if stream == "stdout")
                err = "".join(text for stream, text in chunks if stream == "stderr")
                assert (out, err) == ("hello from the sandbox\n", "oops\n"), chunks
                assert proc.outcome == {"kind": "exited", "code": 3}
                slow = await sb.run(["sleep", "5"], timeout_s=1)
                assert slow.outcome == {"kind": "timed_out", "after_s": 1.0}
                assert await sb.read_file("app.py") == b"print('hello from the sandbox')\n"
                names = [e["name"] for e in await sb.list_files()]
                assert names == ["app.py"], names
                first = await sb.snapshot()
                await sb.write_file("app.py", "print('changed')\n")
                children = await sb.fork(2)
                assert len(children) == 2
                second = await sb.snapshot()
                diff = await client.diff_snapshots(first, second)
                assert diff["changed"][0]["path"] == "app.py"
                for child in children:
                    await child.terminate()
                with pytest.raises(ValidationError) as e:
                    await sb.exec([])
                assert e.value.field == "cmd"
                with pytest.raises(TypeError, match="argv list"):
                    await sb.exec("ls -la")  # type: ignore[arg-type]
                # Absolute paths are the sandbox's own; `..` never travels.
                await sb.write_file("/tmp/abs.txt", "in tmp")
                assert await sb.read_file("/tmp/abs.txt") == b"in tmp"
                assert "abs.txt" in [e["name"] for e in await sb.list_files("/tmp")]
                assert "tmp" not in [e["name"] for e in await sb.list_files()]
                with pytest.raises(ValueError, match="'..' segments"):
                    await sb.write_file("a/../../x.txt", "no")
            ended = await sb.refresh()
            assert ended["ended"]["reason"] == "terminated"
            with pytest.raises(ConflictError):
                await sb.exec(["true"])

    run(main())


def test_the_environment_names_the_server_and_a_down_one_is_named():
    import builtins

    from agent_modal_client import ServerUnreachableError, TimeoutError

    async def main():
        # MODAL_AGENTS_URL and MODAL_AGENTS_TOKEN (set by the test runner).
        async with ModalAgentClient() as client:
            assert isinstance(await client.list_functions(), list)
        async with ModalAgentClient(api_url="http://127.0.0.1:9", token="x" * 20, max_retries=0) as down:
            with pytest.raises(ServerUnreachableError) as e:
                await down.list_functions()
            assert "127.0.0.1:9" in str(e.value) and "MODAL_AGENTS_URL" in str(e.value)

    run(main())
    assert issubclass(TimeoutError, builtins.TimeoutError)
