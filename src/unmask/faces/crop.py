"""Cut a detected face out of its frame, as the study did: box (plus optional margin), resized."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from unmask.video import Frame


def crop_box(box: Sequence[float], image_shape: tuple[int, ...], margin: float = 0.0) -> tuple[int, int, int, int]:
    """The integer region actually cut: the box grown by ``margin`` of its size on each side,
    clipped to the image (the study sliced the array, which clips the same way)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    height, width = image_shape[:2]
    left, top = max(0, int(round(x1 - dx))), max(0, int(round(y1 - dy)))
    right, bottom = min(width, int(round(x2 + dx))), min(height, int(round(y2 + dy)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_face(image: Frame, box: Sequence[float], margin: float = 0.0, size: int = 320,
              grey: bool = False) -> np.ndarray:
    """A ``size`` x ``size`` x 3 uint8 face crop (area interpolation when shrinking, cubic when growing);
    ``grey``: ``size`` x ``size`` luma, made before resizing (a third of the work) and grown linearly.
    ``image``: an RGB frame, or a ``PartialFrame`` of which only the region cut is converted."""
    left, top, right, bottom = crop_box(box, image.shape, margin)
    region = image[top:bottom, left:right]
    shrinking = region.shape[0] > size or region.shape[1] > size
    if grey:
        region = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    growing = cv2.INTER_LINEAR if grey else cv2.INTER_CUBIC
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if shrinking else growing)


def keypoints_in_crop(keypoints: np.ndarray, box: Sequence[float], image_shape: tuple[int, ...],
                      margin: float = 0.0, size: int = 320) -> np.ndarray:
    """Map frame-coordinate keypoints (5, 2) into the coordinates of the crop made by ``crop_face``."""
    left, top, right, bottom = crop_box(box, image_shape, margin)
    scale = np.array([size / (right - left), size / (bottom - top)], dtype=np.float32)
    return ((np.asarray(keypoints, dtype=np.float32) - [left, top]) * scale).astype(np.float32)


def resize_square(face: np.ndarray, size: int) -> np.ndarray:
    """``face`` at ``size`` x ``size`` by area interpolation, as the CNN models take their crops (as is when it already is)."""
    if face.shape[0] == size and face.shape[1] == size:
        return face
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
