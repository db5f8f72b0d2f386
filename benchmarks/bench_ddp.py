"""CNN training under torchrun (issue 6): one process using every core against one process per core.

The same fine-tuning (Meso-4 from the released weights, no validation split, fixed seed) runs as
``unmask train`` in one process with ``OMP_NUM_THREADS`` = cores, and as
``torchrun --standalone --nproc-per-node=cores --no-python unmask train`` with one thread per
process (DistributedDataParallel over gloo). The runs alternate, so a load that changes during
the benchmark weighs on both; training faces/s is the card's fit time, median over repeats.

Data: the FF++ sample's Deepfakes faces as benchmarks/bench_cnn.py caches them (256 px, margin 0.3).

    python benchmarks/bench_ddp.py [--epochs 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_cnn import deepfakes_store
from common import SHARED_DATA, machine, markdown_table, median


def fit_rate(command: list[str], threads: int, out: Path, faces: int, epochs: int) -> float:
    """Training faces/s of one ``unmask train`` run, from the fit time its model card records."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command + ["--out", str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    card = json.loads((out / "card.json").read_text())
    return faces * epochs / card["training"]["usage"]["fit"]["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    store = deepfakes_store(args.data)
    train = ["unmask", "train", str(store.root), "--model", "meso4", "--param", "init=released",
             "--param", f"epochs={args.epochs}", "--param", "val_fraction=0", "--split", "none"]
    runs = {
        f"1 process x {cores} threads": (train, cores),
        f"torchrun: {cores} processes x 1 thread": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cores}",
             "--no-python", *train], 1),
    }
    print(f"machine: {machine()}")
    print(f"data: {len(store)} faces (FF++ sample, Deepfakes + originals, c23 + c40), Meso-4 fine-tuned "
          f"from the released weights, {args.epochs} epochs, batch 32 per process; median of {args.repeats} runs")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for number, (name, (command, threads)) in enumerate(runs.items()):
                out = Path(tmp) / f"{repeat}-{number}"
                rates[name].append(fit_rate(command, threads, out, len(store), args.epochs))
            print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
    baseline = median(rates[next(iter(runs))])
    print(markdown_table(["run", "training faces/s (median)", "runs", "speed-up"],
                         [[name, f"{median(r):.0f}", ", ".join(f"{x:.0f}" for x in r), f"{median(r) / baseline:.2f}x"]
                          for name, r in rates.items()]))


if __name__ == "__main__":
    main()
