"""Motion residual features: how much a face changes between neighbouring frames once the
head's own motion is taken out, beside how much its surroundings change.

Why: face-swap tools (FaceForensics++'s Deepfakes among them) make the face frame by frame,
so after compensating the motion with dense optical flow (DIS, OpenCV), the swapped
region keeps a flicker that the hair, neck and background around it do not have, and its
flow field is rougher and drifts against the head. Each residual is measured twice, as its
mean square and its mean absolute value: their ratio tells a few large errors (an occlusion,
a blink, the flow losing track) from a small change spread over the whole face (synthesis).
One sampled frame is compared with each of the following ``offsets`` frames; the features are
the mean over those pairs.

Measured while developing (identity-grouped CV of ``mesonet-motion`` on the FF++ sample, mean of
9 fold assignments, so optimistic for the variant kept): the mean absolute residuals raised frame
AUC from 0.92 to 0.95; also comparing the 3 frames before added 0.01 at twice the cost; colour
(chroma) residuals and keeping each offset's features apart added nothing worth their cost.

Regions come from the MTCNN keypoints: an ellipse over eyes, nose and mouth (the "face"),
a ring at its border (where a swap is blended in: the "edge") and the rest of the crop.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from unmask.config import MotionSampling
from unmask.faces.crop import crop_face, keypoints_in_crop

if TYPE_CHECKING:
    from unmask.video import Frame

REGIONS = ("face", "edge", "outside")
MOTION_FEATURES = (
    *(f"residual_{r}" for r in REGIONS),       # log mean squared residual after motion compensation
    *(f"abs_residual_{r}" for r in REGIONS),   # log mean absolute residual
    *(f"fine_residual_{r}" for r in REGIONS),  # log mean square of its fine detail (residual minus its blur)
    *(f"abs_fine_residual_{r}" for r in REGIONS),  # log mean absolute fine detail
    *(f"flow_roughness_{r}" for r in REGIONS),  # log mean squared gradient of the flow field
    "face_drift",   # log |mean flow of the face - mean flow outside|, relative to the head's motion
    "head_motion",  # log |mean flow outside the face|
)
MOTION_COLUMNS = [f"motion_{name}" for name in MOTION_FEATURES]
"""Their columns in a face store's table."""

FACE_AXES = (1.0, 1.35)
"""The face ellipse's half-axes: eye distance across, eye-to-mouth distance along the face."""
FACE_INSIDE, EDGE_BAND, OUTSIDE_FROM = 0.8, (0.85, 1.15), 1.3
"""Regions by elliptical radius: face < 0.8, edge 0.85-1.15, outside > 1.3."""
DIS_PRESETS = {"dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
"""``MotionSampling.flow`` -> OpenCV's DIS optical flow preset."""


def region_labels(keypoints: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 map of a crop's regions from its 5 keypoints (left eye, right eye, nose,
    mouth left, mouth right) in crop coordinates: 0 face, 1 edge, 2 outside, 3 none (the gaps)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    eyes, mouth = keypoints[:2].mean(axis=0), keypoints[3:5].mean(axis=0)
    across = keypoints[1] - keypoints[0]
    eye_distance = max(float(np.hypot(*across)), 1.0)
    eyes_to_mouth = max(float(np.hypot(*(mouth - eyes))), 1.0)
    centre = 0.45 * eyes + 0.55 * mouth
    angle = np.arctan2(across[1], across[0])
    dx, dy = _grid(size)[..., 0] - centre[0], _grid(size)[..., 1] - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    radius = np.hypot(u / (FACE_AXES[0] * eye_distance), v / (FACE_AXES[1] * eyes_to_mouth))
    labels = np.full((size, size), len(REGIONS), dtype=np.uint8)
    labels[radius > OUTSIDE_FROM] = 2
    labels[(radius > EDGE_BAND[0]) & (radius < EDGE_BAND[1])] = 1
    labels[radius < FACE_INSIDE] = 0
    return labels


@lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    """(size, size, 2) float32 pixel coordinates (x, y), shared and read-only."""
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    grid = np.dstack([xs, ys])
    grid.flags.writeable = False
    return grid


def region_averager(keypoints: np.ndarray, size: int) -> np.ndarray:
    """(3, (size/2)^2) float32 matrix whose product with per-pixel values of a ``size`` crop,
    area-averaged to half its side, gives each region's mean (a row of NaN for an empty region).
    Why half: means over a region barely change, and one small product replaces many masks."""
    labels = region_labels(np.asarray(keypoints, dtype=np.float32) / 2, size // 2).ravel()
    rows = np.zeros((len(REGIONS), labels.size), dtype=np.float32)
    for region in range(len(REGIONS)):
        inside = labels == region
        rows[region] = inside / inside.sum() if inside.any() else np.nan
    return rows


def pair_features(first: np.ndarray, second: np.ndarray, averager: np.ndarray,
                  flow: cv2.DISOpticalFlow) -> np.ndarray:
    """``MOTION_FEATURES`` of one pair of grey crops of the same region, ``first`` the earlier;
    ``averager`` from ``region_averager``, ``flow`` an OpenCV DIS optical flow."""
    size = first.shape[0]
    motion = flow.calc(first, second, None)
    warped = cv2.remap(second, cv2.add(motion, _grid(size)), None, cv2.INTER_LINEAR)
    residual = cv2.subtract(warped, first, dtype=cv2.CV_32F)
    fine = residual - cv2.GaussianBlur(residual, (0, 0), 2.0 * size / 256)
    half = (size // 2, size // 2)
    energies = [cv2.resize(power, half, interpolation=cv2.INTER_AREA)
                for values in (residual, fine) for power in (cv2.multiply(values, values), np.abs(values))]
    coarse = cv2.resize(motion, half, interpolation=cv2.INTER_AREA)  # the flow field, measured at half its side
    gradient_x, gradient_y = (cv2.Sobel(coarse, cv2.CV_32F, dx, dy) for dx, dy in ((1, 0), (0, 1)))
    roughness = cv2.add(cv2.multiply(gradient_x, gradient_x), cv2.multiply(gradient_y, gradient_y))
    columns = [values.reshape(averager.shape[1], -1) for values in (*energies, roughness, coarse)]
    means = averager @ np.column_stack(columns)  # (region, quantity)
    head = np.log(np.hypot(*means[2, 6:8]) + 1e-2)
    return np.array([
        *np.log(means[:, 0:4].T.ravel() + 1e-3),  # squared, absolute, fine squared, fine absolute; by region
        *np.log(means[:, 4] + means[:, 5] + 1e-6),
        np.log(np.hypot(*(means[0, 6:8] - means[2, 6:8])) + 1e-2) - head,
        head,
    ], dtype=np.float32)


def motion_features(images: Sequence[Frame], box: Sequence[float], keypoints: np.ndarray,
                    margin: float, settings: MotionSampling) -> np.ndarray:
    """``MOTION_FEATURES`` of one detected face: ``images[0]`` is the frame it was found in
    (RGB), the rest the frames after it (as many of ``settings.offsets`` as the video has; RGB or
    ``PartialFrame``, of which only the face's region is converted).
    The face's crop region (its box grown by ``margin``) is cut from every frame alike.
    All NaN when there is no later frame (a photo, the last frame of a video)."""
    size = settings.size
    grey = [crop_face(image, box, margin, size, grey=True) for image in images]
    if len(grey) < 2:
        return np.full(len(MOTION_FEATURES), np.nan, dtype=np.float32)
    averager = region_averager(keypoints_in_crop(keypoints, box, images[0].shape, margin, size), size)
    flow = cv2.DISOpticalFlow_create(DIS_PRESETS[settings.flow])  # one per call: not shared between threads
    return np.mean([pair_features(grey[0], later, averager, flow) for later in grey[1:]], axis=0).astype(np.float32)


def motion_features_of_faces(faces: Sequence[tuple[Sequence[np.ndarray], Sequence[float], np.ndarray]],
                             margin: float, settings: MotionSampling, threads: int | None = None) -> np.ndarray:
    """``motion_features`` of many faces, given as (images, box, keypoints), on ``threads``
    threads (default: one per core; OpenCV's optical flow runs outside the GIL). (N, F) float32."""
    if not faces:
        return np.zeros((0, len(MOTION_FEATURES)), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda face: motion_features(*face, margin, settings), faces)))


def wanted_frames(sampled: Sequence[int], settings: MotionSampling) -> list[int]:
    """The sampled frames and their neighbours: every frame index to decode."""
    return sorted({i + d for i in sampled for d in (0, *settings.offsets)})


def neighbours(index: int, decoded: dict[int, Frame], settings: MotionSampling) -> list[Frame]:
    """Frame ``index`` followed by those of its neighbours that were decoded."""
    return [decoded[index], *(decoded[index + d] for d in settings.offsets if index + d in decoded)]
