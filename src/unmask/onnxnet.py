"""Networks exported once from torch to ONNX, and run without torch.

Why: importing torch costs seconds, more than checking a short video does; OpenCV is loaded
anyway to decode and measure faces. ``export`` (torch and ``onnx``, the ``[export]`` extra) is
used only when a model is saved or by tools/export_onnx.py; ``OnnxNet`` needs neither.
"""
from __future__ import annotations

import hashlib
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
    """One exported net on ONNX Runtime, with named inputs and outputs; not to be run by two threads at once."""

    def __init__(self, path: Path, threads: int | None = None, backend: str = "ort"):
        self.backend = backend
        if backend == "ort":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or 0
            options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.inputs = [i.name for i in self.session.get_inputs()]
        else:
            import cv2

            self.net = cv2.dnn.readNetFromONNX(str(path))
            self.outputs = None

    def __call__(self, outputs: list[str], **inputs: np.ndarray) -> list[np.ndarray]:
        if self.backend == "ort":
            return self.session.run(outputs, inputs)
        for name, value in inputs.items():
            self.net.setInput(np.ascontiguousarray(value), name)
        return list(self.net.forward(outputs))
