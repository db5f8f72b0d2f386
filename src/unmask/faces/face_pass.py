"""The face pass: one video (or photo) and the frames to look at in, its faces out.

Every command walks a video this one way (``prepare`` into a store, ``check`` to a verdict,
``synth`` through prepare, the benchmarks), so a change to a step (another detector, crop
rule or optical flow) is made once and training and checking cannot silently diverge.

The walk: the sampled frames and, for motion features, the frames after each are decoded in
order and scaled to at most ``FaceDetection.max_side``; as soon as a few sampled frames are
complete with their neighbours, the detector runs on them as one batch, faces over the
confidence threshold are cut out and measured, and those frames are let go. So memory holds
a few frames at a time, whatever the video's length or resolution.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from unmask.config import FaceDetection, MotionSampling
from unmask.datasets import is_photo, read_photo
from unmask.faces.crop import crop_box, crop_face
from unmask.faces.detection import Detection, FaceDetector
from unmask.faces.detectors import create_detector
from unmask.faces.motion import motion_features, neighbours, wanted_frames
from unmask.faces.tracks import link_tracks
from unmask.video import Frame, VideoError, VideoInfo, fitted_size, stream_frames

BATCH_PIXELS = 8 * 1280 * 720
"""Pixels of sampled frames detected together: eight 720p frames (large enough for the detector's
batching to pay), fewer larger ones, so frames held with their neighbours and the detector's
working memory stay bounded (``benchmarks/bench_memory.py``)."""


@dataclass
class Face:
    """One detected face: where it is (in pixels of the video's own frames), its crop, its motion."""

    frame: int
    box: tuple[float, float, float, float]
    confidence: float
    keypoints: np.ndarray
    """(5, 2) float32 (x, y): left eye, right eye, nose, mouth left, mouth right."""
    crop: np.ndarray
    """(size, size, 3) uint8 RGB, cut from the (possibly scaled) frame with the margin."""
    crop_region: tuple[int, int, int, int]
    """The region cut, in pixels of the video's own frames."""
    detections_in_frame: int
    """All the detector found in this frame, below the threshold included."""
    track: int = 0
    motion: np.ndarray | None = None
    """``MOTION_FEATURES`` (all NaN without a later frame), or None when motion is not measured."""


@dataclass
class FacePassResult:
    info: VideoInfo
    sampled: list[int]
    """The frames asked for (within the video's length)."""
    read: list[int]
    """Those of them that decoded."""
    faces: list[Face] = field(default_factory=list)
    photo: bool = False
    """A still image (a photo, or a "video" of one frame): there is no motion to measure."""
    decode_s: float = 0.0
    """Seconds spent reading frames (the rest of the wall time: what detection, motion and crops did not take)."""
    detect_s: float = 0.0
    motion_s: float = 0.0
    crop_s: float = 0.0

    @property
    def missing(self) -> list[int]:
        """Sampled frames that could not be decoded (corrupt stretches, a truncated end)."""
        read = set(self.read)
        return [i for i in self.sampled if i not in read]

    def damaged_ranges(self) -> list[tuple[int, int]]:
        """Runs of consecutive missing sampled frames, as (first, last) frame indices."""
        ranges: list[tuple[int, int]] = []
        position = {frame: k for k, frame in enumerate(self.sampled)}
        for frame in self.missing:
            if ranges and position[frame] == position[ranges[-1][1]] + 1:
                ranges[-1] = (ranges[-1][0], frame)
            else:
                ranges.append((frame, frame))
        return ranges


class FacePass:
    """Finds, cuts and measures the faces of videos with one detector, loaded once.

    ``keep``: "all" faces over the threshold, linked into tracks (``check``), or the "best"
    (most confident) face of each frame (``prepare``, the study's rule).
    ``track_iou``: boxes of consecutive sampled frames that overlap this much are one person.
    """

    def __init__(self, detection: FaceDetection, motion: MotionSampling = MotionSampling(), keep: str = "all",
                 track_iou: float = 0.3, detector: FaceDetector | None = None, threads: int | None = None,
                 decode_threads: int = 0):
        if keep not in ("all", "best"):
            raise ValueError(f"keep must be 'all' or 'best', not {keep!r}")
        self.detection, self.motion, self.keep, self.track_iou = detection, motion, keep, track_iou
        self.detector = detector if detector is not None else create_detector(detection, threads)
        self.threads = threads or os.cpu_count() or 1
        self.decode_threads = decode_threads

    def run(self, path: Path, sampled: Sequence[int] | Callable[[int], Sequence[int]],
            decode_threads: int | None = None) -> FacePassResult:
        """The faces in frames ``sampled`` of ``path`` (a list, or a function of the frame count);
        ``decode_threads``: FFmpeg's threads for this video (None: ``self.decode_threads``).
        Raises ``VideoError`` when the file is not a readable video or photo."""
        started = time.perf_counter()
        given = None
        if is_photo(path):
            info, frames, photo_box = read_photo(Path(path))
            width, height = fitted_size(info.width, info.height, self.detection.max_side)
            scale = width / info.width  # a large photo is bounded like a video frame
            if scale != 1.0:
                frames = [(0, cv2.resize(frames[0][1], (width, height), interpolation=cv2.INTER_AREA))]
            stream, offsets = iter(frames), ()
            sampled_frames = [0]
            if self.detection.crop == "given":
                given = tuple(v * scale for v in photo_box)
        elif self.detection.crop == "given":
            raise VideoError(f"{path}: a video is not a face crop (crops are taken as given only from images)")
        else:
            frame_list: list[int] = []

            def wanted(frame_count: int) -> list[int]:
                chosen = sampled(frame_count) if callable(sampled) else sampled
                frame_list.extend(sorted({i for i in chosen if 0 <= i < frame_count}))
                return wanted_frames(frame_list, self.motion)

            def neighbour_only(index: int) -> bool:
                """Motion looks only at the faces' regions of a frame that is not itself sampled."""
                return index not in frame_list

            threads = self.decode_threads if decode_threads is None else decode_threads
            frames = stream_frames(Path(path), wanted, threads, self.detection.max_side, partial=neighbour_only)
            info, stream, scale, offsets = frames.info, frames.frames, frames.scale, self.motion.offsets
            sampled_frames = frame_list
        result = FacePassResult(info, sampled_frames, [], photo=info.frame_count == 1)
        group_end = {s: max([s, *(s + d for d in offsets if s + d < info.frame_count)]) for s in sampled_frames}
        held: dict[int, Frame] = {}
        ready: list[int] = []
        batch = max(1, BATCH_PIXELS // max(1, round(info.width * scale) * round(info.height * scale)))
        waiting = sorted(sampled_frames)
        for index, image in stream:
            held[index] = image
            while waiting and group_end[waiting[0]] <= index:
                ready.append(waiting.pop(0))
            if len(ready) >= batch:
                self._faces_of(ready, held, scale, result, given)
                ready = []
                held = {i: im for i, im in held.items() if waiting and i >= waiting[0]}  # let go of the rest
        self._faces_of(ready + waiting, held, scale, result, given)
        if self.keep == "all":
            frames_in_order = sorted({f.frame for f in result.faces})
            by_frame = [[f for f in result.faces if f.frame == i] for i in frames_in_order]
            missing = result.missing
            after_gap = [any(before < m < frame for m in missing)  # a damaged stretch since the last faces
                         for before, frame in zip([-1, *frames_in_order], frames_in_order)]
            ids = link_tracks([[np.asarray(f.box) for f in found] for found in by_frame], self.track_iou, after_gap)
            for found, tracks in zip(by_frame, ids):
                for face, track in zip(found, tracks):
                    face.track = track
        result.read.sort()
        result.decode_s = time.perf_counter() - started - result.detect_s - result.motion_s - result.crop_s
        return result

    def _faces_of(self, sampled: list[int], held: dict[int, Frame], scale: float,
                  result: FacePassResult, given: tuple[float, float, float, float] | None = None) -> None:
        """Detect, keep, cut and measure the faces of the ``sampled`` frames among those ``held``; with
        ``given`` (a face crop taken as given), each kept face is cut at that box instead of its own."""
        present = [i for i in sampled if i in held]
        result.read.extend(present)
        if not present:
            return
        began = time.perf_counter()
        found = self.detector.detect([held[i] for i in present])
        result.detect_s += time.perf_counter() - began
        settings = self.detection
        chosen: list[tuple[int, Detection, int]] = []
        for index, detections in zip(present, found):
            kept = [d for d in detections if d.confidence > settings.min_confidence]
            if self.keep == "best" and kept:
                kept = [max(kept, key=lambda d: d.confidence)]
            if given is not None:
                kept = [Detection(given, d.confidence, d.keypoints) for d in kept]
            chosen += [(index, d, len(detections)) for d in kept]
        measured: list[np.ndarray | None] = [None] * len(chosen)
        if self.motion.enabled:
            began = time.perf_counter()
            measured = self._motion_of(chosen, held)
            result.motion_s += time.perf_counter() - began
        began = time.perf_counter()
        for (index, detection, count), motion in zip(chosen, measured):
            image = held[index]
            region = crop_box(detection.box, image.shape, settings.margin)
            result.faces.append(Face(
                frame=index, box=tuple(float(v) / scale for v in detection.box),
                confidence=float(detection.confidence),
                keypoints=(np.asarray(detection.keypoints, dtype=np.float32) / scale).astype(np.float32),
                crop=crop_face(image, detection.box, settings.margin, settings.size),
                crop_region=tuple(int(round(v / scale)) for v in region), detections_in_frame=count,
                motion=motion))
        result.crop_s += time.perf_counter() - began

    def _motion_of(self, chosen: list[tuple[int, Detection, int]], held: dict[int, Frame]) -> list[np.ndarray]:
        """Motion features of the chosen faces, one thread per core (OpenCV's flow runs outside the GIL)."""
        def measure(job: tuple[int, Detection, int]) -> np.ndarray:
            index, detection, _ = job
            return motion_features(neighbours(index, held, self.motion), detection.box, detection.keypoints,
                                   self.detection.margin, self.motion)

        if len(chosen) <= 1:
            return [measure(job) for job in chosen]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(chosen))) as pool:
            return list(pool.map(measure, chosen))
