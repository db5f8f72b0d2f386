"""One video in, a verdict out: the job most users come for.

Frames are spread evenly over the whole video (not just its first seconds, as the
training recipe's 1-in-30 does), every confident face is detected, faces are linked
into tracks (one per person), each face is scored by the model, and the video's
verdict is the most suspicious track: one swapped face among honest ones is enough.
A model that also judges motion (its card says which neighbouring frames) gets each face's
motion residual features, measured on the frames that follow each sampled one.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unmask import __version__
from unmask.config import MotionSampling, resolve_device
from unmask.errors import UnmaskError
from unmask.evaluate import AGGREGATES
from unmask.faces.crop import crop_face
from unmask.models.io import LoadedModel, load_model
from unmask.motion import motion_features_of_faces, neighbours, wanted_frames
from unmask.video import read_frames

FAKE, REAL, NO_FACE, ERROR = "FAKE", "REAL", "NO FACE FOUND", "ERROR"


@dataclass(frozen=True)
class CheckSettings:
    """How a video is looked at. Defaults favour a steady verdict in about a second."""

    frames: int = 16
    """Frames spread evenly over the video. The mean of 16 face scores varies far less than
    of the training recipe's 7, and 16 frames of 720p (with the neighbours a motion model also
    reads) decode and score in under 2 seconds on 2 cores."""
    min_confidence: float = 0.9
    """Faces the detector is less sure of are ignored (as in training)."""
    min_face_size: int = 40
    track_iou: float = 0.3
    """Faces in consecutive sampled frames whose boxes overlap this much are one person."""
    min_track_share: float = 0.2
    min_face_share: float = 0.5
    """Tracks whose faces are smaller than this share of the largest track's face size are
    background (a TV screen in a studio, a poster) and are not judged."""
    """Tracks seen in fewer than this share of the longest track's frames are dropped
    (a poster on the wall, a one-frame false detection)."""
    aggregate: str | None = None
    """Face scores -> track score: mean, median, max, trimmed-mean (None: the model card's)."""
    device: str = "auto"

    def frame_indices(self, frame_count: int) -> list[int]:
        count = min(self.frames, frame_count)
        return sorted({int(round(i)) for i in np.linspace(0, frame_count - 1, count)}) if count else []


@dataclass
class FaceScore:
    track: int
    frame: int
    time: float
    box: list[float]
    detection_confidence: float
    fake_probability: float


@dataclass
class CheckResult:
    """The verdict record (``to_json``) plus the face crops, kept for reports."""

    path: str
    verdict: str
    fake_probability: float | None
    certainty: str
    threshold: float
    model: dict
    aggregate: str = ""
    """How a track's face scores became its score (mean, median, max, trimmed-mean)."""
    frames_sampled: int = 0
    frame_count: int = 0
    fps: float = 0.0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    faces: list[FaceScore] = field(default_factory=list)
    tracks: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str | None = None
    crops: list[np.ndarray] = field(default_factory=list, repr=False)
    """The scored crops, in the order of ``faces`` (not part of the JSON record)."""

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("crops")
        return record


def certainty(p_fake: float, threshold: float) -> str:
    """How far the score is from the threshold, in words, relative to the room on that side."""
    room = (1.0 - threshold) if p_fake > threshold else threshold
    margin = abs(p_fake - threshold) / room if room > 0 else 1.0
    return "very sure" if margin > 0.6 else "fairly sure" if margin > 0.3 else "unsure"


def link_tracks(boxes_per_frame: list[list[np.ndarray]], min_iou: float) -> list[list[int]]:
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


class Checker:
    """Holds the detector and the model, loaded once (the server keeps one warm).

    Safe to share between threads: decoding runs in parallel, while the detector and the
    model (torch modules, whose Grad-CAM hooks are shared state) take turns behind a lock.
    """

    def __init__(self, model: LoadedModel | Path | None = None, settings: CheckSettings = CheckSettings()):
        from unmask.faces.mtcnn import MTCNN

        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.settings = settings
        self.aggregate = settings.aggregate or self.model.card.get("aggregate", "mean")
        self._reduce = AGGREGATES.builder(self.aggregate)  # fails early, with the choices, on a bad name
        device = resolve_device(settings.device)
        self.detector = MTCNN(min_face_size=settings.min_face_size, device=device)
        net = getattr(self.model.estimator, "net_", None)
        if net is not None:  # a CNN runs where it is asked to, not where its card's "auto" put it
            net.to(device)
        self._lock = threading.Lock()
        motion = self.model.input.get("motion") if self.model.needs_motion else None
        if self.model.needs_motion and not motion:
            raise UnmaskError(f"model {self.model.path} judges motion but its card does not say how it was measured")
        # How the model's motion features were measured (None: it judges single frames).
        self._motion = None if motion is None else MotionSampling.from_record(motion)

    def frames_to_read(self, frame_count: int) -> list[int]:
        """The sampled frames, and their neighbours when the model judges motion."""
        sampled = self.settings.frame_indices(frame_count)
        return sampled if self._motion is None else wanted_frames(sampled, self._motion)

    def model_info(self) -> dict:
        card = self.model.card
        return {"name": self.model.name, "version": f"unmask {__version__}",
                "trained": card.get("training", {}).get("description") or card.get("training", {}).get("store"),
                "path": str(self.model.path)}

    def check(self, path: Path, name: str | None = None) -> CheckResult:
        """Check one video; an unreadable file gives verdict ERROR with the reason, not an exception.

        ``name``: what the record calls the video (default: the path), e.g. an upload's own
        file name while it is read from a temporary file that must not show.
        """
        started = time.perf_counter()
        result = CheckResult(path=name or str(path), verdict=NO_FACE, fake_probability=None, certainty="",
                             threshold=self.model.threshold, model=self.model_info(), aggregate=self.aggregate)
        try:
            info, decoded = read_frames(Path(path), self.frames_to_read)
        except UnmaskError as err:
            result.verdict, result.error = ERROR, str(err).removeprefix(f"{path}: ")
            result.elapsed_s = time.perf_counter() - started
            return result
        sampled = set(self.settings.frame_indices(info.frame_count))
        frames = [(index, image) for index, image in decoded if index in sampled]
        result.frames_sampled, result.frame_count = len(frames), info.frame_count
        result.fps, result.duration_s = info.fps, info.duration
        result.width, result.height = info.width, info.height
        with self._lock:
            self._score(result, frames, dict(decoded), info.fps)
        result.elapsed_s = time.perf_counter() - started
        return result

    def _score(self, result: CheckResult, frames: list[tuple[int, np.ndarray]], decoded: dict[int, np.ndarray],
               fps: float) -> None:
        """Detect, track and score the faces of the sampled ``frames``; ``decoded`` also holds
        their neighbours when the model judges motion."""
        settings, card_input, motion = self.settings, self.model.input, self._motion
        margin, size = float(card_input["margin"]), int(card_input["size"])
        detections = self.detector.detect([image for _, image in frames])
        kept = [[d for d in found if d.confidence > settings.min_confidence] for found in detections]
        track_ids = link_tracks([[np.asarray(d.box) for d in found] for found in kept], settings.track_iou)
        faces, crops, movements = [], [], []
        for (index, image), found, ids in zip(frames, kept, track_ids):
            for detection, track in zip(found, ids):
                crops.append(crop_face(image, detection.box, margin, size))
                if motion is not None:
                    movements.append((neighbours(index, decoded, motion), detection.box, detection.keypoints))
                faces.append(FaceScore(track=track, frame=index, time=index / fps if fps else 0.0,
                                       box=[round(float(v), 1) for v in detection.box],
                                       detection_confidence=round(float(detection.confidence), 4),
                                       fake_probability=0.0))
        if not faces:
            return
        measured = None if motion is None else motion_features_of_faces(movements, margin, motion)
        scores = self.model.fake_probability(np.stack(crops), measured)
        for face, score in zip(faces, scores):
            face.fake_probability = float(score)
        lengths = np.bincount([f.track for f in faces])
        sizes = np.zeros(len(lengths))
        for t in range(len(lengths)):
            sizes[t] = np.median([f.box[2] - f.box[0] for f in faces if f.track == t] or [0.0])
        keep_tracks = {t for t, n in enumerate(lengths)
                       if n >= settings.min_track_share * lengths.max()
                       and sizes[t] >= settings.min_face_share * sizes.max()}
        tracks = []
        for track in sorted(keep_tracks):
            track_scores = np.array([f.fake_probability for f in faces if f.track == track])
            tracks.append({"track": track, "faces": int(track_scores.size),
                           "fake_probability": float(self._reduce(track_scores))})
        chosen = [i for i, f in enumerate(faces) if f.track in keep_tracks]
        result.faces, result.crops = [faces[i] for i in chosen], [crops[i] for i in chosen]
        result.tracks = sorted(tracks, key=lambda t: -t["fake_probability"])
        worst = result.tracks[0]["fake_probability"]
        result.fake_probability = worst
        result.verdict = FAKE if worst > result.threshold else REAL
        result.certainty = certainty(worst, result.threshold)

    def heatmaps(self, crops: list[np.ndarray]) -> np.ndarray | None:
        """``face_heatmaps`` of this checker's model, taking turns with the other threads."""
        with self._lock:
            return face_heatmaps(self.model, crops)


def face_heatmaps(model: LoadedModel, crops: list[np.ndarray]) -> np.ndarray | None:
    """Grad-CAM maps (N, h, w) in [0, 1] of what drove each face's fake score, or None for
    model kinds without them (classical models on hand-made features)."""
    gradcam = getattr(model.estimator, "gradcam", None)
    if gradcam is None or not crops:
        return None
    return gradcam(np.stack(crops))
