"""Motion residual features: how much a face changes between neighbouring frames once the
head's own motion is taken out, beside how much its surroundings change.

Why: face-swap tools (FaceForensics++'s Deepfakes among them) make the face frame by frame,
so after compensating the motion with dense optical flow (Farnebäck, OpenCV), the swapped
region keeps a flicker that the hair, neck and background around it do not have, and its
flow field is rougher and drifts against the head. One sampled frame is compared with each
of the following ``offsets`` frames; the features are the mean over those pairs.

Regions come from the MTCNN keypoints: an ellipse over eyes, nose and mouth (the "face"),
a ring at its border (where a swap is blended in: the "edge") and the rest of the crop.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from unmask.config import MotionSampling
from unmask.faces.crop import crop_face, keypoints_in_crop

REGIONS = ("face", "edge", "outside")
MOTION_FEATURES = (
    *(f"residual_{r}" for r in REGIONS),       # log mean squared residual after motion compensation
    *(f"fine_residual_{r}" for r in REGIONS),  # the same, of its fine detail (residual minus its blur)
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


def face_regions(keypoints: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (face, edge, outside) of a ``size`` x ``size`` crop from its 5 keypoints
    (left eye, right eye, nose, mouth left, mouth right) in crop coordinates."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    eyes, mouth = keypoints[:2].mean(axis=0), keypoints[3:5].mean(axis=0)
    across = keypoints[1] - keypoints[0]
    eye_distance = max(float(np.hypot(*across)), 1.0)
    eyes_to_mouth = max(float(np.hypot(*(mouth - eyes))), 1.0)
    centre = 0.45 * eyes + 0.55 * mouth
    angle = np.arctan2(across[1], across[0])
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    radius = np.hypot(u / (FACE_AXES[0] * eye_distance), v / (FACE_AXES[1] * eyes_to_mouth))
    return radius < FACE_INSIDE, (radius > EDGE_BAND[0]) & (radius < EDGE_BAND[1]), radius > OUTSIDE_FROM


def _log_mean(values: np.ndarray, mask: np.ndarray, floor: float) -> float:
    return float(np.log(values[mask].mean() + floor)) if mask.any() else np.nan


def pair_features(first: np.ndarray, second: np.ndarray, regions: Sequence[np.ndarray]) -> np.ndarray:
    """``MOTION_FEATURES`` of one pair of grey crops of the same region, ``first`` the earlier."""
    size = first.shape[0]
    flow = cv2.calcOpticalFlowFarneback(first, second, None, pyr_scale=0.5, levels=3,
                                        winsize=max(5, round(15 * size / 256)), iterations=3, poly_n=5,
                                        poly_sigma=1.2, flags=0)
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    warped = cv2.remap(second, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    residual = warped.astype(np.float32) - first.astype(np.float32)
    fine = residual - cv2.GaussianBlur(residual, (0, 0), 2.0 * size / 256)
    roughness = sum(cv2.Sobel(flow, cv2.CV_32F, dx, dy) ** 2 for dx, dy in ((1, 0), (0, 1))).sum(axis=-1)
    mean_flow = [flow[mask].mean(axis=0) if mask.any() else np.full(2, np.nan) for mask in regions]
    head = np.log(np.hypot(*mean_flow[2]) + 1e-2)
    return np.array([
        *(_log_mean(residual ** 2, mask, 1e-3) for mask in regions),
        *(_log_mean(fine ** 2, mask, 1e-3) for mask in regions),
        *(_log_mean(roughness, mask, 1e-6) for mask in regions),
        np.log(np.hypot(*(mean_flow[0] - mean_flow[2])) + 1e-2) - head,
        head,
    ], dtype=np.float32)


def motion_features(images: Sequence[np.ndarray], box: Sequence[float], keypoints: np.ndarray,
                    margin: float, settings: MotionSampling) -> np.ndarray:
    """``MOTION_FEATURES`` of one detected face: ``images[0]`` is the frame it was found in
    (RGB), the rest the frames after it (as many of ``settings.offsets`` as the video has).
    The face's crop region (its box grown by ``margin``) is cut from every frame alike.
    All NaN when there is no later frame (a photo, the last frame of a video)."""
    size = settings.size
    grey = [cv2.cvtColor(crop_face(image, box, margin, size), cv2.COLOR_RGB2GRAY) for image in images]
    if len(grey) < 2:
        return np.full(len(MOTION_FEATURES), np.nan, dtype=np.float32)
    regions = face_regions(keypoints_in_crop(keypoints, box, images[0].shape, margin, size), size)
    return np.mean([pair_features(grey[0], later, regions) for later in grey[1:]], axis=0).astype(np.float32)


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


def neighbours(index: int, decoded: dict[int, np.ndarray], settings: MotionSampling) -> list[np.ndarray]:
    """Frame ``index`` followed by those of its neighbours that were decoded."""
    return [decoded[index], *(decoded[index + d] for d in settings.offsets if index + d in decoded)]
