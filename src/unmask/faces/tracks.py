"""Faces of consecutive sampled frames linked into tracks: one track per person on screen."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GAP_SIZE_RATIO = 2.0
"""Across frames that could not be decoded a person may have moved anywhere, so a face there
continues a track whose last face was at most this many times larger or smaller, nearest first."""


def link_tracks(boxes_per_frame: Sequence[Sequence[np.ndarray]], min_iou: float,
                after_gap: Sequence[bool] | None = None) -> list[list[int]]:
    """Track id for every box: greedy IoU matching with each track's last box. In a frame that
    ``after_gap`` marks (sampled frames before it could not be decoded), boxes that overlap no track
    then continue the tracks of faces of a like size, nearest first, so one person stays one track
    across a damaged stretch; the rest start new tracks."""
    last_boxes: list[np.ndarray] = []
    assigned = []
    for number, boxes in enumerate(boxes_per_frame):
        ids: list[int | None] = [None] * len(boxes)
        taken: set[int] = set()
        for i, box in enumerate(boxes):
            overlaps = [(_iou(box, last), t) for t, last in enumerate(last_boxes) if t not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= min_iou:
                ids[i] = best[1]
                taken.add(best[1])
                last_boxes[best[1]] = box
        if after_gap is not None and after_gap[number]:
            pairs = sorted((_distance(box, last), i, t) for i, box in enumerate(boxes) if ids[i] is None
                           for t, last in enumerate(last_boxes) if t not in taken and _like_size(box, last))
            for _, i, t in pairs:
                if ids[i] is None and t not in taken:
                    ids[i] = t
                    taken.add(t)
                    last_boxes[t] = boxes[i]
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = len(last_boxes)
                last_boxes.append(box)
        assigned.append(ids)
    return assigned


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _like_size(a: np.ndarray, b: np.ndarray) -> bool:
    width_a, width_b = a[2] - a[0], b[2] - b[0]
    return min(width_a, width_b) > 0 and max(width_a, width_b) <= GAP_SIZE_RATIO * min(width_a, width_b)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))
