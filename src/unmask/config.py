"""Every setting of the pipeline as a typed dataclass with a documented default.

The study's settings are the ``seed`` preset; nothing else in the code hard-codes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from unmask.errors import UnmaskError


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video are looked at."""

    step: int = 30
    """Take one frame every ``step`` frames, starting at frame 0 (the study: 30)."""
    max_frames: int = 7
    """At most this many frames per video (the study: 7, so frames 0, 30, ..., 180)."""

    def indices(self, frame_count: int | None) -> list[int]:
        """The exact frame indices to read; fewer for a short video."""
        wanted = [i * self.step for i in range(self.max_frames)]
        if frame_count is None:
            return wanted
        return [i for i in wanted if i < frame_count]

    def __post_init__(self) -> None:
        if self.step < 1 or self.max_frames < 1:
            raise UnmaskError("--step and --frames must be at least 1")


@dataclass(frozen=True)
class FaceDetection:
    """How faces are found and cut out."""

    min_confidence: float = 0.9
    """Keep a face only if MTCNN's confidence is over this (the study: 0.9)."""
    min_face_size: int = 40
    """Smallest face, in pixels of the frame, that the detector searches for. Larger is faster."""
    margin: float = 0.0
    """Extra border around the box, as a fraction of the box size on each side (the study: 0)."""
    size: int = 320
    """Side of the square crop in pixels (the study: 320, so 320x320x3)."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """P-Net, R-Net and O-Net score thresholds (the usual MTCNN defaults)."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda"."""


FLOWS = ("dis-ultrafast", "dis-fast", "dis-medium")
"""The optical flows ``MotionSampling.flow`` may name."""


@dataclass(frozen=True)
class MotionSampling:
    """Neighbouring frames read beside each sampled frame for the motion residual features
    (``unmask.motion``). Off by default: the study had none."""

    offsets: tuple[int, ...] = ()
    """Frames after each sampled frame to compare it with (``--motion``: 1, 2, 3); empty: off."""
    size: int = 256
    """Side, in pixels, that the face region is resized to before optical flow is measured."""
    flow: str = "dis-fast"
    """Optical flow: OpenCV's DIS (Kroeger et al. 2016) at preset ultrafast, fast or medium. Measured
    while developing (identity-grouped CV of ``mesonet-motion`` on the FF++ sample): "fast" scored
    within 0.01 AUC of Farnebäck's flow at an eighth of its time; "medium" 0.014 frame AUC above
    "fast" at 2.5 times its cost; "ultrafast" lower (video AUC 0.954 against 0.972)."""

    def __post_init__(self) -> None:
        if any(int(d) < 1 for d in self.offsets) or self.size < 32:
            raise UnmaskError("motion offsets must be at least 1 and the motion size at least 32")
        if self.flow not in FLOWS:
            raise UnmaskError(f"unknown optical flow {self.flow!r}; choose one of: {', '.join(FLOWS)}")

    @property
    def enabled(self) -> bool:
        return bool(self.offsets)

    @classmethod
    def from_record(cls, record: dict) -> MotionSampling:
        """From the dict a store or a model card keeps (JSON has lists, not tuples)."""
        return cls(**{**record, "offsets": tuple(record["offsets"])})


MOTION_ON = MotionSampling(offsets=(1, 2, 3))
"""What ``--motion`` turns on: each sampled frame against the next three."""


@dataclass(frozen=True)
class PrepareConfig:
    frames: FrameSampling = field(default_factory=FrameSampling)
    faces: FaceDetection = field(default_factory=FaceDetection)
    motion: MotionSampling = field(default_factory=MotionSampling)


PRESETS: dict[str, PrepareConfig] = {
    # The study: 1 frame in 30, at most 7, MTCNN confidence > 0.9, no margin, 320x320x3.
    "seed": PrepareConfig(),
}


def preset(name: str, **overrides) -> PrepareConfig:
    """A named preset with some fields replaced (``frames=...``, ``faces=...``, ``motion=...``)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise UnmaskError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    return replace(base, **overrides)


def resolve_device(device: str) -> str:
    """Turn "auto" into "cuda" or "cpu"."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnmaskError("CUDA was asked for but no GPU is available; use --device cpu")
    return device
