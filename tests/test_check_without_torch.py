"""`unmask check` on a CPU needs neither torch nor scikit-learn, and says what the torch path says."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unmask.check import Checker, CheckSettings
from unmask.models.io import load_model

HEAVY = ("torch", "sklearn", "scipy", "pandas", "skops")
BLOCKED = """
import sys
for name in ("torch", "sklearn"):
    sys.modules[name] = None  # `import torch` raises ImportError from here on
from unmask.cli import main
code = main(sys.argv[1:])
print("loaded:", *(m for m in {heavy!r} if m in sys.modules and sys.modules[m] is not None), file=sys.stderr)
sys.exit(code)
"""


def test_importing_check_loads_no_heavy_module():
    probe = f"import sys, unmask.check; print(*(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_check_without_torch_gives_the_torch_verdict(face_video, monkeypatch):
    run = subprocess.run([sys.executable, "-c", BLOCKED.format(heavy=HEAVY), "check", str(face_video), "--json",
                          "--device", "auto"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().endswith("loaded:"), run.stderr
    lean = json.loads(run.stdout)

    # The torch path as it was: the torch MTCNN and the torch model.
    from unmask.faces import detectors
    from unmask.faces.mtcnn import MTCNN

    monkeypatch.setattr(detectors, "create_detector", lambda settings, threads=None: MTCNN(
        min_face_size=settings.mtcnn.min_face_size, thresholds=settings.mtcnn.thresholds, device="cpu"))
    reference = Checker(load_model(), CheckSettings(device="cpu")).check(face_video).to_dict()
    assert lean["verdict"] == reference["verdict"] != "ERROR"
    assert lean["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-4)
    assert len(lean["faces"]) == len(reference["faces"]) > 0
    for ours, theirs in zip(lean["faces"], reference["faces"]):
        assert (ours["frame"], ours["track"]) == (theirs["frame"], theirs["track"])
        assert ours["box"] == pytest.approx(theirs["box"], abs=0.1)  # rounded to 0.1 px: 1e-4 may round the other way
        assert ours["fake_probability"] == pytest.approx(theirs["fake_probability"], abs=1e-4)
        assert ours["detection_confidence"] == pytest.approx(theirs["detection_confidence"], abs=1e-4)
