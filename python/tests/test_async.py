"""`AsyncClient` (and the seed's `ModalAgentClient`, which is one) with the
same Modal-style handles, awaited, against the real server."""

import asyncio
import builtins

import pytest

from agent_modal_client import (
    AsyncClient,
    AsyncFunction,
    AsyncFunctionCall,
    ModalAgentClient,
    ServerUnreachableError,
    TaskFailedError,
    ValidationError,
)


def run(coro):
    return asyncio.run(coro)


def async_nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def async_fragile(x):
    if x == 2:
        raise KeyError("two")
    print("got", x)
    return -x


def test_the_async_client_from_the_environment_has_the_same_handles():
    async def main():
        async with AsyncClient() as client:
            f = await client.deploy(async_fragile)
            assert isinstance(f, AsyncFunction) and f.name == "async_fragile"
            assert await f.remote(5) == -5
            with pytest.raises(TaskFailedError) as failed:
                await f.remote(2)
            assert (failed.value.type, failed.value.message) == ("KeyError", "'two'")
            assert "raise KeyError" in failed.value.traceback

            assert [v async for v in f.map([1, 3, 4])] == [-1, -3, -4]
            out = [v async for v in f.map(range(4), return_exceptions=True, order_outputs=False)]
            assert sorted(v for v in out if isinstance(v, int)) == [-3, -1, 0]
            assert [e.index for e in out if isinstance(e, TaskFailedError)] == [2]
            assert [v async for v in f.starmap([(1,), (3,)], progress=True)] == [-1, -3]
            out = [v async for v in f.starmap([{"x": 1}, {"x": 2}, {"x": 3}], return_exceptions=True)]
            assert out[0] == -1 and out[2] == -3 and (out[1].index, out[1].type) == (1, "KeyError")
            maps = [t for t in (await client.list_tasks(limit=1000))["tasks"]
                    if t["function_name"] == "async_fragile" and t["kind"] == "map"]
            assert len(maps) == 3, "map, starmap of tuples and of mappings: one map each"
            with pytest.raises(ValidationError) as refused:
                [v async for v in f.starmap([{"x": 1}, 5])]
            assert refused.value.field == "inputs[1]"

            call = await f.spawn(7)
            assert isinstance(call, AsyncFunctionCall) and await call.get(timeout=60) == -7
            lines = [line async for line in client.follow_logs(call.id)]
            assert lines == ["got 7"]

            renamed = await client.deploy(async_nap, name="async_nap_renamed")
            assert renamed.name == "async_nap_renamed" and await renamed.remote(0) == 0
            long = await (await client.deploy(async_nap)).spawn(60)
            with pytest.raises(builtins.TimeoutError):
                await long.get(timeout=0.3)
            await long.cancel()
            assert (await client.get_task_status(long.id))["status"] == "cancelled"

            await client.create_secret("async-s", {"K": "v"})
            assert "async-s" in [s["name"] for s in await client.list_secrets()]
            await client.delete_secret("async-s")
            await client.file_put("async-vol", "x.txt", b"x")
            assert await client.file_get("async-vol", "x.txt") == b"x"

    run(main())


def test_the_seed_client_is_an_async_client_and_names_a_down_server():
    assert issubclass(ModalAgentClient, AsyncClient)

    async def main():
        async with ModalAgentClient("http://127.0.0.1:9", token="x" * 20, max_retries=0) as down:
            assert isinstance(down, ModalAgentClient)
            with pytest.raises(ServerUnreachableError, match="http://127.0.0.1:9"):
                await down.function("f").remote()
            with pytest.raises(ServerUnreachableError, match="http://127.0.0.1:9"):
                [line async for line in down.follow_logs("6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11")]

    run(main())
