"""Many face scores -> one: how a track's (or a video's) faces become its score.

Its own small module so that checking a video needs numpy alone here, not the evaluation's
pandas, scipy and matplotlib.
"""
from __future__ import annotations

import numpy as np

from unmask.registry import Registry

AGGREGATES: Registry[float] = Registry("frame aggregate")


@AGGREGATES.register("mean", help="mean of the frame scores")
def _mean(scores: np.ndarray) -> float:
    return float(np.mean(scores))


@AGGREGATES.register("median", help="median of the frame scores: ignores a few odd frames")
def _median(scores: np.ndarray) -> float:
    return float(np.median(scores))


@AGGREGATES.register("max", help="highest frame score: one convincing fake frame flags the video")
def _max(scores: np.ndarray) -> float:
    return float(np.max(scores))


@AGGREGATES.register("trimmed-mean", help="mean without the top and bottom 10% of frames")
def _trimmed_mean(scores: np.ndarray) -> float:
    """As ``scipy.stats.trim_mean(scores, 0.1)``: the int(10%) lowest and highest cut off."""
    ordered = np.sort(np.asarray(scores, dtype=float))
    cut = int(0.1 * len(ordered))
    return float(np.mean(ordered[cut:len(ordered) - cut]))
