"""The seed's flow through a client generated from /openapi.json with
openapi-python-client (tests/contract.rs generates it, then runs this):
deploy, map, spawn, status. Prints `all ok` or fails with the reason."""

import os
import sys

from client import AuthenticatedClient
from client.api.functions import deploy
from client.api.tasks import run_parallel, spawn_task, status, wait_tasks
from client.models import (
    DeployRequest,
    Deployed,
    MapSubmitted,
    RunParallelRequest,
    SpawnTaskRequest,
    TaskRecord,
    TaskStatusView,
    WaitTasksRequest,
    WaitTasksResult,
)


def check(cond, what, detail=""):
    if not cond:
        print(f"FAILED {what}: {detail}")
        sys.exit(1)
    print(f"ok {what}")


api = AuthenticatedClient(base_url=os.environ["MODAL_AGENTS_URL"], token=os.environ["MODAL_AGENTS_TOKEN"],
                          raise_on_unexpected_status=True)
with api as c:
    deployed = deploy.sync(client=c, body=DeployRequest(
        function_code="def my_function(x):\n    return x * 2\n", function_name="my_function"))
    check(isinstance(deployed, Deployed) and deployed.status == "registered", "deploy", deployed)

    mapped = run_parallel.sync(client=c, body=RunParallelRequest(
        function_name="my_function", inputs=[1, 2, 3, 4, 5], wait=True))
    check(isinstance(mapped, MapSubmitted) and mapped.results == [2, 4, 6, 8, 10], "map", mapped)

    spawned = spawn_task.sync(client=c, body=SpawnTaskRequest(function_name="my_function", args=[21]))
    check(isinstance(spawned, TaskRecord), "spawn", spawned)
    waited = wait_tasks.sync(client=c, body=WaitTasksRequest(task_ids=[spawned.task_id], timeout_s=30))
    check(isinstance(waited, WaitTasksResult) and waited.done, "wait", waited)

    record = status.sync(client=c, task_id=str(spawned.task_id))
    check(isinstance(record, TaskStatusView) and record.status.value == "completed"
          and record.result == 42, "status", record)
    map_status = status.sync(client=c, task_id=str(mapped.task_id))
    check(map_status.result == [2, 4, 6, 8, 10], "a map's status carries its results", map_status)
print("all ok")
