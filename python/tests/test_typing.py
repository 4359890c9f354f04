"""The package's type hints stay complete: `mypy --strict` on it is clean,
and it ships `py.typed` (PEP 561) so its users' checkers read them."""

import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "agent_modal_client"


def test_mypy_strict_is_clean_and_the_package_is_typed(tmp_path):
    assert (PACKAGE / "py.typed").is_file()
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout
