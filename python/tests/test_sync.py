"""The synchronous `Client` and its Modal-style handles against the real
`modal-agents serve` (tests/python_client.rs passes MODAL_AGENTS_URL and
MODAL_AGENTS_TOKEN, which `Client()` reads)."""

import asyncio
import builtins
import time

import httpx
import pytest

import agent_modal_client
from agent_modal_client import (
    AsyncClient,
    Client,
    Function,
    FunctionCall,
    FunctionTimeoutError,
    NotFoundError,
    ServerUnreachableError,
    TaskFailedError,
    ValidationError,
)


@pytest.fixture(scope="module")
def client():
    with Client() as c:
        yield c


def uses_module_names(x):
    return add(x, time.time())


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def add(a, b=0, c=0):
    return a + b + c


def fragile(x):
    if x % 4 == 3:
        raise ValueError(f"no {x}")
    return x * 10


def line(a, b=10, *, scale=1):
    return (a * b + 1) * scale


def fail_first(x):
    import time

    if x == 0:
        raise RuntimeError("first")
    time.sleep(x)
    return x


def test_a_client_from_the_environment_deploys_a_function_object_and_calls_it(client):
    assert isinstance(client, Client) and client.api_url.startswith("http://127.0.0.1:")

    def _decorate(f):
        return f

    @_decorate
    def sync_square(x):
        """Nested and decorated: sent dedented and without the decorator."""
        return x * x

    square = client.deploy(sync_square, timeout=60)
    assert isinstance(square, Function) and square.name == "sync_square"
    assert square.deployed["status"] == "registered"
    code = client.get_function("sync_square")["spec"]["code"]
    assert code.startswith("def sync_square(x):\n") and "_decorate" not in code, code
    assert square.remote(7) == 49
    assert client.function("sync_square").remote(x=3) == 9, "keyword arguments travel too"

    # Under another name, and as a decorator with options.
    assert client.deploy(add, name="sync_add_renamed").remote(1, 2, c=3) == 6

    @client.deploy(name="sync_cube", timeout=30)
    def cube(x):
        return x ** 3

    assert isinstance(cube, Function) and cube.remote(3) == 27

    captured = 5

    def uses_a_closure(x):
        return x + captured

    with pytest.raises(ValueError, match="captured"):
        client.deploy(uses_a_closure)
    with pytest.raises(ValueError, match="lambda"):
        client.deploy(lambda x: x)
    # A module's helpers and imports do not travel with the function: said
    # at deploy, not as a NameError at the first call.
    with pytest.raises(ValueError, match=r"\(add, time\)"):
        client.deploy(uses_module_names)


def test_a_failed_call_raises_with_the_remote_type_message_and_traceback(client):
    f = client.deploy(fragile, name="sync_fragile")
    with pytest.raises(TaskFailedError) as failed:
        f.remote(3)
    e = failed.value
    assert (e.type, e.message) == ("ValueError", "no 3")
    assert "raise ValueError" in e.traceback and e.traceback.rstrip().endswith("ValueError: no 3")
    assert e.record["status"] == "failed" and e.task_id == e.record["task_id"]
    assert "ValueError: no 3" in str(e) and "Remote traceback" in str(e)
    assert not isinstance(e, builtins.TimeoutError)

    # A function past its own timeout: a TaskFailedError that is also a TimeoutError.
    slow = client.deploy(nap, name="sync_nap_timeout", timeout=1)
    with pytest.raises(builtins.TimeoutError) as timed_out:
        slow.remote(5)
    assert isinstance(timed_out.value, FunctionTimeoutError)
    assert isinstance(timed_out.value, TaskFailedError) and timed_out.value.type == "TimeoutError"


def test_spawn_get_with_a_timeout_and_cancel(client):
    f = client.deploy(nap, name="sync_nap")
    quick = f.spawn(0.1)
    assert isinstance(quick, FunctionCall) and quick.get(timeout=60) == 0.1
    assert client.get_task_status(quick.id)["result"] == 0.1, "one value is `result`"
    with Client(timeout=1.0) as impatient:
        # Waits held by the server get their own request timeouts.
        assert impatient.function("sync_nap").remote(2.5) == 2.5

    long = f.spawn(60)
    started = time.monotonic()
    with pytest.raises(builtins.TimeoutError) as waited:
        long.get(timeout=0.5)
    assert isinstance(waited.value, agent_modal_client.TimeoutError)
    assert time.monotonic() - started < 10
    long.cancel()
    with pytest.raises(TaskFailedError) as cancelled:
        long.get(timeout=30)
    assert cancelled.value.type == "Cancelled" and cancelled.value.status == "cancelled"
    assert cancelled.value.traceback is None


def test_map_in_input_order_raising_or_returning_exceptions(client):
    f = client.deploy(fragile, name="sync_fragile_map")
    assert list(f.map([1, 2])) == [10, 20]
    assert list(f.map([])) == []

    seen = []
    with pytest.raises(TaskFailedError) as failed:
        for value in f.map(range(8)):
            seen.append(value)
    assert seen == [0, 10, 20], "values before the failed input come first, in order"
    assert (failed.value.index, failed.value.type, failed.value.message) == (3, "ValueError", "no 3")
    assert "raise ValueError" in failed.value.traceback

    out = list(f.map(range(8), return_exceptions=True))
    assert [v for i, v in enumerate(out) if i % 4 != 3] == [0, 10, 20, 40, 50, 60]
    errors = [out[3], out[7]]
    assert all(isinstance(e, TaskFailedError) for e in errors)
    assert [(e.index, e.message) for e in errors] == [(3, "no 3"), (7, "no 7")]


def test_map_unordered_yields_as_calls_finish_and_starmap_spreads_arguments(client):
    # Warm containers, so that no call waits for one to start.
    f = client.deploy(nap, name="sync_nap_unordered", max_concurrency=4, min_containers=4)
    inputs = [2.0, 0.0, 0.0, 0.0]
    assert list(f.map(inputs)) == inputs
    unordered = list(f.map(inputs, order_outputs=False))
    assert sorted(unordered) == sorted(inputs)
    assert unordered[-1] == 2.0, "the slow input finishes last"
    client.undeploy_function("sync_nap_unordered")

    g = client.deploy(add, name="sync_add")
    assert list(g.starmap([(1, 2), (3, 4), (5,)])) == [3, 7, 5]
    assert list(g.starmap([(1, 2)], kwargs={"c": 10})) == [13]
    assert list(g.map([1, 2, 3], [10, 20, 30])) == [11, 22, 33], "several iterables zip"
    assert sorted(g.map([1, 2], kwargs={"b": 1}, order_outputs=False)) == [2, 3]
    out = list(client.deploy(fragile, name="sync_fragile_star").starmap(
        [(2,), (3,)], return_exceptions=True))
    assert out[0] == 20 and isinstance(out[1], TaskFailedError) and out[1].index == 1

    # A failed input raises, and the calls still in flight are cancelled.
    h = client.deploy(fail_first, name="sync_fail_first", max_concurrency=4)
    started = time.monotonic()
    with pytest.raises(TaskFailedError, match="first"):
        list(h.map([0, 60, 60], order_outputs=False))
    assert time.monotonic() - started < 30
    tasks = [t for t in client.list_tasks(limit=1000)["tasks"] if t["function_name"] == "sync_fail_first"]
    assert sorted(t["status"] for t in tasks) == ["cancelled", "cancelled", "failed"]


def tasks_of(client, name):
    """The server's tasks of one function, by id."""
    return {t["task_id"]: t for t in client.list_tasks(limit=1000)["tasks"] if t["function_name"] == name}


def new_tasks(client, name, before):
    """The tasks of `name` made since `before` (a `tasks_of`), by kind."""
    made = [t for i, t in tasks_of(client, name).items() if i not in before]
    return sorted(t["kind"] for t in made), made


def test_starmap_and_keyword_maps_are_one_server_map_each_in_order(client, capsys):
    f = client.deploy(line, name="sync_line")
    seen = tasks_of(client, "sync_line")

    # Tuples (and lists): f(*input), one map with inputs_as "args".
    assert list(f.starmap([(1, 2), (3,), [2, 5]], progress=True)) == [3, 31, 11]
    kinds, made = new_tasks(client, "sync_line", seen)
    assert kinds == ["map"] and made[0]["progress"]["total"] == 3, made
    assert "3/3" in capsys.readouterr().err, "tqdm's bar on stderr"
    seen = tasks_of(client, "sync_line")

    # Mappings: f(**input), one map with inputs_as "kwargs"; the shared
    # kwargs are merged in, an input's own keys winning.
    out = list(f.starmap([{"a": 2}, {"a": 1, "b": 1, "scale": 5}, {"a": 0}], kwargs={"scale": 2}))
    assert out == [42, 10, 2]
    assert new_tasks(client, "sync_line", seen)[0] == ["map"]
    seen = tasks_of(client, "sync_line")

    # map of several iterables: the zipped tuples as positional arguments.
    assert list(f.map([1, 2, 3], [4, 5, 6])) == [5, 11, 19]
    assert new_tasks(client, "sync_line", seen)[0] == ["map"]
    seen = tasks_of(client, "sync_line")

    # A failed input: raised, or in its place with return_exceptions.
    out = list(f.starmap([(1, 2), (1, 2, 3, 4), ("x", "y"), (3,)], return_exceptions=True))
    assert out[0] == 3 and out[3] == 31
    assert [(e.index, e.type) for e in out[1:3]] == [(1, "TypeError"), (2, "TypeError")]
    with pytest.raises(TaskFailedError) as failed:
        list(f.starmap([(1, 2), (1, 2, 3, 4), (3,)]))
    assert (failed.value.index, failed.value.type) == (1, "TypeError")
    out = list(f.starmap([{"a": 2}, {"c": 1}, {"a": 1, "b": 1}], return_exceptions=True))
    assert out[0] == 21 and out[2] == 2
    assert (out[1].index, out[1].type) == (1, "TypeError") and "'c'" in out[1].message
    kinds, made = new_tasks(client, "sync_line", seen)
    assert kinds == ["map", "map", "map"], made
    seen = tasks_of(client, "sync_line")

    # Only positional inputs with shared kwargs, and unordered maps, remain
    # separate calls.
    assert list(f.starmap([(1, 2), (3,)], kwargs={"scale": 3})) == [9, 93]
    assert sorted(f.starmap([{"a": 1}, {"a": 2}], order_outputs=False)) == [11, 21]
    assert new_tasks(client, "sync_line", seen)[0] == ["call"] * 4


def test_a_wrong_shaped_starmap_input_is_refused_naming_its_index(client, monkeypatch):
    f = client.deploy(line, name="sync_line_shapes")
    shapes = ([(1,), 5], [(1,), {"a": 1}], [{"a": 1}, (1,)], [{"a": 1}, "ab"])
    for inputs in shapes:
        with pytest.raises(ValidationError) as refused:
            list(f.starmap(inputs))
        assert refused.value.status == 422 and refused.value.field == "inputs[1]", refused.value
    assert tasks_of(client, "sync_line_shapes") == {}, "the map is refused before anything runs"
    for inputs in shapes:
        with pytest.raises(ValidationError) as refused:
            list(f.starmap(inputs, order_outputs=False))
        assert refused.value.field == "inputs[1]", refused.value
    kinds, made = new_tasks(client, "sync_line_shapes", {})
    assert kinds == ["call"] * 4, "separate calls: the first input's call only"

    # Maps of 3 inputs: the index is the input's among all of them, and
    # the map already submitted is cancelled.
    monkeypatch.setattr(agent_modal_client._flows, "MAP_CHUNK", 3)
    taken = []

    def inputs(n, bad=None):
        for i in range(n):
            taken.append(i)
            yield 7 if i == bad else (i, 2)

    values = f.starmap(inputs(10))
    assert taken == [], "nothing is sent before the iteration starts"
    assert next(values) == 1 and len(taken) <= 6, taken
    assert list(values) == [2 * i + 1 for i in range(1, 10)]
    maps = [t for t in tasks_of(client, "sync_line_shapes").values() if t["kind"] == "map"]
    assert sorted(t["progress"]["total"] for t in maps) == [1, 3, 3, 3], "four maps in chunks of 3"

    before = tasks_of(client, "sync_line_shapes")
    with pytest.raises(ValidationError) as refused:
        list(f.starmap(inputs(10, bad=4)))
    assert refused.value.field == "inputs[4]" and "inputs[4]" in str(refused.value)
    kinds, made = new_tasks(client, "sync_line_shapes", before)
    assert kinds == ["map"], "the first chunk only"
    assert client.wait(made[0]["task_id"], timeout=30)["status"] in ("cancelled", "completed")


def test_a_map_of_1000_inputs_is_read_lazily_in_order_with_a_progress_bar(client, monkeypatch, capsys):
    # Maps of 300 inputs: the inputs are taken from the iterable a chunk
    # ahead of the results, not all before the first result.
    monkeypatch.setattr(agent_modal_client._flows, "MAP_CHUNK", 300)
    monkeypatch.setattr(agent_modal_client._flows, "PAGE_SIZE", 128)
    f = client.deploy(add, name="sync_add_many")
    taken = []

    def inputs():
        for i in range(1000):
            taken.append(i)
            yield i

    values = f.map(inputs(), kwargs=None)
    assert taken == [], "nothing is sent before the iteration starts"
    first = next(values)
    assert first == 0 and len(taken) <= 600, len(taken)
    assert [first, *values] == list(range(1000))

    assert list(f.map(range(1000), progress=True)) == list(range(1000))
    assert "1000/1000" in capsys.readouterr().err, "tqdm's bar on stderr"

    mapped = client.run_parallel("sync_add_many", range(5), wait=True)
    assert mapped["results"] == [0, 1, 2, 3, 4], "a map's values are `results`"
    assert list(client.iter_results(mapped["task_id"], page_size=2)) == [0, 1, 2, 3, 4]


def test_follow_logs_yields_lines_as_the_task_prints_them(client):
    def sync_talk(n):
        import sys
        import time

        for i in range(n):
            print("line", i)
            print("oops", i, file=sys.stderr)
            time.sleep(0.3)
        print("no end", end="")
        return n

    call = client.deploy(sync_talk).spawn(5)
    lines = []
    for line in client.follow_logs(call.id):
        if not lines:
            status = client.get_task_status(call.id)["status"]
            assert status in ("pending", "running"), "the first line comes while it runs"
        lines.append(line)
    assert [l for l in lines if l.startswith("line")] == [f"line {i}" for i in range(5)]
    assert [l for l in lines if l.startswith("oops")] == [f"oops {i}" for i in range(5)]
    assert lines[-1] == "no end" and len(lines) == 11
    assert call.get(timeout=30) == 5
    # A finished task's logs, one stream.
    assert list(client.follow_logs(call.id, stream="stderr")) == [f"oops {i}" for i in range(5)]


class _CutFirstFollow(httpx.HTTPTransport):
    """Breaks the first followed log stream after its first chunk, as a
    dropped connection would; records the follow requests' headers."""

    def __init__(self):
        super().__init__()
        self.follows = []

    def handle_request(self, request):
        response = super().handle_request(request)
        if request.url.params.get("follow") != "true":
            return response
        self.follows.append(dict(request.headers))
        if len(self.follows) > 1:
            return response
        inner = response.stream

        class Cut(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    yield chunk
                    raise httpx.ReadError("connection cut")

            def close(self):
                inner.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Cut(), request=request)


def test_a_dropped_log_stream_resumes_from_the_last_event(client):
    def sync_count(n):
        import time

        for i in range(n):
            print("n", i)
            time.sleep(0.2)

    call = client.deploy(sync_count).spawn(5)
    cutter = _CutFirstFollow()
    with Client(transport=cutter) as flaky:
        lines = list(flaky.follow_logs(call.id))
    assert lines == [f"n {i}" for i in range(5)], "each line once, none lost"
    assert len(cutter.follows) == 2 and "last-event-id" not in cutter.follows[0]
    assert cutter.follows[1].get("last-event-id"), "the second request resumes"


def test_secrets_create_list_reach_the_function_and_delete(client):
    info = client.create_secret("sync-db", {"DB_PASSWORD": "correct-horse-battery"})
    assert info == {"name": "sync-db", "keys": ["DB_PASSWORD"]}
    listed = {s["name"]: s for s in client.list_secrets()}
    assert listed["sync-db"]["keys"] == ["DB_PASSWORD"]
    assert "correct-horse-battery" not in repr(listed), "values are never shown"

    def sync_read_secret():
        import os

        return os.environ["DB_PASSWORD"]

    reader = client.deploy(sync_read_secret, secrets=["sync-db"])
    assert reader.remote() == "correct-horse-battery"
    # In use: removing it would leave the function unable to start.
    with pytest.raises(agent_modal_client.ConflictError, match="sync_read_secret"):
        client.delete_secret("sync-db")
    client.undeploy_function("sync_read_secret")
    assert client.delete_secret("sync-db")["deleted"] is True
    assert "sync-db" not in {s["name"] for s in client.list_secrets()}
    with pytest.raises(NotFoundError):
        client.delete_secret("sync-db")


def test_volumes_files_and_versioned_keys(client):
    stat = client.file_put("sync-vol", "notes/a.txt", "héllo")
    assert stat["path"] == "notes/a.txt" and stat["size"] == len("héllo".encode())
    client.file_put("sync-vol", "notes/b.bin", b"\x00\x01")
    assert client.file_get("sync-vol", "notes/a.txt") == "héllo".encode()
    assert [f["path"] for f in client.file_list("sync-vol", prefix="notes/")] == ["notes/a.txt", "notes/b.bin"]
    assert client.file_delete("sync-vol", "notes/b.bin")["deleted"] is True
    with pytest.raises(NotFoundError):
        client.file_get("sync-vol", "notes/b.bin")

    assert client.volume_put("sync-vol", "plan", {"step": 1}, expected_version=0)["version"] == 1
    assert client.volume_get("sync-vol", "plan") == {"key": "plan", "value": {"step": 1}, "version": 1}
    assert [e["key"] for e in client.volume_list("sync-vol")] == ["plan"]
    assert client.volume_delete("sync-vol", "plan")["deleted"] is True
    assert client.volume_get("sync-vol", "plan") is None
    assert "sync-vol" in client.list_volumes()


def test_keys_and_paths_keep_their_characters_and_never_climb(client):
    client.volume_put("sync-odd-keys", "a?b#c d%", 1)
    assert client.volume_get("sync-odd-keys", "a?b#c d%")["value"] == 1
    assert client.volume_get("sync-odd-keys", "a") is None
    for bad in ["../../other/state/k", "a/./b", ".."]:
        with pytest.raises(ValueError, match="'..' segments"):
            client.volume_put("sync-odd-keys", bad, 1)
        with pytest.raises(ValueError, match="'..' segments"):
            client.file_put("sync-odd-keys", bad, b"x")


def test_volume_list_reads_every_page_of_keys(client):
    keys = [f"page/k{i:04d}" for i in range(1205)]
    for i, key in enumerate(keys):
        client.volume_put("sync-paged-keys", key, i)
    client.volume_put("sync-paged-keys", "zz-outside", "not under the prefix")

    # One page holds at most 1000 keys and says where the next one starts.
    first = client.volume_list_page("sync-paged-keys", prefix="page/")
    assert len(first["entries"]) == 1000 and first["next_after"] == keys[999]

    # The whole listing: every key exactly once, in order, with its value.
    listed = client.volume_list("sync-paged-keys", prefix="page/")
    assert [e["key"] for e in listed] == keys
    assert [e["value"] for e in listed] == list(range(1205))
    everything = [e["key"] for e in client.volume_list("sync-paged-keys")]
    assert everything == keys + ["zz-outside"]

    # Lazily, a page of 100 at a time: the same keys.
    lazy = client.iter_volume_list("sync-paged-keys", prefix="page/", page_size=100)
    assert next(lazy)["key"] == keys[0]
    assert [keys[0]] + [e["key"] for e in lazy] == keys

    # The async client pages through them too.
    async def listed_async():
        async with AsyncClient() as c:
            listed = [e["key"] for e in await c.volume_list("sync-paged-keys", prefix="page/")]
            lazy = [e["key"] async for e in c.iter_volume_list("sync-paged-keys", "page/", page_size=500)]
            return listed, lazy

    assert asyncio.run(listed_async()) == (keys, keys)


def sync_fill(n):
    import json
    import os

    root = json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/v"]
    for i in range(n):
        d = os.path.join(root, "d%d" % (i % 7))
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "f %04d" % i), "w").close()
    return n


def test_file_list_reads_every_page_of_files(client):
    fill = client.deploy(sync_fill, volumes={"/v": "sync-paged-files"}, timeout=300)
    assert fill.remote(2500) == 2500
    expected = sorted(f"d{i % 7}/f {i:04d}" for i in range(2500))

    # One page holds at most 1000 files; its `Link` says where the next starts.
    first = client.file_list_page("sync-paged-files")
    assert len(first["files"]) == 1000 and first["next_after"] == expected[999]

    # The whole listing: every file exactly once, sorted by path.
    paths = [f["path"] for f in client.file_list("sync-paged-files")]
    assert len(paths) == 2500 and paths == expected
    in_d3 = [f["path"] for f in client.file_list("sync-paged-files", prefix="d3/")]
    assert in_d3 == [p for p in expected if p.startswith("d3/")] and len(in_d3) == 357
    small_pages = [f["path"] for f in client.iter_file_list("sync-paged-files", page_size=999)]
    assert small_pages == expected

    async def listed_async():
        async with AsyncClient() as c:
            listed = [f["path"] for f in await c.file_list("sync-paged-files")]
            lazy = [f["path"] async for f in c.iter_file_list("sync-paged-files", "d3/", page_size=100)]
            return listed, lazy

    assert asyncio.run(listed_async()) == (expected, in_d3)
    with pytest.raises(NotFoundError):
        client.file_list("sync-no-such-volume")


def test_a_server_that_cannot_be_reached_is_named(client):
    with Client("http://127.0.0.1:9", token="x" * 20, max_retries=0) as down:
        with pytest.raises(ServerUnreachableError) as e:
            down.function("f").remote(1)
        assert "http://127.0.0.1:9" in str(e.value) and "MODAL_AGENTS_URL" in str(e.value)
        with pytest.raises(ServerUnreachableError, match="127.0.0.1:9"):
            list(down.follow_logs("6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11"))


def test_the_sync_client_works_inside_a_running_event_loop(client):
    client.deploy(add, name="sync_add_in_loop")

    async def inside():
        # A real synchronous client, not asyncio.run around the async one.
        with Client() as c:
            return c.function("sync_add_in_loop").remote(6, 30)

    assert asyncio.run(inside()) == 36


def test_agent_tools_are_listed_and_called_and_run_code_needs_no_deploy(client):
    tools = {t["name"]: t for t in client.list_tools()}
    assert {"run_code", "spawn_task", "create_sandbox"} <= set(tools), sorted(tools)
    assert tools["run_code"]["input_schema"]["properties"]["code"]["type"] == "string"

    ran = client.run_code("import sys\nprint(sys.stdin.read().upper())\nsys.exit(3)", stdin="hi")
    assert ran["outcome"] == {"kind": "exited", "code": 3}, ran
    assert ran["stdout"] == "HI\n", ran
    shell = client.run_code("echo $GREETING >&2", language="sh", env={"GREETING": "hello"})
    assert (shell["outcome"], shell["stderr"]) == ({"kind": "exited", "code": 0}, "hello\n"), shell
    slow = client.run_code("import time; time.sleep(30)", timeout_s=1)
    assert slow["outcome"] == {"kind": "timed_out", "after_s": 1.0}, slow

    # Any tool by name, as an agent host calls it over MCP.
    client.deploy(add, name="sync_tool_add")
    done = client.call_tool("spawn_task", {"function_name": "sync_tool_add", "args": [2, 3], "wait": True})
    assert (done["status"], done["result"]) == ("completed", 5), done
    with pytest.raises(ValidationError) as e:
        client.call_tool("run_code", {"code": "pass", "timeout_s": 0})
    assert e.value.field == "timeout_s", e.value
    with pytest.raises(NotFoundError):
        client.call_tool("no_such_tool", {})

    async def via_async():
        async with AsyncClient() as c:
            return await c.run_code("print(6 * 7)"), [t["name"] for t in await c.list_tools()]

    ran, names = asyncio.run(via_async())
    assert ran["stdout"] == "42\n" and "run_code" in names, ran


def test_sync_sandboxes_exec_follow_files_snapshot_fork_and_reattach(client):
    from agent_modal_client import SyncSandbox

    with client.create_sandbox(timeout_s=120) as sb:
        assert isinstance(sb, SyncSandbox)
        sb.write_file("app.py", "print('hi from sync')\n")
        proc = sb.exec(["sh", "-c", "python3 app.py; echo oops >&2; exit 3"])
        chunks = list(proc)
        out = "".join(text for stream, text in chunks if stream == "stdout")
        err = "".join(text for stream, text in chunks if stream == "stderr")
        assert (out, err, proc.outcome) == ("hi from sync\n", "oops\n", {"kind": "exited", "code": 3}), chunks
        slow = sb.run(["sleep", "5"], timeout_s=1)
        assert slow.outcome == {"kind": "timed_out", "after_s": 1.0}
        sb.write_file("/tmp/abs.txt", "in tmp")
        assert sb.read_file("/tmp/abs.txt") == b"in tmp"
        first = sb.snapshot()
        sb.write_file("app.py", "print('changed')\n")
        [child] = sb.fork(1)
        assert child.read_file("app.py") == b"print('changed')\n"
        child.terminate()
        diff = client.diff_snapshots(first, sb.snapshot())
        assert diff["changed"][0]["path"] == "app.py", diff
        again = client.get_sandbox(sb.sandbox_id)
        assert again.run(["cat", "app.py"]).stdout == "print('changed')\n"
        assert sb.sandbox_id in [v["sandbox_id"] for v in client.list_sandboxes()]
        with pytest.raises(TypeError, match="argv list"):
            sb.exec("ls -la")  # type: ignore[arg-type]
    assert sb.refresh()["ended"]["reason"] == "terminated"
    with pytest.raises(agent_modal_client.ConflictError):
        sb.exec(["true"])
