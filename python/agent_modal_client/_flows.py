"""Work of several requests, written once for both clients as flows (see
`_core`): waiting for a task, a call's value, a map's values in input
order or as they finish, and a map's results page by page.

Nothing here sleeps on the client: waits are the server's (`POST
/tasks/wait`, which answers at once when the task ends)."""

from __future__ import annotations

import itertools
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Sized, Tuple, Union

from . import _ops as ops
from ._core import Emit, Flow
from ._errors import TaskFailedError, TimeoutError, task_failed

#: Longest one server-side wait (under common 60 s proxy limits).
WAIT_SLICE_S = 55.0
#: Inputs sent as one map (`POST /run-parallel`); the next chunk is sent
#: while the results of the current one are read, so at most two chunks of
#: inputs are taken from the caller's iterable ahead of the results.
MAP_CHUNK = 10_000
#: Results read per page (and so held at most at once).
PAGE_SIZE = 1000
#: Calls in flight at once for `starmap`, `kwargs` and `order_outputs=False`
#: (also the most finished results kept to restore input order).
CALL_WINDOW = 256
#: Bounds of the pause between two looks at a running map's next results.
MIN_PAUSE_S, MAX_PAUSE_S = 0.02, 1.0

TERMINAL = ("completed", "failed", "cancelled")


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
    """Runs one call and returns its value (`POST /spawn-task` with a
    server-side wait, then more waits if it takes longer)."""
    record = yield ops.spawn_task(function_name, args, kwargs, wait=True, wait_timeout=WAIT_SLICE_S)
    if record["status"] not in TERMINAL:
        record = yield from wait(record["task_id"])
    return result_of(record)


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


def map_inputs(
    function_name: str, inputs: Iterator[Any], return_exceptions: bool, inflight: Set[str]
) -> Flow[Any, None]:
    """`fn(x)` for each input as server-side maps of `MAP_CHUNK` inputs, the
    values in input order as they are finished. `inflight` holds the maps
    not read to their end."""
    base = 0
    chunk = list(itertools.islice(inputs, MAP_CHUNK))
    if not chunk:
        return
    current: Optional[Dict[str, Any]] = yield ops.run_parallel(function_name, chunk)
    while current is not None:
        inflight.add(current["task_id"])
        chunk = list(itertools.islice(inputs, MAP_CHUNK))
        following: Optional[Dict[str, Any]] = None
        if chunk:
            following = yield ops.run_parallel(function_name, chunk)
            inflight.add(following["task_id"])
        chunk = []
        total = int(current["num_tasks"])
        yield from _map_chunk(current["task_id"], total, base, return_exceptions)
        inflight.discard(current["task_id"])
        base += total
        current = following


def map_calls(
    function_name: str,
    arg_tuples: Iterator[Tuple[Any, ...]],
    kwargs: Dict[str, Any],
    order_outputs: bool,
    return_exceptions: bool,
    inflight: Set[str],
) -> Flow[Any, None]:
    """`fn(*args, **kwargs)` for each tuple as separate calls, at most
    `CALL_WINDOW` in flight (or finished and waiting for an earlier one),
    the values in input order or, without `order_outputs`, as they finish.
    The server's maps take one argument per input and release results only
    in input order, hence calls for `starmap`, `kwargs` and unordered maps."""
    pending: Dict[str, int] = {}
    finished: Dict[int, Any] = {}
    submitted = emitted = 0
    exhausted = False
    while True:
        while not exhausted and len(pending) + len(finished) < CALL_WINDOW:
            args = next(arg_tuples, None)
            if args is None:
                exhausted = True
                break
            record = yield ops.spawn_task(function_name, list(args), kwargs)
            pending[record["task_id"]] = submitted
            inflight.add(record["task_id"])
            submitted += 1
        if not pending:
            return
        outcome = yield ops.wait_tasks(list(pending), mode="any", timeout=WAIT_SLICE_S)
        for summary in outcome["tasks"]:
            if summary["status"] not in TERMINAL:
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


def map_flow(
    function_name: str,
    iterables: Sequence[Iterable[Any]],
    kwargs: Optional[Dict[str, Any]],
    order_outputs: bool,
    return_exceptions: bool,
    star: bool = False,
) -> Flow[Any, None]:
    """`Function.map` (`star=False`: the iterables zipped, one argument from
    each) and `Function.starmap` (`star=True`: one iterable of argument
    tuples): a server-side map when each call takes one argument and the
    outputs are wanted in order, else separate calls."""
    if not iterables:
        raise TypeError("map takes at least one iterable of inputs")
    inflight: Set[str] = set()
    try:
        if not star and len(iterables) == 1 and not kwargs and order_outputs:
            yield from map_inputs(function_name, iter(iterables[0]), return_exceptions, inflight)
            return
        tuples: Iterator[Tuple[Any, ...]]
        if star:
            tuples = (tuple(args) for args in iterables[0])
        else:
            tuples = zip(*iterables)
        yield from map_calls(
            function_name, tuples, dict(kwargs or {}), order_outputs, return_exceptions, inflight
        )
    except TaskFailedError:
        # An input failed and the map raises: what it started and did not
        # read stops too. (Leaving the loop early leaves it running.)
        for task_id in sorted(inflight):
            yield ops.cancel_quietly(task_id)
        raise


def known_length(iterables: Sequence[Iterable[Any]]) -> Optional[int]:
    """How many calls a map makes, when its inputs have lengths."""
    if iterables and all(isinstance(it, Sized) for it in iterables):
        return min(len(it) for it in iterables if isinstance(it, Sized))
    return None
