"""`Client`: the synchronous client (over `httpx.Client`), and its
`Function` and `FunctionCall` handles. Requests, answers and errors are
`_core`'s and `_ops`'s, multi-request work is `_flows`'s: shared with
`AsyncClient`, which differs only in how it sends."""

from __future__ import annotations

import functools
import time
import weakref
from typing import (
    Any,
    Callable,
    Concatenate,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Optional,
    ParamSpec,
    TypeVar,
    overload,
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
    flow_suspended,
    make_progress_bar,
    method_signature,
    resolve,
    shown_url,
    unreachable,
)
from ._errors import error_for
from ._sandbox import SyncSandbox, create_sandbox_op, diff_snapshots_op, get_sandbox_op, list_sandboxes_op
from ._source import function_source

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
_C = TypeVar("_C", bound="Client")


def _bind(op: Callable[P, Op[T]]) -> Callable[Concatenate["Client", P], T]:
    """A method of `Client` sending the op of the same name."""

    @functools.wraps(op)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._perform(op(*args, **kwargs))

    setattr(method, "__signature__", method_signature(op))
    return method


class Client:
    """A synchronous client of one modal-agents server. With no arguments
    it talks to `MODAL_AGENTS_URL` with `MODAL_AGENTS_TOKEN`. Use it as a
    context manager (or call `close`).

        with Client() as client:
            double = client.deploy(double_fn)        # a Function handle
            double.remote(21)                        # 42
            list(double.map(range(10)))              # [0, 2, ..., 18]

    Requests answered 429 or 503 are retried with backoff (honouring
    `Retry-After`); errors are typed (see `agent_modal_client`). An answer
    is read up to `MAX_ANSWER_BYTES` (80 MiB; a file up to 256 MiB), and
    one that is larger or is not what the API answers raises `APIError`.

    A token (`token` or `MODAL_AGENTS_TOKEN`) holding a character a header
    cannot carry (whitespace, a line end, a control or non-ASCII
    character) is refused with a `ValueError` that does not show it. Closing
    the client closes the map iterators it handed out and not yet used up
    (cancelling their work)."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 5,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        base_url, headers = resolve(api_url, token)
        self.api_url = base_url
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self._max_retries = max_retries
        #: The iterators handed out and not yet finished (closed on `close`).
        self._open: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the iterators it handed out that are not used up (a map's
        cancels its work), then the connections."""
        for values in list(self._open):
            try:
                values.close()
            except (ValueError, RuntimeError):
                pass  # running in another thread: it is left to end
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({shown_url(self.api_url)!r})"

    # The transport: the only code that differs from AsyncClient's.

    def _perform(self, op: Op[T]) -> T:
        retry = Retry(self._max_retries)
        while True:
            request = self._http.build_request(**op.request())
            try:
                streamed = self._http.send(request, stream=True)
            except CONNECT_ERRORS as e:
                raise unreachable(self.api_url, e) from e
            try:
                pause = retry.after(streamed)
                response = None if pause is not None else self._read(streamed, op.max_bytes)
            finally:
                streamed.close()
            if response is not None:
                return op.finish(response)
            assert pause is not None
            time.sleep(pause)

    @staticmethod
    def _read(streamed: httpx.Response, limit: int) -> httpx.Response:
        """A streamed answer read, at most `limit` bytes (else `APIError`)."""
        reader = BodyReader(streamed, limit)
        for chunk in streamed.iter_bytes():
            reader.feed(chunk)
        return reader.response()

    def _drive(self, flow: Flow[Any, R]) -> R:
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
                        reply = self._perform(step)
                    except Exception as e:  # raised in the flow, where it sent the op
                        error = e
        except BaseException:
            # KeyboardInterrupt (or the like) left the flow where it was.
            self._abandon(flow)
            raise

    def _iterate(self, flow: Flow[T, None]) -> Iterator[T]:
        values = self._values(flow)
        self._open.add(values)
        return values

    def _values(self, flow: Flow[T, None]) -> Generator[T, None, None]:
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
                        reply = self._perform(step)
                    except Exception as e:  # raised in the flow, where it sent the op
                        error = e
        except BaseException:
            # Closed or garbage-collected before its end (GeneratorExit), or
            # interrupted (KeyboardInterrupt): the flow stops its work.
            self._abandon(flow)
            raise
        finally:
            flow.close()

    def _abandon(self, flow: Flow[Any, Any]) -> None:
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
                        reply = self._perform(step)
                    except Exception as e:
                        error = e
        finally:
            flow.close()

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

    def wait(
        self, task_id: str, timeout: Optional[float] = None, raise_on_failure: bool = False
    ) -> Dict[str, Any]:
        """Waits for a task to finish (the server waits; nothing polls) and
        returns its record; `TimeoutError` past `timeout`, and with
        `raise_on_failure` a `TaskFailedError` if it did not complete."""
        return self._drive(flows.wait(str(task_id), timeout, raise_on_failure))

    def iter_results(self, task_id: str, page_size: int = flows.PAGE_SIZE) -> Iterator[Any]:
        """Every result of a map in input order, page by page as they are
        finished (a failed input is `{"error": {...}}` in its place)."""
        return self._iterate(flows.results(str(task_id), page_size))

    def volume_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> List[Dict[str, Any]]:
        """Every state entry under `prefix` (`[{"key", "value", "version"}]`),
        in key order: all the pages of `volume_list_page`, `page_size` keys
        a request (see `iter_volume_list` to read them lazily)."""
        return self._drive(flows.collect(flows.volume_entries(volume, prefix, page_size)))

    def iter_volume_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> Iterator[Dict[str, Any]]:
        """The state entries of `volume_list`, lazily: a page of `page_size`
        keys is read when the one before is used up."""
        return self._iterate(flows.volume_entries(volume, prefix, page_size))

    def file_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> List[Dict[str, Any]]:
        """Every file under `prefix` (`[{"path", "size", "modified_ms"}]`),
        sorted by path: all the pages of `file_list_page`, `page_size` files
        a request (see `iter_file_list` to read them lazily);
        `NotFoundError` for a volume that does not exist."""
        return self._drive(flows.collect(flows.volume_files(volume, prefix, page_size)))

    def iter_file_list(
        self, volume: str, prefix: str = "", page_size: int = flows.PAGE_SIZE
    ) -> Iterator[Dict[str, Any]]:
        """The files of `file_list`, lazily: a page of `page_size` files is
        read when the one before is used up."""
        return self._iterate(flows.volume_files(volume, prefix, page_size))

    def follow_logs(self, task_id: str, stream: Optional[str] = None) -> Iterator[str]:
        """The lines a task prints (without line ends), as it prints them,
        until it has finished; `stream="stdout"` or `"stderr"` keeps one.
        A dropped connection resumes where it stopped."""
        follower = LogFollower(str(task_id), stream)
        while not follower.done:
            try:
                with self._http.stream(**follower.request()) as response:
                    if response.status_code >= 400:
                        raise error_for(self._read(response, MAX_ANSWER_BYTES))
                    lines = LineSplitter(f"the logs of task {task_id}")
                    for chunk in response.iter_bytes():
                        for line in lines.feed(chunk):
                            yield from follower.feed(line)
                            if follower.done:
                                return
                follower.dropped(httpx.RemoteProtocolError("the log stream ended before its end"))
            except CONNECT_ERRORS as e:
                raise unreachable(self.api_url, e) from e
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                follower.dropped(e)

    # Functions.

    # Sandboxes (see _sandbox.py).

    def create_sandbox(self, **options: Any) -> SyncSandbox:
        """Creates a sandbox (`POST /sandboxes`; options: timeout_s,
        idle_timeout_s, memory, cpu, network, volumes, secrets, env, workdir,
        name, tags, from_snapshot, image); a `SyncSandbox`, also a context
        manager that terminates it."""
        return SyncSandbox(self, self._perform(create_sandbox_op(options)))

    def get_sandbox(self, sandbox_id: str) -> SyncSandbox:
        """The sandbox `sandbox_id` (made earlier, or by another client)."""
        return SyncSandbox(self, self._perform(get_sandbox_op(sandbox_id)))

    def list_sandboxes(self) -> List[Dict[str, Any]]:
        return list(self._perform(list_sandboxes_op())["sandboxes"])

    def diff_snapshots(self, a: str, b: str) -> Dict[str, Any]:
        return self._perform(diff_snapshots_op(a, b))

    def function(self, name: str) -> Function:
        """A handle of the deployed function `name` (no request is made)."""
        return Function(self, name)

    @overload
    def deploy(self, fn: Callable[..., Any], *, name: Optional[str] = None, **options: Any) -> Function: ...

    @overload
    def deploy(
        self, fn: None = None, *, name: Optional[str] = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Function]: ...

    def deploy(
        self, fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, **options: Any
    ) -> Any:
        """Deploys a Python function object: its source (dedented, without
        decorators; a decorated function is deployed undecorated, unwrapped
        through the `__wrapped__` that `functools.wraps` sets, and what its
        decorator adds does not run remotely) under `name` (default its
        own), with the options of
        `deploy_function` (`gpu`, `timeout`, `secrets`, `image_config`, ...);
        a `Function` handle. Also a decorator: `@client.deploy` or
        `@client.deploy(timeout=60)`. The function must be self-contained
        (imports inside its body)."""
        if fn is None:
            return lambda f: self.deploy(f, name=name, **options)
        function_name, code = function_source(fn, name)
        deployed = self.deploy_function(code, function_name, **options)
        return Function(self, function_name, deployed)


class Function:
    """A deployed function, called like Modal's: `remote`, `spawn`, `map`,
    `starmap`. Arguments and values travel as JSON."""

    def __init__(self, client: Client, name: str, deployed: Optional[Dict[str, Any]] = None) -> None:
        self.client = client
        self.name = name
        #: The deploy's answer, for a handle made by `Client.deploy`.
        self.deployed = deployed

    def __repr__(self) -> str:
        return f"Function({self.name!r})"

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Calls it and returns its value; `TaskFailedError` (with the remote
        `type`, `message` and `traceback`) if it raised. Interrupted
        (KeyboardInterrupt) before the value came, it cancels the call."""
        return self.client._drive(flows.call(self.name, list(args), kwargs))

    def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        """Starts a call; its `FunctionCall` (`get`, `cancel`)."""
        record = self.client.spawn_task(self.name, list(args), kwargs)
        return FunctionCall(self.client, record["task_id"])

    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: Optional[Dict[str, Any]] = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Iterator[Any]:
        """The values of calls over the inputs (one argument from each
        iterable, zipped; `kwargs` to every call), lazily: in input order,
        or as they finish with `order_outputs=False`. A failed input raises
        its `TaskFailedError` (`index` its place), or with
        `return_exceptions` is that error in its place. `progress` shows a
        tqdm bar when tqdm is installed.

        In input order it is one server-side map (in chunks of 10,000
        inputs, taken from the iterables a chunk ahead of the values), its
        results read page by page: each input the one argument, or with
        several iterables each zipped tuple the positional arguments
        (`inputs_as="args"`). It is separate calls instead (at most 256 in
        flight) with `order_outputs=False` (a map releases its results in
        input order only) or with `kwargs` (a map input is positional or
        keyword arguments, not both: `starmap` of mappings is a map).

        Chunks are also at most 16 MiB of inputs as JSON (the server takes
        32 MiB a request; a chunk it still refuses as too large is sent in
        halves). Work left unread is cancelled: when the iterator is closed
        or garbage-collected before its end (`break`, an exception in the
        loop), when iterating is interrupted (KeyboardInterrupt), and when
        it raises."""
        flow = flows.map_flow(self.name, iterables, kwargs, order_outputs, return_exceptions)
        return _with_progress(self.client._iterate(flow), progress, flows.known_length(iterables), self.name)

    def starmap(
        self,
        input_iterator: Iterable[Iterable[Any]],
        kwargs: Optional[Dict[str, Any]] = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Like `map`, each input being the arguments of one call: a tuple
        (or list) of positional arguments, `f(*input)`, or, when the first
        input is a mapping, a mapping of keyword arguments, `f(**input)`
        (with `kwargs` merged in, the input's own keys winning).

        In input order it is one server-side map (`inputs_as="args"`, or
        `"kwargs"` for mappings), read as `map` reads one; an input of the
        other shape raises `ValidationError` whose `field` names it
        (`inputs[i]`). It is separate calls instead (at most 256 in flight)
        with `order_outputs=False` (a map releases its results in input
        order only) and for tuples with `kwargs` (a map input is positional
        or keyword arguments, not both)."""
        flow = flows.map_flow(self.name, [input_iterator], kwargs, order_outputs, return_exceptions, star=True)
        total = flows.known_length([input_iterator])
        return _with_progress(self.client._iterate(flow), progress, total, self.name)


class FunctionCall:
    """A spawned call: `get` its value, `cancel` it; `id` is its task id."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"FunctionCall({self.id!r})"

    def get(self, timeout: Optional[float] = None) -> Any:
        """Its value once it finished; `TimeoutError` (the builtin's
        subclass) past `timeout` seconds, `TaskFailedError` if it failed."""
        return self.client._drive(flows.get(self.id, timeout))

    def cancel(self) -> None:
        """Cancels it (nothing changes for a call that already finished)."""
        self.client.cancel(self.id)


def _with_progress(values: Iterator[T], progress: bool, total: Optional[int], name: str) -> Iterator[T]:
    bar = make_progress_bar(total, name) if progress else None
    if bar is None:
        return values
    return _counted(values, bar)


def _counted(values: Iterator[T], bar: Any) -> Iterator[T]:
    try:
        for value in values:
            bar.update(1)
            yield value
    finally:
        bar.close()
        close = getattr(values, "close", None)
        if close is not None:
            close()
