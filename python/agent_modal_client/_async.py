"""`AsyncClient`: the asynchronous client (over `httpx.AsyncClient`), and
its `AsyncFunction` and `AsyncFunctionCall` handles: the same methods as
`Client` (from the same `_ops` and `_flows`), awaited."""

from __future__ import annotations

import asyncio
import functools
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Concatenate,
    Dict,
    Iterable,
    List,
    Optional,
    ParamSpec,
    TypeVar,
)

import httpx

from . import _flows as flows
from . import _ops as ops
from ._core import (
    CONNECT_ERRORS,
    Emit,
    Flow,
    LogFollower,
    Op,
    Retry,
    as_dict,
    as_json,
    as_response,
    make_progress_bar,
    method_signature,
    resolve,
    seg,
    unreachable,
)
from ._errors import error_for
from ._sandbox import Sandbox
from ._source import function_source

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
_C = TypeVar("_C", bound="AsyncClient")


def _bind(op: Callable[P, Op[T]]) -> Callable[Concatenate["AsyncClient", P], Awaitable[T]]:
    """A coroutine method of `AsyncClient` sending the op of the same name."""

    @functools.wraps(op)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._perform(op(*args, **kwargs))

    setattr(method, "__signature__", method_signature(op))
    return method


class AsyncClient:
    """An async client of one modal-agents server. With no arguments it
    talks to `MODAL_AGENTS_URL` with `MODAL_AGENTS_TOKEN`. Use it as an
    async context manager (or call `aclose`).

        async with AsyncClient() as client:
            double = await client.deploy(double_fn)
            await double.remote(21)                          # 42
            [v async for v in double.map(range(10))]         # [0, 2, ..., 18]
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        base_url, headers = resolve(api_url, token)
        self.api_url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self._max_retries = max_retries

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.api_url!r})"

    # The transport: the only code that differs from Client's.

    async def _perform(self, op: Op[T]) -> T:
        retry = Retry(self._max_retries)
        while True:
            try:
                response = await self._http.request(**op.request())
            except CONNECT_ERRORS as e:
                raise unreachable(self.api_url, e) from e
            pause = retry.after(response)
            if pause is None:
                return op.finish(response)
            await asyncio.sleep(pause)

    async def _drive(self, flow: Flow[Any, R]) -> R:
        reply: Any = None
        error: Optional[Exception] = None
        while True:
            try:
                step = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply, error = None, None
            if not isinstance(step, Emit):
                try:
                    reply = await self._perform(step)
                except Exception as e:  # raised in the flow, where it sent the op
                    error = e

    async def _iterate(self, flow: Flow[T, None]) -> AsyncIterator[T]:
        reply: Any = None
        error: Optional[Exception] = None
        try:
            while True:
                try:
                    step = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration:
                    return
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                else:
                    try:
                        reply = await self._perform(step)
                    except Exception as e:  # raised in the flow, where it sent the op
                        error = e
        finally:
            flow.close()

    # For Sandbox and other raw uses.

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self._perform(Op(method, path, as_response, **kwargs))

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self._perform(Op(method, path, as_json, **kwargs))

    # One request each (documented in _ops).

    deploy_function = _bind(ops.deploy_function)
    run_parallel = _bind(ops.run_parallel)
    spawn_task = _bind(ops.spawn_task)
    get_task_status = _bind(ops.get_task_status)
    register_webhook = _bind(ops.register_webhook)
    wait_tasks = _bind(ops.wait_tasks)
    get_results = _bind(ops.get_results)
    cancel = _bind(ops.cancel)
    logs = _bind(ops.logs)
    list_tasks = _bind(ops.list_tasks)
    list_functions = _bind(ops.list_functions)
    get_function = _bind(ops.get_function)
    undeploy_function = _bind(ops.undeploy_function)
    create_secret = _bind(ops.create_secret)
    list_secrets = _bind(ops.list_secrets)
    delete_secret = _bind(ops.delete_secret)
    list_volumes = _bind(ops.list_volumes)
    volume_get = _bind(ops.volume_get)
    volume_put = _bind(ops.volume_put)
    volume_delete = _bind(ops.volume_delete)
    volume_list_page = _bind(ops.volume_list_page)
    file_put = _bind(ops.file_put)
    file_get = _bind(ops.file_get)
    file_delete = _bind(ops.file_delete)
    file_list_page = _bind(ops.file_list_page)

    # Several requests each.

    async def wait(
        self, task_id: str, timeout: Optional[float] = None, raise_on_failure: bool = False
    ) -> Dict[str, Any]:
        """Waits for a task to finish (the server waits; nothing polls) and
        returns its record; `TimeoutError` past `timeout`, and with
        `raise_on_failure` a `TaskFailedError` if it did not complete."""
        return await self._drive(flows.wait(str(task_id), timeout, raise_on_failure))

    def iter_results(self, task_id: str, page_size: int = flows.PAGE_SIZE) -> AsyncIterator[Any]:
        """Every result of a map in input order, page by page as they are
        finished (a failed input is `{"error": {...}}` in its place)."""
        return self._iterate(flows.results(str(task_id), page_size))

    async def volume_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> List[Dict[str, Any]]:
        """Every state entry under `prefix` (`[{"key", "value", "version"}]`),
        in key order: all the pages of `volume_list_page`, `page_size` keys
        a request (see `iter_volume_list` to read them lazily)."""
        return await self._drive(flows.collect(flows.volume_entries(volume, prefix, page_size)))

    def iter_volume_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> AsyncIterator[Dict[str, Any]]:
        """The state entries of `volume_list`, lazily: a page of `page_size`
        keys is read when the one before is used up."""
        return self._iterate(flows.volume_entries(volume, prefix, page_size))

    async def file_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> List[Dict[str, Any]]:
        """Every file under `prefix` (`[{"path", "size", "modified_ms"}]`),
        sorted by path: all the pages of `file_list_page`, `page_size` files
        a request (see `iter_file_list` to read them lazily);
        `NotFoundError` for a volume that does not exist."""
        return await self._drive(flows.collect(flows.volume_files(volume, prefix, page_size)))

    def iter_file_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> AsyncIterator[Dict[str, Any]]:
        """The files of `file_list`, lazily: a page of `page_size` files is
        read when the one before is used up."""
        return self._iterate(flows.volume_files(volume, prefix, page_size))

    async def follow_logs(self, task_id: str, stream: Optional[str] = None) -> AsyncIterator[str]:
        """The lines a task prints (without line ends), as it prints them,
        until it has finished; `stream="stdout"` or `"stderr"` keeps one.
        A dropped connection resumes where it stopped."""
        follower = LogFollower(str(task_id), stream)
        while not follower.done:
            try:
                async with self._http.stream(**follower.request()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_for(response)
                    async for line in response.aiter_lines():
                        for text in follower.feed(line):
                            yield text
                        if follower.done:
                            return
                follower.dropped(httpx.RemoteProtocolError("the log stream ended before its end"))
            except CONNECT_ERRORS as e:
                raise unreachable(self.api_url, e) from e
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                follower.dropped(e)

    # Functions.

    def function(self, name: str) -> AsyncFunction:
        """A handle of the deployed function `name` (no request is made)."""
        return AsyncFunction(self, name)

    async def deploy(
        self, fn: Callable[..., Any], *, name: Optional[str] = None, **options: Any
    ) -> AsyncFunction:
        """Deploys a Python function object: its source (dedented, without
        decorators) under `name` (default its own), with the options of
        `deploy_function`; an `AsyncFunction` handle. (No decorator form
        here: a decorator cannot await; `Client.deploy` has one.)"""
        function_name, code = function_source(fn, name)
        deployed = await self.deploy_function(code, function_name, **options)
        return AsyncFunction(self, function_name, deployed)

    # Sandboxes (see _sandbox.py).

    async def create_sandbox(self, **options: Any) -> Sandbox:
        """Creates a sandbox (`POST /sandboxes`; options: timeout_s,
        idle_timeout_s, memory, cpu, network, volumes, secrets, env, workdir,
        name, tags, from_snapshot, image); a `Sandbox`, also an async context
        manager that terminates it."""
        body = {k: v for k, v in options.items() if v is not None}
        return Sandbox(self, await self._perform(Op("POST", "/sandboxes", as_dict, json=body)))

    async def list_sandboxes(self) -> List[Dict[str, Any]]:
        listed = await self._perform(Op("GET", "/sandboxes", as_dict))
        return list(listed["sandboxes"])

    async def diff_snapshots(self, a: str, b: str) -> Dict[str, Any]:
        return await self._perform(Op("GET", f"/snapshots/{seg(a)}/diff/{seg(b)}", as_dict))


class AsyncFunction:
    """A deployed function, called like Modal's (`remote`, `spawn`, `map`,
    `starmap`), awaited; see `Function`."""

    def __init__(self, client: AsyncClient, name: str, deployed: Optional[Dict[str, Any]] = None) -> None:
        self.client = client
        self.name = name
        #: The deploy's answer, for a handle made by `AsyncClient.deploy`.
        self.deployed = deployed

    def __repr__(self) -> str:
        return f"AsyncFunction({self.name!r})"

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls it and returns its value; `TaskFailedError` if it raised."""
        return await self.client._drive(flows.call(self.name, list(args), kwargs))

    async def spawn(self, *args: Any, **kwargs: Any) -> AsyncFunctionCall:
        """Starts a call; its `AsyncFunctionCall` (`get`, `cancel`)."""
        record = await self.client.spawn_task(self.name, list(args), kwargs)
        return AsyncFunctionCall(self.client, record["task_id"])

    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: Optional[Dict[str, Any]] = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> AsyncIterator[Any]:
        """The values of calls over the inputs, lazily (see `Function.map`:
        in input order one server-side map, separate calls with
        `order_outputs=False` or `kwargs`)."""
        flow = flows.map_flow(self.name, iterables, kwargs, order_outputs, return_exceptions)
        return _with_progress(self.client._iterate(flow), progress, flows.known_length(iterables), self.name)

    def starmap(
        self,
        input_iterator: Iterable[Iterable[Any]],
        kwargs: Optional[Dict[str, Any]] = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> AsyncIterator[Any]:
        """Like `map`, each input a tuple of positional arguments or (when
        the first is a mapping) a mapping of keyword arguments (see
        `Function.starmap`: in input order one server-side map, separate
        calls with `order_outputs=False` or tuples with `kwargs`)."""
        flow = flows.map_flow(self.name, [input_iterator], kwargs, order_outputs, return_exceptions, star=True)
        total = flows.known_length([input_iterator])
        return _with_progress(self.client._iterate(flow), progress, total, self.name)


class AsyncFunctionCall:
    """A spawned call: `get` its value, `cancel` it; `id` is its task id."""

    def __init__(self, client: AsyncClient, task_id: str) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncFunctionCall({self.id!r})"

    async def get(self, timeout: Optional[float] = None) -> Any:
        """Its value once it finished; `TimeoutError` past `timeout` seconds,
        `TaskFailedError` if it failed."""
        return await self.client._drive(flows.get(self.id, timeout))

    async def cancel(self) -> None:
        """Cancels it (nothing changes for a call that already finished)."""
        await self.client.cancel(self.id)


def _with_progress(values: AsyncIterator[T], progress: bool, total: Optional[int], name: str) -> AsyncIterator[T]:
    bar = make_progress_bar(total, name) if progress else None
    if bar is None:
        return values
    return _counted(values, bar)


async def _counted(values: AsyncIterator[T], bar: Any) -> AsyncIterator[T]:
    try:
        async for value in values:
            bar.update(1)
            yield value
    finally:
        bar.close()
