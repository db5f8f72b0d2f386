"""The face store: face crops as one memory-mappable uint8 array plus a table that traces
every face back to its video, frame and box.

Layout of a store folder::

    store.json          settings it was made with (a re-run with other settings is refused)
    shards/<id>.npy     the faces of one video, (n, size, size, 3) uint8 RGB
    shards/<id>.json    that video's record and its face rows; its presence marks the video done
    faces.npy           all faces, in table order (built by ``commit``)
    faces.csv           one row per face (``row`` indexes faces.npy); with ``--motion`` also the
                        face's motion residual features (``motion_*`` columns, ``unmask.faces.motion``)
    videos.csv          one row per video: status (ok / no-face / error), reason, counts, timings

Every file is written to a temporary name and renamed, so a killed run leaves only whole
files; a shard's .json is renamed last, so a video counts as done only when both are there.
Workers write shards; one process commits them (locally or on a Dask cluster alike).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unmask.config import FaceDetection
from unmask.errors import UnmaskError
from unmask.faces.motion import MOTION_COLUMNS, MOTION_FEATURES
from unmask.util import atomic_path, json_ready, write_json

FORMAT_VERSION = 1
KEYPOINT_COLUMNS = [f"kp{i}_{axis}" for i in range(5) for axis in ("x", "y")]
FACE_COLUMNS = [
    "row", "video", "label", "method", "compression", "source", "ids", "split", "frame",
    "x1", "y1", "x2", "y2", "crop_x1", "crop_y1", "crop_x2", "crop_y2", "confidence", *KEYPOINT_COLUMNS,
    "n_detections", "path",
]
VIDEO_COLUMNS = [
    "video", "path", "label", "method", "compression", "ids", "split", "status", "reason",
    "frame_count", "frames_read", "faces", "decode_s", "detect_s", "motion_s", "store_s", "seconds",
]


def shard_id(video_key: str) -> str:
    """A file-safe, collision-free name for a video's shard, readable at a glance."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", video_key)[-48:].strip("-")
    return f"{stem}-{hashlib.sha1(video_key.encode()).hexdigest()[:10]}"


@dataclass
class Shard:
    """What one video contributed: its record (a VIDEO_COLUMNS dict) and its faces."""

    video: dict
    rows: list[dict]
    faces: np.ndarray


def current_settings(settings: dict) -> dict:
    """A store's settings in today's shape. Stores made before the detector seam kept MTCNN's
    ``min_face_size`` and ``thresholds`` beside the crop settings and had no frame bound: they read
    as MTCNN's settings, with frames at their own size (``max_side`` None), as they were made. Stores
    made before crops could be taken as given cut what was detected."""
    faces = settings.get("faces")
    if not isinstance(faces, dict):
        return settings
    if "detector" not in faces:
        faces = asdict(FaceDetection.from_record({**faces, "max_side": None}))
        faces.pop("device")
    return {**settings, "faces": json.loads(json.dumps({**faces, "crop": faces.get("crop", "detected")}))}


class StoreWriter:
    """Writes shards into a store folder and commits them into the consolidated files."""

    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.settings = {"format_version": FORMAT_VERSION, **settings}
        meta = self.root / "store.json"
        if meta.exists():
            existing = current_settings(json.loads(meta.read_text()))
            if existing != json.loads(json.dumps(self.settings, default=json_ready)):
                raise UnmaskError(
                    f"{self.root} was made with other settings ({_diff(existing, self.settings)}); "
                    "use another --out folder or the same settings"
                )
        elif self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
            raise UnmaskError(f"{self.root} exists and is not a face store; choose an empty or new --out folder")
        self.shards.mkdir(parents=True, exist_ok=True)
        write_json(meta, self.settings)

    def done(self) -> set[str]:
        """Keys of the videos whose shard is complete."""
        keys = set()
        for path in self.shards.glob("*.json"):
            keys.add(json.loads(path.read_text())["video"]["video"])
        return keys

    def write(self, shard: Shard) -> None:
        write_shard(self.shards, shard)

    def commit(self) -> "FaceStore":
        return commit(self.root)


def write_shard(shards_dir: Path, shard: Shard) -> None:
    """Faces first, then the record: the record's presence means the shard is whole."""
    name = shard_id(shard.video["video"])
    with atomic_path(Path(shards_dir) / f"{name}.npy") as tmp:
        with tmp.open("wb") as handle:
            np.save(handle, np.ascontiguousarray(shard.faces, dtype=np.uint8))
    write_json(Path(shards_dir) / f"{name}.json", {"video": shard.video, "rows": shard.rows})


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    """The settings that differ, named down to the leaf: "faces.crop: detected -> given"."""
    new = json.loads(json.dumps(new, default=json_ready))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(_diff(old[k], new[k], f"{prefix}{k}.")
                     if isinstance(old.get(k), dict) and isinstance(new.get(k), dict)
                     else f"{prefix}{k}: {old.get(k)} -> {new.get(k)}" for k in keys) or "different"


def commit(root: Path) -> "FaceStore":
    """Gather all complete shards, in video-key order, into faces.npy, faces.csv and videos.csv."""
    root = Path(root)
    records = []
    for meta in sorted((root / "shards").glob("*.json")):
        records.append((json.loads(meta.read_text()), meta.with_suffix(".npy")))
    records.sort(key=lambda item: item[0]["video"]["video"])
    settings = json.loads((root / "store.json").read_text())
    size = int(settings.get("faces", {}).get("size", 320))
    total = sum(len(rec["rows"]) for rec, _ in records)
    rows, videos = [], []
    with atomic_path(root / "faces.npy") as tmp, tmp.open("wb") as handle:
        # Written shard by shard with plain file writes, so the committing process holds one
        # shard at a time, however large the store (a memmap would keep every page it wrote).
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": (total, size, size, 3)})
        start = 0
        for rec, npy in records:
            videos.append(rec["video"])
            count = len(rec["rows"])
            if count:
                handle.write(np.ascontiguousarray(np.load(npy)).tobytes())
                for offset, row in enumerate(rec["rows"]):
                    rows.append({**row, "row": start + offset})
            start += count
    columns = FACE_COLUMNS + (MOTION_COLUMNS if "motion" in settings else [])
    with atomic_path(root / "faces.csv") as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    with atomic_path(root / "videos.csv") as tmp:
        pd.DataFrame(videos, columns=VIDEO_COLUMNS).to_csv(tmp, index=False)
    return FaceStore(root)


class FaceStore:
    """Read a committed store: ``faces`` is a read-only memmap, ``table`` and ``videos`` are DataFrames."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not (self.root / "faces.csv").is_file() or not (self.root / "faces.npy").is_file():
            hint = " (run `unmask prepare` again to finish it)" if (self.root / "shards").is_dir() else ""
            raise UnmaskError(f"{self.root} is not a face store{hint}")
        self.settings = current_settings(json.loads((self.root / "store.json").read_text()))
        self.table = pd.read_csv(self.root / "faces.csv", dtype={"ids": str, "split": str, "video": str},
                                 keep_default_na=False)
        self.videos = pd.read_csv(self.root / "videos.csv", dtype={"ids": str, "split": str, "video": str},
                                  keep_default_na=False)
        self.faces = np.load(self.root / "faces.npy", mmap_mode="r")
        if len(self.table) != self.faces.shape[0]:
            raise UnmaskError(f"{self.root}: faces.csv and faces.npy disagree; run `unmask prepare` again")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def crop_size(self) -> int:
        return int(self.settings["faces"]["size"])

    @property
    def margin(self) -> float:
        return float(self.settings["faces"]["margin"])

    @property
    def has_motion(self) -> bool:
        return "motion" in self.settings

    def motion(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, len(MOTION_COLUMNS)) float32 motion residual features (NaN where a face had no later frame)."""
        if not self.has_motion:
            raise UnmaskError(f"{self.root} has no motion features; prepare the faces again with --motion")
        if self.settings.get("motion_features") != list(MOTION_FEATURES):
            raise UnmaskError(f"{self.root} holds an older set of motion features; prepare the faces again "
                              "with --motion into a new folder")
        table = self.table if rows is None else self.table.iloc[rows]
        return table[MOTION_COLUMNS].to_numpy(np.float32)

    def keypoints(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, 5, 2) keypoints in the coordinates of the stored crops."""
        table = self.table if rows is None else self.table.iloc[rows]
        points = table[KEYPOINT_COLUMNS].to_numpy(np.float32).reshape(-1, 5, 2)
        origin = table[["crop_x1", "crop_y1"]].to_numpy(np.float32)[:, None, :]
        extent = table[["crop_x2", "crop_y2"]].to_numpy(np.float32)[:, None, :] - origin
        return (points - origin) * (self.crop_size / extent)


class FaceArray:
    """Faces of one or more stores, at chosen rows, read one face at a time: a view, never a copy.

    Training on every store together (the DFDC faces alone are 14 GB at 224 px) must not gather
    its faces into memory; the CNN's batches read ``faces[i]`` one by one, and a scikit-learn
    model that needs the pixels in memory gets them with ``np.asarray(faces)``.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, arrays: list[np.ndarray], index: np.ndarray):
        self.arrays = arrays
        self.index = np.asarray(index, dtype=np.int64)
        """(N, 2): which array, which row of it."""
        self.shape = (len(self.index), *arrays[0].shape[1:]) if arrays else (0, 0, 0, 3)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            which, row = self.index[key]
            return self.arrays[which][row]
        return FaceArray(self.arrays, self.index[key])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.uint8)
        for which in np.unique(self.index[:, 0]):
            mine = self.index[:, 0] == which
            out[mine] = self.arrays[which][self.index[mine, 1]]
        return out if dtype is None else out.astype(dtype)


def faces_at(store: "AnyStore", rows: np.ndarray) -> "np.ndarray | FaceArray":
    """The faces at table positions ``rows``: the memmap itself when that is all of them, else a view."""
    index = store.table["row"].to_numpy()[rows]
    if isinstance(store, FaceStore):
        if len(index) == len(store.faces) and np.array_equal(index, np.arange(len(store.faces))):
            return store.faces
        return FaceArray([store.faces], np.column_stack([np.zeros(len(index), np.int64), index]))
    return store.faces[index]


class CombinedStore:
    """Several face stores read as one (a video dataset with motion, a face-image set without, photos),
    so one model trains on all of them: their tables stacked, with a ``dataset`` column naming each face's
    store (the source the balanced sampler shares the batches out by), and their faces as one ``FaceArray``.

    The stores must hold crops cut alike (size, margin, detector): a model learns one framing, the one
    ``unmask check`` will cut. Faces of a store without motion features have them missing (NaN), and are
    judged by their look alone.
    """

    def __init__(self, stores: list[FaceStore]):
        if len(stores) < 2:
            raise UnmaskError("combine two face stores or more")
        first = stores[0]
        for other in stores[1:]:
            theirs, ours = other.settings["faces"], first.settings["faces"]
            differ = [k for k in ("size", "margin", "detector", "min_confidence") if theirs.get(k) != ours.get(k)]
            if differ:
                raise UnmaskError(f"{other.root} cuts its faces otherwise than {first.root} "
                                  f"({', '.join(f'{k}: {theirs.get(k)} against {ours.get(k)}' for k in differ)}); "
                                  "prepare them with the same --size, --margin and detector")
        names = [s.root.name for s in stores]
        if len(set(names)) != len(names):
            raise UnmaskError(f"two of the stores share a folder name ({', '.join(names)}): each names its faces' source")
        self.stores = stores
        self.root = Path(" + ".join(names))
        motion = next((s.settings for s in stores if s.has_motion), None)
        self.settings = {**first.settings, **({"motion": motion["motion"], "motion_features": motion["motion_features"]}
                                                 if motion else {})}
        tables = []
        for number, store in enumerate(stores):
            table = store.table.copy()
            table["dataset"] = store.root.name
            table["store_number"] = number
            tables.append(table)
        self.table = pd.concat(tables, ignore_index=True)
        self.table["row"] = np.arange(len(self.table))
        self.videos = pd.concat([s.videos.assign(dataset=s.root.name) for s in stores], ignore_index=True)
        self.faces = FaceArray([s.faces for s in stores], np.column_stack(
            [self.table["store_number"].to_numpy(), np.concatenate([s.table["row"].to_numpy() for s in stores])]))

    def __len__(self) -> int:
        return len(self.table)

    crop_size = property(lambda self: self.stores[0].crop_size)
    margin = property(lambda self: self.stores[0].margin)
    has_motion = property(lambda self: any(s.has_motion for s in self.stores))

    def _per_store(self, rows: np.ndarray | None, read, width: tuple[int, ...]) -> np.ndarray:
        rows = np.arange(len(self.table)) if rows is None else np.asarray(rows)
        numbers = self.table["store_number"].to_numpy()[rows]
        offsets = np.cumsum([0, *(len(s) for s in self.stores)])
        out = np.full((len(rows), *width), np.nan, np.float32)
        for number, store in enumerate(self.stores):
            mine = numbers == number
            if mine.any():
                value = read(store, rows[mine] - offsets[number])
                if value is not None:
                    out[mine] = value
        return out

    def motion(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Motion features where a store has them, NaN for the faces of the stores without."""
        if not self.has_motion:
            raise UnmaskError(f"none of {self.root} has motion features; prepare one with --motion")
        return self._per_store(rows, lambda s, r: s.motion(r) if s.has_motion else None, (len(MOTION_COLUMNS),))

    def keypoints(self, rows: np.ndarray | None = None) -> np.ndarray:
        return self._per_store(rows, lambda s, r: s.keypoints(r), (5, 2))


AnyStore = FaceStore | CombinedStore
"""What training, evaluation and the benchmarks read faces from."""


def open_stores(paths: list[Path]) -> AnyStore:
    """One store, or several read as one."""
    stores = [FaceStore(Path(p)) for p in paths]
    return stores[0] if len(stores) == 1 else CombinedStore(stores)
