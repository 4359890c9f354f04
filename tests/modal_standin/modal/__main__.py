"""Stand-in for `python -m modal deploy FILE`: checks the token, imports the
app file (as the SDK does) and records it as deployed under its app name."""
import importlib.util
import os
import sys

from . import _DIR, _check_token, exception

if len(sys.argv) < 3 or sys.argv[1] not in ("deploy", "app"):
    sys.exit("stand-in supports `deploy FILE` and `app stop NAME` only")
if sys.argv[1] == "app":
    # As modal 1.6.4: `app stop` asks for confirmation unless --yes/-y, and
    # without a terminal that aborts, leaving the app deployed.
    _check_token()
    if "--yes" not in sys.argv and "-y" not in sys.argv:
        sys.exit("Are you sure you want to stop App? Aborted (use --yes).")
    record = os.path.join(_DIR, "apps", sys.argv[-1] + ".path")
    if os.path.exists(record):
        os.remove(record)
    sys.exit(0)
try:
    _check_token()
except exception.AuthError as e:
    sys.exit(f"Error: {e}")
file, _, attr = sys.argv[2].partition("::")
file = os.path.abspath(file)
spec = importlib.util.spec_from_file_location("standin_deploy", file)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
app = getattr(module, attr or "app")
os.makedirs(os.path.join(_DIR, "apps"), exist_ok=True)
with open(os.path.join(_DIR, "apps", app.name + ".path"), "w") as f:
    f.write(file)
print(f"App deployed: {app.name}")
