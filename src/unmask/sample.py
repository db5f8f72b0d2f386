"""A demo video made from public-domain material, so the README's first command needs no data."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

from unmask.video import write_video


def astronaut() -> np.ndarray:
    """NASA's public-domain portrait of Eileen Collins (512x512 RGB), shipped with the package."""
    data = np.frombuffer((files("unmask") / "data" / "astronaut.jpg").read_bytes(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def sample_frames(seconds: float = 4.0, fps: int = 25, width: int = 1280, height: int = 720, seed: int = 0):
    """Frames of the portrait drifting slowly across a grey background, with a little sensor noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 2.0, (height + 8, width + 8, 3)).astype(np.int16)
    portrait = astronaut()
    side = min(height - 40, portrait.shape[0])
    portrait = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
    count = max(1, int(round(seconds * fps)))
    for i in range(count):
        canvas = np.full((height, width, 3), 118, np.uint8)
        phase = i / max(1, count - 1)
        x = int((width - side) * (0.3 + 0.4 * phase))
        y = (height - side) // 2
        canvas[y:y + side, x:x + side] = portrait
        dy, dx = rng.integers(0, 8, size=2)
        yield np.clip(canvas + noise[dy:dy + height, dx:dx + width], 0, 255).astype(np.uint8)


def make_sample_video(path: Path, seconds: float = 4.0, fps: int = 25, width: int = 1280, height: int = 720) -> Path:
    write_video(Path(path), sample_frames(seconds, fps, width, height), fps=fps)
    return Path(path)
