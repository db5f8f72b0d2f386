"""Every setting of the pipeline as a typed dataclass with a documented default.

The study's settings are the ``seed`` preset; nothing else in the code hard-codes them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

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
class MTCNNSettings:
    """The MTCNN detector's own settings (``unmask.faces.mtcnn``)."""

    min_face_size: int = 40
    """Smallest face, in pixels of the frame it is searched in, that the detector looks for. Larger is faster."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """P-Net, R-Net and O-Net score thresholds (the usual MTCNN defaults)."""


CROPS = ("detected", "given")
"""What ``FaceDetection.crop`` may name."""


@dataclass(frozen=True)
class FaceDetection:
    """How faces are found and cut out."""

    detector: str = "mtcnn"
    """Face detector by name (``unmask.faces.detectors.DETECTORS``)."""
    mtcnn: MTCNNSettings = field(default_factory=MTCNNSettings)
    """MTCNN's settings; another detector brings its own settings class and field beside this one."""
    min_confidence: float = 0.9
    """Keep a face only if the detector's confidence is over this (the study: 0.9)."""
    margin: float = 0.0
    """Extra border around the box, as a fraction of the box size on each side (the study: 0)."""
    size: int = 320
    """Side of the square crop in pixels (the study: 320, so 320x320x3)."""
    max_side: int | None = 1920
    """Frames whose longer side is over this are scaled down to it as they are decoded, and faces are
    found in and cut from the scaled frame: memory stays bounded whatever the resolution (a 4K RGB frame
    is 25 MB, an 8K one 100 MB). 1920 leaves every video up to 1080p, FF++ included, as it is.
    None: frames at their own size."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda"."""
    crop: str = "detected"
    """Where a face's crop comes from: "detected", the detector's box (plus ``margin``); or "given", for
    face-image sets whose images are face crops already (the DFDC faces): the image itself, the detector
    still run on it for the confidence and keypoints, so the same faces are kept as with "detected" and
    only the framing differs. ``check`` always detects: a video is never a crop."""

    def __post_init__(self) -> None:
        if self.max_side is not None and self.max_side < 64:
            raise UnmaskError(f"the largest frame side must be at least 64 pixels, got {self.max_side}")
        if self.crop not in CROPS:
            raise UnmaskError(f"unknown crop {self.crop!r}; choose one of: {', '.join(CROPS)}")

    def detector_settings(self) -> dict:
        """The chosen detector's own settings, as plain data (what a store or a model card records)."""
        return asdict(getattr(self, self.detector.replace("-", "_")))

    @classmethod
    def from_record(cls, record: dict) -> FaceDetection:
        """From what a store or a model card keeps (JSON has lists, not tuples); records written
        before the detector seam (``min_face_size`` and ``thresholds`` at the top) read as MTCNN's."""
        record = dict(record)
        mtcnn = dict(record.pop("mtcnn", {}))
        for key in ("min_face_size", "thresholds"):
            if key in record:
                mtcnn[key] = record.pop(key)
        if "thresholds" in mtcnn:
            mtcnn["thresholds"] = tuple(mtcnn["thresholds"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known}, mtcnn=MTCNNSettings(**mtcnn))


FLOWS = ("dis-ultrafast", "dis-fast", "dis-medium")
"""The optical flows ``MotionSampling.flow`` may name."""


@dataclass(frozen=True)
class MotionSampling:
    """Neighbouring frames read beside each sampled frame for the motion residual features
    (``unmask.faces.motion``). Off by default: the study had none."""

    offsets: tuple[int, ...] = ()
    """Frames after each sampled frame to compare it with (``--motion``: 1, 2, 3); empty: off."""
    size: int = 256
    """Side, in pixels, that the face region is resized to before optical flow is measured."""
    flow: str = "dis-fast"
    """Optical flow: OpenCV's DIS (Kroeger et al. 2016) at preset ultrafast, fast or medium. "fast" was
    chosen for its accuracy per second; docs/commands.md's "unmask prepare" section gives the trade-off."""

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
    """Turn "auto" into "cuda" or "cpu". torch is asked only where a GPU driver shows or CUDA is
    named: importing it takes seconds, more than checking a short video on a CPU."""
    if device == "cpu" or (device == "auto" and not _gpu_driver()):
        return "cpu"
    try:
        import torch
    except ImportError:
        torch = None
    if device == "auto":
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and (torch is None or not torch.cuda.is_available()):
        raise UnmaskError("CUDA was asked for but no GPU is available; use --device cpu")
    return device


def _gpu_driver() -> bool:
    """Whether a GPU driver torch could use might be here: NVIDIA's or ROCm's device files (Linux,
    WSL); elsewhere torch is asked."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg"))


@dataclass(frozen=True)
class CheckSettings:
    """How a video is looked at. Defaults favour a steady verdict in about a second (see the
    "Checking videos" table of docs/results.md for what they cost)."""

    frames: int = 16
    """Frames spread evenly over the video: the mean of 16 face scores varies far less than of
    the training recipe's 7."""
    min_confidence: float = 0.9
    """Faces the detector is less sure of are ignored (as in training; a model card that says
    otherwise gets a warning in the record)."""
    track_iou: float = 0.3
    """Faces in consecutive sampled frames whose boxes overlap this much are one person."""
    min_face_share: float = 0.5
    """Tracks whose faces are smaller than this share of the largest track's face size are
    background (a TV screen in a studio, a poster) and are not judged."""
    min_track_share: float = 0.2
    """Of the tracks left, those seen in fewer than this share of the longest one's frames are
    dropped (a one-frame false detection)."""
    aggregate: str | None = None
    """Face scores -> track score: mean, median, max, trimmed-mean (None: the model card's)."""
    max_side: int | None = 1920
    """Frames larger than this are scaled down as they are decoded (``FaceDetection.max_side``)."""
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise UnmaskError(f"frames must be at least 1, got {self.frames}")
        for name in ("min_confidence", "track_iou", "min_face_share", "min_track_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UnmaskError(f"{name} must lie between 0 and 1, got {getattr(self, name)}")

    def frame_indices(self, frame_count: int) -> list[int]:
        import numpy as np  # only when frames are chosen: importing the settings stays cheap

        count = min(self.frames, frame_count)
        return sorted({int(round(i)) for i in np.linspace(0, frame_count - 1, count)}) if count else []


CHECK_MEMORY_MB = 700
"""The most one check holds beyond the loaded models, with frames bounded to 1920 px; an 8K video,
the worst case, stays under it (``benchmarks/bench_memory.py``, docs/safety.md)."""


@dataclass(frozen=True)
class ServeSettings:
    """The limits of `unmask serve`. Each bounds what clients can hold: disk (uploads waiting
    as files), the pool (checks), time (an upload that stalls, trickles or crawls is cut off), and
    each client address's share of the upload slots."""

    max_upload_mb: float = 200
    """Largest video accepted; a bigger one is 413 without reading the body."""
    workers: int = 2
    """Videos checked at the same time."""
    max_uploads: int = 16
    """Uploads being received at once; more get 503 at once."""
    upload_headroom: int = 4
    """Upload slots kept for client addresses not already sending a video: an address with an
    upload in progress cannot take one of the last 4 free slots (its request gets 429 at once), so
    one address holds at most ``max_uploads - upload_headroom`` of them and others always get in.
    Behind a reverse proxy every client has the proxy's address: set it to 0 there. 0: no headroom."""
    max_queued: int = 16
    """Checks waiting for or running on the pool; more get 503 at once."""
    upload_timeout_s: float = 600
    """Longest one upload may take (200 MB at about 3 Mbit/s); a slower one gets 408."""
    stall_timeout_s: float = 20
    """Longest wait for the next piece of an upload; a client that stalls gets 408."""
    min_upload_rate_kb: float = 10
    """Slowest an upload may arrive, in kB/s (1000 bytes), averaged over the last ``rate_window_s``:
    a trickle of bytes never stalls, so without a floor it holds its slot until ``upload_timeout_s``.
    10 kB/s (80 kbit/s) is far below any working connection. 0: no floor."""
    rate_window_s: float = 10
    """Seconds the upload rate is averaged over; an upload is first judged one window after it starts."""
    upload_dir: Path | None = None
    """Where uploads wait while checked (None: the system's temporary folder)."""
    memory_budget_mb: float = 1500
    """Memory that checks in progress may hold together, beyond the loaded models: at most
    ``memory_budget_mb // CHECK_MEMORY_MB`` run at once (never more than ``workers``, at least one)."""

    def __post_init__(self) -> None:
        if self.memory_budget_mb <= 0:
            raise UnmaskError(f"the memory budget must be positive, got {self.memory_budget_mb} MB")
        if self.max_upload_mb <= 0:
            raise UnmaskError(f"the upload limit must be positive, got {self.max_upload_mb} MB")
        if min(self.workers, self.max_uploads, self.max_queued) < 1:
            raise UnmaskError("workers, max_uploads and max_queued must be at least 1")
        if self.upload_headroom < 0:
            raise UnmaskError(f"the upload headroom cannot be negative, got {self.upload_headroom}")
        if self.upload_timeout_s <= 0 or self.stall_timeout_s <= 0 or self.rate_window_s <= 0:
            raise UnmaskError("the upload and stall timeouts and the rate window must be positive")
        if self.min_upload_rate_kb < 0:
            raise UnmaskError(f"the upload rate floor cannot be negative, got {self.min_upload_rate_kb} kB/s")
        if self.upload_dir is not None and not Path(self.upload_dir).is_dir():
            raise UnmaskError(f"upload folder {self.upload_dir} does not exist")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def concurrent_checks(self) -> int:
        """Checks run at once: the workers, as far as the memory budget allows."""
        return max(1, min(self.workers, int(self.memory_budget_mb // CHECK_MEMORY_MB)))
