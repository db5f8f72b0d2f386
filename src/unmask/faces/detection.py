"""What a face detector is and what it returns: the seam every detector and every caller shares.

It sits below both the registry of detectors (``detectors``) and the detectors themselves
(``mtcnn_onnx``, ``mtcnn``), so a detector never imports the registry that builds it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One face found in one image."""

    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in pixels of the input image."""
    confidence: float
    """The detector's face probability."""
    keypoints: np.ndarray
    """(5, 2) float32 (x, y): left eye, right eye, nose, mouth left, mouth right."""


class FaceDetector(Protocol):
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The faces of each (H, W, 3) RGB uint8 image, in the image's pixel coordinates."""
