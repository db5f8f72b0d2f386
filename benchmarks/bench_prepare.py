"""`unmask prepare` speed on the FF++ sample's c23 videos, against decoding the same frames alone.

Prints the machine, videos/s and faces/s, the time split into decode / detect / store, the
ratio prepare / decode-only measured in the same run, and peak memory. Medians over repeats.
``prepare_dataset`` is timed in this process (engine start included) and the whole
`unmask prepare` command as a user runs it (imports and start-up included).

It also measures the levers that do not change the faces: what starting and stopping the engine
costs (a local Dask cluster whose workers load the face pass, against a process pool doing the
same), how busy the workers keep the cores (what overlapping decoding with detection could
still win), and the floor: the ratio prepare would reach with neither (its workers' seconds
spread evenly over the cores, against the baseline).

    python benchmarks/bench_prepare.py [--workers 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from common import SHARED_DATA, machine, markdown_table, median, peak_rss_mb, require
from unmask.config import preset
from unmask.datasets import open_dataset
from unmask.distributed import cluster_client, cluster_runner
from unmask.prepare import make_face_pass, prepare_dataset
from unmask.video import read_frames


def _decode(args) -> int:
    path, indices = args
    return len(read_frames(path, indices, threads=1)[1])


def decode_only(videos, indices, workers: int) -> tuple[float, int]:
    """Wall time to decode exactly the frames prepare reads, with the same number of processes."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_decode, [(v.path, indices) for v in videos[:workers]]))  # warm the processes up
        started = time.perf_counter()
        frames = sum(pool.map(_decode, [(v.path, indices) for v in videos]))
        return time.perf_counter() - started, frames


def _load_face_pass(config) -> None:
    make_face_pass(config, threads=1, decode_threads=1)


def engine_overhead(config, workers: int) -> dict[str, float]:
    """Wall seconds to start an engine, have each of its workers load the face pass, and stop it:
    the local Dask cluster ``prepare --workers`` uses, and a process pool (spawned) for comparison."""
    started = time.perf_counter()
    with cluster_client(workers=workers) as client:
        client.gather(client.map(_load_face_pass, [config] * workers, pure=False))
    dask_s = time.perf_counter() - started
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_load_face_pass, [config] * workers))
    return {"dask": dask_s, "pool": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scan = open_dataset(require(args.data), ["Deepfakes"], ["c23"])
    config = preset("seed")
    indices = config.frames.indices(None)
    print(f"machine: {machine()}")
    print(f"data: {args.data.name}, {len(scan.videos)} c23 videos (Deepfakes + originals), "
          f"frames {indices}, workers {args.workers}, repeats {args.repeats}")
    decode_times, prepare_times, command_times, splits, engines = [], [], [], [], []
    for _ in range(args.repeats):
        engines.append(engine_overhead(config, args.workers))
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "unmask", "prepare", str(args.data), "--out", str(Path(out) / "f"),
                            "--methods", "Deepfakes", "--compression", "c23", "--workers", str(args.workers)],
                           check=True, capture_output=True)
            command_times.append(time.perf_counter() - started)
        seconds, frames = decode_only(scan.videos, indices, args.workers)
        decode_times.append(seconds)
        with tempfile.TemporaryDirectory() as out:
            summary = prepare_dataset(scan, Path(out) / "faces", config,
                                      runner=cluster_runner(config, workers=args.workers))
            prepare_times.append(summary.wall_s)
            splits.append(summary.videos[["decode_s", "detect_s", "motion_s", "store_s"]].sum())
            faces = int(summary.videos["faces"].sum())
    n = len(scan.videos)
    decode_s, prepare_s, command_s = median(decode_times), median(prepare_times), median(command_times)
    split = pd.concat(splits, axis=1).median(axis=1)
    share = split / split.sum()
    own, child = peak_rss_mb()
    rows = [
        ["decode only (baseline)", f"{decode_s:.1f}", f"{n / decode_s:.2f}", "", "1.00"],
        ["prepare (decode + MTCNN + crop + store)", f"{prepare_s:.1f}", f"{n / prepare_s:.2f}",
         f"{faces / prepare_s:.1f}", f"{prepare_s / decode_s:.2f}"],
        ["the whole `unmask prepare` command", f"{command_s:.1f}", f"{n / command_s:.2f}",
         f"{faces / command_s:.1f}", f"{command_s / decode_s:.2f}"],
    ]
    print(markdown_table(["run", "wall s (median)", "videos/s", "faces/s", "time / decode-only"], rows))
    print(f"prepare time split (worker seconds, one thread each): decode {100 * share['decode_s']:.0f}%, "
          f"detect {100 * share['detect_s']:.0f}%, store {100 * share['store_s']:.0f}%")
    worker_s = split.sum()
    print(f"workers busy {100 * worker_s / (args.workers * prepare_s):.0f}% of the run ({worker_s:.1f} worker s); "
          f"floor with no engine start and no idle worker: {worker_s / args.workers / decode_s:.2f}x decode-only")
    print(f"engine start + load the face pass on each worker + stop (median): local Dask cluster "
          f"{median(e['dask'] for e in engines):.2f} s, process pool {median(e['pool'] for e in engines):.2f} s")
    print(f"faces: {faces} from {frames} frames; peak memory: client {own:.0f} MB, largest worker {child:.0f} MB")
    print(f"targets: >= 2 videos/s -> {'met' if n / prepare_s >= 2 else 'NOT met'}; "
          f"<= 2x decode-only -> {'met' if prepare_s / decode_s <= 2 else 'NOT met'}; "
          f"whole command <= 2x decode-only -> {'met' if command_s / decode_s <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
