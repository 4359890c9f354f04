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
#   -> {"id":N,"op":"map","app":..,"function":..,"window":W}
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
# `wait` reads a call's output with the SDK's own output request and result
# decoding (`_Invocation.pop_function_call_outputs`, `_process_result`:
# internals of the pinned 1.6.4, which `FunctionCall.get` wraps) because only
# the raw output carries `retry_count`, the attempts Modal made.
import asyncio
import json
import os
import sys
import traceback

import modal
from modal._functions import _FunctionCall
from modal._utils.async_utils import synchronize_api, synchronizer
from modal._utils.function_utils import _process_result

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
        result = {"ok": await _process_result(item.result, item.data_format, call.client.stub, call.client)}
    except Exception as e:  # noqa: BLE001 - the function's failure is its result
        result = {"err": describe(e)}
    return {"done": True, "result": result, "attempts": item.retry_count + 1}


wait_outputs = synchronize_api(_wait_outputs)


def describe(exc):
    name = type(exc).__name__
    modal_error = type(exc).__module__.startswith("modal")
    kind = KINDS.get(name, name) if modal_error else name
    remember_remote_lines(exc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": kind, "message": str(exc), "traceback": tb}


def remember_remote_lines(exc):
    """A remote traceback's source lines travel with the exception (the
    SDK's `__line_cache__`: (file, line) -> text, for frames named
    "<task id>:file"); put them in linecache so the formatted traceback shows
    them, as Modal's own printer does."""
    import linecache

    cache = getattr(exc, "__line_cache__", None)
    if not isinstance(cache, dict):
        return
    files = {}
    tb = exc.__traceback__
    while tb is not None:
        shown = tb.tb_frame.f_code.co_filename
        if shown.startswith("<") and ">:" in shown:
            text = cache.get((shown.split(">:", 1)[1], tb.tb_lineno))
            if isinstance(text, str) and text:
                files.setdefault(shown, {})[tb.tb_lineno] = text
        tb = tb.tb_next
    for shown, lines in files.items():
        body = [""] * max(lines)
        for lineno, text in lines.items():
            body[lineno - 1] = text + "\n"
        linecache.cache[shown] = (sum(map(len, body)), None, body, shown)


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
            async for result in f.map.aio(inputs(), order_outputs=True, return_exceptions=True):
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


def too_deep(value, limit=MAX_DEPTH):
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            if depth > limit:
                return True
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
    return False


def encode(msg):
    """One line of strict JSON the runtime can read. A result it could not
    (NaN, Infinity, not JSON, nested too deep) becomes that input's own
    error, so no line is ever dropped and no result moves to another input."""
    # Where a function's result sits: a map item's, a finished wait's, or
    # a plain answer's.
    item = msg.get("item")
    ok = msg.get("ok")
    if item is not None:
        slot = item[1]
    elif isinstance(ok, dict) and isinstance(ok.get("result"), dict):
        slot = ok["result"]
    else:
        slot = msg
    try:
        if too_deep(slot.get("ok")):
            raise ValueError("it nests more than %d levels deep" % MAX_DEPTH)
        return json.dumps(msg, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:
        error = {"type": "ResultNotSerializable",
                 "message": "the function returned a value JSON cannot carry (%s)" % e}
        slot.pop("ok", None)
        slot["err"] = error
        return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=str)


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
