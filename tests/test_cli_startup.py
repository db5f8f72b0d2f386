"""The CLI answers `--help` without loading what the commands use (torch, scikit-learn, FastAPI, pandas)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from unmask.cli import COMMANDS

HEAVY = ("torch", "sklearn", "pandas", "scipy", "fastapi", "uvicorn", "dask", "matplotlib", "cv2", "av")
PROBE = """
import sys
from unmask.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("loaded:", *(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_imports_nothing_heavy(command):
    argv = [command, "--help"] if command else ["--help"]
    run = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    help_text, loaded = run.stdout.rsplit("loaded:", 1)
    assert "usage: unmask" in help_text
    assert loaded.strip() == "", f"`unmask {command} --help` imported {loaded.strip()}"
