"""Is a FaceForensics++ download whole? Its videos counted against the official lists, and the
broken ones found.

Downloads of FF++ stall, stop half-way and switch servers, and a partial set reads without
error, so the gaps would only show as skewed results. The official script names every file after
the official pairs (``dataset/splits`` of ondyari/FaceForensics, shipped in ``data/ffpp_splits``):
originals ``NNN.mp4`` for each id of a pair, each method ``TTT_SSS.mp4`` for both orders of a
pair, 1,000 of each. DeepFakeDetection has no public list, so its folders are counted only.

Each file costs its header, one seek to its last keyframe, a demux of the packets from there on
and one decoded frame; never a full decode. A file is broken when it is empty, does not open as
a video (text renamed .mp4), or is truncated: its MP4 boxes run past the end of the file, or its
packets stop before the duration its header gives.
"""
from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from unmask.datasets import FFPP_COMPRESSIONS
from unmask.errors import UnmaskError

SPLIT_NAMES = ("train", "val", "test")
DATASET_FOLDERS = {
    "original": "original_sequences/youtube",
    "Deepfakes": "manipulated_sequences/Deepfakes",
    "Face2Face": "manipulated_sequences/Face2Face",
    "FaceSwap": "manipulated_sequences/FaceSwap",
    "NeuralTextures": "manipulated_sequences/NeuralTextures",
    "FaceShifter": "manipulated_sequences/FaceShifter",
    "DeepFakeDetection": "manipulated_sequences/DeepFakeDetection",
    "DeepFakeDetection_original": "original_sequences/actors",
}
"""The official script's ``-d`` names and the folders it downloads them into."""
CORE_DATASETS = ("original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
"""Checked by default; the others when a folder of theirs is there."""
UNLISTED = ("DeepFakeDetection", "DeepFakeDetection_original")
"""No official list of their files: counted, never called incomplete."""
TEMP_NAME = re.compile(r"tmp[a-z0-9_]{8}")
"""The official script downloads into ``tempfile.mkstemp(dir=<videos folder>)`` and renames on success,
so a download it did not finish stays behind under such a name."""

EMPTY, DOES_NOT_OPEN, TRUNCATED = "empty", "does not open", "truncated"

Splits = Mapping[str, Sequence[Sequence[str]]]
"""Split name -> [target, source] id pairs, as in the official split files."""


@dataclass(frozen=True)
class FileProblem:
    """Why one file cannot be used."""

    name: str
    problem: str
    """``empty``, ``does not open`` or ``truncated``."""
    detail: str


@dataclass(frozen=True)
class SplitCount:
    expected: int
    ok: int
    missing: tuple[str, ...]
    """Expected file names not there, in the official list's order."""


@dataclass
class FolderReport:
    """One dataset at one compression: what should be there, what is, what is wrong."""

    dataset: str
    compression: str
    folder: str
    """Relative to the root, '/' separated."""
    exists: bool
    listed: bool
    """Whether the official lists say which files belong here (not so for DeepFakeDetection)."""
    present: int = 0
    """Files with an expected name (every video file for an unlisted dataset)."""
    splits: dict[str, SplitCount] = field(default_factory=dict)
    broken: list[FileProblem] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    """Files that are not expected here; ``tmpXXXXXXXX`` ones are the script's unfinished downloads."""

    @property
    def expected(self) -> int | None:
        return sum(s.expected for s in self.splits.values()) if self.listed else None

    @property
    def missing(self) -> list[str]:
        return [name for split in self.splits.values() for name in split.missing]

    @property
    def ok(self) -> int:
        return self.present - len(self.broken)

    @property
    def complete(self) -> bool:
        return self.exists and not self.missing and not self.broken

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset, "compression": self.compression, "folder": self.folder,
            "exists": self.exists, "listed": self.listed, "complete": self.complete,
            "expected": self.expected, "present": self.present, "ok": self.ok,
            "splits": {name: {"expected": s.expected, "ok": s.ok, "missing": len(s.missing)}
                       for name, s in self.splits.items()},
            "missing": self.missing,
            "broken": [{"name": b.name, "problem": b.problem, "detail": b.detail} for b in self.broken],
            "stray": self.stray,
        }


@dataclass
class DatasetReport:
    root: Path
    folders: list[FolderReport]
    unchecked: list[str]
    """Compressions with nothing downloaded that were not asked for."""
    files_checked: int
    seconds: float

    @property
    def complete(self) -> bool:
        return all(f.complete for f in self.folders)

    def to_json(self) -> dict:
        return {"root": str(self.root), "complete": self.complete, "files_checked": self.files_checked,
                "seconds": round(self.seconds, 3), "unchecked_compressions": self.unchecked,
                "folders": [f.to_json() for f in self.folders]}


# --------------------------------------------------------------------------- the official lists
def load_splits(folder: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """The official train/val/test pairs: the shipped copy, or the files in ``folder``."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for name in SPLIT_NAMES:
        if folder is None:
            text = (files("unmask") / "data" / "ffpp_splits" / f"{name}.json").read_text()
            where = f"the packaged {name}.json"
        else:
            path = Path(folder) / f"{name}.json"
            if not path.is_file():
                raise UnmaskError(f"split file not found: {path}")
            text, where = path.read_text(), str(path)
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UnmaskError(f"cannot read split file {where}: {err}") from None
        if not isinstance(data, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p) for p in data):
            raise UnmaskError(f"split file {where} is not a list of [target, source] id pairs")
        pairs[name] = [(t, s) for t, s in data]
    return pairs


def expected_files(dataset: str, splits: Splits) -> dict[str, str]:
    """File name -> split, as the official script names a listed dataset's videos."""
    names: dict[str, str] = {}
    for split, pairs in splits.items():
        for target, source in pairs:
            if dataset == "original":
                names[f"{target}.mp4"] = names[f"{source}.mp4"] = split
            else:
                names[f"{target}_{source}.mp4"] = names[f"{source}_{target}.mp4"] = split
    return names


def check_choices(values: Iterable[str], known: Sequence[str], what: str) -> None:
    for value in values:
        if value not in known:
            raise UnmaskError(f"unknown {what} {value!r}; choose from: {', '.join(known)}")


def videos_folder(root: Path, dataset: str, compression: str) -> Path:
    return Path(root) / DATASET_FOLDERS[dataset] / compression / "videos"


# --------------------------------------------------------------------------- one file
def inspect_video(path: Path) -> FileProblem | None:
    """None when the file is a whole video; else what is wrong with it."""
    # PyAV loads when files are read, not for `unmask --help`
    from unmask.video import VideoError, open_video

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return FileProblem(path.name, EMPTY, "0 bytes")
    cut = _mp4_cut(path, size)
    try:
        container = open_video(path)
    except VideoError as err:
        return FileProblem(path.name, TRUNCATED, cut) if cut else \
            FileProblem(path.name, DOES_NOT_OPEN, str(err).removeprefix(f"{path}: "))
    try:
        ending = _ending_problem(container, container.streams.video[0])
    finally:
        container.close()
    if ending or cut:
        return FileProblem(path.name, TRUNCATED, ending or cut)
    return None


def _mp4_cut(path: Path, size: int) -> str:
    """For an MP4 (ISO base media) file, whether its top-level boxes run past its end: the mark of
    an interrupted download, whether the index (moov) comes first or last. "" when they do not,
    or when the file is not MP4."""
    with path.open("rb") as handle:
        position = 0
        while position < size:
            handle.seek(position)
            header = handle.read(16)
            if len(header) < 8:
                return f"file ends inside a box header at byte {position:,}"
            length, kind = struct.unpack(">I4s", header[:8])
            if position == 0 and kind != b"ftyp":
                return ""
            if not all(32 <= c < 127 for c in kind):
                return ""  # not a box: leave the verdict to the demuxer
            if length == 1:
                if len(header) < 16:
                    return f"file ends inside a box header at byte {position:,}"
                length = struct.unpack(">Q", header[8:16])[0]
            elif length == 0:
                return ""  # the last box runs to the end of the file
            if length < 8:
                return ""
            if position + length > size:
                return (f"file ends inside its '{kind.decode('ascii')}' box: "
                        f"{size:,} of {position + length:,} bytes")
            position += length
    return ""


def _ending_problem(container, stream) -> str:
    """Whether the packets run to the duration the header gives and the last keyframe decodes:
    one seek to that keyframe, a demux from there (cheap) and one decoded frame."""
    import av

    base = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    start = stream.start_time or 0
    duration = stream.duration
    if not base or not rate:
        return ""
    if not duration and container.duration:
        duration = int(container.duration / av.time_base / base)
    if not duration:
        return ""
    frame_ticks = 1 / (rate * base)
    end_wanted = start + duration
    end_seen, decoded, packets = None, False, 0
    try:
        container.seek(max(start, int(end_wanted - frame_ticks)), stream=stream, backward=True)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                packets += 1
                end_seen = max(end_seen or packet.pts, packet.pts + (packet.duration or frame_ticks))
            if not decoded and packets <= 16:  # the empty packet at the end drains the decoder
                decoded = _decodes(packet)
    except av.error.FFmpegError as err:
        if end_seen is None:
            return f"cannot read its end ({err.strerror or err})"
    frames = stream.frames or round(float(duration * base * rate))
    if end_seen is None:
        return f"no frame can be read at its end (the header gives {frames} frames)"
    if end_seen < end_wanted - 1.5 * frame_ticks:
        reached = round(float((end_seen - start) * base * rate))
        return (f"frames stop at about {reached} of {frames} "
                f"({float((end_seen - start) * base):.1f} s of {float(duration * base):.1f} s)")
    if not decoded:
        return "its last keyframe does not decode"
    return ""


def _decodes(packet) -> bool:
    import av

    try:
        return bool(packet.decode())
    except av.error.FFmpegError:
        return False


# --------------------------------------------------------------------------- folders, datasets
def scan_folder(root: Path, dataset: str, compression: str, splits: Splits,
                workers: int = 1) -> FolderReport:
    """Coverage and integrity of one ``<dataset>/<compression>/videos`` folder."""
    folder = videos_folder(root, dataset, compression)
    listed = dataset not in UNLISTED
    report = FolderReport(dataset=dataset, compression=compression,
                          folder=folder.relative_to(root).as_posix(), exists=folder.is_dir(), listed=listed)
    expected = expected_files(dataset, splits) if listed else {}
    entries = {e.name: e for e in os.scandir(folder)} if report.exists else {}
    videos = [name for name, e in entries.items() if e.is_file() and not TEMP_NAME.fullmatch(name)
              and (name in expected if listed else name.lower().endswith(".mp4"))]
    report.present = len(videos)
    report.stray = sorted(set(entries) - set(videos))
    report.broken = inspect_files(folder, sorted(videos), workers)
    unusable = {b.name for b in report.broken}
    for split in splits if listed else ():
        names = [n for n, s in expected.items() if s == split]
        there = set(videos) & set(names)
        report.splits[split] = SplitCount(expected=len(names), ok=len(there - unusable),
                                          missing=tuple(n for n in names if n not in there))
    return report


def inspect_files(folder: Path, names: Sequence[str], workers: int = 1) -> list[FileProblem]:
    """The broken ones among ``names``; with ``workers`` > 1 in threads (PyAV lets go of the GIL while
    FFmpeg reads and decodes, so they overlap)."""
    paths = [Path(folder) / n for n in names]
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(inspect_video, paths))
    else:
        results = [inspect_video(p) for p in paths]
    return [r for r in results if r is not None]


def downloaded_compressions(root: Path) -> list[str]:
    return [c for c in FFPP_COMPRESSIONS if any(videos_folder(root, d, c).is_dir() for d in DATASET_FOLDERS)]


def check_dataset(root: Path, datasets: Sequence[str] | None = None, compressions: Sequence[str] | None = None,
                  splits: Splits | None = None, workers: int = 1) -> DatasetReport:
    """Every asked-for dataset x compression (default: the core five plus any other with a folder,
    at every compression that has something downloaded) against the official lists."""
    root = Path(root)
    if not root.exists():
        raise UnmaskError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UnmaskError(f"{root} is not a folder")
    check_choices(datasets or (), list(DATASET_FOLDERS), "dataset")
    check_choices(compressions or (), FFPP_COMPRESSIONS, "compression")
    started = time.perf_counter()
    splits = load_splits() if splits is None else splits
    present = downloaded_compressions(root)
    chosen_comps = list(compressions) if compressions else (present or list(FFPP_COMPRESSIONS))
    folders = []
    for dataset in datasets or DATASET_FOLDERS:
        for comp in chosen_comps:
            if datasets is not None or dataset in CORE_DATASETS or videos_folder(root, dataset, comp).is_dir():
                folders.append(scan_folder(root, dataset, comp, splits, workers))
    unchecked = [] if compressions else [c for c in FFPP_COMPRESSIONS if c not in chosen_comps]
    checked = sum(f.present for f in folders)
    return DatasetReport(root=root, folders=folders, unchecked=unchecked, files_checked=checked,
                         seconds=time.perf_counter() - started)
