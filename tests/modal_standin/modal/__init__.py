"""A minimal STAND-IN for the `modal` SDK, for tests of the bridge logic that
would need a live Modal account (ordering of map results, error mapping,
spawn/poll/cancel, volumes). It is NOT the SDK: the real SDK's checks run in
tests/modal.rs against the pinned `modal` package.

Deployed apps are the generated app files, imported here; functions run in
the bridge's own process. State lives under $HOME/standin (the backend's cache dir).
"""
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid

from . import exception

__version__ = "standin"

# The bridge runs with HOME set to the backend's cache dir: state goes there.
_DIR = os.path.join(os.environ.get("HOME", "/tmp"), "standin")


def _check_token():
    if not (os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")):
        raise exception.AuthError("Token missing. Could not authenticate client.")
    if os.environ["MODAL_TOKEN_SECRET"] == "as-revoked":
        raise exception.AuthError("Token validation failed")


def is_local():
    return True


class _Aio:
    """A method with the SDK's `.aio` async form."""

    def __init__(self, fn):
        self.aio = fn

    def __call__(self, *args, **kwargs):
        return asyncio.run(self.aio(*args, **kwargs))


class Retries:
    def __init__(self, max_retries=0, backoff_coefficient=2.0, initial_delay=1.0, max_delay=60.0):
        self.max_retries = max_retries


class Image:
    @staticmethod
    def debian_slim(python_version=None):
        return Image()

    def pip_install(self, *packages):
        return self

    def apt_install(self, *packages):
        return self


class Secret:
    def __init__(self, env):
        self.env = env

    @staticmethod
    def from_dict(env):
        return Secret(dict(env))

    @staticmethod
    def from_name(name):
        return Secret({})


class _Entry:
    def __init__(self, path, size, mtime):
        self.path, self.size, self.mtime, self.type = path, size, mtime, 1


class Volume:
    def __init__(self, name):
        self.root = os.path.join(_DIR, "volumes", name)
        os.makedirs(self.root, exist_ok=True)
        self.iterdir = _AioGen(self._iterdir)
        self.read_file = _AioGen(self._read_file)
        self.remove_file = _Aio(self._remove_file)

    @staticmethod
    def from_name(name, create_if_missing=False):
        _check_token()
        return Volume(name)

    async def _iterdir(self, path, recursive=True):
        for base, _, files in os.walk(self.root):
            for f in sorted(files):
                full = os.path.join(base, f)
                st = os.stat(full)
                yield _Entry("/" + os.path.relpath(full, self.root), st.st_size, st.st_mtime)

    async def _read_file(self, path):
        with open(os.path.join(self.root, path.lstrip("/")), "rb") as f:
            yield f.read()

    async def _remove_file(self, path):
        os.remove(os.path.join(self.root, path.lstrip("/")))

    def batch_upload(self, force=False):
        volume = self

        class Batch:
            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            def put_file(self, local, remote):
                # Like the SDK: a path, or a file-like object.
                target = os.path.join(volume.root, remote.lstrip("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if hasattr(local, "read"):
                    data = local.read()
                else:
                    with open(local, "rb") as src:
                        data = src.read()
                with open(target, "wb") as dst:
                    dst.write(data)

        return Batch()


class _AioGen:
    def __init__(self, fn):
        self.aio = fn


class App:
    def __init__(self, name):
        self.name = name
        self.functions = {}

    def function(self, image=None, timeout=300, secrets=(), volumes=None, serialized=False, **options):
        app = self

        def wrap(fn):
            f = Function(fn, timeout, [s.env for s in secrets])
            app.functions[fn.__name__] = f
            return f

        return wrap


_CALLS = {}


class Function:
    def __init__(self, fn, timeout, secret_envs):
        self.fn, self.timeout = fn, timeout
        for env in secret_envs:
            os.environ.update(env)
        self.remote = _Aio(self._remote)
        self.spawn = _Aio(self._spawn)
        self.map = _AioGen(self._map)

    @staticmethod
    def from_name(app_name, name):
        _check_token()
        path = os.path.join(_DIR, "apps", app_name + ".path")
        if not os.path.exists(path):
            raise exception.NotFoundError(f"Lookup failed for Function '{name}' from the '{app_name}' app")
        with open(path) as f:
            file = f.read().strip()
        function = getattr(_load(file, "standin_" + app_name), name)
        function.app_file = file
        return function

    async def _run(self, args, kwargs):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(None, lambda: self.fn(*args, **kwargs)), self.timeout
            )
        except asyncio.TimeoutError:
            raise exception.FunctionTimeoutError(f"Function timed out after {self.timeout}s")

    async def _remote(self, *args, **kwargs):
        return await self._run(args, kwargs)

    async def _spawn(self, *args, **kwargs):
        # Like Modal, a spawned call runs apart from the caller and outlives
        # it: here, a detached process that stores its outcome in calls/.
        call_id = "fc-" + uuid.uuid4().hex[:24]
        calls = os.path.join(_DIR, "calls")
        os.makedirs(calls, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "modal._runner", self.app_file, self.fn.__name__, call_id,
             json.dumps([list(args), kwargs])],
            start_new_session=True,
        )
        with open(os.path.join(calls, call_id + ".pid"), "w") as f:
            f.write(str(proc.pid))
        _CALLS[call_id] = proc
        return FunctionCall(call_id)

    async def _map(self, inputs, order_outputs=True, return_exceptions=False):
        # Inputs are consumed while results go out, as the SDK does.
        queue = asyncio.Queue()

        async def feed():
            async for value in inputs:
                await queue.put(asyncio.ensure_future(self._run((value,), {})))
            await queue.put(None)

        feeder = asyncio.ensure_future(feed())
        try:
            while True:
                task = await queue.get()
                if task is None:
                    break
                await asyncio.wait([task])
                yield _outcome(task, return_exceptions)
        finally:
            feeder.cancel()


def _outcome(task, return_exceptions):
    if task.exception() is not None:
        if not return_exceptions:
            raise task.exception()
        return task.exception()
    return task.result()


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return "\n" + self.tb


# What loads an app file to run its functions plays Modal's container:
# there `modal.is_local()` is false; in `modal deploy` it is true.
_REMOTE = [False]


def is_local():
    return not _REMOTE[0]


def _load(file, name):
    _REMOTE[0] = True
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FunctionCall:
    def __init__(self, object_id):
        self.object_id = object_id
        self.path = os.path.join(_DIR, "calls", object_id)
        self.get = _Aio(self._get)
        self.cancel = _Aio(self._cancel)

    @staticmethod
    def from_id(object_id):
        _check_token()
        call = FunctionCall(object_id)
        if not os.path.exists(call.path + ".pid"):
            raise exception.NotFoundError(f"No function call {object_id}")
        return call

    async def _get(self, timeout=None):
        while True:
            if os.path.exists(self.path + ".cancelled"):
                raise exception.InputCancellation("Input was cancelled by user")
            if os.path.exists(self.path + ".json"):
                with open(self.path + ".json") as f:
                    outcome = json.load(f)
                if "err" in outcome:
                    # The remote traceback rides along as the cause, the way
                    # concurrent.futures carries a worker's traceback.
                    name, message = outcome["err"]["type"], outcome["err"]["message"]
                    if name == "FunctionTimeoutError":
                        raise exception.FunctionTimeoutError(message)
                    kind = type(name, (Exception,), {"__module__": "user_code"})
                    remote = _RemoteTraceback(outcome["err"].get("traceback", ""))
                    raise kind(message) from remote
                return outcome["ok"]
            if timeout == 0:
                self._poll_function()
            await asyncio.sleep(0.01)

    @staticmethod
    def _poll_function():
        # As modal 1.6.4's _FunctionCall.poll_function: the built-in
        # TimeoutError, raised in a function of that name.
        def poll_function():
            raise TimeoutError()

        poll_function()

    async def _cancel(self):
        with open(self.path + ".cancelled", "w"):
            pass
        with open(self.path + ".pid") as f:
            pid = int(f.read())
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc = _CALLS.pop(self.object_id, None)
        if proc is not None:
            proc.wait()
