# The call side of the Modal test server: FunctionMap (unary calls, spawns
# and maps), putting and retrying inputs, reading outputs, cancelling calls,
# looking calls up by id, and task logs (AppGetLogs).
import asyncio
import time

import grpclib.const
from google.protobuf import empty_pb2
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2

Status = grpclib.const.Status
MAX_INPUTS_OUTSTANDING = 1000


class Invocations:
    def function(self, function_id):
        fn = self.functions.get(function_id)
        if fn is None or fn.stopped:
            raise GRPCError(Status.NOT_FOUND, "Function %s not found (its app was stopped?)" % function_id)
        return fn

    def call(self, function_call_id):
        call = self.calls.calls.get(function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, "Function call %s not found" % function_call_id)
        return call

    async def FunctionMap(self, stream):
        req = await stream.recv_message()
        fn = self.function(req.function_id)
        call = self.calls.create(fn, req.function_call_type, req.function_call_invocation_type)
        pipelined = [await self.calls.put(call, item) for item in req.pipelined_inputs]
        await stream.send_message(api_pb2.FunctionMapResponse(
            function_call_id=call.id,
            function_call_jwt=call.id,
            pipelined_inputs=pipelined,
            retry_policy=fn.definition.retry_policy,
            sync_client_retries_enabled=True,
            max_inputs_outstanding=MAX_INPUTS_OUTSTANDING,
        ))

    async def FunctionPutInputs(self, stream):
        req = await stream.recv_message()
        call = self.call(req.function_call_id)
        items = [await self.calls.put(call, item) for item in req.inputs]
        await stream.send_message(api_pb2.FunctionPutInputsResponse(inputs=items))

    async def FunctionRetryInputs(self, stream):
        req = await stream.recv_message()
        self.call(req.function_call_jwt)
        jwts = [self.calls.retry(item.input_jwt, item.retry_count) for item in req.inputs]
        await stream.send_message(api_pb2.FunctionRetryInputsResponse(input_jwts=jwts))

    async def FunctionFinishInputs(self, stream):
        await stream.recv_message()
        await stream.send_message(empty_pb2.Empty())

    async def FunctionGetOutputs(self, stream):
        req = await stream.recv_message()
        await stream.send_message(await self.calls.outputs(req))

    async def FunctionCallCancel(self, stream):
        req = await stream.recv_message()
        self.call(req.function_call_id)
        await self.calls.cancel(req.function_call_id)
        await stream.send_message(empty_pb2.Empty())

    async def FunctionCallFromId(self, stream):
        req = await stream.recv_message()
        call = self.call(req.function_call_id)
        await stream.send_message(api_pb2.FunctionCallFromIdResponse(
            function_call_id=call.id,
            num_inputs=len(call.inputs),
            metadata=api_pb2.FunctionCallHandleMetadata(app_id=call.fn.app_id, function_id=call.fn.id),
        ))

    async def FunctionCallGetInfo(self, stream):
        req = await stream.recv_message()
        call = self.call(req.function_call_id)
        counts = {}
        for inp in call.inputs.values():
            counts[inp.outcome] = counts.get(inp.outcome, 0) + 1
        category = lambda name: api_pb2.InputCategoryInfo(total=counts.get(name, 0))  # noqa: E731
        await stream.send_message(api_pb2.FunctionCallGetInfoResponse(info=api_pb2.FunctionCallInfo(
            function_call_id=call.id,
            created_at=call.created,
            total_inputs=len(call.inputs),
            pending_inputs=category(None),
            succeeded_inputs=category("success"),
            failed_inputs=category("failure"),
            timeout_inputs=category("timeout"),
            cancelled_inputs=category("cancelled"),
        )))

    async def AppGetLogs(self, stream):
        """Streams the logs of a function call (or of every call of an app)
        after `last_entry_id`, for up to `timeout` seconds or until the calls
        have nothing left to run."""
        req = await stream.recv_message()
        if req.function_call_id:
            calls = [self.call(req.function_call_id)]
        else:
            app = self.app(req.app_id)
            fids = set(app.functions.values())
            calls = [c for c in self.calls.calls.values() if c.fn.id in fids]
        after = int((req.last_entry_id or "0-0").split("-")[0] or 0)
        deadline = time.monotonic() + max(0.0, min(req.timeout or 0.0, 55.0))
        while True:
            sent = False
            for call in calls:
                items = [(s, log) for s, log in call.logs if s > after]
                if req.input_id:
                    items = [(s, log) for s, log in items if log.input_id == req.input_id]
                if items:
                    top = items[-1][0]
                    await stream.send_message(api_pb2.TaskLogsBatch(
                        entry_id="%d-0" % top,
                        items=[log for _, log in items],
                        function_id=call.fn.id,
                    ))
                    after = max(after, top)
                    sent = True
            finished = all(c.unfinished() == 0 for c in calls)
            if finished and not sent:
                await stream.send_message(api_pb2.TaskLogsBatch(entry_id="%d-0" % after, eof=True, app_done=True))
                return
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)
