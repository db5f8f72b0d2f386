"""Read exact frames from a video, and say clearly why a file cannot be read.

Frames are addressed by their index in presentation order. Packets are demuxed first
(cheap: no decoding) to learn the frame count and where the keyframes are; then frames are
decoded sequentially, and the decoder only seeks when the next wanted frame lies beyond a
keyframe that is ahead of the current position, i.e. when seeking skips real work.
FF++ videos have long keyframe intervals, so 7 frames at a step of 30 decode straight through.
On the way, H.264 pictures that no other picture refers to (x264's non-reference B-frames, 45% of
an FF++ c23 video) are not decoded unless wanted: dropping them leaves every other frame's pixels
as they are (tests/test_video.py) and saves a quarter of the CPU time of decoding check's frames.

Converting a decoded picture to RGB can cost more than decoding it (FF++'s yuv444p frames). A
caller that will only look at part of some frames (motion measures each face's region in the
frames after it) asks for those as ``PartialFrame``: kept in the decoder's pixel format,
converted one region at a time, to the same pixels as the whole frame would have.
"""
from __future__ import annotations

import bisect
import itertools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from unmask.errors import UnmaskError
from unmask.util import NOT_REGULAR


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
    unreferenced: frozenset[int]
    """Presentation timestamps of the pictures no other picture is predicted from (safe to skip)."""


def require_file(path: Path) -> None:
    """Refuse, with a VideoError saying why in one line, what is not a non-empty regular file: a
    missing path, a broken link, a FIFO (opening one would wait forever), a folder, an empty file."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise VideoError(f"{path}: a broken link (to {os.readlink(path)}, which does not exist)")
        raise VideoError(f"{path}: no such file")
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise VideoError(f"{path}: {NOT_REGULAR.get(stat.S_IFMT(info.st_mode), 'not a regular file')}, not a video file")
    if info.st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")


def open_video(path: Path) -> av.container.InputContainer:
    """The file opened for reading its video stream, or a VideoError saying in one line why it cannot be."""
    path = Path(path)
    require_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        size = _refused_y4m_size(path)
        if size is not None:
            raise VideoError(f"{path}: its frame size, {size[0]}x{size[1]}, is refused (larger than FFmpeg "
                             "decodes)") from None
        raise VideoError(f"{path}: not a readable video ({err.strerror or err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: contains no video stream")
    return container


def _refused_y4m_size(path: Path) -> tuple[int, int] | None:
    """The frame size a YUV4MPEG2 header declares when FFmpeg refuses pictures that large (its
    av_image_check_size rule); FFmpeg refuses the file then without saying why (its error is EBUSY)."""
    with path.open("rb") as handle:
        header = handle.readline(256).split()
    if not header or header[0] != b"YUV4MPEG2":
        return None
    fields = {token[:1]: token[1:] for token in header[1:]}
    try:
        width, height = int(fields[b"W"]), int(fields[b"H"])
    except (KeyError, ValueError):
        return None
    too_large = width <= 0 or height <= 0 or (8 * width + 1024) * (height + 128) >= 2**31 - 1
    return (width, height) if too_large else None


def _nal_length_size(stream) -> int | None:
    """Bytes of the length before each NAL unit of an H.264 stream stored as in MP4 / MKV
    ("avcC" extradata); None for other codecs and for start-code (Annex B) streams."""
    extradata = stream.codec_context.extradata
    if stream.codec_context.name != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


SKIPPABLE_NALS = (9, 12)
"""H.264 NAL unit types that may share a packet with a skipped picture: access unit delimiter, filler."""


def _unreferenced(data: bytes, length_size: int) -> bool:
    """Whether a packet holds only slices of a non-reference picture (nal_ref_idc 0; ITU-T H.264
    7.4.1: no other picture is predicted from it). Anything else, or a malformed packet, is kept."""
    at, slices = 0, 0
    while at + length_size < len(data):
        size = int.from_bytes(data[at:at + length_size], "big")
        header = data[at + length_size]
        if header & 0x1F == 1 and not header & 0x60:
            slices += 1
        elif header & 0x1F not in SKIPPABLE_NALS:
            return False
        at += length_size + size
    return slices > 0 and at == len(data)


def _index(container, stream) -> _Index:
    pts, keys, unreferenced = [], [], set()
    length_size = _nal_length_size(stream)
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
            elif length_size and _unreferenced(bytes(packet), length_size):
                unreferenced.add(packet.pts)
    except av.error.FFmpegError:
        pass  # a truncated file: the frames demuxed so far are the frames it has
    pts.sort()
    position = {p: i for i, p in enumerate(pts)}
    return _Index(pts=pts, keyframes=sorted(position[p] for p in keys if p in position),
                  unreferenced=frozenset(unreferenced))


def _rotation(frame: av.VideoFrame) -> int:
    return int(round(frame.rotation or 0)) % 360


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn the stored picture as its display matrix says, so faces stand upright."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def probe(path: Path) -> VideoInfo:
    """Frame count (from the packets actually present), rate, size and rotation."""
    container = open_video(path)
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


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, keeping the aspect ratio, so the longer side is at most
    ``max_side`` (even sides, as video codecs want); unchanged when it already fits or ``max_side`` is None."""
    longest = max(width, height)
    if not max_side or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


CHROMA_SHIFT = {"yuv420p": (1, 1), "yuvj420p": (1, 1), "yuv422p": (1, 0), "yuvj422p": (1, 0),
                "yuv444p": (0, 0), "yuvj444p": (0, 0)}
"""Planar 8-bit formats a ``PartialFrame`` converts by region, with their chroma planes' (x, y)
subsampling as bit shifts. Others (high bit depth, packed, NV12) are converted whole."""


class PartialFrame:
    """A decoded picture kept in its own pixel format; ``region`` converts only the part asked for.

    Exact: a region is cut from the planes on chroma-aligned, even bounds and converted by the
    same FFmpeg conversion with the frame's colour tags, so its pixels equal those of the whole
    frame converted (tests/test_video.py, over random regions of each format in ``CHROMA_SHIFT``)."""

    def __init__(self, frame: av.VideoFrame):
        self.frame = frame
        self.shape = (frame.height, frame.width, 3)

    @staticmethod
    def supports(frame: av.VideoFrame) -> bool:
        """Upright frames of the formats in ``CHROMA_SHIFT``, with even sides where chroma is subsampled
        (FFmpeg converts odd-sized 4:2:0 pictures another way)."""
        shift = CHROMA_SHIFT.get(frame.format.name)
        if shift is None or _rotation(frame):
            return False
        return not (frame.width % 2 * shift[0] or frame.height % 2 * shift[1])

    def __getitem__(self, rows_cols: tuple[slice, slice]) -> np.ndarray:
        """``frame[top:bottom, left:right]``, as of an RGB image: callers that cut regions need not
        know which kind of frame they hold."""
        rows, cols = rows_cols
        if rows.step not in (None, 1) or cols.step not in (None, 1):
            raise TypeError("a PartialFrame is cut by two plain slices, [top:bottom, left:right]")
        top, bottom, _ = rows.indices(self.shape[0])
        left, right, _ = cols.indices(self.shape[1])
        return self.region(left, top, right, bottom)

    def region(self, left: int, top: int, right: int, bottom: int) -> np.ndarray:
        """RGB uint8 pixels [top:bottom, left:right] of the frame (bounds inside it), converted on
        the calling thread (a region is too small for FFmpeg's slice threads to pay)."""
        frame = self.frame
        shift_x, shift_y = CHROMA_SHIFT[frame.format.name]
        x0, y0 = left & ~1, top & ~1
        x1, y1 = min(frame.width, right + (right & 1)), min(frame.height, bottom + (bottom & 1))
        part = av.VideoFrame(x1 - x0, y1 - y0, frame.format.name)
        for plane, (source, target) in enumerate(zip(frame.planes, part.planes)):
            sx, sy = (shift_x, shift_y) if plane else (0, 0)
            pixels = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)
            out = np.frombuffer(target, np.uint8).reshape(target.height, target.line_size)
            out[:, :target.width] = pixels[y0 >> sy:(y0 >> sy) + target.height, x0 >> sx:(x0 >> sx) + target.width]
        part.colorspace, part.color_range = frame.colorspace, frame.color_range
        rgb = VideoReformatter().reformat(part, format="rgb24", threads=1).to_ndarray()
        return rgb[top - y0:bottom - y0, left - x0:right - x0]


Frame = np.ndarray | PartialFrame


@dataclass
class FrameStream:
    """Frames decoded one by one, in index order: a caller that drops each frame after use holds
    only a few at a time, whatever the video's resolution or length. ``missing`` lists the wanted
    frames that could not be decoded (corrupt stretches, a truncated end), filled as it goes."""

    info: VideoInfo
    wanted: list[int]
    scale: float
    """Returned frame side / the video's own (1.0 unless ``max_side`` shrank it)."""
    frames: Iterator[tuple[int, Frame]]
    """(index, RGB uint8 image), or a ``PartialFrame`` for the indices ``partial`` chose where the
    frame allows it (unscaled, upright, a format in ``CHROMA_SHIFT``)."""
    missing: list[int]


def stream_frames(path: Path, indices: list[int] | Callable[[int], list[int]], threads: int = 0,
                  max_side: int | None = None, partial: Callable[[int], bool] | None = None) -> FrameStream:
    """Decode the frames at ``indices`` (presentation order) as RGB uint8, upright, lazily.

    ``indices`` may be a function of the frame count (e.g. evenly spread frames), so the file is
    demuxed once. Indices past the end are dropped. Frames whose longer side exceeds ``max_side``
    are scaled down by FFmpeg as they are converted (area averaging), so a full-size RGB copy of a
    4K or 8K frame never exists. ``threads`` = 0 lets FFmpeg choose, for decoding and converting.
    Frames whose index ``partial`` accepts come as ``PartialFrame`` when they can. Raises
    VideoError when not a single wanted frame decodes.
    """
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        # Frame threading keeps a frame in flight per thread: at 8K that is 600 MB of decoder
        # memory against 400 MB with slice threading, so frames larger than the bound use slices.
        large = bool(max_side) and max(stream.codec_context.width, stream.codec_context.height) > max_side
        stream.thread_type = "SLICE" if large else "AUTO"
        stream.thread_count = threads
        index = _index(container, stream)
        if not index.pts:
            raise VideoError(f"{path}: no video frames could be read (corrupt or truncated)")
        if callable(indices):
            indices = indices(len(index.pts))
        wanted = sorted({i for i in indices if 0 <= i < len(index.pts)})
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        missing: list[int] = []
        decoded = _decode_wanted(container, stream, index, wanted, missing)
        first = next(decoded, None)
    except BaseException:
        container.close()
        raise
    if first is None:
        container.close()
        raise VideoError(f"{path}: no video frames could be decoded (corrupt)")
    rotation = _rotation(first[1])
    stored_w, stored_h = first[1].width, first[1].height
    out_w, out_h = fitted_size(stored_w, stored_h, max_side)
    width, height = (stored_w, stored_h) if rotation % 180 == 0 else (stored_h, stored_w)

    def convert() -> Iterator[tuple[int, Frame]]:
        reformatter = VideoReformatter()  # one conversion context for the whole stream
        try:
            for i, frame in itertools.chain([first], decoded):
                same_size = (out_w, out_h) == (frame.width, frame.height)
                if same_size and partial is not None and partial(i) and PartialFrame.supports(frame):
                    yield i, PartialFrame(frame)
                    continue
                size = {} if same_size else {"width": out_w, "height": out_h, "interpolation": "AREA"}
                rgb = reformatter.reformat(frame, format="rgb24", threads=threads, **size).to_ndarray()
                yield i, _upright(rgb, _rotation(frame))
        finally:
            container.close()

    return FrameStream(VideoInfo(len(index.pts), fps, width, height, rotation), wanted, out_w / stored_w,
                       convert(), missing)


def read_frames(path: Path, indices: list[int] | Callable[[int], list[int]], threads: int = 0,
                max_side: int | None = None) -> tuple[VideoInfo, list[tuple[int, np.ndarray]]]:
    """``stream_frames`` read whole: the video's info and its (index, image) pairs. A truncated
    or partly corrupt file yields the frames it still has."""
    frames = stream_frames(path, indices, threads, max_side)
    return frames.info, list(frames.frames)


def _decoded(container, stream, skip: frozenset[int]) -> Iterator[av.VideoFrame]:
    """Frames from the current position on, the pictures whose pts are in ``skip`` never decoded."""
    for packet in container.demux(stream):
        if packet.pts is None or packet.pts not in skip:
            yield from packet.decode()


EXACT_SEEK_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})
"""Containers with a frame index, where seeking lands on the keyframe asked for. FFmpeg's MPEG
program and transport stream demuxers (GRID corpus clips, broadcast captures) land a GOP late and
label the frames after a seek one frame off: those are decoded forward from the start instead."""


def _seeks_exactly(container) -> bool:
    return bool(EXACT_SEEK_FORMATS & set(container.format.name.split(",")))


def _decode_wanted(container, stream, index: _Index, wanted: list[int], missing: list[int]):
    """Decode forward, seeking to a keyframe only when it lies beyond the current position, and
    skipping the pictures nothing refers to that are not wanted.

    Corrupt data costs only the frames it covers: the frame being sought is recorded in
    ``missing`` and decoding starts again from the keyframe of the next wanted frame (in a
    container that cannot seek exactly, from where the damage ended)."""
    frame_of_pts = {p: i for i, p in enumerate(index.pts)}
    skip = index.unreferenced - {index.pts[i] for i in wanted}
    exact = _seeks_exactly(container)
    position = None  # index of the last decoded frame, None before the first seek
    decoder = None
    for number, target in enumerate(wanted):
        key = index.keyframes[bisect.bisect_right(index.keyframes, target) - 1] if index.keyframes else 0
        try:
            if exact and (decoder is None or position is None or key > position + 1 or target <= position):
                container.seek(index.pts[key], stream=stream, backward=True)
                decoder = _decoded(container, stream, skip)
            elif not exact and (position is None or target <= position):
                container.seek(0, unsupported_byte_offset=True)  # back to the file's first byte
                position, decoder = None, _decoded(container, stream, skip)
            elif decoder is None:  # past damage, where seeking cannot be trusted: go on from here
                decoder = _decoded(container, stream, skip)
            for frame in decoder:
                position = frame_of_pts.get(frame.pts, position + 1 if position is not None else 0)
                if position == target:
                    yield target, frame
                    break
                if position > target:
                    missing.append(target)
                    break
            else:  # the stream ended early (truncated): the rest is missing too
                missing.extend(wanted[number:])
                return
        except av.error.FFmpegError:
            missing.append(target)
            decoder = None  # start again at the next wanted frame's keyframe


def write_video(path: Path, frames, fps: int = 25, codec: str = "libx264", rotation: int = 0,
                gop: int | None = None, pix_fmt: str = "yuv420p") -> None:
    """Encode RGB uint8 frames to a video file (for samples and test fixtures)."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        shift_x, shift_y = CHROMA_SHIFT.get(pix_fmt, (1, 1))
        stream.width, stream.height = width - width % 2 * shift_x, height - height % 2 * shift_y
        stream.pix_fmt = pix_fmt
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
