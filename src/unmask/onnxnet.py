"""Networks exported once from torch to ONNX, and run without torch.

Why: importing torch costs seconds, more than checking a short video does. ``export`` (torch
and the ``onnx`` package, the ``[export]`` extra) runs only when a model is saved and in
tools/export_onnx.py; ``OnnxNet`` needs only OpenCV, which decoding and motion load anyway.
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


def export(module: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           dynamic: dict[str, dict[int, str]]) -> Path:
    """Write ``module`` (eval mode, contiguous weights) to ``path``, with ``dynamic`` axes named per input/output.

    The TorchScript exporter (``dynamo=False``) needs only the ``onnx`` package, not onnxscript,
    and traces these small feed-forward nets exactly."""
    import torch

    from unmask.util import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), args, str(tmp), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class OnnxNet:
    """One exported net run by OpenCV's DNN module, by input and output names. Safe to share
    between threads: an OpenCV net keeps its inputs between ``setInput`` and ``forward``, so calls
    take turns per net, and different nets (the three of MTCNN, a model's) run at the same time.

    Chosen over ONNX Runtime by measurement on 2 cores: as exact (1e-4 against torch), a little
    faster (MTCNN 0.49 against 0.59 CPU s per eight 720p frames), and nothing more to import or
    install, as OpenCV is loaded anyway (ONNX Runtime's import alone is 0.15-0.25 s)."""

    def __init__(self, path: Path):
        import cv2

        self.net = cv2.dnn.readNetFromONNX(str(path))
        self._lock = threading.Lock()

    def __call__(self, outputs: list[str], **inputs: np.ndarray) -> list[np.ndarray]:
        """The named outputs for a non-empty batch (OpenCV 5.0 crashes the process on an empty one)."""
        inputs = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
        with self._lock:
            for name, value in inputs.items():
                self.net.setInput(value, name)
            return list(self.net.forward(outputs))
