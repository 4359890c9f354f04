# modal-agents container harness: loads one function, then serves calls.
#
# Protocol (on the process's original stdin/stdout, which the harness keeps for
# itself): every message is a 4-byte big-endian length and a UTF-8 JSON body.
#   -> {"op":"load","code":..,"entrypoint":..,"filename":..}
#   <- {"ready":pid} | {"load_error":{"type","message","line","column","defined","traceback"}}
#   -> {"op":"call","args":[..],"kwargs":{..}}
#   <- {"ok":value,"stdout":..,"stderr":..} | {"err":{type,message,traceback},..}
#   -> {"op":"map","inputs":[..]}
#   <- {"results":[..],"errors":[[i,{..}],..],"stdout":..,"stderr":..}
# The function's own prints are captured per request; anything written to fd 1
# or 2 by native code goes to the container's stderr, which the runtime logs.
import io
import json
import os
import sys


def main():
    import faulthandler

    faulthandler.enable()
    proto_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    real_out, real_err = sys.stdout, sys.stderr

    read = proto_in.read
    write = proto_out.write
    flush = proto_out.flush
    encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    loads = json.loads

    def recv():
        head = read(4)
        if len(head) < 4:
            return None
        return loads(read(int.from_bytes(head, "big")))

    def send_bytes(data):
        write(len(data).to_bytes(4, "big"))
        write(data)
        flush()

    def send(obj):
        send_bytes(encode(obj).encode("utf-8", "surrogatepass"))

    def describe(exc, skip_harness_frame=True):
        import traceback

        tb = exc.__traceback__
        if skip_harness_frame and tb is not None:
            tb = tb.tb_next
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
        }

    def not_serializable(value, exc):
        return {
            "type": "ResultNotSerializable",
            "message": "the function returned a %s, which is not JSON-serializable (%s)"
            % (type(value).__name__, exc),
        }

    msg = recv()
    if msg is None or msg.get("op") != "load":
        return
    source = msg["code"]
    entry = msg["entrypoint"]
    filename = msg["filename"]
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as e:
        send({"load_error": {"type": type(e).__name__, "message": e.msg or str(e),
                             "line": e.lineno or 0, "column": e.offset or 0}})
        return
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = {"__name__": "__modal_agents__", "__file__": filename}
    try:
        exec(code, ns)
    except BaseException as e:
        send({"load_error": describe(e)})
        return
    fn = ns.get(entry)
    if not callable(fn):
        defined = sorted(k for k, v in ns.items() if callable(v) and not k.startswith("__"))
        send({"load_error": {"type": "MissingFunction", "message": entry, "defined": defined}})
        return
    if getattr(getattr(fn, "__code__", None), "co_flags", 0) & 0x80:  # CO_COROUTINE
        import asyncio

        coro_fn = fn

        def fn(*args, **kwargs):
            return asyncio.run(coro_fn(*args, **kwargs))

    send({"ready": os.getpid()})

    def captured(reply, out, err):
        text = out.getvalue()
        if text:
            reply["stdout"] = text
        text = err.getvalue()
        if text:
            reply["stderr"] = text
        return reply

    while True:
        msg = recv()
        if msg is None:
            return
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        try:
            if msg["op"] == "map":
                results = []
                errors = []
                append = results.append
                for i, x in enumerate(msg["inputs"]):
                    try:
                        append(fn(x))
                    except BaseException as e:
                        append(None)
                        errors.append([i, describe(e)])
                reply = {"results": results, "errors": errors}
            else:
                try:
                    reply = {"ok": fn(*msg.get("args", ()), **msg.get("kwargs", {}))}
                except BaseException as e:
                    reply = {"err": describe(e)}
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        try:
            data = encode(captured(reply, out, err))
        except (TypeError, ValueError, OverflowError, RecursionError):
            if "ok" in reply:
                reply = {"err": not_serializable(reply["ok"], sys.exc_info()[1])}
            else:
                bad = {}
                for i, r in enumerate(reply["results"]):
                    try:
                        encode(r)
                    except (TypeError, ValueError, OverflowError, RecursionError) as e:
                        bad[i] = not_serializable(r, e)
                        reply["results"][i] = None
                reply["errors"].extend([i, e] for i, e in bad.items())
            data = encode(captured(reply, out, err))
        send_bytes(data.encode("utf-8", "surrogatepass"))


if __name__ == "__main__":
    main()
