"""Stand-in for a Modal container running one spawned call: loads the app
file, runs the function, stores the outcome as calls/<id>.json."""
import json
import os
import signal
import sys
import traceback

from . import _DIR, _load, exception

file, name, call_id, payload = sys.argv[1:5]
args, kwargs = json.loads(payload)
function = getattr(_load(file, "standin_runner"), name)


def timed_out(*_):
    raise exception.FunctionTimeoutError(f"Function timed out after {function.timeout}s")


signal.signal(signal.SIGALRM, timed_out)
signal.alarm(max(1, int(function.timeout)))
try:
    outcome = {"ok": function.fn(*args, **kwargs)}
except Exception as e:  # noqa: BLE001 - every failure is an outcome
    outcome = {"err": {"type": type(e).__name__, "message": str(e),
                       "traceback": traceback.format_exc()}}
path = os.path.join(_DIR, "calls", call_id)
with open(path + ".tmp", "w") as f:
    json.dump(outcome, f)
os.replace(path + ".tmp", path + ".json")
