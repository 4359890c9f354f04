# modal-agents bridge to the official `modal` SDK: one long-lived process per
# runtime, driven over JSON lines on stdin/stdout. Every request carries an id;
# answers carry it back, so many requests are in flight at once.
#   -> {"id":N,"op":"ping"}                                  <- {"id":N,"ok":{"modal":version}}
#   -> {"id":N,"op":"spawn","app":..,"function":..,"args":[..],"kwargs":{..}}
#                                                            <- {"id":N,"ok":"fc-..."}
#   -> {"id":N,"op":"wait","call_id":..,"timeout":S}         (blocks up to S seconds)
#        <- {"id":N,"ok":{"done":false}}
#         | {"id":N,"ok":{"done":true,"result":{"ok":v}|{"err":{..}},"attempts":K}}
#   -> {"id":N,"op":"follow_logs","call_id":..}              (until the call ends)
#        <- {"id":N,"log":["stdout"|"stderr",text]} ... {"id":N,"ok":null}
#   -> {"id":N,"op":"cancel","call_id":..}
#   -> {"id":N,"op":"map","app":..,"function":..,"window":W,"as":"argument"|"args"|"kwargs"}
#        <- {"id":N,"credit":K}   (send up to K more inputs)
#   -> {"id":N,"op":"inputs","inputs":[..]} ... {"id":N,"op":"end"}
#        <- {"id":N,"item":[index,{"ok":v}|{"err":{..}}]} (in input order) ... {"id":N,"ok":null}
#   -> {"id":N,"op":"abort","target":M}                      (stops map M or log follower M)
#   -> {"id":N,"op":"volume_put","volume":..,"root":..,"files":[[rel,remote],..],"delete":[..]}
#   -> {"id":N,"op":"volume_list","volume":..}               <- {"ok":[[path,size,mtime],..]}
#   -> {"id":N,"op":"volume_get","volume":..,"root":..,"files":[[remote,rel],..]}
#   (local files are opened beneath root, never following a link)
# Failures answer {"id":N,"err":{"type","message","traceback"}} with Modal's
# exceptions named as the local backend names its errors.
#
# `wait` reads a call's output with the SDK's own output request
# (`_Invocation.pop_function_call_outputs`, an internal of the pinned 1.6.4
# that `FunctionCall.get` wraps) because only the raw output carries
# `retry_count`, the attempts Modal made.
#
# Results are NOT decoded with the SDK's `_process_result`: it unpickles
# whatever the container sent, and the container runs code an agent wrote, so
# a result (or exception) whose pickle calls `exec` would run here, next to
# the Modal token. `plain_result` replaces it (in the SDK's modules too, for
# `map`): results unpickle only to plain values (None, bool, int, float, str,
# bytes, list, tuple, dict, set), failures are read from the text Modal sends
# with them (the exception's repr and the formatted remote traceback), and
# nothing else a container produced is unpickled.
import ast
import asyncio
import builtins
import io
import json
import os
import pickle
import re
import sys
import traceback

import modal
import modal._functions
import modal.parallel_map
from modal._functions import _FunctionCall
from modal._serialization import deserialize_data_format
from modal._utils.async_utils import synchronize_api, synchronizer
from modal._utils.blob_utils import blob_download
from modal_proto import api_pb2

KINDS = {
    "AuthError": "AuthError",
    "FunctionTimeoutError": "TimeoutError",
    "TimeoutError": "TimeoutError",
    "ResourceExhaustedError": "ResourceExhausted",
    "NotFoundError": "FunctionNotFound",
    "InputCancellation": "Cancelled",
    "ExecutionError": "ExecutionError",
    "RemoteError": "RemoteError",
    "ConnectionError": "ConnectionError",
    "InvalidError": "InvalidError",
    "OutputExpiredError": "OutputExpired",
}


async def _wait_outputs(call_id, timeout):
    """A call's outcome once Modal has it (waiting up to `timeout` s), with
    the attempts Modal made. Runs on the SDK's own event loop (as
    `synchronize_api` arranges), where its client lives."""
    call = synchronizer._translate_in(modal.FunctionCall.from_id(call_id))
    assert isinstance(call, _FunctionCall)
    await call.hydrate()
    response = await call._invocation().pop_function_call_outputs(index=0, timeout=timeout, clear_on_success=False)
    if not response.outputs:
        if response.num_unfinished_inputs == 0:
            error = {"type": "OutputExpired",
                     "message": "Modal no longer has this call's result (it expired or was taken)"}
            return {"done": True, "result": {"err": error}, "attempts": 1}
        return {"done": False}
    item = response.outputs[0]
    try:
        result = {"ok": await plain_result(item.result, item.data_format, call.client.stub, call.client)}
    except Exception as e:  # noqa: BLE001 - the function's failure is its result
        result = {"err": describe(e)}
    return {"done": True, "result": result, "attempts": item.retry_count + 1}


wait_outputs = synchronize_api(_wait_outputs)


MAX_RESULT_BYTES = 64 << 20


async def kwargs_map(f, inputs):
    """A map whose inputs are each an object of keyword arguments: the
    SDK's own map machinery (`_map` over a queue of `(args, kwargs)`, what
    `map` and `starmap` feed it) with an empty args and the input as kwargs,
    in input order, exceptions returned in place. The SDK's public map gives
    every input the same kwargs."""
    from modal._utils.async_utils import aclosing, async_merge
    from modal.parallel_map import SynchronizedQueue

    queue = SynchronizedQueue()
    await queue.init.aio()

    async def feed():
        async for kwargs in inputs:
            await queue.put.aio(((), kwargs))
        await queue.put.aio(None)
        if False:  # a generator that yields nothing, for async_merge
            yield

    async with aclosing(async_merge(f._map.aio(queue, True, True), feed())) as outputs:
        async for output in outputs:
            yield output


class RemoteFunctionError(Exception):
    """The function's own failure, as Modal reported it (never unpickled)."""

    def __init__(self, kind, message, tb):
        super().__init__(message)
        self.kind, self.message, self.tb = kind, message, tb


class PlainUnpickler(pickle.Unpickler):
    """Unpickles plain values only: no class is looked up but a handful of
    builtin containers, and no persistent id (Modal object) is accepted."""

    PLAIN = {"set", "frozenset", "bytearray", "complex", "slice", "range"}

    def find_class(self, module, name):
        if module == "builtins" and name in self.PLAIN:
            return getattr(builtins, name)
        raise pickle.UnpicklingError("%s.%s is not a plain value" % (module, name))

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a Modal object is not a plain value")


def remote_failure(result):
    """The user's exception from Modal's text: its type and message from the
    repr Modal sends (`exception`), its traceback as Modal formatted it in
    the container (`traceback`, with source lines)."""
    text = result.exception or ""
    kind, message = "RemoteError", text
    found = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\((.*)\)$", text, re.S)
    if found:
        kind = found.group(1).rsplit(".", 1)[-1]
        try:
            args = ast.literal_eval("(%s,)" % found.group(2)) if found.group(2) else ()
            message = str(args[0]) if len(args) == 1 else (str(args) if args else "")
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            message = found.group(2)
    return RemoteFunctionError(kind, message, result.traceback or None)


async def plain_result(result, data_format, stub, client=None):
    """What `_process_result` does, without unpickling anything but plain
    values: the value of a successful output, or the matching exception."""
    GR = api_pb2.GenericResult
    if result.status == GR.GENERIC_STATUS_TIMEOUT:
        raise modal.exception.FunctionTimeoutError(result.exception)
    if result.status == GR.GENERIC_STATUS_INTERNAL_FAILURE:
        raise modal.exception.InternalFailure(result.exception)
    if result.status == GR.GENERIC_STATUS_TERMINATED:
        raise RemoteFunctionError("Cancelled", result.exception or "the call was cancelled", None)
    if result.status != GR.GENERIC_STATUS_SUCCESS:
        raise remote_failure(result)
    if result.WhichOneof("data_oneof") == "data_blob_id":
        data = await blob_download(result.data_blob_id, stub)
    else:
        data = result.data
    if len(data) > MAX_RESULT_BYTES:
        raise RemoteFunctionError(
            "ResultTooLarge", "the result is %d bytes; at most %d are taken" % (len(data), MAX_RESULT_BYTES), None)
    if data_format in (api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_UNSPECIFIED):
        try:
            return PlainUnpickler(io.BytesIO(data)).load()
        except Exception as e:  # noqa: BLE001 - an unreadable result is this input's error
            raise RemoteFunctionError(
                "ResultNotSerializable",
                "the function returned a value that is not plain data (%s); return JSON-like values" % e, None)
    if data_format == api_pb2.DATA_FORMAT_CBOR:
        return deserialize_data_format(data, data_format, client)
    raise RemoteFunctionError("ResultNotSerializable", "unsupported result format %d" % data_format, None)


# The SDK's own call paths (`FunctionCall.get`, `Function.map`) decode with
# `plain_result` too.
modal._functions._process_result = plain_result
modal.parallel_map._process_result = plain_result


def describe(exc):
    if isinstance(exc, RemoteFunctionError):
        return {"type": exc.kind, "message": exc.message, "traceback": exc.tb}
    name = type(exc).__name__
    modal_error = type(exc).__module__.startswith("modal")
    kind = KINDS.get(name, name) if modal_error else name
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": kind, "message": str(exc), "traceback": tb}


class Bridge:
    def __init__(self):
        self.out = sys.stdout
        self.maps = {}
        self.functions = {}

    def send(self, msg):
        self.out.write(encode(msg) + "\n")
        self.out.flush()

    def function(self, app, name):
        key = (app, name)
        if key not in self.functions:
            self.functions[key] = modal.Function.from_name(app, name)
        return self.functions[key]

    async def handle(self, msg):
        rid = msg["id"]
        op = msg["op"]
        try:
            if op == "map":
                await self.map(rid, msg)
                return
            if op == "follow_logs":
                task = asyncio.ensure_future(self.follow(rid, msg))
                self.maps[rid] = {"task": task}
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                finally:
                    self.maps.pop(rid, None)
                self.send({"id": rid, "ok": None})
                return
            result = await getattr(self, "op_" + op)(msg)
            self.send({"id": rid, "ok": result})
        except BaseException as e:  # noqa: BLE001 - every failure is an answer
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self.send({"id": rid, "err": describe(e)})

    async def op_ping(self, msg):
        return {"modal": getattr(modal, "__version__", "unknown")}

    async def op_spawn(self, msg):
        f = self.function(msg["app"], msg["function"])
        call = await f.spawn.aio(*msg.get("args", []), **msg.get("kwargs", {}))
        return call.object_id

    async def op_wait(self, msg):
        return await wait_outputs.aio(msg["call_id"], max(0.0, float(msg.get("timeout", 0))))

    async def follow(self, rid, msg):
        """Sends the call's log lines as they arrive, until it has ended."""
        call = modal.FunctionCall.from_id(msg["call_id"])
        async for entry in call.logs.stream.aio(timeout=msg.get("idle", 3600)):
            if entry.message and entry.source in ("stdout", "stderr"):
                self.send({"id": rid, "log": [entry.source, entry.message]})

    async def op_forget(self, msg):
        self.functions.pop((msg["app"], msg["function"]), None)
        return None

    async def op_cancel(self, msg):
        call = modal.FunctionCall.from_id(msg["call_id"])
        await call.cancel.aio()
        return None

    async def op_abort(self, msg):
        state = self.maps.pop(msg["target"], None)
        if state is not None:
            state["task"].cancel()
        return None

    async def op_inputs(self, msg):
        state = self.maps.get(msg["target"])
        if state is not None:
            for value in msg["inputs"]:
                state["queue"].put_nowait(value)
        return None

    async def op_end(self, msg):
        state = self.maps.get(msg["target"])
        if state is not None:
            state["queue"].put_nowait(StopAsyncIteration)
        return None

    async def map(self, rid, msg):
        window = max(1, int(msg.get("window", 1000)))
        queue = asyncio.Queue()
        state = {"queue": queue}
        self.maps[rid] = state
        f = self.function(msg["app"], msg["function"])
        taken = 0
        done = 0

        async def inputs():
            nonlocal taken
            while True:
                value = await queue.get()
                if value is StopAsyncIteration:
                    return
                taken += 1
                yield value

        async def run():
            nonlocal done
            self.send({"id": rid, "credit": window})
            how = msg.get("as", "argument")
            if how == "args":
                results = f.starmap.aio(inputs(), order_outputs=True, return_exceptions=True)
            elif how == "kwargs":
                results = kwargs_map(f, inputs())
            else:
                results = f.map.aio(inputs(), order_outputs=True, return_exceptions=True)
            async for result in results:
                if isinstance(result, BaseException):
                    item = {"err": describe(result)}
                else:
                    item = {"ok": result}
                self.send({"id": rid, "item": [done, item]})
                done += 1
                # One more input may be in flight for each result out.
                self.send({"id": rid, "credit": 1})
            self.send({"id": rid, "ok": None})

        task = asyncio.ensure_future(run())
        state["task"] = task
        try:
            await task
        except asyncio.CancelledError:
            self.send({"id": rid, "err": {"type": "Cancelled", "message": "the map was stopped"}})
        except BaseException as e:  # noqa: BLE001
            self.send({"id": rid, "err": describe(e)})
        finally:
            self.maps.pop(rid, None)

    async def op_volume_list(self, msg):
        volume = modal.Volume.from_name(msg["volume"], create_if_missing=True)
        out = []
        async for entry in volume.iterdir.aio("/", recursive=True):
            if getattr(entry, "type", None) is not None and int(getattr(entry.type, "value", entry.type)) != 1:
                continue
            out.append([entry.path, entry.size, entry.mtime])
        return out

    async def op_volume_put(self, msg):
        volume = modal.Volume.from_name(msg["volume"], create_if_missing=True)
        opened = []
        try:
            if msg.get("files"):
                async with volume.batch_upload(force=True) as batch:
                    for rel, remote in msg["files"]:
                        try:
                            dfd, name = beneath(msg["root"], rel, create=False)
                            try:
                                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                            finally:
                                os.close(dfd)
                        except OSError as e:
                            # A link (or a file gone since the scan): not sent.
                            print("skipping %r: %s" % (rel, e), file=sys.stderr)
                            continue
                        f = os.fdopen(fd, "rb")
                        opened.append(f)
                        batch.put_file(f, remote)
        finally:
            for f in opened:
                f.close()
        for remote in msg.get("delete", []):
            await volume.remove_file.aio(remote)
        return None

    async def op_volume_get(self, msg):
        volume = modal.Volume.from_name(msg["volume"], create_if_missing=True)
        for remote, rel in msg["files"]:
            try:
                dfd, name = beneath(msg["root"], rel, create=True)
            except OSError as e:
                # A link in the way: nothing is written through it.
                print("skipping %r: %s" % (rel, e), file=sys.stderr)
                continue
            try:
                tmp = name + ".modal-agents-part"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
                with os.fdopen(fd, "wb") as f:
                    async for chunk in volume.read_file.aio(remote):
                        f.write(chunk)
                # rename replaces a link at the name; it never writes through one.
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        return None


MAX_DEPTH = 64  # the runtime's MAX_VALUE_DEPTH


def check_plain(value, limit=MAX_DEPTH):
    """Raises ValueError for what strict JSON (the runtime's reader) cannot
    take although Python's json writes it: nesting past the runtime's depth,
    a string with a lone surrogate, an integer outside 64 bits."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (not valid Unicode)")
        elif isinstance(v, int) and not isinstance(v, bool):
            if not -(2 ** 63) <= v < 2 ** 64:
                raise ValueError("an integer does not fit in 64 bits")
        elif isinstance(v, (list, tuple, dict)):
            if depth > limit:
                raise ValueError("it nests more than %d levels deep" % limit)
            if isinstance(v, dict):
                stack.extend((k, depth + 1) for k in v.keys())
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)


def encode(msg):
    """One line of strict JSON the runtime can read. A result it could not
    (NaN, Infinity, not JSON, nested too deep, a lone surrogate, a huge
    integer) becomes that input's own error, so no line is ever dropped and
    no result moves to another input; other text (an error's message) has
    anything invalid replaced."""
    # Where a function's result sits: a map item's, a finished wait's, or
    # a plain answer's.
    ok = msg.get("ok")
    if msg.get("item") is not None:
        where = lambda m: m["item"][1]  # noqa: E731
    elif isinstance(ok, dict) and isinstance(ok.get("result"), dict):
        where = lambda m: m["ok"]["result"]  # noqa: E731
    else:
        where = lambda m: m  # noqa: E731
    slot = where(msg)
    value = slot.pop("ok") if "ok" in slot else NOTHING
    msg = clean(msg)
    slot = where(msg)
    if value is not NOTHING:
        try:
            check_plain(value)
            slot["ok"] = value
            # Strict: no default=, so a value JSON cannot carry fails here.
            return json.dumps(msg, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError, RecursionError) as e:
            slot.pop("ok", None)
            slot["err"] = {"type": "ResultNotSerializable",
                           "message": "the function returned a value JSON cannot carry (%s)" % clean(str(e))}
    return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=str)


NOTHING = object()


def clean(v):
    """`v` with every string made valid Unicode (lone surrogates replaced)."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
            return v
        except UnicodeEncodeError:
            return v.encode("utf-8", "replace").decode("utf-8")
    if isinstance(v, dict):
        return {clean(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


def beneath(root, rel, create):
    """The directory (an fd) holding `rel`'s last part and that part's name,
    reached from `root` one component at a time without following a link, so
    a link planted in a volume never sends a sync outside it."""
    parts = rel.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OSError(22, "unsafe path %r" % rel)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


async def main():
    bridge = Bridge()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending = set()
    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg["op"] in ("inputs", "end"):
            # A running map's input stream: handled in order, no answer.
            await getattr(bridge, "op_" + msg["op"])(msg)
            continue
        task = asyncio.ensure_future(bridge.handle(msg))
        pending.add(task)
        task.add_done_callback(pending.discard)
    for task in pending:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
