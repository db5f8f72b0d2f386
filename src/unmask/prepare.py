"""Dataset -> frames -> faces -> face store, for one video and for many.

``process_video`` (the face pass of ``unmask.faces.face_pass``, into a store shard) is the unit of
work: it runs here or on Dask workers alike (a local cluster for ``--workers``, or a real one);
``prepare_dataset`` schedules it over a dataset, resumes where a previous run stopped, and
commits the shards into the store.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from unmask.config import PrepareConfig
from unmask.datasets import LABEL_NAMES, DatasetScan, Video
from unmask.faces.face_pass import FacePass
from unmask.faces.motion import MOTION_COLUMNS, MOTION_FEATURES
from unmask.store import KEYPOINT_COLUMNS, Shard, StoreWriter, write_shard
from unmask.video import VideoError


def make_face_pass(config: PrepareConfig, threads: int | None = None, decode_threads: int = 0) -> FacePass:
    """The face pass for these settings (most confident face per frame, the study's rule);
    ``threads`` caps the detector's and the motion features' CPU threads (one per worker)."""
    return FacePass(config.faces, config.motion, keep="best", threads=threads, decode_threads=decode_threads)


def _video_record(video: Video) -> dict:
    return {
        "video": video.key, "path": str(video.path), "label": video.label, "method": video.method,
        "compression": video.compression, "ids": video.ids, "split": video.split,
    }


def process_video(video: Video, config: PrepareConfig, faces: FacePass) -> Shard:
    """Sample the frames of one video (or take a photo), keep the most confident face of each, crop it.

    A video that cannot be read becomes a record with status "error" and its reason; one
    where no face passes the threshold, status "no-face". Nothing here raises for bad input.
    """
    record = {**_video_record(video), "status": "ok", "reason": "", "frame_count": 0, "frames_read": 0,
              "faces": 0, "decode_s": 0.0, "detect_s": 0.0, "motion_s": 0.0, "store_s": 0.0, "seconds": 0.0}
    size = config.faces.size
    started = time.perf_counter()
    try:
        found = faces.run(video.path, config.frames.indices)
    except VideoError as err:
        record.update(status="error", reason=str(err).removeprefix(f"{video.path}: "))
        record["seconds"] = time.perf_counter() - started
        return Shard(record, [], np.zeros((0, size, size, 3), np.uint8))
    began = time.perf_counter()
    rows = []
    for face in found.faces:
        rows.append({
            "video": video.key, "label": video.label, "method": video.method,
            "compression": video.compression, "source": video.source, "ids": video.ids,
            "split": video.split, "frame": face.frame, **dict(zip(("x1", "y1", "x2", "y2"), face.box)),
            **dict(zip(("crop_x1", "crop_y1", "crop_x2", "crop_y2"), face.crop_region)),
            "confidence": face.confidence,
            **dict(zip(KEYPOINT_COLUMNS, face.keypoints.astype(float).ravel())),
            "n_detections": face.detections_in_frame, "path": str(video.path),
        })
        if face.motion is not None:
            rows[-1].update(zip(MOTION_COLUMNS, (None if np.isnan(v) else float(v) for v in face.motion)))
    crops = np.stack([face.crop for face in found.faces]) if found.faces else np.zeros((0, size, size, 3), np.uint8)
    record.update(
        frame_count=found.info.frame_count, frames_read=len(found.read), faces=len(rows),
        status="ok" if rows else "no-face",
        reason="" if rows else f"no face with confidence over {config.faces.min_confidence} in {len(found.read)} frame(s)",
        decode_s=found.decode_s, detect_s=found.detect_s, motion_s=found.motion_s,
    )
    record["store_s"] = found.crop_s + time.perf_counter() - began
    record["seconds"] = time.perf_counter() - started
    return Shard(record, rows, crops)


def process_and_write(video: Video, config: PrepareConfig, faces: FacePass, shards_dir: Path) -> dict:
    """Process one video and write its shard; returns the video record (small, cheap to send)."""
    shard = process_video(video, config, faces)
    began = time.perf_counter()
    write_shard(shards_dir, shard)
    shard.video["store_s"] += time.perf_counter() - began
    shard.video["seconds"] += time.perf_counter() - began
    return shard.video


@dataclass
class PrepareSummary:
    """What a prepare run did, and the state of the whole store after it."""

    videos: pd.DataFrame
    """One row per video of the store (this run's and earlier runs')."""
    processed: int
    already_done: int
    wall_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def videos_per_s(self) -> float:
        return self.processed / self.wall_s if self.wall_s else 0.0

    def capture(self) -> dict[str, dict[str, float]]:
        """Frames read, faces kept and capture rate per class (the study: 99.77% fake, 100% real)."""
        out = {}
        for label, group in self.videos.groupby("label"):
            frames, faces = int(group["frames_read"].sum()), int(group["faces"].sum())
            out[LABEL_NAMES[int(label)]] = {
                "videos": len(group), "frames": frames, "faces": faces,
                "capture_rate": faces / frames if frames else 0.0,
            }
        return out

    def failures(self) -> pd.DataFrame:
        return self.videos[self.videos["status"] != "ok"][["video", "status", "reason"]]

    def to_dict(self) -> dict:
        return {
            "videos": len(self.videos), "processed_this_run": self.processed,
            "already_done": self.already_done, "wall_s": self.wall_s, "videos_per_s": self.videos_per_s,
            "status_counts": self.videos["status"].value_counts().to_dict(),
            "per_class": self.capture(), "skipped": self.failures().to_dict("records"),
            "problems": self.problems,
        }


def store_settings(config: PrepareConfig) -> dict:
    """What a store records about how it was made (a re-run must use the same)."""
    settings = asdict(config)
    settings["faces"].pop("device")
    if config.motion.enabled:  # which features: a store measured with another set cannot be resumed
        settings["motion_features"] = list(MOTION_FEATURES)
    else:  # stores made before motion features existed stay resumable
        settings.pop("motion")
    return settings


def prepare_dataset(
    scan: DatasetScan,
    out: Path,
    config: PrepareConfig,
    on_video: Callable[[dict], None] | None = None,
    runner: Callable[[list[Video], Path], Iterable[dict]] | None = None,
) -> PrepareSummary:
    """Process every video of ``scan`` not already in the store at ``out``, then commit.

    ``runner`` runs the videos elsewhere (``unmask.distributed.cluster_runner``: worker
    processes of a local Dask cluster, or a real cluster); it gets the videos to do and the
    shards folder, and yields one video record per finished video. None: one by one, here.
    """
    started = time.perf_counter()
    writer = StoreWriter(out, store_settings(config))
    done = writer.done()
    todo = [v for v in scan.videos if v.key not in done]
    run = runner or (lambda videos, shards: _run_here(videos, shards, config))
    processed = 0
    for record in run(todo, writer.shards):
        processed += 1
        if on_video:
            on_video(record)
    store = writer.commit()
    return PrepareSummary(
        videos=store.videos, processed=processed, already_done=len(scan.videos) - len(todo),
        wall_s=time.perf_counter() - started, problems=list(scan.problems),
    )


def _run_here(videos: list[Video], shards: Path, config: PrepareConfig) -> Iterable[dict]:
    if not videos:
        return
    faces = make_face_pass(config)
    for video in videos:
        yield process_and_write(video, config, faces, shards)
