"""What a hostile review of the SDK found, each against the real server (or,
for a misbehaving one, a small local http.server): work left behind is
cancelled, tokens and URL secrets are never shown, answers from a bad server
are bounded and raise `APIError`, large maps fit the server's request limit,
and decorated functions deploy."""

import asyncio
import functools
import http.server
import json
import signal
import threading
import time

import httpx
import pytest

import agent_modal_client
from agent_modal_client import (
    APIError,
    AsyncClient,
    Client,
    ModalAgentClient,
    ServerUnreachableError,
)

SECRET_TOKEN = "python-client-token-0123456789"


@pytest.fixture(scope="module")
def client():
    with Client() as c:
        yield c


def robust_slow(seconds):
    import time

    time.sleep(seconds)
    return seconds


def robust_size(text):
    return len(text)


def robust_add(a, b=0):
    return a + b


def tasks_of(client, name):
    return [t for t in client.list_tasks(limit=1000)["tasks"] if t["function_name"] == name]


def eventually(check, timeout=30.0, what="the condition"):
    """Polls `check` until it is true (no fixed sleep decides anything)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def all_ended(client, name):
    tasks = tasks_of(client, name)
    ended = tasks and all(t["status"] in ("completed", "failed", "cancelled") for t in tasks)
    return tasks if ended else None


# 1. Abandoned work is cancelled.


@pytest.mark.parametrize(
    "how", ["del", "close", "break", "raise_in_loop", "inputs_raise", "unordered_break", "client_closed"]
)
def test_a_map_left_before_its_end_cancels_its_work(client, monkeypatch, how):
    # Chunks of 2: the map is two server maps, both started before the
    # first value comes.
    monkeypatch.setattr(agent_modal_client._flows, "MAP_CHUNK", 2)
    name = f"robust_left_{how}"
    f = client.deploy(robust_slow, name=name)
    inputs = [0, 60, 60, 60]
    if how == "del":
        values = f.map(inputs)
        assert next(values) == 0
        del values
    elif how == "close":
        values = f.map(inputs)
        assert next(values) == 0
        values.close()
    elif how == "break":
        for value in f.map(inputs):
            assert value == 0
            break
    elif how == "raise_in_loop":
        with pytest.raises(ZeroDivisionError):
            for value in f.map(inputs):
                value / 0
    elif how == "inputs_raise":

        def failing_inputs():
            yield 0
            yield 60
            yield 60
            raise ZeroDivisionError("the inputs broke")

        with pytest.raises(ZeroDivisionError):
            list(f.map(failing_inputs()))
    elif how == "unordered_break":
        for value in f.map(inputs, order_outputs=False):
            assert value == 0
            break
    elif how == "client_closed":
        with Client() as other:
            values = other.function(name).map(inputs)
            assert next(values) == 0
        # `values` is still referenced: closing the client closed it.
    tasks = eventually(lambda: all_ended(client, name), what="the map's cancellation")
    if how == "unordered_break":
        assert sorted(t["status"] for t in tasks) == ["cancelled"] * 3 + ["completed"], tasks
    else:
        assert {t["kind"] for t in tasks} == {"map"}
        assert [t["status"] for t in tasks] == ["cancelled"] * len(tasks), tasks
    if how == "client_closed":
        assert values is not None


class _Interrupting(httpx.HTTPTransport):
    """Raises KeyboardInterrupt at the first request whose path contains
    `part`: before sending it, or (`answered`) once the server answered it
    (as a Ctrl-C while the answer is on its way would)."""

    def __init__(self, part, answered=False):
        super().__init__()
        self.part, self.answered, self.armed = part, answered, True

    def handle_request(self, request):
        if self.armed and self.part in request.url.path:
            self.armed = False
            if self.answered:
                response = super().handle_request(request)
                response.read()
                response.close()
            raise KeyboardInterrupt
        return super().handle_request(request)


def test_keyboard_interrupt_in_a_map_or_a_remote_call_cancels_its_work(client):
    client.deploy(robust_slow, name="robust_interrupted_map")
    with Client(transport=_Interrupting("/results")) as interrupted:
        with pytest.raises(KeyboardInterrupt):
            list(interrupted.function("robust_interrupted_map").map([0, 60]))
    tasks = eventually(lambda: all_ended(client, "robust_interrupted_map"))
    assert [t["status"] for t in tasks] == ["cancelled"]

    # The answer that would have said the call's id never arrived: the
    # same request again (the same idempotency key) finds it.
    client.deploy(robust_slow, name="robust_interrupted_spawn")
    with Client(transport=_Interrupting("/spawn-task", answered=True)) as interrupted:
        with pytest.raises(KeyboardInterrupt):
            interrupted.function("robust_interrupted_spawn").remote(60)
    tasks = eventually(lambda: all_ended(client, "robust_interrupted_spawn"))
    assert [t["status"] for t in tasks] == ["cancelled"]

    client.deploy(robust_slow, name="robust_interrupted_submit")
    with Client(transport=_Interrupting("/run-parallel", answered=True)) as interrupted:
        with pytest.raises(KeyboardInterrupt):
            list(interrupted.function("robust_interrupted_submit").map([60, 60]))
    tasks = eventually(lambda: all_ended(client, "robust_interrupted_submit"))
    assert [t["status"] for t in tasks] == ["cancelled"], "the one map, found again and cancelled"


def test_ctrl_c_during_remote_cancels_the_call(client):
    f = client.deploy(robust_slow, name="robust_ctrl_c")
    main = threading.main_thread()
    assert threading.current_thread() is main

    def press_ctrl_c_once_it_runs():
        with Client() as watcher:
            eventually(lambda: [t for t in tasks_of(watcher, "robust_ctrl_c") if t["status"] == "running"])
        signal.pthread_kill(main.ident, signal.SIGINT)

    # SIGINT raises KeyboardInterrupt even where it was ignored at startup.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c_once_it_runs)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            f.remote(60)
    finally:
        presser.join()
        signal.signal(signal.SIGINT, previous)
    tasks = eventually(lambda: all_ended(client, "robust_ctrl_c"))
    assert [t["status"] for t in tasks] == ["cancelled"]


def test_async_maps_and_calls_left_or_cancelled_cancel_their_work(client):
    for name in ("robust_async_gc", "robust_async_break", "robust_async_task", "robust_async_remote",
                 "robust_async_closed"):
        client.deploy(robust_slow, name=name)

    async def until_all_ended(c, name):
        deadline = time.monotonic() + 30
        while True:
            tasks = [t for t in (await c.list_tasks(limit=1000))["tasks"] if t["function_name"] == name]
            if tasks and all(t["status"] in ("completed", "failed", "cancelled") for t in tasks):
                return tasks
            assert time.monotonic() < deadline, f"{name}: not cancelled"
            await asyncio.sleep(0.05)

    async def until_running(c, name):
        deadline = time.monotonic() + 30
        while not [t for t in (await c.list_tasks(limit=1000))["tasks"]
                   if t["function_name"] == name and t["status"] == "running"]:
            assert time.monotonic() < deadline, f"{name}: not running"
            await asyncio.sleep(0.05)

    async def main():
        async with AsyncClient() as c:
            # Garbage-collected after its first value.
            values = c.function("robust_async_gc").map([0, 60])
            assert await values.__anext__() == 0
            del values
            gc = await until_all_ended(c, "robust_async_gc")

            # `break` out of `async for`.
            async for value in c.function("robust_async_break").map([0, 60, 60], order_outputs=False):
                break
            broke = await until_all_ended(c, "robust_async_break")

            # The task reading the map cancelled.
            async def read_all():
                return [v async for v in c.function("robust_async_task").map([60])]

            reading = asyncio.create_task(read_all())
            await until_running(c, "robust_async_task")
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            task = await until_all_ended(c, "robust_async_task")

            # remote() under a timeout.
            with pytest.raises(asyncio.TimeoutError):
                calling = asyncio.create_task(c.function("robust_async_remote").remote(60))
                await until_running(c, "robust_async_remote")
                await asyncio.wait_for(calling, timeout=0.01)
            remote = await until_all_ended(c, "robust_async_remote")

            # The client closed with an iterator still held.
            async with AsyncClient() as other:
                held = other.function("robust_async_closed").map([0, 60])
                assert await held.__anext__() == 0
            closed = await until_all_ended(c, "robust_async_closed")
            assert held is not None
            return gc, broke, task, remote, closed

    gc, broke, task, remote, closed = asyncio.run(main())
    assert [t["status"] for t in gc] == ["cancelled"]
    assert sorted(t["status"] for t in broke) == ["cancelled", "cancelled", "completed"]
    assert [t["status"] for t in task] == ["cancelled"]
    assert [t["status"] for t in remote] == ["cancelled"]
    assert [t["status"] for t in closed] == ["cancelled"]


# 2. Tokens and URL secrets are never shown.


def test_a_token_a_header_cannot_carry_is_refused_without_showing_it(monkeypatch):
    for bad, named in [("\n", "line feed"), ("\r\n", "carriage return"), ("\0", "NUL"),
                       (" ", "space"), ("\t", "tab")]:
        for make in (Client, AsyncClient, lambda **kw: ModalAgentClient("http://127.0.0.1:9", **kw)):
            with pytest.raises(ValueError) as refused:
                make(token=SECRET_TOKEN + bad)
            text = str(refused.value)
            assert SECRET_TOKEN not in text and SECRET_TOKEN[:12] not in text, text
            assert named in text and "visible ASCII" in text, text
    with pytest.raises(ValueError, match="position 6") as refused:
        Client(token="python token")
    assert "python" not in str(refused.value)
    with pytest.raises(ValueError, match="non-ASCII") as refused:
        Client(token="tökenpythonclient0123")
    assert "ö" not in str(refused.value)

    # Read from a .env file, say: the variable is named, the token is not.
    monkeypatch.setenv("MODAL_AGENTS_TOKEN", SECRET_TOKEN + "\n")
    with pytest.raises(ValueError, match="MODAL_AGENTS_TOKEN") as refused:
        Client()
    assert SECRET_TOKEN not in str(refused.value) and "strip it" in str(refused.value)


def test_a_urls_userinfo_and_query_are_never_shown():
    url = "http://someone:hunter2-password@127.0.0.1:9/?key=query-secret"
    with Client(url, token="x" * 20, max_retries=0) as down:
        shown = repr(down)
        assert "127.0.0.1:9" in shown, shown
        assert all(s not in shown for s in ("someone", "hunter2", "query-secret")), shown
        with pytest.raises(ServerUnreachableError) as unreachable:
            down.list_functions()
        text = str(unreachable.value)
        assert "127.0.0.1:9" in text, text
        assert all(s not in text for s in ("someone", "hunter2", "query-secret")), text

    async def main():
        async with AsyncClient(url, token="x" * 20, max_retries=0) as down:
            assert "hunter2" not in repr(down) and "query-secret" not in repr(down)
            with pytest.raises(ServerUnreachableError) as unreachable:
                await down.function("f").remote(1)
            assert "hunter2" not in str(unreachable.value)

    asyncio.run(main())
    with pytest.raises(ValueError) as refused:
        Client("ftp://someone:hunter2-password@example.com/")
    assert "hunter2" not in str(refused.value)


# 3. A bad server: bounded reads, and APIError for what is not the API.


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the first route whose method and path
    prefix match: `routes` is a list of (method, prefix, answer(handler))."""

    routes = []

    def _route(self):
        length = int(self.headers.get("content-length") or 0)
        self.body = self.rfile.read(length)
        for method, prefix, answer in self.routes:
            if method == self.command and self.path.startswith(prefix):
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
        self.send_error(404)

    do_GET = do_POST = do_PUT = do_DELETE = _route

    def log_message(self, *args):
        pass


def _answer(handler, status, body, content_type="application/json", headers=()):
    handler.send_response(status)
    handler.send_header("content-type", content_type)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _endless(handler, first=b"", piece=b" " * (1 << 20), most=200 << 20):
    """A 200 without a length that goes on (up to `most` bytes)."""
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.end_headers()
    handler.wfile.write(first)
    sent = len(first)
    while sent < most:
        handler.wfile.write(piece)
        sent += len(piece)


@pytest.fixture
def bad_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Scripted.routes = []
        server.shutdown()
        server.server_close()


TASK = "6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11"


def test_what_a_bad_server_answers_raises_api_errors(bad_server):
    sse = (b'event: stdout\nid: 1\ndata: "fine\\n"\n\n'
           b'event: stdout\nid: 2\ndata: "not a JSON string\n\n')
    _Scripted.routes = [
        ("GET", "/functions", lambda h: _answer(h, 200, b"<html>a proxy's page</html>", "text/html")),
        ("GET", "/secrets", lambda h: _answer(h, 200, b'{"not": "a list"}')),
        ("POST", "/run-parallel", lambda h: _answer(h, 202, b'{"status": "pending", "num_tasks": 1}')),
        ("POST", "/spawn-task", lambda h: _answer(h, 202, b'{"task_id": 7}')),
        ("POST", "/tasks/wait", lambda h: _answer(h, 200, b'{"done": true}')),
        ("GET", f"/tasks/{TASK}/logs", lambda h: _answer(h, 200, sse, "text/event-stream")),
        ("GET", "/volumes", lambda h: _answer(h, 200, b"[1, 2")),
    ]
    with Client(bad_server, token="x" * 20, max_retries=0) as bad:
        with pytest.raises(APIError, match="not JSON"):
            bad.list_functions()
        with pytest.raises(APIError, match="array"):
            bad.list_secrets()
        with pytest.raises(APIError, match="task_id"):
            list(bad.function("f").map([1]))
        with pytest.raises(APIError, match="task_id"):
            bad.function("f").remote(1)
        with pytest.raises(APIError, match="tasks"):
            bad.wait(TASK)
        lines = []
        with pytest.raises(APIError, match="JSON string"):
            for line in bad.follow_logs(TASK):
                lines.append(line)
        assert lines == ["fine"]
        with pytest.raises(APIError):
            bad.list_volumes()

    async def main():
        async with AsyncClient(bad_server, token="x" * 20, max_retries=0) as bad:
            with pytest.raises(APIError, match="not JSON"):
                await bad.list_functions()
            with pytest.raises(APIError, match="task_id"):
                [v async for v in bad.function("f").map([1])]
            with pytest.raises(APIError, match="JSON string"):
                [line async for line in bad.follow_logs(TASK)]

    asyncio.run(main())


def test_answers_are_read_only_up_to_a_cap(bad_server, monkeypatch):
    big = str(100 << 30)
    _Scripted.routes = [
        # Says it is 100 GiB: refused before anything of it is read.
        ("GET", "/functions", lambda h: (h.send_response(200), h.send_header("content-length", big),
                                         h.end_headers(), h.wfile.write(b"[]"))),
        # No length, and it goes on: read up to the cap only.
        ("GET", "/secrets", lambda h: _endless(h, b"[")),
        # An event stream line that does not end.
        ("GET", f"/tasks/{TASK}/logs", lambda h: _endless(h, b"event: stdout\ndata: ", b"x" * (1 << 16), 8 << 20)),
    ]
    with Client(bad_server, token="x" * 20, max_retries=0) as bad:
        started = time.monotonic()
        with pytest.raises(APIError, match="over [0-9]+ bytes"):
            bad.list_functions()
        assert time.monotonic() - started < 5
        with pytest.raises(APIError, match="over [0-9]+ bytes") as too_large:
            bad.list_secrets()
        cap = agent_modal_client._core.MAX_ANSWER_BYTES
        assert f"over {cap} bytes" in str(too_large.value)
        assert 64 << 20 <= cap <= 128 << 20, "documented: a 64 MiB result inside its record"
        with pytest.raises(APIError, match="line of the event stream is over"):
            list(bad.follow_logs(TASK))

    async def main():
        async with AsyncClient(bad_server, token="x" * 20, max_retries=0) as bad:
            with pytest.raises(APIError, match="over"):
                await bad.list_functions()
            with pytest.raises(APIError, match="line of the event stream is over"):
                [line async for line in bad.follow_logs(TASK)]

    asyncio.run(main())

    # A log line with no end is yielded in pieces, not held whole.
    monkeypatch.setattr(agent_modal_client._core, "MAX_LOG_LINE_CHARS", 4)
    follower = agent_modal_client._core.LogFollower(TASK)
    fed = [follower.feed(line) for line in ("event: stdout", 'data: "abcdefghij"', "")]
    assert fed[-1] == ["abcd", "efgh"] and follower.finish() == ["ij"]


def test_retry_after_is_parsed_strictly(bad_server):
    answers = []

    def flaky(handler):
        retry_after = answers.pop(0) if answers else None
        if retry_after is None:
            _answer(handler, 200, b"[]")
        else:
            _answer(handler, 503, b'{"title": "busy"}', headers=[("retry-after", retry_after)])

    _Scripted.routes = [("GET", "/functions", flaky)]
    with Client(bad_server, token="x" * 20) as c:
        # A superscript two is a digit to str.isdigit, not to float.
        answers[:] = ["\u00b2", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "0"]
        started = time.monotonic()
        assert c.list_functions() == []
        assert answers == [] and time.monotonic() - started < 5

    retry_after = agent_modal_client._core.retry_after
    assert retry_after("2") == 2.0 and retry_after("120") == 60.0 and retry_after("9" * 5000) == 60.0
    assert retry_after("\u00b2") is None and retry_after("\u0663") is None and retry_after("-1") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# 4. Large maps fit the server's request limit.


def test_a_map_of_large_inputs_is_chunked_under_the_servers_request_limit(client):
    f = client.deploy(robust_size, name="robust_size")
    # 34 inputs of 1 MiB, far fewer than 10,000: over the server's 32 MiB a
    # request all the same.
    inputs = ["x" * (1 << 20)] * 34
    assert list(f.map(inputs)) == [1 << 20] * 34
    totals = sorted(t["progress"]["total"] for t in tasks_of(client, "robust_size"))
    assert sum(totals) == 34 and len(totals) == 3 and max(totals) <= 16, totals


def test_a_chunk_the_server_finds_too_large_is_sent_in_halves(bad_server, monkeypatch):
    # A server taking at most 64 KiB a request, and a client that thinks
    # chunks of any size fit.
    monkeypatch.setattr(agent_modal_client._flows, "MAP_CHUNK_BYTES", 1 << 30, raising=False)
    maps, sizes = {}, []

    def submit(handler):
        sizes.append(len(handler.body))
        if len(handler.body) > 64 << 10:
            problem = {"title": "Payload too large", "status": 413, "detail": "over 65536 bytes"}
            return _answer(handler, 413, json.dumps(problem).encode(), "application/problem+json")
        inputs = json.loads(handler.body)["inputs"]
        task_id = f"{len(maps):08x}-0000-4000-8000-000000000000"
        maps[task_id] = inputs
        answer = {"task_id": task_id, "function_name": "f", "num_tasks": len(inputs), "status": "pending"}
        _answer(handler, 202, json.dumps(answer).encode())

    def results(handler):
        inputs = maps[handler.path.split("/")[2]]
        page = {"results": [len(x) for x in inputs], "offset": 0, "total": len(inputs), "next_offset": None}
        _answer(handler, 200, json.dumps(page).encode())

    _Scripted.routes = [("POST", "/run-parallel", submit), ("GET", "/status/", results)]
    with Client(bad_server, token="x" * 20, max_retries=0) as c:
        # 40 inputs of 3.4 KB: 136 KB, then two halves of 68 KB, then four
        # quarters that fit.
        assert list(c.function("f").map(["x" * 3400] * 40)) == [3400] * 40
    assert [len(m) for m in maps.values()] == [10, 10, 10, 10]
    assert len(sizes) == 7 and sorted(sizes)[-1] > 128 << 10


# 5. Decorated functions deploy.


def test_a_decorated_function_deploys_as_its_undecorated_source(client):
    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            print("calling", fn.__name__)
            return fn(*args, **kwargs)

        return wrapper

    @logged
    def robust_wrapped_double(x):
        return 2 * x

    g = client.deploy(robust_wrapped_double)
    assert g.name == "robust_wrapped_double" and g.remote(4) == 8
    code = client.get_function("robust_wrapped_double")["spec"]["code"]
    assert code.startswith("def robust_wrapped_double(x):\n") and "logged" not in code, code

    @functools.lru_cache(maxsize=None)
    def robust_cached_square(x):
        return x * x

    assert client.deploy(robust_cached_square).remote(5) == 25

    def bare(fn):
        def wrapper(*args):
            return fn(*args)

        return wrapper

    with pytest.raises(ValueError, match="decorator") as refused:
        client.deploy(bare(robust_add))
    assert "robust_add" in str(refused.value) and "functools.wraps" in str(refused.value)
