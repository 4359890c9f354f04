"""Long tool calls as MCP tasks, with the official Python SDK (mcp 2.3.0) on
protocol revision 2026-07-28 and the Tasks extension
(`io.modelcontextprotocol/tasks`, SEP-2663), as tests/mcp.rs runs it:

    python tasks_client.py URL TOKEN

A call of a long tool comes back at once as a task; `tasks/get` polls it to
its result; `tasks/cancel` cancels it and the runtime task it started; a
short tool still answers at once. Prints `ok <step>` per step and `all ok`.
"""

import asyncio
import sys
import time
from typing import Any, Literal

import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client import ResultClaim
from mcp.client.streamable_http import streamable_http_client

TASKS = "io.modelcontextprotocol/tasks"
OTHER_TOKEN = sys.argv[3] if len(sys.argv) > 3 else None
TERMINAL = {"completed", "failed", "cancelled"}


def check(cond, step, detail=""):
    if not cond:
        print(f"FAILED {step}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {step}", flush=True)


class TaskHandle(types.Result):
    """What a tool call answers when it runs as a task."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None


class TaskState(types.Result):
    """What `tasks/get` answers: the state, then the result or the error."""

    result_type: str | None = None
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTask(types.GetTaskRequest):
    """`tasks/get`, naming its task in the `Mcp-Name` header as the Tasks
    extension asks over HTTP."""

    name_param = "taskId"


class CancelTask(types.CancelTaskRequest):
    """`tasks/cancel`, likewise."""

    name_param = "taskId"


async def get_task(session, task_id):
    request = GetTask(params=types.GetTaskRequestParams(task_id=task_id))
    return await session.send_request(request, TaskState)


async def poll(session, handle, within=60.0):
    deadline = time.monotonic() + within
    while True:
        state = await get_task(session, handle.task_id)
        if state.status in TERMINAL:
            return state
        if time.monotonic() > deadline:
            return state
        await asyncio.sleep((state.poll_interval_ms or 500) / 1000)


async def resolve(handle, ctx):
    state = await poll(ctx.session, handle)
    return types.CallToolResult.model_validate(state.result, by_name=False)


async def call_as_task(session, tool, args):
    handle = await session.call_tool(tool, args, allow_claimed=True)
    return handle


async def steps(session, http, base):
    await session.discover()
    check(session.protocol_version == "2026-07-28", "2026-07-28", session.protocol_version)
    tools = await session.list_tools()
    check(any(t.name == "spawn_task" for t in tools.tools), "tools listed")

    deployed = await call_as_task(session, "deploy_modal_function", {
        "function_code": "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n",
        "function_name": "nap"})
    check(isinstance(deployed, TaskHandle), "a deploy runs as a task", deployed)
    state = await poll(session, deployed)
    check(state.status == "completed", "the deploy task completes", state)

    handle = await call_as_task(session, "spawn_task",
                                {"function_name": "nap", "args": [0.3], "wait": True})
    check(isinstance(handle, TaskHandle) and handle.status == "working",
          "a waited call comes back at once as a working task", handle)
    state = await poll(session, handle)
    result = types.CallToolResult.model_validate(state.result, by_name=False)
    check(state.status == "completed" and not result.is_error
          and result.structured_content["status"] == "completed"
          and result.structured_content["result"] == 0.3,
          "tasks/get delivers the call's result", state)

    long = await call_as_task(session, "spawn_task",
                              {"function_name": "nap", "args": [300], "wait": True})
    check(isinstance(long, TaskHandle), "a long call runs as a task", long)
    # Once its runtime task runs, cancel the MCP task.
    deadline = time.monotonic() + 30
    running = []
    while not running and time.monotonic() < deadline:
        listed = (await http.get(f"{base}/tasks?status=running")).json()
        running = [t for t in listed["tasks"] if t["function_name"] == "nap"]
        if not running:
            await asyncio.sleep(0.05)
    check(len(running) == 1, "its runtime task runs", running)
    await session.send_request(
        CancelTask(params=types.CancelTaskRequestParams(task_id=long.task_id)),
        types.EmptyResult)
    state = await poll(session, long)
    check(state.status == "cancelled", "tasks/cancel cancels the MCP task", state)
    runtime_id = running[0]["task_id"]
    deadline = time.monotonic() + 30
    status = None
    while status != "cancelled" and time.monotonic() < deadline:
        status = (await http.get(f"{base}/status/{runtime_id}")).json()["status"]
        if status != "cancelled":
            await asyncio.sleep(0.05)
    check(status == "cancelled", "and the runtime task it started", status)

    # Cancelled right after it was created, a call's runtime task is
    # cancelled too, however early the cancel came.
    handles = []
    for _ in range(10):
        h = await call_as_task(session, "spawn_task", {"function_name": "nap", "args": [100], "wait": True})
        await session.send_request(
            CancelTask(params=types.CancelTaskRequestParams(task_id=h.task_id)), types.EmptyResult)
        handles.append(h)
    states = [await poll(session, h) for h in handles]
    check(all(s.status == "cancelled" for s in states), "ten quick cancels", [s.status for s in states])
    deadline = time.monotonic() + 30
    left = None
    while left != 0 and time.monotonic() < deadline:
        listed = (await http.get(f"{base}/tasks?status=running")).json()
        pending = (await http.get(f"{base}/tasks?status=pending")).json()
        left = sum(1 for t in listed["tasks"] + pending["tasks"] if t["function_name"] == "nap")
        if left:
            await asyncio.sleep(0.05)
    check(left == 0, "and none of their runtime tasks goes on", left)

    # A large answer is kept without its large parts, which are named.
    await call_as_task(session, "deploy_modal_function", {
        "function_code": "def kilo(i):\n    return 'k' * 1024\n", "function_name": "kilo"})
    listed = (await http.get(f"{base}/functions")).json()
    deadline = time.monotonic() + 30
    while not any(f["function_name"] == "kilo" for f in listed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        listed = (await http.get(f"{base}/functions")).json()
    big = await call_as_task(session, "spawn_parallel_tasks",
                             {"function_name": "kilo", "inputs": list(range(200)), "wait": True})
    state = await poll(session, big)
    answer = types.CallToolResult.model_validate(state.result, by_name=False).structured_content
    check(state.status == "completed" and answer.get("omitted") == ["results"]
          and answer["status"] == "completed",
          "a large answer is kept without its results", {k: answer.get(k) for k in ("status", "omitted")})

    # A task id past 128 bytes is refused before the MCP service, naming it,
    # not echoed.
    refused = await http.post(f"{base}/mcp", json={
        "jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": "t" * 5000}},
        headers={"accept": "application/json, text/event-stream"})
    check(refused.status_code == 422 and "params.taskId" in refused.text and len(refused.text) < 2000,
          "a long task id is refused", (refused.status_code, refused.text[:300]))

    # Another token's session cannot read or cancel this token's task.
    if OTHER_TOKEN:
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {OTHER_TOKEN}"},
                                      timeout=httpx2.Timeout(60.0)) as other_http:
            async with streamable_http_client(f"{base}/mcp", http_client=other_http) as (r2, w2, *_):
                claims = {TASKS: [ResultClaim(result_type="task", model=TaskHandle, resolve=resolve)]}
                async with ClientSession(r2, w2, extensions={TASKS: {}}, result_claims=claims) as other:
                    await other.discover()
                    for what, request, model in [
                        ("read", GetTask(params=types.GetTaskRequestParams(task_id=handle.task_id)), TaskState),
                        ("cancel", CancelTask(params=types.CancelTaskRequestParams(task_id=handle.task_id)),
                         types.EmptyResult),
                    ]:
                        try:
                            await other.send_request(request, model)
                            check(False, f"another token cannot {what} a task")
                        except Exception as e:  # noqa: BLE001 - refused is the point
                            check("unknown task" in str(e), f"another token cannot {what} a task", e)
        state = await get_task(session, handle.task_id)
        check(state.status == "completed", "the owner still reads it", state.status)

    # A short tool answers at once, as before.
    listed = await session.call_tool("list_functions", {}, allow_claimed=True)
    check(isinstance(listed, types.CallToolResult) and not listed.is_error,
          "a short tool answers at once", listed)
    # An unknown task id is an error, not a hang.
    try:
        await get_task(session, "no-such-task")
        check(False, "an unknown task is refused")
    except Exception as e:  # noqa: BLE001 - any protocol error will do
        check("no-such-task" in str(e) or "unknown" in str(e).lower(), "an unknown task is refused", e)


async def main():
    url, token = sys.argv[1], sys.argv[2]
    base = url.rsplit("/mcp", 1)[0]
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(120.0)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            claims = {TASKS: [ResultClaim(result_type="task", model=TaskHandle, resolve=resolve)]}
            async with ClientSession(read, write, extensions={TASKS: {}}, result_claims=claims) as session:
                await steps(session, http, base)
    print("all ok", flush=True)


asyncio.run(main())
