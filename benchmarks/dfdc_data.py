"""Every data step of the detector that learns from thousands of people (issue #29), redone from scratch or
resumed: each step skips what is already there, and `unmask prepare` resumes a store it left half-made.

    python benchmarks/dfdc_data.py GIT_DIR [--work DIR] [--workers N]

GIT_DIR: the bare repository that the search tool's ``fetch github:i-Shreyansh/DeepFake-Detection`` brings.
DIR (default: ../data beside the checkout, never inside it: the faces are research-only data):

1. ``dfdc/``: the DFDC face crops laid out by ``../shared/data/dfdc-faces/get.sh`` (faces_224/, parts.csv).
2. ``dfdc/parts-one-fake-per-group.csv``: the train and val parts with every real face and one fake per
   source video (drawn with seed 0; the 79k fakes are 5 per real video, and 2 CPU cores train on far
   fewer faces than that in a session), the test part whole (its figures are the ones reported).
3. ``stores/dfdc-m0-224``: those crops re-cut as ``unmask check`` cuts faces (MTCNN on the padded crop,
   margin 0, 224 px); ``stores/ffpp-m0-224-motion``: the FF++ sample's four methods at c23 and c40, 16
   frames a video with their motion features; ``stores/photos-m0-224``: the 2,000 real-faces photos.
4. ``stores/dfdc-given-224``: the same DFDC crops taken as given (``--crop given``: the image whole, MTCNN
   still run for confidence and keypoints, so the very same faces are kept): the other framing.
The 29 real-faces videos stay out of every store: they are the false-alarm test.
"""
from __future__ import annotations

import argparse
import csv
import random
import subprocess
from collections import defaultdict
from pathlib import Path

from common import REPO, SHARED_DATA, require

CROPS = ["--margin", "0", "--size", "224"]
"""How every store cuts its faces: one framing for the model to learn, the one its card tells `check`."""


def one_fake_per_group(parts: Path, out: Path, seed: int = 0) -> Path:
    """The train and val parts' real faces and one fake per source video; the test part whole."""
    if out.exists():
        return out
    rows = list(csv.DictReader(parts.open()))
    fakes = defaultdict(list)
    for row in rows:
        if row["label"] == "FAKE" and row["part"] != "test":
            fakes[(row["part"], row["group"])].append(row["video"])
    rng = random.Random(seed)
    chosen = {rng.choice(sorted(videos)) for _, videos in sorted(fakes.items())}
    kept = [r for r in rows if r["part"] == "test" or r["label"] == "REAL" or r["video"] in chosen]
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    tmp.rename(out)
    return out


def photo_manifest(out: Path) -> Path:
    """The real-faces photos (UTKFace adults, each a different person) as a manifest of real faces."""
    if out.exists():
        return out
    photos = sorted(require(SHARED_DATA / "real-faces" / "utkface-adults").glob("*.jpg"))
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "source"])
        writer.writerows([str(p), "real", p.stem, "utkface"] for p in photos)
    tmp.rename(out)
    return out


def prepare(dataset: Path, out: Path, *options: str) -> None:
    """`unmask prepare` resumes: what is done is skipped, and a finished store is only committed again."""
    subprocess.run(["unmask", "prepare", str(dataset), "--out", str(out), *CROPS, *options], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("git_dir", type=Path, help="the fetched i-Shreyansh/DeepFake-Detection repository")
    parser.add_argument("--work", type=Path, default=REPO.parent / "data", help="where data and stores go")
    parser.add_argument("--workers", type=int, help="`unmask prepare`'s processes (default: one per core)")
    args = parser.parse_args()
    workers = ["--workers", str(args.workers)] if args.workers else []
    dfdc = args.work / "dfdc"
    if not (dfdc / "parts.csv").exists():
        subprocess.run(["bash", str(require(SHARED_DATA / "dfdc-faces" / "get.sh")), str(args.git_dir), str(dfdc)],
                       check=True)
    stores = args.work / "stores"
    dfdc_faces = one_fake_per_group(dfdc / "parts.csv", dfdc / "parts-one-fake-per-group.csv")
    prepare(dfdc_faces, stores / "dfdc-m0-224", *workers)
    prepare(require(SHARED_DATA / "ffpp-sample"), stores / "ffpp-m0-224-motion",
            "--methods", "Deepfakes,Face2Face,FaceSwap,NeuralTextures", "--compression", "c23,c40",
            "--step", "18", "--frames", "16", "--motion", *workers)
    prepare(photo_manifest(args.work / "photos.csv"), stores / "photos-m0-224", *workers)
    prepare(dfdc_faces, stores / "dfdc-given-224", "--crop", "given", *workers)


if __name__ == "__main__":
    main()
