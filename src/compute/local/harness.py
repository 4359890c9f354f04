# modal-agents container harness: loads one function, then serves calls.
#
# Protocol (on the process's original stdin/stdout, which the harness keeps for
# itself): every message is an 8-byte big-endian sequence number, a 4-byte
# big-endian length and a body in marshal format version 2 (no
# back-references), holding JSON-model values only. A reply carries its
# request's number, so frames the function's own code writes on the pipe
# (it can reach it: same process) are caught by the runtime, which kills the
# container instead of reading them as answers.
#   -> {"op":"ping"}  (any number, before load)  <- {"pong":pid}
#   -> {"op":"load","code":..,"entrypoint":..,"filename":..,"env":{..},"cwd":..,
#       "limits":{"as","nofile","fsize","nproc","timeout"}}  (bytes, counts,
#       seconds per input; CPU time is limited from outside, per request)
#   <- {"ready":pid} | {"load_error":{"type","message","line","column","defined","traceback"}}
#   -> {"op":"call","args":[..],"kwargs":{..}}
#   <- {"ok":value,"stdout":..,"stderr":..} | {"err":{type,message,traceback},..}
#   -> {"op":"map","inputs":[..]}            ("as": "args" | "kwargs": f(*x) | f(**x))
#   <- {"results":[..],"errors":[[i,{..}],..],"stdout":..,"stderr":..}
# While a request runs, what it prints goes out as it is printed (a line at
# a time, at most every 0.1 s): frames numbered like the request with the top
# bit set, {"stdout":..} or {"stderr":..}; the reply carries the rest.
# A result marshal cannot write but JSON can (an IntEnum, an OrderedDict, a
# namedtuple) is normalised through JSON; one neither can write becomes a
# ResultNotSerializable error for its input only. Values marshal writes but
# JSON cannot hold (sets, bytes, NaN) are caught by the runtime, per input.
# The function's own prints are captured per request; anything written to fd 1
# or 2 by native code goes to the container's stderr, which the runtime logs.
import io
import marshal
import os
import sys
from itertools import starmap

VERSION = 2


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
    dumps = marshal.dumps
    loads = marshal.loads

    seq = [b"\0" * 8]

    def recv():
        head = read(12)
        if len(head) < 12:
            return None
        seq[0] = head[:8]
        return loads(read(int.from_bytes(head[8:], "big")))

    def send(obj):
        data = dumps(obj, VERSION)
        write(seq[0] + len(data).to_bytes(4, "big"))
        write(data)
        flush()

    def describe(exc, skip_harness_frame=True):
        import linecache
        import traceback

        if source is not None:
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)

        tb = exc.__traceback__
        # The harness's own frames (the loop, a starmap's or kwargs map's
        # call) are not the function's: the traceback starts in its code.
        while skip_harness_frame and tb is not None and tb.tb_frame.f_globals is HARNESS_GLOBALS:
            tb = tb.tb_next
        try:
            message = str(exc)
        except BaseException:
            message = "<exception str() failed>"
        if ceiling[0] and isinstance(exc, MemoryError):
            return {
                "type": "OutOfMemory",
                "message": "the input went past the container's memory limit of %d MiB" % ceiling[0],
                "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
            }
        return {
            "type": type(exc).__name__,
            "message": message,
            "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
        }

    def normalise(value):
        """A marshal-writable copy of a JSON-serializable value, or an error."""
        try:
            dumps(value, VERSION)
            return value, None
        except ValueError:
            pass
        import json

        try:
            return json.loads(json.dumps(value, allow_nan=False)), None
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            return None, {
                "type": "ResultNotSerializable",
                "message": "the function returned a %s, which is not JSON-serializable (%s)"
                % (type(value).__name__, e),
            }

    source = filename = None
    ceiling = [None]  # MiB, when the address-space limit is the memory ceiling
    msg = recv()
    while msg is not None and msg.get("op") == "ping":
        send({"pong": os.getpid()})
        msg = recv()
    if msg is None or msg.get("op") != "load":
        return
    os.environ.update(msg.get("env", {}))
    os.chdir(msg.get("cwd", "."))
    limits = msg.get("limits") or {}
    apply_limits(limits)
    ceiling[0] = limits.get("memory_ceiling_mib")
    watch = Watch(limits.get("timeout"))
    harness_pid = os.getpid()
    source = msg["code"]
    entry = msg["entrypoint"]
    filename = msg["filename"]
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as e:
        send({"load_error": {"type": type(e).__name__, "message": e.msg or str(e),
                             "line": e.lineno or 0, "column": e.offset or 0}})
        return
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

    while True:
        msg = recv()
        if msg is None:
            return
        live = Live(seq[0], write, flush, dumps)
        streams = []
        out, err = Capped(live, "stdout", streams), Capped(live, "stderr", streams)
        streams += [out, err]
        sys.stdout, sys.stderr = out, err
        try:
            if msg["op"] == "map":
                # list.extend keeps what map() produced before an exception,
                # and the shared iterator resumes after the failing input.
                results = []
                errors = []
                pending = iter(msg["inputs"])
                how = msg.get("as")
                if how == "args":
                    calls = lambda inputs: starmap(fn, inputs)  # noqa: E731
                elif how == "kwargs":
                    calls = lambda inputs: map(lambda kw: fn(**kw), inputs)  # noqa: E731
                else:
                    calls = lambda inputs: map(fn, inputs)  # noqa: E731
                watch.start(results)
                try:
                    while True:
                        try:
                            results.extend(calls(pending))
                            break
                        except BaseException as e:
                            errors.append([len(results), watch.describe(e, len(results)) or describe(e)])
                            results.append(None)
                finally:
                    watch.stop()
                reply = {"results": results, "errors": errors}
            else:
                try:
                    reply = {"ok": fn(*msg.get("args", ()), **msg.get("kwargs", {}))}
                except BaseException as e:
                    reply = {"err": describe(e)}
        finally:
            sys.stdout, sys.stderr = real_out, real_err
            # No flush after this: the reply carries what still waits.
            if FLUSHER.armed is not None:
                FLUSHER.disarm()
        if os.getpid() != harness_pid:
            # A process the function forked came back here: it must not answer.
            os._exit(0)
        text = out.getvalue()
        if text:
            reply["stdout"] = text
        text = err.getvalue()
        if text:
            reply["stderr"] = text
        try:
            data = dumps(reply, VERSION)
        except ValueError:
            if "ok" in reply:
                value, error = normalise(reply.pop("ok"))
                reply["ok" if error is None else "err"] = value if error is None else error
            else:
                results = reply["results"]
                for i, r in enumerate(results):
                    value, error = normalise(r)
                    results[i] = value
                    if error is not None:
                        reply["errors"].append([i, error])
            data = dumps(reply, VERSION)
        write(seq[0] + len(data).to_bytes(4, "big"))
        write(data)
        flush()
        try:
            # Everything this request wrote on fd 2 is in the pipe before
            # this line (and the next request's after it): the runtime's
            # excerpt of a crash shows only what the request that crashed
            # wrote. Written after the reply, off the caller's path.
            os.write(2, DONE_MARK)
        except OSError:
            pass


DONE_MARK = b"\n\x1fmodal-agents: request done\x1f\n"

HARNESS_GLOBALS = globals()


class Live:
    """Sends a request's output as it is printed: a frame numbered like the
    request with the top bit set, at most every EVERY seconds, at a line's
    end (or once PENDING characters wait); what still waits is sent by the
    FLUSHER thread within EVERY seconds, so a line printed before a long
    sleep is not held back until the next print."""

    EVERY = 0.1
    PENDING = 1 << 16

    def __init__(self, number, write, flush, dumps):
        import time

        self.number = (int.from_bytes(number, "big") | (1 << 63)).to_bytes(8, "big")
        self.write, self.flush, self.dumps = write, flush, dumps
        self.clock = time.monotonic
        self.last = self.clock()

    def due(self, text, pending):
        if pending >= self.PENDING:
            return True
        return "\n" in text and self.clock() - self.last >= self.EVERY

    def send(self, stream, text):
        if os.getpid() != HARNESS_PID[0]:
            return
        data = self.dumps({stream: text}, VERSION)
        self.write(self.number + len(data).to_bytes(4, "big"))
        self.write(data)
        self.flush()
        self.last = self.clock()


class Flusher:
    """One thread per container that sends a request's waiting output every
    Live.EVERY seconds while any waits. It is woken only when a write leaves
    output waiting (a request that prints nothing, or whose prints went out
    at once, never wakes it), and the request's end stops it before the
    reply is written, so frames never interleave: every send and every
    change to waiting output happens under one lock."""

    def __init__(self):
        import threading

        self.threading = threading
        self.reset()

    def reset(self):
        self.lock = self.threading.Lock()
        self.cond = self.threading.Condition(self.lock)
        self.armed = None  # (live, [Capped, ...]) while output waits
        self.thread = None

    def arm(self, live, streams):
        """Called with the lock held."""
        if self.armed is None:
            self.armed = (live, streams)
            if self.thread is None:
                self.thread = self.threading.Thread(target=self.run, name="modal-agents-flush", daemon=True)
                self.thread.start()
            self.cond.notify()

    def disarm(self):
        with self.lock:
            self.armed = None

    def run(self):
        cond = self.cond
        with cond:
            while True:
                while self.armed is None:
                    cond.wait()
                cond.wait(Live.EVERY)
                if self.armed is None:
                    continue
                live, streams = self.armed
                for c in streams:
                    c.send_waiting()
                if not any(c.pending for c in streams):
                    self.armed = None


FLUSHER = Flusher()
# A process the function forks starts with a fresh lock and no thread.
os.register_at_fork(after_in_child=FLUSHER.reset)


HARNESS_PID = [os.getpid()]


class Capped(io.TextIOBase):
    """Captures a request's prints, keeping at most LIMIT characters and a
    note of what was cut, so printing without end cannot grow the reply
    (or this process) past it; what is printed goes out as it is printed
    through `live`, the reply carrying only the rest."""

    LIMIT = 8 << 20

    def __init__(self, live=None, stream="stdout", streams=None):
        self.parts = []
        self.size = 0
        self.cut = 0
        self.live = live
        self.stream = stream
        self.pending = 0
        # Both streams of the request, for the flusher.
        self.streams = streams

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if self.live is None:
            self.keep(s)
            return len(s)
        # The flusher takes `parts` under this lock, so a part is appended
        # under it too: appended meanwhile, it would go to the list being
        # sent and then replaced, and be lost.
        with FLUSHER.lock:
            if self.keep(s):
                self.pending += len(s)
                if self.live.due(s, self.pending):
                    self.send_waiting()
                elif self.pending:
                    FLUSHER.arm(self.live, self.streams)
        return len(s)

    def keep(self, s):
        """Keeps `s` (or what fits of it); true when all of it fit."""
        n = len(s)
        room = self.LIMIT - self.size
        if n <= room:
            self.parts.append(s)
            self.size += n
            return True
        if room > 0:
            self.parts.append(s[:room])
            self.size = self.LIMIT
        self.cut += n - max(room, 0)
        return False

    def send_waiting(self):
        """Sends what waits (called with FLUSHER.lock held)."""
        if self.pending:
            self.live.send(self.stream, "".join(self.parts))
            self.parts = []
            self.pending = 0

    def getvalue(self):
        text = "".join(self.parts)
        if self.cut:
            text += "\n[modal-agents: output truncated: %d more characters dropped]\n" % self.cut
        return text


class Watch:
    """Per-input timeouts inside a map batch, at no cost per input.

    list.extend(map(fn, inputs)) appends each result as it comes, so the
    length of the results list is the index of the input running. A thread
    looks at it a few times per timeout: an input running past the timeout
    gets a TimeoutError raised in it (SIGALRM to the main thread, which also
    interrupts sleeps and most blocking calls), and the inputs before and
    after it keep their results. Code holding the GIL in a C loop cannot be
    interrupted that way, nor can that thread run: a CPU-time timer (SIGPROF,
    whose default action ends the process), re-armed by the thread while
    inputs make progress, ends the container after the timeout and a grace
    period, and the runtime finds the input at fault. Per batch this costs
    two setitimer calls; nothing per input."""

    GRACE = 5.0

    def __init__(self, timeout):
        self.timeout = float(timeout) if timeout else None
        # CPU time of every thread counts: an input using all the cores for
        # its whole timeout must not be taken for one stuck in C.
        self.cpu_budget = (self.timeout + self.GRACE) * max(1, os.cpu_count() or 1) if timeout else None
        self.results = None
        self.thread = None
        self.fired = None  # (id of the results list, index) the alarm is for

    def start(self, results):
        if self.timeout is None:
            return
        import signal

        if self.thread is None:
            import threading

            signal.signal(signal.SIGALRM, self._alarm)
            signal.signal(signal.SIGPROF, signal.SIG_DFL)
            self.main = threading.main_thread().ident
            self.thread = threading.Thread(target=self._run, name="modal-agents-watch", daemon=True)
            self.thread.start()
        signal.setitimer(signal.ITIMER_PROF, self.cpu_budget)
        self.results = results

    def stop(self):
        if self.timeout is None:
            return
        import signal

        self.results = None
        self.fired = None
        signal.setitimer(signal.ITIMER_PROF, 0)

    def describe(self, exc, index):
        if self.fired == (id(self.results), index) and isinstance(exc, TimeoutError):
            return {"type": "TimeoutError",
                    "message": "the input ran past its timeout of %g s" % self.timeout}
        return None

    def _alarm(self, signum, frame):
        results = self.results
        if results is not None and self.fired == (id(results), len(results)):
            raise TimeoutError("the input ran past its timeout of %g s" % self.timeout)

    def _run(self):
        import signal
        import time

        every = min(max(self.timeout / 8, 0.05), 1.0)
        seen = (None, -1)
        since = time.monotonic()
        while True:
            time.sleep(every)
            results = self.results
            if results is None:
                continue
            now = time.monotonic()
            at = (id(results), len(results))
            if at != seen:
                seen, since = at, now
                if self.results is results:
                    signal.setitimer(signal.ITIMER_PROF, self.cpu_budget)
            elif now - since > self.timeout and self.fired != at:
                self.fired = at
                signal.pthread_kill(self.main, signal.SIGALRM)


def apply_limits(limits):
    """Sets the function's rlimits, soft and hard, so its code cannot raise
    them. The CPU limit is set by the runtime from outside before each
    request (soft and hard), so code cannot raise that one either."""
    import resource

    for key, which in (("as", resource.RLIMIT_AS), ("nofile", resource.RLIMIT_NOFILE),
                       ("fsize", resource.RLIMIT_FSIZE), ("nproc", resource.RLIMIT_NPROC)):
        value = limits.get(key)
        if value is None:
            continue
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


if __name__ == "__main__":
    main()
