# Containers of the Modal test server: one bubblewrap sandbox per container
# running runner.py, with the function's mount files at their remote paths,
# its volumes bound at their mount paths, its secrets in a cleared
# environment, and nothing surviving it (a pid namespace that dies with it).
import asyncio
import io
import os
import pickle
import shutil
import signal
import struct
import sys
import time

from store import new_id

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
START_TIMEOUT = 60.0


class Frames(pickle.Unpickler):
    """A container's frames are plain dicts (their payloads bytes the SDK
    encoded): nothing else is unpickled from code the server runs."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError("%s.%s in a container frame" % (module, name))


class Container:
    def __init__(self, server, fn):
        self.server = server
        self.fn = fn
        self.task_id = new_id("ta")
        self.dir = os.path.join(server.state, "containers", self.task_id)
        self.proc = None
        self.frames = asyncio.Queue()
        self.current = None  # the Input being run
        self.readers = []
        self.boot_log = []  # the container's last lines outside any input

    def argv(self):
        """bubblewrap over a tmpfs root: the host's top-level directories
        read-only (so the interpreter and the SDK are there), the function's
        files under /root, each volume at its mount path, a private /tmp."""
        fs = os.path.join(self.dir, "fs")
        tops = {p.strip("/").split("/")[0] for p, _, _ in self.fn.volumes}
        argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--new-session", "--tmpfs", "/"]
        for name in sorted(os.listdir("/")):
            path = "/" + name
            if name in ("proc", "dev", "sys", "root", "tmp") or name in tops:
                continue
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for top in tops:
            argv += ["--tmpfs", "/" + top]
        argv += ["--bind", os.path.join(fs, "root"), "/root"]
        for mount_path, host_dir, read_only in self.fn.volumes:
            argv += ["--ro-bind" if read_only else "--bind", host_dir, mount_path]
        # The interpreter, the SDK and this runner may live where the
        # container has its own /root, /tmp or volumes: shown read-only.
        hidden = ("/root", "/tmp") + tuple("/" + t for t in tops)
        for keep in sorted({os.path.realpath(sys.base_prefix), sys.prefix, os.path.dirname(RUNNER)}):
            if keep.startswith(tuple(h + "/" for h in hidden)):
                argv += ["--ro-bind", keep, keep]
        argv += ["--chdir", "/root", "--", sys.executable, "-I", RUNNER]
        return argv

    def materialize(self):
        """The function's mount files, laid out at their remote paths."""
        fs = os.path.join(self.dir, "fs")
        os.makedirs(os.path.join(fs, "root"), exist_ok=True)
        for remote, sha256_hex, mode in self.fn.mount_files:
            rel = remote.lstrip("/")
            if not rel.startswith("root/"):
                rel = os.path.join("root", rel)
            target = os.path.join(fs, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(self.server.store.file_path(sha256_hex), target)
            os.chmod(target, (mode or 0o644) & 0o777)

    def env(self):
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "MODAL_IS_REMOTE": "1",
            "MODAL_TASK_ID": self.task_id,
            "MODAL_ENVIRONMENT": "main",
        }
        env.update(self.fn.secret_env)
        return env

    async def start(self):
        """Starts the container; a failure result if its module does not import."""
        self.materialize()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(),
            start_new_session=True,
        )
        self.server.containers[self.task_id] = self
        self.readers = [
            asyncio.ensure_future(self.read_frames()),
            asyncio.ensure_future(self.read_stderr()),
        ]
        self.send({
            "task_id": self.task_id,
            "function_id": self.fn.id,
            "definition": self.fn.definition.SerializeToString(),
        })
        try:
            frame = await asyncio.wait_for(self.frames.get(), START_TIMEOUT)
        except asyncio.TimeoutError:
            frame = None
        if frame is not None and frame["op"] == "ready":
            return None
        await self.stop()
        if frame is not None and frame["op"] == "boot_failed":
            return frame["result"]
        return {
            "status": "failure",
            "exception": "the container exited while starting (%s): %s"
            % (self.exit_text(), "".join(self.boot_log).strip()),
        }

    def send(self, msg):
        data = pickle.dumps(msg, protocol=4)
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)

    async def read_frames(self):
        try:
            while True:
                head = await self.proc.stdout.readexactly(4)
                (n,) = struct.unpack(">I", head)
                frame = Frames(io.BytesIO(await self.proc.stdout.readexactly(n))).load()
                if frame["op"] == "log":
                    self.server.calls.log(frame["input_id"], self.task_id, frame["fd"], frame["data"])
                else:
                    self.frames.put_nowait(frame)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError, ValueError):
            pass
        self.frames.put_nowait(None)

    async def read_stderr(self):
        # Output below Python's sys.stdout/sys.stderr (a subprocess, os.write).
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            current = self.current
            text = line.decode("utf-8", "replace")
            if current is not None:
                self.server.calls.log(current.id, self.task_id, 2, text)
            else:
                self.boot_log.append(text)
                del self.boot_log[:-20]

    async def run(self, inp, timeout):
        """Runs one input: ("result", fields) | ("timeout", None) | ("died", text)."""
        self.current = inp
        try:
            self.send({"input_id": inp.id, "args": inp.args, "data_format": inp.data_format})
            await self.proc.stdin.drain()
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    await self.stop()
                    return ("timeout", None)
                try:
                    frame = await asyncio.wait_for(self.frames.get(), left)
                except asyncio.TimeoutError:
                    continue
                if frame is None:
                    await self.stop()
                    return ("died", self.exit_text())
                if frame["op"] == "result" and frame["input_id"] == inp.id:
                    return ("result", frame["result"])
        except (ConnectionError, BrokenPipeError):
            await self.stop()
            return ("died", self.exit_text())
        finally:
            self.current = None

    def exit_text(self):
        code = self.proc.returncode if self.proc else None
        if code is None:
            return "still running"
        if code < 0:
            return "killed by signal %d" % -code
        return "exit code %d" % code

    @property
    def alive(self):
        return self.proc is not None and self.proc.returncode is None

    async def stop(self):
        """Kills the container and everything in it; waits for it."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.proc.wait()
        for reader in self.readers:
            reader.cancel()
        self.server.containers.pop(self.task_id, None)
        shutil.rmtree(self.dir, ignore_errors=True)
