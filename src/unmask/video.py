"""Read exact frames from a video, and say clearly why a file cannot be read.

Frames are addressed by their index in presentation order. Packets are demuxed first
(cheap: no decoding) to learn the frame count and where the keyframes are; then frames are
decoded sequentially, and the decoder only seeks when the next wanted frame lies beyond a
keyframe that is ahead of the current position, i.e. when seeking skips real work.
FF++ videos have long keyframe intervals, so 7 frames at a step of 30 decode straight through.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from unmask.errors import UnmaskError


class VideoError(UnmaskError):
    """The file is not a readable video (corrupt, truncated to nothing, not a video at all)."""


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int
    """Size of the frames as returned, i.e. after rotation."""
    rotation: int
    """Degrees counter-clockwise that the stored picture is turned to display upright."""

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps else 0.0


@dataclass(frozen=True)
class _Index:
    pts: list[int]
    """Presentation timestamps of all frames, sorted: frame i has pts[i]."""
    keyframes: list[int]
    """Frame indices of keyframes, sorted."""


def _open(path: Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: not a readable video ({err.strerror or err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: contains no video stream")
    return container


def _index(container, stream) -> _Index:
    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.error.FFmpegError:
        pass  # a truncated file: the frames demuxed so far are the frames it has
    pts.sort()
    position = {p: i for i, p in enumerate(pts)}
    return _Index(pts=pts, keyframes=sorted(position[p] for p in keys if p in position))


def _rotation(frame: av.VideoFrame) -> int:
    return int(round(frame.rotation or 0)) % 360


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn the stored picture as its display matrix says, so faces stand upright."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def probe(path: Path) -> VideoInfo:
    """Frame count (from the packets actually present), rate, size and rotation."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        index = _index(container, stream)
        if not index.pts:
            raise VideoError(f"{path}: no video frames could be read (corrupt or truncated)")
        container.seek(index.pts[0], stream=stream, backward=True)
        first = _first_frame(container, stream, path)
        rotation = _rotation(first)
        height, width = (first.height, first.width) if rotation % 180 == 0 else (first.width, first.height)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        return VideoInfo(len(index.pts), fps, width, height, rotation)
    finally:
        container.close()


def _first_frame(container, stream, path: Path) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: cannot decode ({err.strerror or err})") from None
    raise VideoError(f"{path}: no video frames could be decoded")


def read_frames(path: Path, indices: list[int] | Callable[[int], list[int]],
                threads: int = 0) -> tuple[VideoInfo, list[tuple[int, np.ndarray]]]:
    """Decode the frames at ``indices`` (presentation order) as RGB uint8, upright.

    ``indices`` may be a function of the frame count (e.g. evenly spread frames), so the
    file is demuxed once. Indices past the end are dropped; a truncated file yields the
    frames it still has.
    ``threads`` = 0 lets FFmpeg choose. Returns the video's info and (index, image) pairs.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        index = _index(container, stream)
        if not index.pts:
            raise VideoError(f"{path}: no video frames could be read (corrupt or truncated)")
        if callable(indices):
            indices = indices(len(index.pts))
        wanted = sorted({i for i in indices if 0 <= i < len(index.pts)})
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = _decode_wanted(container, stream, index, wanted, path)
        if not frames:
            raise VideoError(f"{path}: no video frames could be decoded (corrupt)")
        rotation = _rotation(frames[0][1])
        images = [(i, _upright(f.to_ndarray(format="rgb24"), _rotation(f))) for i, f in frames]
        height, width = images[0][1].shape[:2]
        return VideoInfo(len(index.pts), fps, width, height, rotation), images
    finally:
        container.close()


def _decode_wanted(container, stream, index: _Index, wanted: list[int], path: Path):
    """Decode forward, seeking to a keyframe only when it lies beyond the current position."""
    frame_of_pts = {p: i for i, p in enumerate(index.pts)}
    found: list[tuple[int, av.VideoFrame]] = []
    position = None  # index of the last decoded frame, None before the first seek
    decoder = None
    for target in wanted:
        key = index.keyframes[bisect.bisect_right(index.keyframes, target) - 1] if index.keyframes else 0
        if position is None or key > position + 1 or target <= position:
            container.seek(index.pts[key], stream=stream, backward=True)
            decoder = container.decode(stream)
        try:
            for frame in decoder:
                position = frame_of_pts.get(frame.pts, position + 1 if position is not None else 0)
                if position == target:
                    found.append((target, frame))
                    break
                if position > target:
                    break
            else:
                return found  # the stream ended early (truncated)
        except av.error.FFmpegError:
            return found  # corrupt data from here on: keep what decoded cleanly
    return found


def write_video(path: Path, frames, fps: int = 25, codec: str = "libx264", rotation: int = 0,
                gop: int | None = None) -> None:
    """Encode RGB uint8 frames to a video file (for samples and test fixtures)."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast"}
        if gop:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for image in frames:
            pixels = np.ascontiguousarray(image[: stream.height, : stream.width])
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
