"""One video in, a verdict out: the job most users come for.

Frames are spread evenly over the whole video (not just its first seconds, as the
training recipe's 1-in-30 does), and the face pass (``unmask.faces.face_pass``, the same walk
that prepared the model's training faces) finds every confident face, links faces into tracks
(one per person) and, for a model that judges motion, measures each face against the frames
that follow it. Each face is scored by the model, and the video's verdict is the most
suspicious track: one swapped face among honest ones is enough. The record says what the
verdict rests on: frames asked and read, damaged stretches, a still image, and how sure it is
given how many faces it saw.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from unmask import __version__
from unmask.aggregate import AGGREGATES
from unmask.config import CheckSettings, FaceDetection, MotionSampling
from unmask.datasets import VIDEO_SUFFIXES, is_photo
from unmask.errors import UnmaskError, one_line
from unmask.faces.face_pass import Face, FacePass
from unmask.faces.motion import wanted_frames
from unmask.models.io import LoadedModel, load_inference_model
from unmask.video import VideoError, require_file

FAKE, REAL, NO_FACE, ERROR = "FAKE", "REAL", "NO FACE FOUND", "ERROR"


def find_inputs(path: Path) -> list[Path]:
    """What `check` looks at for ``path``: the path itself, or, for a folder, every video and photo
    under it (recursively, in a stable order), by the names a single path is checked as. Entries that
    cannot be read (a broken link, say) are kept, so each gets a record saying why."""
    path = Path(path)
    if not path.is_dir():
        if not (path.exists() or path.is_symlink()):
            raise UnmaskError(f"no such file or folder: {path}")
        return [path]
    return sorted(p for p in path.rglob("*")
                  if (p.suffix.lower() in VIDEO_SUFFIXES or is_photo(p)) and not p.is_dir())


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
    """The verdict record (``to_dict``) plus the face crops, kept for reports."""

    path: str
    verdict: str
    fake_probability: float | None
    certainty: str
    threshold: float
    model: dict
    aggregate: str = ""
    """How a track's face scores became its score (mean, median, max, trimmed-mean)."""
    frames_asked: int = 0
    """Frames the check meant to look at."""
    frames_sampled: int = 0
    """Of those, the frames that decoded and were looked at."""
    damaged_frames: list[list[int]] = field(default_factory=list)
    """[first, last] runs of asked frames that could not be decoded (corrupt or truncated)."""
    still_image: bool = False
    """A photo or a one-frame video: judged by its look alone, with no motion to measure."""
    warnings: list[str] = field(default_factory=list)
    """What the verdict should be read with: missing frames, a still image, little evidence."""
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

    def to_dict(self) -> dict:
        """The verdict record as plain data: what `unmask check --json` prints (the crops left out)."""
        record = asdict(self)
        record.pop("crops")
        return record


SURE_FACES = {"very sure": 8, "fairly sure": 3}
"""The fewest faces in the judged track for each certainty: however far one face's score is
from the threshold, a single face is one look, not evidence enough to be sure."""


def certainty(p_fake: float, threshold: float, faces: int | None = None) -> str:
    """How far the score is from the threshold, in words, relative to the room on that side,
    and capped by the evidence: how many faces the judged track holds (None: no cap)."""
    room = (1.0 - threshold) if p_fake > threshold else threshold
    margin = abs(p_fake - threshold) / room if room > 0 else 1.0
    word = "very sure" if margin > 0.6 else "fairly sure" if margin > 0.3 else "unsure"
    if faces is not None:
        allowed = [level for level, fewest in SURE_FACES.items() if faces >= fewest]
        if word not in allowed and word != "unsure":
            word = allowed[0] if allowed else "unsure"
    return word


def judged_tracks(sizes: dict[int, float], lengths: dict[int, int], min_face_share: float,
                  min_track_share: float) -> set[int]:
    """The tracks worth judging: first those whose faces are not much smaller than the largest
    (background faces go), then of those, the ones not much shorter than the longest left. Never
    empty when there is a track, so a video with faces always gets a verdict."""
    if not sizes:
        return set()
    large = {t for t, size in sizes.items() if size >= min_face_share * max(sizes.values())}
    longest = max(lengths[t] for t in large)
    return {t for t in large if lengths[t] >= min_track_share * longest}


class Checker:
    """Holds the face pass and the model, loaded once (the server keeps one warm).

    Safe to share between threads: decoding runs in parallel, each of the detector's nets takes
    its calls in turn (``OnnxNet``; torch's, on a GPU, need no turns), so one video's detection
    overlaps another's, and the model
    (OpenCV nets, or torch modules whose Grad-CAM hooks are shared state) scores behind a lock.
    The face pass is set up as the model's card says its training faces were made (detector,
    its settings, crop margin and size, motion sampling).
    """

    result_type: type[CheckResult] = CheckResult
    """What ``check`` returns; the Python API's checker returns its ``Result``, which writes its own report."""

    def __init__(self, model: LoadedModel | Path | None = None, settings: CheckSettings = CheckSettings()):
        from unmask.config import resolve_device
        from unmask.faces.detectors import create_detector

        device = resolve_device(settings.device)
        self.model = model if isinstance(model, LoadedModel) else load_inference_model(model, device)
        self.settings = settings
        self.aggregate = settings.aggregate or self.model.card.get("aggregate", "mean")
        self._reduce = AGGREGATES.builder(self.aggregate)  # fails early, with the choices, on a bad name
        card_input = self.model.input
        trained = FaceDetection.from_record(card_input.get("detector", {}))
        # A model trained on face crops taken as given still meets faces as the detector finds them here.
        self.detection = replace(trained, crop="detected", min_confidence=settings.min_confidence,
                                 margin=float(card_input["margin"]),
                                 size=int(card_input["size"]), max_side=settings.max_side, device=device)
        self.warnings = []
        trained_confidence = card_input.get("min_confidence")
        if trained_confidence is not None and abs(float(trained_confidence) - settings.min_confidence) > 1e-9:
            self.warnings.append(f"faces are kept over confidence {settings.min_confidence:g}; the model was "
                                 f"trained on faces over {float(trained_confidence):g}")
        net = getattr(self.model.estimator, "net_", None)
        if net is not None:  # a CNN runs where it is asked to, not where its card's "auto" put it
            net.to(device)
        self._lock = threading.Lock()
        motion = card_input.get("motion") if self.model.needs_motion else None
        if self.model.needs_motion and not motion:
            raise UnmaskError(f"model {self.model.path} judges motion but its card does not say how it was measured")
        # How the model's motion features were measured (None: it judges single frames).
        self._motion = None if motion is None else MotionSampling.from_record(motion)
        self.faces = FacePass(self.detection, self._motion or MotionSampling(), keep="all",
                              track_iou=settings.track_iou, detector=create_detector(self.detection))

    def frames_to_read(self, frame_count: int) -> list[int]:
        """The sampled frames, and their neighbours when the model judges motion."""
        sampled = self.settings.frame_indices(frame_count)
        return sampled if self._motion is None else wanted_frames(sampled, self._motion)

    def model_info(self) -> dict:
        card = self.model.card
        return {"name": self.model.name, "version": f"unmask {__version__}",
                "trained": card.get("training", {}).get("description") or card.get("training", {}).get("store"),
                "path": str(self.model.path)}

    def check(self, path: Path, name: str | None = None, decode_threads: int | None = None) -> CheckResult:
        """Check one video; whatever goes wrong with it gives verdict ERROR with a one-line reason,
        never an exception, so a batch always goes on to the next video.

        ``name``: what the record calls the video (default: the path), e.g. an upload's own
        file name while it is read from a temporary file that must not show. ``decode_threads``:
        FFmpeg's threads for it (default: as many as FFmpeg likes).
        """
        started = time.perf_counter()
        result = self.result_type(path=name or str(path), verdict=NO_FACE, fake_probability=None, certainty="",
                                  threshold=self.model.threshold, model=self.model_info(), aggregate=self.aggregate,
                                  warnings=list(self.warnings))
        try:
            self._check(Path(path), result, decode_threads)
        except VideoError as err:
            result.verdict, result.error = ERROR, str(err).removeprefix(f"{path}: ")
        except Exception as err:  # noqa: BLE001 - one video must never end a batch; the reason is kept
            detail = one_line(err)
            result.verdict, result.error = ERROR, f"could not be checked ({type(err).__name__}{': ' * bool(detail)}{detail})"
        if result.verdict == ERROR:
            result.fake_probability, result.certainty, result.faces, result.tracks, result.crops = None, "", [], [], []
        result.elapsed_s = time.perf_counter() - started
        return result

    def check_many(self, paths: Iterable[Path], ahead: int = 2) -> Iterator[tuple[Path, CheckResult]]:
        """(path, result) for each video, in order, with the next ``ahead`` videos decoding and
        detecting while this one is scored: a folder goes near the speed of decoding, and at most
        ``ahead + 1`` checks hold frames at once. Two ahead keep 2 cores busier than one (docs/results.md,
        "Checking videos": 1.90 cores against 1.77 on the 62 c23 videos). Each video decodes on one thread:
        with several in flight the cores are busy anyway, and FFmpeg's own frame threads would only
        contend with them (``benchmarks/bench_check.py``: less CPU per video, the same results)."""
        with ThreadPoolExecutor(ahead + 1, thread_name_prefix="unmask-check") as pool:
            pending: deque[tuple[Path, Future[CheckResult]]] = deque()
            for path in itertools.chain(paths, [None]):  # None: nothing more to submit, empty the queue
                if path is not None:
                    pending.append((path, pool.submit(self.check, path, decode_threads=1 if ahead else None)))
                while pending and (len(pending) > ahead or path is None):
                    done, future = pending.popleft()
                    yield done, future.result()

    def _check(self, path: Path, result: CheckResult, decode_threads: int | None = None) -> None:
        require_file(path)  # photos too: a broken link or a FIFO is said to be one, and never opened
        found = self.faces.run(path, self.settings.frame_indices, decode_threads)
        info = found.info
        result.frames_asked, result.frames_sampled = len(found.sampled), len(found.read)
        result.damaged_frames = [list(run) for run in found.damaged_ranges()]
        result.frame_count, result.fps, result.duration_s = info.frame_count, info.fps, info.duration
        result.width, result.height = info.width, info.height
        result.still_image = found.photo
        if found.missing:
            runs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in found.damaged_ranges())
            result.warnings.append(f"only {len(found.read)} of the {len(found.sampled)} frames asked for could be "
                                   f"decoded (damaged or missing: frames {runs}); the verdict rests on those read")
        if found.photo:
            result.warnings.append("a still image: judged by the look of its face alone"
                                   + (", with no motion to measure" if self._motion is not None else ""))
        if found.faces:
            self._score(result, found.faces, info.fps)

    def _score(self, result: CheckResult, faces: list[Face], fps: float) -> None:
        """Score the faces, keep the tracks worth judging, and give the verdict."""
        motion = None if self._motion is None else np.stack([face.motion for face in faces])
        with self._lock:
            scores = self.model.fake_probability(np.stack([face.crop for face in faces]), motion)
        if not np.isfinite(scores).all():
            raise UnmaskError("the model gave scores that are not numbers (is the model folder damaged?)")
        records = [FaceScore(track=face.track, frame=face.frame, time=face.frame / fps if fps else 0.0,
                             box=[round(float(v), 1) for v in face.box],
                             detection_confidence=round(float(face.confidence), 4), fake_probability=float(score))
                   for face, score in zip(faces, scores)]
        lengths = {t: sum(f.track == t for f in records) for t in {f.track for f in records}}
        sizes = {t: float(np.median([f.box[2] - f.box[0] for f in records if f.track == t])) for t in lengths}
        keep = judged_tracks(sizes, lengths, self.settings.min_face_share, self.settings.min_track_share)
        tracks = []
        for track in sorted(keep):
            track_scores = np.array([f.fake_probability for f in records if f.track == track])
            tracks.append({"track": track, "faces": int(track_scores.size),
                           "fake_probability": float(self._reduce(track_scores))})
        chosen = [i for i, f in enumerate(records) if f.track in keep]
        result.faces, result.crops = [records[i] for i in chosen], [faces[i].crop for i in chosen]
        result.tracks = sorted(tracks, key=lambda t: -t["fake_probability"])
        worst = result.tracks[0]
        result.fake_probability = worst["fake_probability"]
        result.verdict = FAKE if result.fake_probability > result.threshold else REAL
        result.certainty = certainty(result.fake_probability, result.threshold, worst["faces"])
        if worst["faces"] < SURE_FACES["fairly sure"]:
            result.warnings.append(f"the verdict rests on {worst['faces']} face{'s' if worst['faces'] != 1 else ''}: "
                                   "too little to be sure")

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
