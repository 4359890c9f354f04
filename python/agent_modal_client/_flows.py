"""Work of several requests, written once for both clients as flows (see
`_core`): waiting for a task, a call's value, a map's values in input
order or as they finish, a map's results page by page, and a volume's
keys and files page by page.

A map in input order is a server-side map (`POST /run-parallel`), each
input passed as its `inputs_as` says: the one argument (`map` of one
iterable), a list of positional arguments (`starmap`, `map` of several
iterables) or an object of keyword arguments (`starmap` of mappings).
Separate calls remain only for what a server map cannot do: values as they
finish (`order_outputs=False`; a map releases its results in input order),
and positional arguments with shared `kwargs` (a map input is either
positional or keyword arguments, not both).

Nothing here sleeps on the client: waits are the server's (`POST
/tasks/wait`, which answers at once when the task ends).

Work a flow starts is not left running when the flow does not get to use
it: a call (`remote`) or a map whose caller leaves early (an iterator
closed or garbage-collected, `break`, an exception, KeyboardInterrupt, a
cancelled task: the client throws `Abandoned` into the flow) or that fails
is cancelled. What starts work is sent under an idempotency key, so that
work whose answer was lost (the caller left while it was on its way) is
found by sending the same request again, and cancelled too."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import time
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Sized,
    Tuple,
    TypeVar,
    Union,
)

import httpx

from . import _ops as ops
from ._core import CLEANUP_TIMEOUT_S, Abandoned, Emit, Flow, Op, idempotency_key
from ._errors import APIError, TaskFailedError, TimeoutError, ValidationError, task_failed

T = TypeVar("T")

#: Longest one server-side wait (under common 60 s proxy limits).
WAIT_SLICE_S = 55.0
#: Inputs sent as one map (`POST /run-parallel`), at most: a chunk also
#: ends before its inputs (as JSON) pass `MAP_CHUNK_BYTES`. The next chunk
#: is sent while the results of the current one are read, so at most two
#: chunks of inputs are taken from the caller's iterable ahead of the
#: results.
MAP_CHUNK = 10_000
#: Most bytes of inputs (as JSON) sent as one map (16 MiB, well under the
#: server's 32 MiB request limit); an input larger than that goes alone. A
#: chunk the server still finds too large (413) is sent as two halves.
MAP_CHUNK_BYTES = 16 << 20
#: Results (and a volume's keys or files) read per page (and so held at
#: most at once).
PAGE_SIZE = 1000
#: Calls in flight at once when a map is made of separate calls
#: (`order_outputs=False`, or positional arguments with shared `kwargs`;
#: also the most finished results kept to restore input order).
CALL_WINDOW = 256
#: Bounds of the pause between two looks at a running map's next results.
MIN_PAUSE_S, MAX_PAUSE_S = 0.02, 1.0

TERMINAL = ("completed", "failed", "cancelled")

#: How a server-side map passes each input (`inputs_as`): as the one
#: argument `f(x)`, as positional arguments `f(*x)` (x a list) or as keyword
#: arguments `f(**x)` (x an object).
ARGUMENT, ARGS, KWARGS = "argument", "args", "kwargs"
#: No input (an empty iterable's `next`).
_NOTHING: Any = object()
#: What each input must be, by `inputs_as` (as the server says it).
_EXPECTED = {
    ARGS: "a list of positional arguments (inputs_as: args)",
    KWARGS: "an object of keyword arguments (inputs_as: kwargs)",
}


def wait(
    task_id: str, timeout: Optional[float] = None, raise_on_failure: bool = False
) -> Flow[Any, Dict[str, Any]]:
    """Waits for a task to finish and returns its record; `TimeoutError`
    (the builtin's subclass) past `timeout` seconds (the task goes on), and
    with `raise_on_failure` a `TaskFailedError` if it did not complete."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = WAIT_SLICE_S
        if deadline is not None:
            left = max(0.0, min(WAIT_SLICE_S, deadline - time.monotonic()))
        outcome = yield ops.wait_tasks([task_id], timeout=left)
        if outcome["done"]:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"task {task_id} did not finish within {timeout} s")
    record: Dict[str, Any] = yield ops.get_task_status(task_id)
    if raise_on_failure and record["status"] != "completed":
        raise task_failed(record)
    return record


def result_of(record: Dict[str, Any]) -> Any:
    """A finished call's value, or its `TaskFailedError`."""
    if record["status"] != "completed":
        raise task_failed(record)
    return record.get("result")


def get(task_id: str, timeout: Optional[float] = None) -> Flow[Any, Any]:
    """A call's value once it finished (`TaskFailedError` if it failed)."""
    record = yield from wait(task_id, timeout)
    return result_of(record)


def call(function_name: str, args: List[Any], kwargs: Dict[str, Any]) -> Flow[Any, Any]:
    """Runs one call and returns its value (`POST /spawn-task`, then
    server-side waits). Left before the call finished (`Abandoned`), or
    failing to learn its end, it cancels the call."""
    started: Set[str] = set()
    try:
        spawn = ops.spawn_task(function_name, args, kwargs, idempotency_key=idempotency_key())
        record = yield from _start(spawn, started)
        if record["status"] not in TERMINAL:
            record = yield from wait(record["task_id"])
    except Exception:
        yield from cancel_all(started)
        raise
    return result_of(record)


def _start(op: Op[Dict[str, Any]], started: Set[str]) -> Flow[Any, Dict[str, Any]]:
    """Sends `op`, which starts work under an idempotency key, and returns
    its answer, whose task id goes in `started`. Left while the answer was
    on its way (or losing it to a timeout or a dropped connection), the
    work may have started all the same: the same request sent again (the
    same key) is answered with its task, whose id goes in `started` too
    (for the caller to cancel), and the error is raised."""
    answer: Dict[str, Any]
    try:
        answer = yield op
    except (Abandoned, httpx.TransportError) as left:
        try:
            again = yield dataclasses.replace(op, timeout=CLEANUP_TIMEOUT_S)
        except Exception:
            raise left from None
        started.add(again["task_id"])
        raise left
    started.add(answer["task_id"])
    return answer


def cancel_all(task_ids: Set[str]) -> Flow[Any, None]:
    """Cancels the tasks, each tried twice when the first try gets no
    answer (a timeout, a dropped connection, a busy server); errors are
    ignored past that: this is cleaning up."""
    for task_id in sorted(task_ids):
        for _ in range(2):
            try:
                if (yield ops.cancel_quietly(task_id)):
                    break
            except Exception:
                pass
    task_ids.clear()


def _input_error(item: Any) -> Optional[Dict[str, Any]]:
    """The error of a failed map input (`{"error": {type, message, ...}}`
    in its slot), or None for a result."""
    if isinstance(item, dict) and len(item) == 1:
        error = item.get("error")
        if isinstance(error, dict) and "type" in error and "message" in error:
            return error
    return None


def results(task_id: str, page_size: int = PAGE_SIZE) -> Flow[Any, None]:
    """A map's results as stored, in input order (a failed input is
    `{"error": {...}}` in its place), page by page as they are finished."""
    offset = 0
    pause = MIN_PAUSE_S
    while True:
        page = yield ops.get_results(task_id, offset, page_size)
        for item in page["results"]:
            yield Emit(item)
        offset += len(page["results"])
        next_offset = page.get("next_offset")
        if next_offset is None:
            return
        if page["results"]:
            pause = MIN_PAUSE_S
            continue
        # Nothing new yet: the server's wait on the map is the pause, and
        # ends at once when the map does.
        yield ops.wait_tasks([task_id], timeout=pause)
        pause = min(pause * 2, MAX_PAUSE_S)


def collect(flow: Flow[T, None]) -> Flow[Any, List[T]]:
    """The values `flow` emits, as one list once it ended (its ops pass
    through, and their errors are raised in it where it sent them)."""
    values: List[T] = []
    reply: Any = None
    error: Optional[Exception] = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration:
            return values
        reply, error = None, None
        if isinstance(step, Emit):
            values.append(step.value)
            continue
        try:
            reply = yield step
        except Exception as e:  # raised in the flow, where it sent the op
            error = e


def _listing(
    page_op: Callable[[Optional[str]], Op[Dict[str, Any]]], items: str
) -> Flow[Dict[str, Any], None]:
    """Every item of a keyset-paged listing: each page's `items`, then the
    page after its `next_after`, until a page has none."""
    after: Optional[str] = None
    while True:
        page = yield page_op(after)
        for item in page[items]:
            yield Emit(item)
        next_after = page.get("next_after")
        if next_after is None:
            return
        if next_after == after:
            # A page that does not move on would be asked for forever.
            raise APIError(200, {"title": "unexpected answer",
                                 "detail": f"the listing did not move past {after!r}"})
        after = next_after


def volume_entries(volume: str, prefix: str = "", page_size: int = PAGE_SIZE) -> Flow[Dict[str, Any], None]:
    """Every state entry under `prefix` (`{"key", "value", "version"}`), in
    key order, each once, page by page (each page's `next_after` the
    `after` of the next)."""
    return _listing(lambda after: ops.volume_list_page(volume, prefix, after, page_size), "entries")


def volume_files(volume: str, prefix: str = "", page_size: int = PAGE_SIZE) -> Flow[Dict[str, Any], None]:
    """Every file under `prefix` (`{"path", "size", "modified_ms"}`), sorted
    by path, each once, page by page (following each page's `Link:
    rel="next"`)."""
    return _listing(lambda after: ops.file_list_page(volume, prefix, after, page_size), "files")


def _map_chunk(map_id: str, total: int, base: int, return_exceptions: bool) -> Flow[Any, None]:
    """The values of one submitted map: errors become `TaskFailedError`s,
    raised or (with `return_exceptions`) emitted in their place."""
    index = base
    flow = results(map_id, min(PAGE_SIZE, max(total, 1)))
    reply: Any = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration:
            break
        if not isinstance(step, Emit):
            reply = yield step
            continue
        reply = None
        error = _input_error(step.value)
        if error is None:
            yield step
        else:
            exc = task_failed({"task_id": map_id, "status": "failed"}, error, index)
            if not return_exceptions:
                raise exc
            yield Emit(exc)
        index += 1
    if index - base < total:
        # The map ended short of its inputs (cancelled, or failed as a whole).
        record = yield ops.get_task_status(map_id)
        raise task_failed(record)


def _shifted(error: ValidationError, base: int) -> ValidationError:
    """A chunk's refusal naming one of its inputs (`inputs[i]`), naming it
    by its place in the whole map instead."""
    named = re.fullmatch(r"inputs\[(\d+)\](.*)", error.field or "", re.DOTALL)
    if base == 0 or named is None:
        return error
    problem = dict(error.problem)
    problem["field"] = f"inputs[{base + int(named.group(1))}]{named.group(2)}"
    return ValidationError(error.status, problem)


#: A map submitted for a chunk: its task id, its first input's place among
#: all the inputs, and how many inputs it has.
Submitted = Tuple[str, int, int]


def _chunks(inputs: Iterator[Any]) -> Iterator[List[bytes]]:
    """The inputs as JSON, in chunks of at most `MAP_CHUNK` inputs and
    `MAP_CHUNK_BYTES` bytes (an input larger than that alone). An input is
    taken from `inputs` only when its chunk is made."""
    held: Optional[bytes] = None
    while True:
        chunk: List[bytes] = []
        size = 0
        if held is not None:
            chunk, size, held = [held], len(held) + 1, None
        while len(chunk) < MAP_CHUNK:
            value = next(inputs, _NOTHING)
            if value is _NOTHING:
                break
            encoded = ops.encode(value)
            if chunk and size + len(encoded) + 1 > MAP_CHUNK_BYTES:
                held = encoded
                break
            chunk.append(encoded)
            size += len(encoded) + 1
        if not chunk:
            return
        yield chunk


def _submit(
    function_name: str, chunk: List[bytes], inputs_as: str, base: int, inflight: Set[str]
) -> Flow[Any, List[Submitted]]:
    """Submits one chunk of a map (its first input the map's `base`th) as
    one map, or, when the server finds it too large (413), as maps of its
    halves; their ids go in `inflight`."""
    try:
        submitted = yield from _start(ops.submit_map(function_name, chunk, inputs_as, idempotency_key()), inflight)
    except ValidationError as e:
        shifted = _shifted(e, base)
        if shifted is e:
            raise
        raise shifted from None
    except APIError as e:
        if e.status != 413 or len(chunk) < 2:
            raise
        half = len(chunk) // 2
        first = yield from _submit(function_name, chunk[:half], inputs_as, base, inflight)
        rest = yield from _submit(function_name, chunk[half:], inputs_as, base + half, inflight)
        return first + rest
    return [(submitted["task_id"], base, len(chunk))]


def map_inputs(
    function_name: str,
    inputs: Iterator[Any],
    return_exceptions: bool,
    inflight: Set[str],
    inputs_as: str = ARGUMENT,
) -> Flow[Any, None]:
    """`fn(x)` (or `fn(*x)`, `fn(**x)`, as `inputs_as` says) for each input
    as server-side maps of chunks of inputs (`_chunks`), the values in
    input order as they are finished. `inflight` holds the maps not read to
    their end. An input of the wrong shape is refused by the server:
    `ValidationError` whose `field` is `inputs[i]`, `i` its place among all
    the inputs."""
    chunks = _chunks(inputs)
    chunk = next(chunks, None)
    if chunk is None:
        return
    current = yield from _submit(function_name, chunk, inputs_as, 0, inflight)
    base = len(chunk)
    while current:
        chunk = next(chunks, None)
        following: List[Submitted] = []
        if chunk is not None:
            following = yield from _submit(function_name, chunk, inputs_as, base, inflight)
            base += len(chunk)
        chunk = None
        for map_id, first, total in current:
            yield from _map_chunk(map_id, total, first, return_exceptions)
            inflight.discard(map_id)
        current = following


def map_calls(
    function_name: str,
    calls: Iterator[Tuple[List[Any], Dict[str, Any]]],
    order_outputs: bool,
    return_exceptions: bool,
    inflight: Set[str],
) -> Flow[Any, None]:
    """`fn(*args, **kwargs)` for each `(args, kwargs)` as separate calls, at
    most `CALL_WINDOW` in flight (or finished and waiting for an earlier
    one), the values in input order or, without `order_outputs`, as they
    finish. Only for what a server-side map cannot do: it releases results
    in input order, and passes each input as positional or as keyword
    arguments, not both."""
    pending: Dict[str, int] = {}
    finished: Dict[int, Any] = {}
    submitted = emitted = 0
    exhausted = False
    while True:
        while not exhausted and len(pending) + len(finished) < CALL_WINDOW:
            call = next(calls, None)
            if call is None:
                exhausted = True
                break
            args, kwargs = call
            spawn = ops.spawn_task(function_name, args, kwargs, idempotency_key=idempotency_key())
            record = yield from _start(spawn, inflight)
            pending[record["task_id"]] = submitted
            submitted += 1
        if not pending:
            return
        outcome = yield ops.wait_tasks(list(pending), mode="any", timeout=WAIT_SLICE_S)
        for summary in outcome["tasks"]:
            if summary["status"] not in TERMINAL or summary["task_id"] not in pending:
                continue
            index = pending.pop(summary["task_id"])
            inflight.discard(summary["task_id"])
            record = yield ops.get_task_status(summary["task_id"])
            value: Union[Any, TaskFailedError]
            try:
                value = result_of(record)
            except TaskFailedError as e:
                e.index = index
                value = e
            if order_outputs:
                finished[index] = value
            else:
                yield _emit(value, return_exceptions)
        while emitted in finished:
            yield _emit(finished.pop(emitted), return_exceptions)
            emitted += 1


def _emit(value: Any, return_exceptions: bool) -> Emit[Any]:
    if isinstance(value, TaskFailedError) and not return_exceptions:
        raise value
    return Emit(value)


def _positional(args: Any) -> Any:
    """A starmap input as JSON: its positional arguments as a list (from a
    tuple, list or other iterable but a string or mapping); anything else
    as it is, for the map to refuse naming its index."""
    if isinstance(args, list):
        return args
    if isinstance(args, (str, bytes, bytearray, Mapping)) or not isinstance(args, Iterable):
        return args
    return list(args)


def _keywords(kwargs: Any, shared: Dict[str, Any]) -> Any:
    """A starmap input of keyword arguments as JSON: an object of `shared`
    and its own (its own winning); anything else as `_positional` has it,
    for the map to refuse naming its index."""
    if isinstance(kwargs, Mapping):
        return {**shared, **kwargs}
    return _positional(kwargs)


def _refused(index: int, value: Any, inputs_as: str) -> ValidationError:
    """The refusal of a wrong-shaped input, as a server map words it."""
    got = repr(value)
    got = got if len(got) <= 64 else got[:61] + "..."
    return ValidationError(422, {
        "type": "urn:modal-agents:problem:validation",
        "title": "Invalid field",
        "status": 422,
        "detail": f"got {got}; expected {_EXPECTED[inputs_as]}",
        "field": f"inputs[{index}]",
    })


def _calls(
    inputs: Iterator[Any], inputs_as: str, shared: Dict[str, Any]
) -> Iterator[Tuple[List[Any], Dict[str, Any]]]:
    """`(args, kwargs)` of each separate call, each input (made JSON by
    `_positional` or `_keywords`) checked as a server map checks it."""
    for index, value in enumerate(inputs):
        if inputs_as == KWARGS:
            if not isinstance(value, dict):
                raise _refused(index, value, inputs_as)
            yield [], value
        elif inputs_as == ARGS:
            if not isinstance(value, list):
                raise _refused(index, value, inputs_as)
            yield value, shared
        else:
            yield [value], shared


def map_flow(
    function_name: str,
    iterables: Sequence[Iterable[Any]],
    kwargs: Optional[Dict[str, Any]],
    order_outputs: bool,
    return_exceptions: bool,
    star: bool = False,
) -> Flow[Any, None]:
    """`Function.map` (`star=False`: the iterables zipped, one argument from
    each) and `Function.starmap` (`star=True`: one iterable of inputs, each
    a tuple of positional arguments or, when the first is a mapping, each a
    mapping of keyword arguments), with `kwargs` passed to every call.

    In input order it is one server-side map (in chunks: `_chunks`):
    `inputs_as` `argument` for `map` of one iterable, `args` for `starmap`
    and `map` of several iterables, `kwargs` for `starmap` of mappings (with
    the shared `kwargs` merged in). Separate calls (`map_calls`) remain for
    `order_outputs=False` and for positional inputs with shared `kwargs`."""
    if not iterables:
        raise TypeError("map takes at least one iterable of inputs")
    shared = dict(kwargs or {})
    inflight: Set[str] = set()
    inputs: Iterator[Any]
    try:
        if star:
            inputs = iter(iterables[0])
            first = next(inputs, _NOTHING)
            if first is _NOTHING:
                return
            inputs = itertools.chain([first], inputs)
            if isinstance(first, Mapping):
                # The shared kwargs go in each input (the map's only ones).
                inputs_as = KWARGS
                inputs = map(functools.partial(_keywords, shared=shared), inputs)
                shared = {}
            else:
                inputs_as = ARGS
                inputs = (_positional(x) for x in inputs)
        elif len(iterables) == 1:
            inputs_as = ARGUMENT
            inputs = iter(iterables[0])
        else:
            inputs_as = ARGS
            inputs = (list(args) for args in zip(*iterables))
        if order_outputs and not shared:
            yield from map_inputs(function_name, inputs, return_exceptions, inflight, inputs_as)
        else:
            calls = _calls(inputs, inputs_as, shared)
            yield from map_calls(function_name, calls, order_outputs, return_exceptions, inflight)
    except Exception:
        # An input failed, a request was refused, the inputs raised, or the
        # caller left (`Abandoned`): what the map started and did not read
        # stops too.
        yield from cancel_all(inflight)
        raise


def known_length(iterables: Sequence[Iterable[Any]]) -> Optional[int]:
    """How many calls a map makes, when its inputs have lengths."""
    if iterables and all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables if isinstance(it, Sized))
    return None
