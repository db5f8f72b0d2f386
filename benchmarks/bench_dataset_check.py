"""`unmask dataset check` speed: on the FF++ sample and on a few hundred generated files, against
only opening each file's header, measured in the same run.

The check reads each file's header, walks its top-level MP4 boxes, seeks once to its last keyframe,
demuxes the packets from there and decodes one frame; the baseline opens the file and reads its
video stream's frame count. Prints the machine, medians over repeats (after one warm-up pass, so
both read from the page cache) and the ratio check / header-only; for scale, the median time to
decode a few of the sample's files in full, which the check avoids.

    python benchmarks/bench_dataset_check.py [--generated 300] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import av
from common import SHARED_DATA, machine, markdown_table, median, require

from unmask.dataset_check import (
    check_dataset,
    expected_files,
    load_splits,
    videos_folder,
)
from unmask.sample import sample_frames
from unmask.video import write_video


def header_only(paths: list[Path]) -> int:
    frames = 0
    for path in paths:
        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                frames += container.streams.video[0].frames
        except av.error.FFmpegError:
            pass  # the broken ones cost the baseline their failed open only
    return frames


def full_decode(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def generated_tree(root: Path, count: int) -> list[Path]:
    """``count`` Deepfakes c23 files under their official names, copies of 4 encoded 12 s 480x270 clips
    (keyframe every 250 frames, as in FF++), with one empty, one cut short and one text file among them."""
    clips = []
    for seed in range(4):
        clip = root / f"clip{seed}.mp4"
        write_video(clip, sample_frames(seconds=12, fps=25, width=480, height=270, seed=seed), gop=250)
        clips.append(clip)
    folder = videos_folder(root, "Deepfakes", "c23")
    folder.mkdir(parents=True)
    names = list(expected_files("Deepfakes", load_splits()))[:count]
    for i, name in enumerate(names):
        shutil.copy(clips[i % len(clips)], folder / name)
    (folder / names[0]).write_bytes(b"")
    data = (folder / names[1]).read_bytes()
    (folder / names[1]).write_bytes(data[: len(data) // 2])
    (folder / names[2]).write_text("not a video\n")
    return [folder / n for n in names]


def measure(name: str, root: Path, paths: list[Path], datasets, compressions, repeats: int) -> list:
    header_only(paths)  # warm-up: the files are in the page cache for both
    base, checks, checks2, report = [], [], [], None
    for _ in range(repeats):
        base.append(timed(header_only, paths))
        started = time.perf_counter()
        report = check_dataset(root, datasets, compressions, workers=1)
        checks.append(time.perf_counter() - started)
        checks2.append(timed(check_dataset, root, datasets, compressions, None, 2))
    broken = sum(len(f.broken) for f in report.folders)
    b, c, c2 = median(base), median(checks), median(checks2)
    return [name, len(paths), f"{b:.2f}", f"{c:.2f}", f"{c2:.2f}", f"{c / b:.1f}", f"{1000 * c / len(paths):.1f}", broken]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--generated", type=int, default=300, help="generated files (default: 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-decodes", type=int, default=5, help="sample files decoded in full, for scale")
    args = parser.parse_args()
    sample = require(args.data)
    print(f"machine: {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    sample_paths = sorted(sample.rglob("*.mp4"))
    rows = [measure(f"FF++ sample ({sample.name})", sample, sample_paths, None, None, args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = generated_tree(Path(tmp), args.generated)
        rows.append(measure("generated (12 s 480x270, 3 broken)", Path(tmp), paths, ["Deepfakes"], ["c23"],
                            args.repeats))
    print(markdown_table(["files", "n", "header-only s", "check s (1 thread)", "check s (2 threads)",
                          "check / header-only", "check ms per file", "broken found"], rows))
    decodes = [timed(full_decode, p) for p in sample_paths[:: max(1, len(sample_paths) // args.full_decodes)]]
    print(f"for scale: decoding one sample file in full takes {median(decodes):.2f} s (median of {len(decodes)})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
