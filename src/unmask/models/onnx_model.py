"""A torch model run from its ``model.onnx`` (``unmask.models.export``): the same scores, without torch.

Why: ``unmask check`` on a CPU spends longer importing torch than scoring a video's faces.
``OnnxModel`` takes the crops (and motion features) the torch estimator takes and returns
the same ``predict_proba`` within 1e-4; Grad-CAM, which needs gradients, loads the torch
model from the same folder the first time a report asks for it.

The file's name and its reader live here, below both the exporter and the model folder's I/O
(``unmask.models.io``), so neither of those imports the other's importer.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unmask.errors import UnmaskError
from unmask.faces.crop import resize_square
from unmask.faces.motion import MOTION_FEATURES
from unmask.onnxnet import OnnxNet

ONNX_FILE = "model.onnx"
"""The export's name in a model folder."""
BATCH = 16
"""Faces per run: on a CPU, larger batches fall out of cache (see ``TorchFaceClassifier``)."""


class OnnxModel:
    """``decision_function`` / ``predict_proba`` of the model folder's exported per-face function.

    ``torch_model``: loads the torch estimator the export was made from, for Grad-CAM (None:
    no heatmaps, as for the exporter's own check of the file it wrote)."""

    def __init__(self, folder: Path, card: dict, torch_model: Callable[[], Any] | None = None):
        entry = card["onnx"]
        self.folder, self.inputs, self.size = Path(folder), list(entry["inputs"]), entry["size"]
        self.net = OnnxNet(self.folder / entry["file"])
        self._load_torch = torch_model
        self._torch: Any = None

    def decision_function(self, X: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        """The logit of P(fake) per face, (N,) float32."""
        if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[-1] != 3 or X.dtype != np.uint8 or not len(X):
            raise UnmaskError("the model expects uint8 RGB face crops of shape (N, H, W, 3), got "
                              f"{type(X).__name__} {getattr(X, 'dtype', '')} {getattr(X, 'shape', '')}".rstrip())
        feed = {}
        if "motion" in self.inputs:
            if motion is None or np.shape(motion) != (len(X), len(MOTION_FEATURES)):
                raise UnmaskError(f"this model needs motion features, (faces, {len(MOTION_FEATURES)}), not "
                                  f"{None if motion is None else np.shape(motion)}")
            feed["motion"] = np.asarray(motion, dtype=np.float32)
        logits = []
        for start in range(0, len(X), BATCH):
            batch = {name: value[start:start + BATCH] for name, value in feed.items()}
            if "faces" in self.inputs:
                batch["faces"] = np.stack([resize_square(face, self.size) for face in X[start:start + BATCH]])
            logits.append(self.net(["logit"], **batch)[0].reshape(-1))
        return np.concatenate(logits).astype(np.float32)

    def predict_proba(self, X: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) float64: columns P(real), P(fake)."""
        fake = 1.0 / (1.0 + np.exp(-self.decision_function(X, motion).astype(np.float64)))
        return np.column_stack([1.0 - fake, fake])

    def gradcam(self, X: np.ndarray) -> np.ndarray | None:
        """The torch model's Grad-CAM maps (imports torch, once); None without ``torch_model``."""
        if self._load_torch is None:
            return None
        if self._torch is None:
            self._torch = self._load_torch()
        return self._torch.gradcam(X)
