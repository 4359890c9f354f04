"""An agent session over MCP with the official Python SDK, as tests/mcp.rs runs it.

    python client.py http URL TOKEN
    python client.py stdio COMMAND ARG...

Prints `ok <step>` per step and `all ok` at the end; exits 1 at the first
step that does not hold, saying why.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

SEED_TOOLS = {"deploy_modal_function", "spawn_parallel_tasks", "request_gpu_task", "coordinate_state"}
MORE_TOOLS = {
    "spawn_task", "get_task_status", "wait_tasks", "cancel_task", "get_task_results",
    "get_task_logs", "list_functions", "read_volume_file", "write_volume_file", "list_volume_files",
}


def check(cond, step, detail=""):
    if not cond:
        print(f"FAILED {step}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {step}", flush=True)


def text(result):
    return " ".join(c.text for c in result.content if getattr(c, "text", None))


async def session_steps(session: ClientSession):
    await session.initialize()
    listed = await session.list_tools()
    names = {t.name for t in listed.tools}
    check(SEED_TOOLS | MORE_TOOLS <= names, "list tools", sorted(names))
    check(all(t.input_schema.get("type") == "object" and t.output_schema for t in listed.tools),
          "every tool has an input and an output schema")

    deployed = await session.call_tool("deploy_modal_function", {
        "function_code": "def double(x):\n    return x * 2\n", "function_name": "double"})
    check(not deployed.is_error and deployed.structured_content["status"] == "registered",
          "deploy", text(deployed))

    mapped = await session.call_tool("spawn_parallel_tasks", {
        "function_ref": "double", "inputs": list(range(1000)), "wait": True})
    out = mapped.structured_content or {}
    check(not mapped.is_error and out.get("status") == "completed"
          and out.get("results") == [2 * i for i in range(1000)], "map 1,000 inputs", text(mapped)[:300])

    ids = []
    for arg in (21, 5):
        spawned = await session.call_tool("spawn_task", {"function_name": "double", "args": [arg]})
        check(not spawned.is_error, f"spawn {arg}", text(spawned))
        ids.append(spawned.structured_content["task_id"])
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total))

    waited = await session.call_tool("wait_tasks", {"task_ids": ids, "mode": "all"},
                                     progress_callback=on_progress)
    check(not waited.is_error and waited.structured_content["done"] is True
          and waited.structured_content["finished"] == 2, "wait_tasks", text(waited))
    check(ids[0] in text(waited), "wait_tasks summarises each task in its text", text(waited))
    status = await session.call_tool("get_task_status", {"task_id": ids[0]})
    check(status.structured_content["result"] == 42, "status carries the result", text(status))

    await session.call_tool("deploy_modal_function", {
        "function_code": "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n",
        "function_name": "nap"})
    keyed = {"function_name": "nap", "args": [2.5], "idempotency_key": "nap-once"}
    one = await session.call_tool("spawn_task", keyed)
    two = await session.call_tool("spawn_task", keyed)
    check(one.structured_content["task_id"] == two.structured_content["task_id"],
          "a retried spawn with its idempotency key is one task", text(two))
    ticks = []

    async def on_tick(done, total, message):
        ticks.append((done, total))

    napped = await session.call_tool("wait_tasks", {"task_ids": [one.structured_content["task_id"]]},
                                     progress_callback=on_tick)
    check(napped.structured_content["done"] is True and ticks and ticks[0][1] == 1,
          "a long wait sends progress", ticks)

    map_ticks = []

    async def on_map_tick(done, total, message):
        map_ticks.append((done, total))

    slow_map = await session.call_tool("spawn_parallel_tasks", {
        "function_name": "nap", "inputs": [0.5] * 8, "wait": True}, progress_callback=on_map_tick)
    check(slow_map.structured_content["results"] == [0.5] * 8, "a slow map", text(slow_map)[:200])
    if os.environ.get("EXPECT_MAP_PROGRESS") == "1":
        check(map_ticks and all(t == 8 for _, t in map_ticks), "a waited map sends progress", map_ticks)

    exec_ticks = []

    async def on_exec_tick(done, total, message):
        exec_ticks.append((done, total))

    sandbox = await session.call_tool("create_sandbox", {"timeout_s": 120})
    check(not sandbox.is_error, "create_sandbox", text(sandbox))
    sandbox_id = sandbox.structured_content["sandbox_id"]
    ran = await session.call_tool("sandbox_exec", {
        "sandbox_id": sandbox_id, "cmd": ["sh", "-c", "sleep 2.5; echo slept"]},
        progress_callback=on_exec_tick)
    check(ran.structured_content["outcome"] == {"kind": "exited", "code": 0}
          and ran.structured_content["stdout"] == "slept\n", "sandbox_exec", text(ran))
    if os.environ.get("EXPECT_MAP_PROGRESS") == "1":
        check(exec_ticks and all(t == 55 for _, t in exec_ticks), "a waited sandbox exec sends progress", exec_ticks)
    bad = await session.call_tool("sandbox_exec", {"sandbox_id": sandbox_id, "cmd": []})
    check(bad.is_error and "cmd" in text(bad), "a bad exec is an error naming cmd", text(bad))
    await session.call_tool("terminate_sandbox", {"sandbox_id": sandbox_id})

    first = await session.call_tool("coordinate_state", {
        "volume_name": "team", "operation": "cas", "key": "plan", "data": {"step": 1}})
    check(not first.is_error and first.structured_content["version"] == 1, "cas creates", text(first))
    second = await session.call_tool("coordinate_state", {
        "volume_name": "team", "operation": "cas", "key": "plan", "data": {"step": 2},
        "expected_version": 1})
    check(not second.is_error and second.structured_content["version"] == 2, "cas moves on", text(second))
    stale = await session.call_tool("coordinate_state", {
        "volume_name": "team", "operation": "cas", "key": "plan", "data": {"step": 3},
        "expected_version": 1})
    check(stale.is_error and "version" in text(stale), "a stale cas is refused", text(stale))

    bad = await session.call_tool("deploy_modal_function", {
        "function_code": "def f(x): return x", "function_name": "f", "timeout": 0})
    check(bad.is_error and "timeout" in text(bad) and "86400" in text(bad),
          "a bad argument is a tool error naming the field and what is accepted", text(bad))
    try:
        await session.call_tool("no_such_tool", {})
        check(False, "an unknown tool is a protocol error", "no error")
    except MCPError as e:
        check("no_such_tool" in str(e), "an unknown tool is a protocol error", str(e))


async def main():
    kind = sys.argv[1]
    if kind == "http":
        url, token = sys.argv[2], sys.argv[3]
        async with httpx2.AsyncClient() as anonymous:
            refused = await anonymous.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                           headers={"accept": "application/json, text/event-stream"})
            check(refused.status_code == 401, "a missing token is 401", refused.status_code)
            browser = await anonymous.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                           headers={"authorization": f"Bearer {token}",
                                                    "origin": "https://evil.example",
                                                    "accept": "application/json, text/event-stream"})
            check(browser.status_code == 403, "a browser origin is refused", browser.status_code)
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                      timeout=httpx2.Timeout(120.0)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session_steps(session)
    else:
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session_steps(session)
    print("all ok", flush=True)


asyncio.run(main())
