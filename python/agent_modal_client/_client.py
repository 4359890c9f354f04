"""`ModalAgentClient`, the seed's async client (now `AsyncClient` under the
seed's name: the same methods, arguments and answers), and `StatusMonitor`."""

from __future__ import annotations

from typing import AsyncIterator, Iterable, Tuple

from ._async import AsyncClient
from ._flows import TERMINAL


class ModalAgentClient(AsyncClient):
    """The seed's async client of one modal-agents server:
    `ModalAgentClient(api_url, token=...)`, an async context manager with
    the seed's `deploy_function`, `run_parallel`, `spawn_task`,
    `get_task_status` and `register_webhook`, and everything `AsyncClient`
    has (it is one)."""


class StatusMonitor:
    """Watches many tasks at once and yields each one's final status once,
    as they finish, from server-side waits (no polling):

        async for task_id, status in StatusMonitor(client, ids):
            ...
    """

    def __init__(self, client: AsyncClient, task_ids: Iterable[str]) -> None:
        self._client = client
        self._pending = [str(t) for t in task_ids]

    def __aiter__(self) -> AsyncIterator[Tuple[str, str]]:
        return self._watch()

    async def _watch(self) -> AsyncIterator[Tuple[str, str]]:
        while self._pending:
            outcome = await self._client.wait_tasks(self._pending, mode="any")
            for task in outcome["tasks"]:
                if task["status"] in TERMINAL and task["task_id"] in self._pending:
                    self._pending.remove(task["task_id"])
                    yield task["task_id"], task["status"]
