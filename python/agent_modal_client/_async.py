"""`AsyncClient`: the asynchronous client (over `httpx.AsyncClient`), and
its `AsyncFunction` and `AsyncFunctionCall` handles: the same methods as
`Client` (from the same `_ops` and `_flows`), awaited."""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import (
    Any,
    AsyncGenerator,
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
    MAX_ANSWER_BYTES,
    Abandoned,
    BodyReader,
    Emit,
    Flow,
    LineSplitter,
    LogFollower,
    Op,
    Retry,
    as_json,
    as_object,
    as_response,
    flow_suspended,
    make_progress_bar,
    method_signature,
    resolve,
    seg,
    shown_url,
    unreachable,
)
from ._errors import error_for
from ._sandbox import Sandbox, create_sandbox_op, diff_snapshots_op, get_sandbox_op, list_sandboxes_op
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

    As `Client`: answers read up to `MAX_ANSWER_BYTES`, a token with a
    character a header cannot carry refused, and closing it closes the map
    iterators it handed out and not yet used up (cancelling their work). A
    map iterator garbage-collected before its end, or whose task is
    cancelled, cancels its work too; so does `remote` when its task is
    cancelled (`asyncio.wait_for`, `TaskGroup`, Ctrl-C under `asyncio.run`).
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
        #: The iterators handed out and not yet finished (closed on `aclose`).
        self._open: weakref.WeakSet[AsyncGenerator[Any, None]] = weakref.WeakSet()

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the iterators it handed out that are not used up (a map's
        cancels its work), then the connections."""
        for values in list(self._open):
            try:
                await values.aclose()
            except RuntimeError:
                pass  # running in another task: it is left to end
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({shown_url(self.api_url)!r})"

    # The transport: the only code that differs from Client's.

    async def _perform(self, op: Op[T]) -> T:
        retry = Retry(self._max_retries)
        while True:
            request = self._http.build_request(**op.request())
            try:
                streamed = await self._http.send(request, stream=True)
            except CONNECT_ERRORS as e:
                raise unreachable(self.api_url, e) from e
            try:
                pause = retry.after(streamed)
                response = None if pause is not None else await self._read(streamed, op.max_bytes)
            finally:
                await streamed.aclose()
            if response is not None:
                return op.finish(response)
            assert pause is not None
            await asyncio.sleep(pause)

    @staticmethod
    async def _read(streamed: httpx.Response, limit: int) -> httpx.Response:
        """A streamed answer read, at most `limit` bytes (else `APIError`)."""
        reader = BodyReader(streamed, limit)
        async for chunk in streamed.aiter_bytes():
            reader.feed(chunk)
        return reader.response()

    async def _drive(self, flow: Flow[Any, R]) -> R:
        reply: Any = None
        error: Optional[Exception] = None
        try:
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
        except BaseException:
            # Cancelled (or interrupted) with the flow left where it was.
            await self._abandon(flow)
            raise

    def _iterate(self, flow: Flow[T, None]) -> AsyncIterator[T]:
        values = self._values(flow)
        self._open.add(values)
        return values

    async def _values(self, flow: Flow[T, None]) -> AsyncGenerator[T, None]:
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
        except BaseException:
            # Closed or garbage-collected before its end (GeneratorExit), or
            # its task cancelled: the flow stops its work.
            await self._abandon(flow)
            raise
        finally:
            flow.close()

    async def _abandon(self, flow: Flow[Any, Any]) -> None:
        """Tells a flow left where it was that its caller is gone (throws
        `Abandoned` in it) and sends the ops it yields to stop what it
        started, until it ends. Nothing of this is raised."""
        if not flow_suspended(flow):
            return
        reply: Any = None
        error: Optional[Exception] = Abandoned()
        try:
            while True:
                try:
                    step = flow.send(reply) if error is None else flow.throw(error)
                except Exception:  # StopIteration, or Abandoned raised again
                    return
                reply, error = None, None
                if not isinstance(step, Emit):
                    try:
                        reply = await self._perform(step)
                    except Exception as e:
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
    list_tools = _bind(ops.list_tools)
    call_tool = _bind(ops.call_tool)
    run_code = _bind(ops.run_code)

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
                        raise error_for(await self._read(response, MAX_ANSWER_BYTES))
                    lines = LineSplitter(f"the logs of task {task_id}")
                    async for chunk in response.aiter_bytes():
                        for line in lines.feed(chunk):
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
        decorators; a decorated function is deployed undecorated, unwrapped
        through the `__wrapped__` that `functools.wraps` sets, and what its
        decorator adds does not run remotely) under `name` (default its
        own), with the options of
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
        return Sandbox(self, await self._perform(create_sandbox_op(options)))

    async def get_sandbox(self, sandbox_id: str) -> Sandbox:
        """The sandbox `sandbox_id` (made earlier, or by another client)."""
        return Sandbox(self, await self._perform(get_sandbox_op(sandbox_id)))

    async def list_sandboxes(self) -> List[Dict[str, Any]]:
        return list((await self._perform(list_sandboxes_op()))["sandboxes"])

    async def diff_snapshots(self, a: str, b: str) -> Dict[str, Any]:
        return await self._perform(diff_snapshots_op(a, b))


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
        """Calls it and returns its value; `TaskFailedError` if it raised.
        Cancelled before the value came, it cancels the call."""
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
        aclose = getattr(values, "aclose", None)
        if aclose is not None:
            await aclose()
