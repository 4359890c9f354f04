# Function calls of the Modal test server: inputs queued per function and run
# in containers, outputs kept in an entry log per call (read by index for a
# unary call, by entry id for a map), retries (server-side for spawned calls,
# client-side through FunctionRetryInputs for maps, as Modal splits them),
# timeouts, cancellation and per-input logs.
import asyncio
import base64
import json
import time

import grpclib.const
from grpclib.exceptions import GRPCError

from modal_proto import api_pb2

from containers import Container
from store import new_id

GR = api_pb2.GenericResult
Status = grpclib.const.Status
DEFAULT_MAX_CONTAINERS = 4
IDLE_SECS = 30.0
INLINE_LIMIT = 2 * 1024 * 1024  # larger payloads travel as blobs, as on Modal


class Input:
    def __init__(self, call, idx, args, data_format):
        self.id = new_id("in")
        self.call = call
        self.idx = idx
        self.args = args
        self.data_format = data_format
        self.retry_count = 0
        self.done = False  # a final output exists
        self.outcome = None  # success | failure | timeout | cancelled, once done
        self.cancelled = False
        self.container = None

    def jwt(self):
        """An input token shaped as the SDK reads it: an (unsigned) JWT
        whose payload names the input and its index."""
        payload = {"function_call_id": self.call.id, "input_id": self.id, "idx": self.idx,
                   "retry_count": self.retry_count}
        return ".".join(b64(x) for x in ({"alg": "none", "typ": "JWT"}, payload)) + "."


class FunctionCall:
    def __init__(self, fn, call_type, invocation_type):
        self.id = new_id("fc")
        self.fn = fn
        self.call_type = call_type
        self.invocation_type = invocation_type
        self.inputs = {}  # input id -> Input
        self.entries = []  # (seq, FunctionGetOutputsItem)
        self.seq = 0
        self.changed = asyncio.Condition()
        self.logs = []  # (seq, TaskLogs)
        self.cancelled = False
        self.created = time.time()
        self.finished = None  # when its last input got its output

    @property
    def server_retries(self):
        return self.invocation_type != api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC

    def unfinished(self):
        return sum(1 for i in self.inputs.values() if not i.done)


class Calls:
    def __init__(self, server):
        self.server = server
        self.calls = {}
        self.inputs = {}
        self.queues = {}  # function id -> asyncio.Queue of Input
        self.workers = {}  # function id -> set of worker tasks
        self.idle = {}  # function id -> idle worker count

    # Creating calls and inputs.
    def create(self, fn, call_type, invocation_type):
        call = FunctionCall(fn, call_type, invocation_type)
        self.calls[call.id] = call
        return call

    async def put(self, call, item):
        args = item.input.args
        if item.input.args_blob_id:
            args = self.server.store.read_blob(item.input.args_blob_id)
        inp = Input(call, item.idx, args, item.input.data_format)
        call.inputs[inp.id] = inp
        self.inputs[inp.id] = inp
        if call.cancelled:
            await self.finish(inp, GR(status=GR.GENERIC_STATUS_TERMINATED, exception="the call was cancelled"))
        else:
            self.enqueue(inp)
        return api_pb2.FunctionPutInputsResponseItem(idx=inp.idx, input_id=inp.id, input_jwt=inp.jwt())

    def enqueue(self, inp):
        fn = inp.call.fn
        queue = self.queues.setdefault(fn.id, asyncio.Queue())
        queue.put_nowait(inp)
        workers = self.workers.setdefault(fn.id, set())
        limit = fn.definition.concurrency_limit or DEFAULT_MAX_CONTAINERS
        if self.idle.get(fn.id, 0) == 0 and len(workers) < limit:
            task = asyncio.ensure_future(self.worker(fn, queue))
            workers.add(task)
            task.add_done_callback(workers.discard)

    def retry(self, jwt, retry_count):
        try:
            payload = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
            inp = self.inputs[payload["input_id"]]
        except (ValueError, IndexError, KeyError):
            raise GRPCError(Status.INVALID_ARGUMENT, "bad input token %r" % jwt[:80])
        inp.retry_count = max(retry_count, inp.retry_count + 1)
        inp.done = False
        inp.outcome = None
        self.enqueue(inp)
        return inp.jwt()

    # Running inputs.
    async def worker(self, fn, queue):
        container = None
        try:
            while True:
                self.idle[fn.id] = self.idle.get(fn.id, 0) + 1
                try:
                    inp = await asyncio.wait_for(queue.get(), IDLE_SECS)
                except asyncio.TimeoutError:
                    return
                finally:
                    self.idle[fn.id] -= 1
                if inp.cancelled or inp.done or fn.stopped:
                    continue
                if container is None or not container.alive:
                    container = Container(self.server, fn)
                    boot_failure = await container.start()
                    if boot_failure is not None:
                        container = None
                        await self.failed(inp, result_of(boot_failure))
                        continue
                inp.container = container
                outcome, value = await container.run(inp, fn.definition.timeout_secs or 300)
                inp.container = None
                if inp.cancelled:
                    continue  # its output was written when it was cancelled
                if outcome == "result":
                    result = result_of(value)
                    if result.status == GR.GENERIC_STATUS_SUCCESS:
                        await self.finish(inp, result)
                    else:
                        await self.failed(inp, result)
                elif outcome == "timeout":
                    await self.failed(inp, GR(
                        status=GR.GENERIC_STATUS_TIMEOUT,
                        exception="Task's current input %s hit its timeout of %ds" % (inp.id, fn.definition.timeout_secs),
                    ))
                else:
                    await self.failed(inp, GR(
                        status=GR.GENERIC_STATUS_FAILURE,
                        exception="the container running this input exited unexpectedly (%s)" % value,
                    ))
        finally:
            if container is not None:
                await container.stop()

    async def failed(self, inp, result):
        """A failed attempt: retried here for spawned calls while the
        function's retries last; otherwise an output (maps retry from the
        client through FunctionRetryInputs)."""
        policy = inp.call.fn.definition.retry_policy
        if inp.call.server_retries and inp.retry_count < policy.retries and not inp.cancelled:
            delay = policy.initial_delay_ms / 1000.0 * (policy.backoff_coefficient or 1.0) ** inp.retry_count
            delay = min(delay, (policy.max_delay_ms or 60000) / 1000.0)
            inp.retry_count += 1
            asyncio.get_running_loop().call_later(delay, self.enqueue, inp)
            return
        await self.finish(inp, result)

    async def finish(self, inp, result):
        call = inp.call
        data_format = api_pb2.DATA_FORMAT_PICKLE
        if result.WhichOneof("data_oneof") == "data" and len(result.data) > INLINE_LIMIT:
            result.data_blob_id = self.server.store.put_blob(result.data)
        item = api_pb2.FunctionGetOutputsItem(
            result=result,
            idx=inp.idx,
            input_id=inp.id,
            data_format=data_format,
            retry_count=inp.retry_count,
            output_created_at=time.time(),
        )
        inp.done = True
        inp.outcome = {
            GR.GENERIC_STATUS_SUCCESS: "success",
            GR.GENERIC_STATUS_TIMEOUT: "timeout",
            GR.GENERIC_STATUS_TERMINATED: "cancelled",
        }.get(result.status, "failure")
        if call.unfinished() == 0:
            call.finished = time.time()
        async with call.changed:
            call.seq += 1
            call.entries.append((call.seq, item))
            call.changed.notify_all()

    # Reading outputs.
    async def outputs(self, req):
        call = self.calls.get(req.function_call_id)
        if call is None:
            return api_pb2.FunctionGetOutputsResponse(last_entry_id=req.last_entry_id)
        by_entry = call.call_type == api_pb2.FUNCTION_CALL_TYPE_MAP and not (req.start_idx or req.end_idx)
        after = entry_seq(req.last_entry_id) if by_entry else 0

        def matching():
            if by_entry:
                return [(s, o) for s, o in call.entries if s > after]
            return [(s, o) for s, o in call.entries if req.start_idx <= o.idx <= max(req.end_idx, req.start_idx)]

        deadline = time.monotonic() + max(0.0, min(req.timeout, 55.0))
        async with call.changed:
            found = matching()
            while not found:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(call.changed.wait(), left)
                except asyncio.TimeoutError:
                    pass
                found = matching()
            if req.max_values:
                found = found[: req.max_values]
            if req.clear_on_success:
                gone = {id(o) for _, o in found if o.result.status == GR.GENERIC_STATUS_SUCCESS}
                call.entries = [(s, o) for s, o in call.entries if id(o) not in gone]
        last = "%d-0" % found[-1][0] if found else (req.last_entry_id or "0-0")
        return api_pb2.FunctionGetOutputsResponse(
            outputs=[o for _, o in found],
            idxs=[o.idx for _, o in found],
            last_entry_id=last,
            num_unfinished_inputs=call.unfinished(),
        )

    # Cancelling.
    async def cancel(self, call_id):
        call = self.calls.get(call_id)
        if call is None:
            return
        call.cancelled = True
        for inp in list(call.inputs.values()):
            if inp.done:
                continue
            inp.cancelled = True
            if inp.container is not None:
                await inp.container.stop()
            await self.finish(inp, GR(status=GR.GENERIC_STATUS_TERMINATED, exception="the call was cancelled"))

    async def stop_function(self, fn):
        fn.stopped = True
        for call in list(self.calls.values()):
            if call.fn is fn:
                await self.cancel(call.id)
        for task in list(self.workers.get(fn.id, ())):
            task.cancel()

    # Logs.
    def log(self, input_id, task_id, fd, data):
        inp = self.inputs.get(input_id)
        if inp is None:
            return
        call = inp.call
        call.seq += 1
        call.logs.append((call.seq, api_pb2.TaskLogs(
            data=data,
            file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT if fd == 1 else api_pb2.FILE_DESCRIPTOR_STDERR,
            timestamp=time.time(),
            function_call_id=call.id,
            input_id=input_id,
        )))

    def inspect(self):
        return {
            call.id: {
                "function": call.fn.name,
                "cancelled": call.cancelled,
                "inputs": len(call.inputs),
                "unfinished": call.unfinished(),
                "running": sum(1 for i in call.inputs.values() if i.container is not None),
                "attempts": {i.id: i.retry_count + 1 for i in call.inputs.values()},
                # From the call's creation to its last output: the server's
                # own handling, container run included.
                "handled_s": (call.finished - call.created) if call.finished else None,
            }
            for call in self.calls.values()
        }


def result_of(fields):
    status = {
        "success": GR.GENERIC_STATUS_SUCCESS,
        "failure": GR.GENERIC_STATUS_FAILURE,
    }[fields["status"]]
    result = GR(status=status)
    for key in ("exception", "traceback", "serialized_tb", "tb_line_cache", "data"):
        if fields.get(key):
            setattr(result, key, fields[key])
    return result


def entry_seq(entry_id):
    try:
        return int((entry_id or "0-0").split("-")[0])
    except ValueError:
        return 0


def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
