# One container of the Modal test server: runs inside bubblewrap with the
# function's mounts at their remote paths (the app file under /root), its
# volumes at their mount paths and its secrets in its environment, and
# serves inputs one at a time over length-prefixed pickle frames on the
# stdin/stdout it started with (the user's own stdout and stderr are
# captured per input and sent back as log frames).
#
# It does what Modal's container entrypoint does for a plain function: marks
# the process as a Modal container (so `modal.is_local()` is False), imports
# the function's module by name from /root, takes the decorated function's
# raw callable, decodes each input with the SDK's own deserializer and
# encodes each result, exception and traceback with the SDK's serializers.
import asyncio
import importlib
import inspect
import os
import pickle
import struct
import sys
import threading
import traceback

CONTROL_IN = os.fdopen(os.dup(0), "rb", buffering=0)
CONTROL_OUT = os.fdopen(os.dup(1), "wb", buffering=0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)  # anything written to fd 1 now lands in the container's log
_lock = threading.Lock()


def send(msg):
    data = pickle.dumps(msg, protocol=4)
    with _lock:
        CONTROL_OUT.write(struct.pack(">I", len(data)) + data)


def recv():
    head = CONTROL_IN.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    buf = b""
    while len(buf) < n:
        chunk = CONTROL_IN.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return pickle.loads(buf)


class Capture:
    """sys.stdout / sys.stderr: text written while an input runs goes back
    as that input's log; between inputs it goes to the container's log."""

    def __init__(self, fd, fallback):
        self.fd = fd
        self.fallback = fallback
        self.input_id = None
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        if self.input_id is None:
            self.fallback.write(text)
            self.fallback.flush()
        elif text:
            send({"op": "log", "input_id": self.input_id, "fd": self.fd, "data": text})
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        return self.fallback.fileno()


def failure(exc, task_id):
    from modal._serialization import pickle_exception, pickle_traceback

    # As Modal's container does, the traceback starts at the user's code:
    # this runner's own frames are not part of it.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb or exc.__traceback__

    serialized_tb, tb_line_cache = pickle_traceback(exc, task_id)
    return {
        "status": "failure",
        "exception": repr(exc),  # as Modal's container sends it
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "data": pickle_exception(exc),
        "serialized_tb": serialized_tb,
        "tb_line_cache": tb_line_cache,
    }


def main():
    boot = recv()
    task_id = boot["task_id"]
    out = Capture(1, sys.__stderr__)
    err = Capture(2, sys.__stderr__)
    sys.stdout, sys.stderr = out, err
    try:
        from modal._runtime.task_lifecycle_manager import _TaskLifecycleManager
        from modal._serialization import deserialize_data_format, serialize
        from modal._utils.async_utils import synchronizer
        from modal_proto import api_pb2

        definition = api_pb2.Function()
        definition.ParseFromString(boot["definition"])
        # What the container entrypoint sets up first: from here on this
        # process is a Modal container and `modal.is_local()` is False.
        _TaskLifecycleManager(task_id, boot["function_id"], definition, None, None)
        sys.path.insert(0, "/root")
        module = importlib.import_module(definition.module_name)
        decorated = getattr(module, definition.function_name)
        user_f = synchronizer._translate_in(decorated)._raw_f_
    except BaseException as e:  # noqa: BLE001 - a crash at import is the container's result
        send({"op": "boot_failed", "result": failure(e, task_id)})
        return
    send({"op": "ready"})
    while True:
        msg = recv()
        if msg is None:
            return
        input_id = msg["input_id"]
        out.input_id = err.input_id = input_id
        try:
            args, kwargs = deserialize_data_format(msg["args"], msg["data_format"], None)
            value = user_f(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            result = {"status": "success", "data": serialize(value)}
        except BaseException as e:  # noqa: BLE001 - the user's exception is the input's result
            result = failure(e, task_id)
        finally:
            out.input_id = err.input_id = None
        send({"op": "result", "input_id": input_id, "result": result})


if __name__ == "__main__":
    main()
