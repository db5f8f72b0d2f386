"""A saved torch model's whole per-face function in ``model.onnx``, so that checking on a CPU runs
it without importing torch (``unmask.models.onnx_model``).

What is exported is what ``decision_function`` computes once the crops are resized to the
network's input: scaling and normalisation, every CNN member, the mean of their logits, and the
motion fusion's standardised linear head, in one graph from uint8 crops (and motion features)
to the logit of P(fake). ``save_model`` writes it whenever it saves a network that exports, and
checks it against torch on random faces first; ``unmask.models.io.export_onnx`` (what
tools/export_onnx.py runs) writes it for an existing model folder. Needs the ``onnx`` package
(``pip install unmask[export]``).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unmask.errors import UnmaskError, one_line
from unmask.faces.motion import MOTION_FEATURES
from unmask.models.onnx_model import ONNX_FILE, OnnxModel
from unmask.onnxnet import export, sha256

TOLERANCE = 1e-4
"""How far the exported logits may be from torch's (plus 1e-5 of their size) for the export to be kept."""


class _PerFace(nn.Module):
    """(faces (N, S, S, 3) uint8[, motion (N, F) float32]) -> the logit of P(fake) (N,), as the estimator computes it."""

    def __init__(self, members: list[tuple[nn.Module, Any]], head: nn.Module | None):
        super().__init__()
        self.nets = nn.ModuleList(net for net, _ in members)
        self.archs = [arch for _, arch in members]
        self.head = head

    def _cnn(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.permute(0, 3, 1, 2).float() / 255.0
        logits = []
        for net, arch in zip(self.nets, self.archs):
            inputs = x
            if arch.mean is not None:
                inputs = (x - torch.tensor(arch.mean).view(1, 3, 1, 1)) / torch.tensor(arch.std).view(1, 3, 1, 1)
            logits.append(arch.logit_sign * net(inputs).float())
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self._cnn(inputs[0])
        if not self.nets:
            return self.head(inputs[0])
        faces, motion = inputs
        return self.head(torch.cat([motion, self._cnn(faces)[:, None]], dim=1))


def _parts(estimator: Any) -> tuple[list[tuple[nn.Module, Any]], int | None, nn.Module | None]:
    """(CNN members as (network, architecture), their input size, the fusion head) of a fitted torch model."""
    from unmask.models.cnn import TorchFaceClassifier
    from unmask.models.ensemble import LogitEnsemble
    from unmask.models.fusion import MotionFusion

    if isinstance(estimator, MotionFusion):
        members, size = ([], None) if estimator.cnn_ is None else _parts(estimator.cnn_)[:2]
        return members, size, estimator.head_
    if isinstance(estimator, LogitEnsemble):
        parts = [_parts(member) for member in estimator.members_]
        return [m for members, _, _ in parts for m in members], parts[0][1], None
    if isinstance(estimator, TorchFaceClassifier):
        arch = estimator._architecture()
        return [(estimator.net_, arch)], estimator._size(arch), None
    raise UnmaskError(f"{type(estimator).__name__} has no ONNX export")


def write_onnx(estimator: Any, out_dir: Path, weights: Path) -> dict:
    """Write ``out_dir/model.onnx`` and return the card's ``onnx`` entry, which ties it to the
    ``weights`` file it was exported from; raises if the network does not export or the export's
    logits are not torch's within ``TOLERANCE`` on random faces."""
    members, size, head = _parts(estimator)
    module = copy.deepcopy(_PerFace(members, head)).to("cpu", memory_format=torch.contiguous_format).eval()
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, size or 8, size or 8, 3), dtype=np.uint8)
    motion = rng.normal(size=(4, len(MOTION_FEATURES))).astype(np.float32)
    motion[0, 0] = np.nan  # a missing feature, as a face without later frames has
    feed = {"faces": faces} if members else {}
    if head is not None:
        feed["motion"] = motion
    path = Path(out_dir) / ONNX_FILE
    names = list(feed)
    export(module, tuple(torch.from_numpy(v) for v in feed.values()), path, names, ["logit"],
           {**{name: {0: "n"} for name in names}, "logit": {0: "n"}})
    entry = {"file": ONNX_FILE, "sha256": sha256(path), "weights_sha256": sha256(weights), "inputs": names,
             "size": size}
    exported = OnnxModel(path.parent, {"onnx": entry}).decision_function(faces, motion)
    expected = estimator.decision_function(faces, **({"motion": motion} if head is not None else {}))
    if not np.allclose(exported, expected, rtol=1e-5, atol=TOLERANCE):
        path.unlink()
        raise UnmaskError(f"the exported network's logits differ from torch's by up to "
                          f"{np.abs(exported - expected).max():.2g}")
    return entry


def try_write_onnx(estimator: Any, out_dir: Path, weights: Path) -> dict | None:
    """``write_onnx``, best-effort: a model that does not export gets no model.onnx (checking it uses
    torch), with a warning saying why."""
    try:
        return write_onnx(estimator, out_dir, weights)
    except ImportError as error:
        reason = f"{error.name or error} is not installed (pip install unmask[export])"
    except Exception as error:  # noqa: BLE001 - any exporter failure leaves the torch model as it is
        reason = f"{type(error).__name__}: {one_line(error)}"
    (Path(out_dir) / ONNX_FILE).unlink(missing_ok=True)
    warnings.warn(f"{out_dir}: no {ONNX_FILE} (checking will import torch): {reason}", stacklevel=3)
    return None

