"""Find the videos of a dataset and what is known about each: label, method, ids, split; and read
the still photos that stand in for one-frame videos.

Three layouts are read as they are: FaceForensics++'s official download layout, a plain
``real/`` + ``fake/`` folder pair, and a CSV manifest. A partial download is normal (the
FF++ script skips files, users stop it): what is missing is reported, never fatal.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unmask.errors import UnmaskError

if TYPE_CHECKING:  # video reading (PyAV) is imported where a photo or video is read, not with the listing
    import numpy as np

    from unmask.video import VideoInfo

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
REAL, FAKE = 0, 1
LABEL_NAMES = {REAL: "real", FAKE: "fake"}


@dataclass(frozen=True)
class Video:
    """One video and everything known about it before it is opened."""

    path: Path
    label: int
    """1 = fake, 0 = real."""
    key: str
    """Unique, stable name of the video inside its dataset (relative path, '/' separated)."""
    method: str = "original"
    """Manipulation method for a fake, "original" for a real video."""
    compression: str = ""
    source: str = ""
    """For FF++ originals: "youtube" or "actors"."""
    ids: str = ""
    """Identity ids joined by '_' ("183" or target_source "183_253"); the unit of grouping."""
    split: str = ""
    """"train", "val", "test", or "" when unknown."""


@dataclass
class DatasetScan:
    """The videos found, and the problems found on the way (missing folders, bad rows)."""

    root: Path
    layout: str
    videos: list[Video] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _split_lookup(splits_dir: Path) -> dict[tuple[str, ...], str]:
    """Pair (and single id) -> split name, from the official split files."""
    lookup: dict[tuple[str, ...], str] = {}
    for name in ("train", "val", "test"):
        path = splits_dir / f"{name}.json"
        if not path.is_file():
            continue
        try:
            pairs = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UnmaskError(f"cannot read split file {path}: {err}") from None
        for pair in pairs:
            target, source = (str(x) for x in pair)
            lookup[(target, source)] = name  # the fakes TTT_SSS and SSS_TTT both belong to the pair
            lookup[(source, target)] = name
            lookup[(target,)] = name
            lookup[(source,)] = name
    return lookup


def identity_token(text: str) -> str:
    """An identity id safe to join with '_' (the separator of FF++'s target_source ids)."""
    return text.replace("_", "-")


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def find_videos(path: Path) -> list[Path]:
    """Video files under a folder, recursively, in a stable order (or the file itself)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UnmaskError(f"no such file or folder: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _check_choices(values: Iterable[str], known: Sequence[str], what: str) -> None:
    for value in values:
        if value not in known:
            raise UnmaskError(f"unknown {what} {value!r}; choose from: {', '.join(known)}")


def read_ffpp(
    root: Path,
    methods: Sequence[str] = ("Deepfakes",),
    compressions: Sequence[str] = ("c23",),
    originals: Sequence[str] = ("youtube",),
) -> DatasetScan:
    """FaceForensics++ as the official script downloads it; originals always come as the real class."""
    _check_choices(methods, FFPP_METHODS, "method")
    _check_choices(compressions, FFPP_COMPRESSIONS, "compression")
    scan = DatasetScan(root=root, layout="ffpp")
    lookup = _split_lookup(root / "splits") if (root / "splits").is_dir() else {}

    def add_folder(folder: Path, what: str, make) -> None:
        if not folder.is_dir():
            scan.problems.append(f"missing folder for {what}: {folder.relative_to(root)}")
            return
        for path in _videos_in(folder):
            scan.videos.append(make(path))

    for comp in compressions:
        for source in originals:
            add_folder(
                root / "original_sequences" / source / comp / "videos",
                f"originals ({source}, {comp})",
                lambda p, source=source, comp=comp: Video(
                    path=p, label=REAL, key=p.relative_to(root).as_posix(), compression=comp,
                    source=source,
                    ids=p.stem if source == "youtube" else "actor" + p.stem.split("__")[0],
                    split=lookup.get((p.stem,), "") if source == "youtube" else "",
                ),
            )
        for method in methods:
            add_folder(
                root / "manipulated_sequences" / method / comp / "videos",
                f"{method} ({comp})",
                lambda p, method=method, comp=comp: Video(
                    path=p, label=FAKE, key=p.relative_to(root).as_posix(), method=method,
                    compression=comp, ids=p.stem,
                    split=lookup.get(tuple(p.stem.split("_")[:2]), ""),
                ),
            )
    _report_missing_partners(scan)
    return scan


def _report_missing_partners(scan: DatasetScan) -> None:
    """A partial download shows as fakes whose original is absent, and vice versa."""
    originals = {(v.compression, v.ids) for v in scan.videos if v.label == REAL and v.source == "youtube"}
    missing = sorted(
        {f"{v.compression}/{v.ids}" for v in scan.videos
         if v.label == FAKE and (v.compression, v.ids.split("_")[0]) not in originals}
    )
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        scan.problems.append(f"{len(missing)} fake video(s) without their target original: {shown}")


def read_folders(root: Path) -> DatasetScan:
    """A ``real/`` and a ``fake/`` folder (searched recursively); each video is its own group."""
    scan = DatasetScan(root=root, layout="folders")
    for name, label in (("real", REAL), ("fake", FAKE)):
        folder = root / name
        if not folder.is_dir():
            scan.problems.append(f"missing folder: {name}/")
            continue
        for path in find_videos(folder):
            key = path.relative_to(root).as_posix()
            scan.videos.append(Video(path=path, label=label, key=key,
                                     method="original" if label == REAL else "unknown",
                                     ids=identity_token(key)))
    return scan


PATH_COLUMNS = ("path", "file", "image", "video")
"""Column names a manifest may give its files under (face-image sets often name the video a crop came from)."""
SPLIT_COLUMNS = ("split", "part")


def _first_column(header: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in header), None)


class _FileFinder:
    """Resolves a manifest's file names: as a path relative to the manifest, else (for a name
    without a suffix, as face-image sets give the video a crop came from) the one image under the
    manifest's folder with that stem. The folder is indexed once, and only if a name needs it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_stem: dict[str, Path | None] | None = None

    def __call__(self, name: str) -> Path | None:
        path = Path(name)
        path = path if path.is_absolute() else self.folder / path
        if path.is_file() or path.suffix:
            return path if path.is_file() else None
        if self._by_stem is None:
            self._by_stem = {}
            for found in self.folder.rglob("*"):
                if found.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
                    self._by_stem[found.stem] = None if found.stem in self._by_stem else found  # None: ambiguous
        return self._by_stem.get(path.name)


def read_manifest(csv_path: Path) -> DatasetScan:
    """A CSV of videos or face images: a file column (path, file, image or video), label (real/fake
    or 0/1), and optional group (the identity, the unit of every split), split or part
    (train/val/test, honoured as an official split), method and source.

    Each bad row (an unknown label or split, a file that is not there) is one line in ``problems``
    and is left out; the rest are read. A face-image set such as the DFDC faces (``parts.csv`` beside
    ``faces_224/<video>.jpg``) reads as it is: each image is a one-frame video of its group.
    """
    scan = DatasetScan(root=csv_path.parent, layout="manifest")
    try:
        with csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UnmaskError(f"cannot read manifest {csv_path}: {err}") from None
    header = list(rows[0]) if rows else []
    path_column, split_column = _first_column(header, PATH_COLUMNS), _first_column(header, SPLIT_COLUMNS)
    if path_column is None or "label" not in header:
        raise UnmaskError(f"manifest {csv_path} needs a header with a file column ({', '.join(PATH_COLUMNS)}) "
                          "and a 'label' column")
    labels = {"real": REAL, "0": REAL, "fake": FAKE, "1": FAKE}
    find = _FileFinder(csv_path.parent)
    for number, row in enumerate(rows, start=2):
        label = labels.get((row.get("label") or "").strip().lower())
        if label is None:
            scan.problems.append(f"line {number}: label {row.get('label')!r} is not real/fake/0/1")
            continue
        key = (row.get(path_column) or "").strip()
        path = find(key) if key else None
        if path is None:
            scan.problems.append(f"line {number}: no such file {key!r} under {csv_path.parent}")
            continue
        split = (row.get(split_column) or "").strip() if split_column else ""
        if split not in ("", "train", "val", "test"):
            scan.problems.append(f"line {number}: {split_column} {split!r} is not train/val/test")
            continue
        scan.videos.append(Video(
            path=path, label=label, key=key, ids=identity_token((row.get("group") or "").strip() or key), split=split,
            method=(row.get("method") or "").strip() or ("original" if label == REAL else "unknown"),
            source=(row.get("source") or "").strip(),
        ))
    return scan


def open_dataset(
    path: Path,
    methods: Sequence[str] = ("Deepfakes",),
    compressions: Sequence[str] = ("c23",),
) -> DatasetScan:
    """Recognise the layout of ``path`` and read it."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        scan = read_manifest(path)
    elif not path.exists():
        raise UnmaskError(f"dataset not found: {path}")
    elif not path.is_dir():
        raise UnmaskError(f"{path} is neither a dataset folder nor a .csv manifest")
    elif (path / "original_sequences").is_dir() or (path / "manipulated_sequences").is_dir():
        scan = read_ffpp(path, methods, compressions)
    elif (path / "real").is_dir() or (path / "fake").is_dir():
        scan = read_folders(path)
    else:
        raise UnmaskError(
            f"{path} is not a dataset: expected FaceForensics++ folders (original_sequences/, "
            "manipulated_sequences/), real/ + fake/ folders, or a CSV manifest"
        )
    if not scan.videos:
        raise UnmaskError(f"no videos found in {path}" + (f" ({scan.problems[0]})" if scan.problems else ""))
    return scan


def real_sources(folder: Path) -> list[Video]:
    """Every video and photo under ``folder`` as a real-class item, its own identity group
    (material for self-blended and swapped fakes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnmaskError(f"no such folder: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    if not paths:
        raise UnmaskError(f"no videos or photos found under {folder}")
    return [Video(path=p, label=REAL, key=p.relative_to(folder).as_posix(), method="original",
                  ids=identity_token(p.relative_to(folder).as_posix())) for p in paths]


def is_photo(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


PHOTO_PADDING = 0.5
"""Border added around a still photo, as a fraction of its size: tight face crops (like
UTKFace's) leave MTCNN no context and go undetected without it."""


def read_photo(path: Path) -> tuple[VideoInfo, list[tuple[int, np.ndarray]], tuple[float, float, float, float]]:
    """A still photo as a one-frame video, padded by replicating its border, and where the photo itself
    lies in that frame (x1, y1, x2, y2: a face crop taken as given is that box)."""
    import cv2

    from unmask.video import VideoError, VideoInfo

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"{path}: not a readable image")
    pad_y, pad_x = int(image.shape[0] * PHOTO_PADDING), int(image.shape[1] * PHOTO_PADDING)
    image = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    box = (float(pad_x), float(pad_y), float(image.shape[1] - pad_x), float(image.shape[0] - pad_y))
    return VideoInfo(1, 0.0, image.shape[1], image.shape[0], 0), [(0, image)], box
