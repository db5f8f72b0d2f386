"""Faces of consecutive sampled frames linked into tracks: one track per person on screen."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def link_tracks(boxes_per_frame: Sequence[Sequence[np.ndarray]], min_iou: float) -> list[list[int]]:
    """Track id for every box: greedy IoU matching with each track's last box."""
    last_boxes: list[np.ndarray] = []
    assigned = []
    for boxes in boxes_per_frame:
        ids, taken = [], set()
        for box in boxes:
            overlaps = [(_iou(box, last), t) for t, last in enumerate(last_boxes) if t not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= min_iou:
                track = best[1]
                last_boxes[track] = box
            else:
                track = len(last_boxes)
                last_boxes.append(box)
            taken.add(track)
            ids.append(track)
        assigned.append(ids)
    return assigned


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
