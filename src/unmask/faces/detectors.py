"""Face detectors by name: the registry that builds the detector a setting names.

A detector takes a batch of RGB uint8 frames and returns, per frame, the faces it found
(``unmask.faces.detection``: the ``Detection`` type and the ``FaceDetector`` protocol). To add
one: a settings dataclass and a field for it in ``unmask.config.FaceDetection``, a module in
this package, and a builder registered here (``DETECTORS.register``) that imports it lazily, so
that choosing a detector by name never costs the import of another.
"""
from __future__ import annotations

import sys

from unmask.config import FaceDetection, resolve_device
from unmask.faces.detection import FaceDetector
from unmask.registry import Registry

DETECTORS: Registry[FaceDetector] = Registry("face detector")


@DETECTORS.register("mtcnn", help="MTCNN (Zhang et al. 2016), the original weights, as the study used")
def _mtcnn(settings: FaceDetection, device: str) -> FaceDetector:
    """On a CPU the exported nets run without torch (the same detections within 1e-4); on a GPU, torch."""
    if device == "cpu":
        from unmask.faces.mtcnn_onnx import OnnxMTCNN

        return OnnxMTCNN(min_face_size=settings.mtcnn.min_face_size, thresholds=settings.mtcnn.thresholds)
    from unmask.faces.mtcnn import MTCNN

    return MTCNN(min_face_size=settings.mtcnn.min_face_size, thresholds=settings.mtcnn.thresholds, device=device)


def create_detector(settings: FaceDetection, threads: int | None = None) -> FaceDetector:
    """The detector ``settings`` name, on their device; ``threads`` caps OpenCV's and (where it is
    loaded) torch's CPU threads (one per worker process)."""
    detector = DETECTORS.builder(settings.detector)(settings, resolve_device(settings.device))
    if threads:
        import cv2

        cv2.setNumThreads(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return detector
