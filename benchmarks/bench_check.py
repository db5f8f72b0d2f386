"""`unmask check` speed: one video at a time, as a user or the server runs it, against decoding
the same frames alone.

The checker (detector and model) is loaded once, as `unmask serve` keeps it; each video is
then checked with ``Checker.check`` and, separately, only decoded (the same frames,
``Checker.frames_to_read``: with a model that judges motion, each sampled frame's neighbours
too). Prints the machine and its load, medians over the FF++ sample's c23 videos (originals and Deepfakes) and over a generated 10-second 720p video, and
the ratio check / decode-only. Target: a 10-second 720p video in under 2 s on 2 CPU cores.
CPU seconds are printed beside wall seconds: on a machine shared with other jobs, CPU
seconds / cores is what the check would take on idle cores. For the folder, the same gives
its floor: the ratio to decode-only that checking would reach with every core busy all the time,
which no overlapping of work can beat.

Cold start: the whole ``unmask check VIDEO`` process on the generated video (imports, loading
the detector and the model, the check; median of 5), beside a process that only imports
PyAV, OpenCV and numpy and decodes the same frames, in the same run, and their ratio.

    python benchmarks/bench_check.py [--videos 20] [--repeats 3] [--model DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import SHARED_DATA, machine, markdown_table, median, require
from unmask.check import Checker, CheckSettings
from unmask.datasets import open_dataset
from unmask.faces.motion import MOTION_FEATURES
from unmask.sample import make_sample_video
from unmask.video import read_frames

TARGET_S = 2.0


def timed(function, *args) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(checker: Checker, path: Path, repeats: int) -> dict:
    """Median wall and CPU seconds of checking and of decoding only (the frames a check reads:
    the sampled ones and, for a model that judges motion, their neighbours), over ``repeats`` runs."""
    indices = checker.frames_to_read
    checks = [timed(checker.check, path) for _ in range(repeats)]
    decodes = [timed(read_frames, path, indices) for _ in range(repeats)]
    info, _ = read_frames(path, [0])
    return {"check": median(w for w, _ in checks), "check_cpu": median(c for _, c in checks),
            "decode": median(w for w, _ in decodes), "decode_cpu": median(c for _, c in decodes),
            "height": info.height, "seconds": info.duration}


BASELINE = ("import sys, av, cv2, numpy; from unmask.video import read_frames; "
            "read_frames(sys.argv[1], [int(i) for i in sys.argv[2].split(',')])")
"""The floor of any check: start Python, import what decoding needs, decode the frames a check reads."""


def process_seconds(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all its threads) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_start(checker: Checker, path: Path, model: Path | None, repeats: int = 5) -> list[list]:
    """Rows: `unmask check PATH` as a new process, the decode-only baseline process, their ratio."""
    info, _ = read_frames(path, [0])
    frames = ",".join(map(str, checker.frames_to_read(info.frame_count)))
    check = [sys.executable, "-m", "unmask", "check", str(path), *(["--model", str(model)] if model else [])]
    baseline = [sys.executable, "-c", BASELINE, str(path), frames]
    runs = {name: [process_seconds(command) for _ in range(repeats)] for name, command in
            (("check", check), ("baseline", baseline))}
    wall = {name: median(w for w, _ in r) for name, r in runs.items()}
    cpu = {name: median(c for _, c in r) for name, r in runs.items()}
    return [["`unmask check VIDEO` (new process)", repeats, f"{wall['check']:.2f}", f"{cpu['check']:.2f}",
             f"{wall['check'] / wall['baseline']:.1f}"],
            ["import av, cv2, numpy + decode the same frames", repeats, f"{wall['baseline']:.2f}",
             f"{cpu['baseline']:.2f}", "1.0"]]


def summary_row(name: str, runs: list[dict]) -> list:
    check, decode = median(r["check"] for r in runs), median(r["decode"] for r in runs)
    return [name, len(runs), f"{check:.2f}", f"{median(r['check_cpu'] for r in runs):.2f}", f"{decode:.2f}",
            f"{median(r['decode_cpu'] for r in runs):.2f}", f"{check / decode:.1f}"]


def folder_rate(checker: Checker, videos: list[Path], repeats: int = 2) -> dict[str, float]:
    """Median wall and CPU seconds to check a whole folder as `unmask check FOLDER` does, and wall
    seconds to only decode the same frames of the same videos one after another (the baseline),
    the two taking turns ``repeats`` times so that a load that comes and goes weighs on both alike."""
    checks, cpus, decodes = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for path in videos:
            read_frames(path, checker.frames_to_read)
        decodes.append(time.perf_counter() - started)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in checker.check_many(videos):
            pass
        checks.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return {"check": median(checks), "check_cpu": median(cpus), "decode": median(decodes)}


def model_rate(checker: Checker, faces: np.ndarray, repeats: int = 5) -> float:
    """Faces/s of the model alone (as the check runs it: resizing, the network, the motion head) on
    the given crops; median of ``repeats``. Target for the default: >= 40 faces/s on 2 cores."""
    motion = np.zeros((len(faces), len(MOTION_FEATURES)), np.float32) if checker.model.needs_motion else None
    checker.model.fake_probability(faces[:4], None if motion is None else motion[:4])  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        checker.model.fake_probability(faces, motion)
        rates.append(len(faces) / (time.perf_counter() - started))
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--videos", type=int, default=0, help="check only this many videos (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per video; its median counts (default: 1)")
    parser.add_argument("--model", type=Path, help="model folder (default: the packaged model)")
    args = parser.parse_args()
    scan = open_dataset(require(args.data), ["Deepfakes"], ["c23"])
    videos = [v.path for v in scan.videos][: args.videos or None]

    print(f"machine: {machine()}, OpenCV threads {cv2.getNumThreads()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    started = time.perf_counter()
    checker = Checker(args.model, CheckSettings())
    motion = checker.model.input.get("motion") if checker.model.needs_motion else None
    print(f"checker loaded once in {time.perf_counter() - started:.2f} s: {checker.model.name}; "
          f"{checker.settings.frames} frames per video"
          + (f", each with the {len(motion['offsets'])} frames after it (motion)" if motion else ""))
    with tempfile.TemporaryDirectory() as tmp:
        sample = make_sample_video(Path(tmp) / "sample-10s-720p.mp4", seconds=10, width=1280, height=720)
        crops = checker.check(sample).crops  # also the warm-up: first-call costs are not per video
        rate = model_rate(checker, np.stack([crops[i % len(crops)] for i in range(64)]))
        print(f"the model alone: {rate:.0f} faces/s (64 crops of the sample, median of 5; target >= 40)")
        generated = [measure(checker, sample, max(3, args.repeats))]
        cold = cold_start(checker, sample, args.model)
    runs = [measure(checker, path, args.repeats) for path in videos]
    rows = [summary_row("generated 10 s 720p sample", generated),
            summary_row(f"FF++ sample c23, all ({args.data.name})", runs)]
    for height in sorted({r["height"] for r in runs}, reverse=True):
        rows.append(summary_row(f"  of which {height}p", [r for r in runs if r["height"] == height]))
    print(markdown_table(["videos", "n", "check s", "check CPU s", "decode-only s", "decode CPU s",
                          "check / decode"], rows))
    folder = folder_rate(checker, videos)
    print(f"\nthe folder ({len(videos)} videos) through `check_many` (the next videos decoding and detecting while this one is "
          f"scored; medians of 2, taking turns with the baseline): {folder['check']:.1f} s, {len(videos) / folder['check']:.2f} videos/s; decoding the same frames "
          f"alone, video after video: {folder['decode']:.1f} s, {len(videos) / folder['decode']:.2f} videos/s; "
          f"ratio {folder['check'] / folder['decode']:.2f} (target <= 1.3)")
    cores = len(os.sched_getaffinity(0))
    print(f"the folder's check used {folder['check_cpu']:.1f} CPU s ({folder['check_cpu'] / folder['check']:.2f} cores busy); "
          f"the floor on {cores} fully busy cores: {folder['check_cpu'] / cores / folder['decode']:.2f}x decode-only")
    print("\ncold start, generated 10 s 720p video (medians of 5):")
    print(markdown_table(["process", "n", "wall s", "CPU s", "/ baseline"], cold))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    hd = [r for r in runs if r["height"] == 720] + generated
    wall, cpu = median(r["check"] for r in hd), median(r["check_cpu"] for r in hd)
    print(f"target: a 10-second 720p video in under {TARGET_S:g} s on 2 cores -> 720p median {wall:.2f} s wall: "
          f"{'met' if wall < TARGET_S else 'NOT met'} (it used {cpu:.2f} CPU s: on {cores} idle cores it cannot take "
          f"less than {cpu / cores:.2f} s)")


if __name__ == "__main__":
    main()
