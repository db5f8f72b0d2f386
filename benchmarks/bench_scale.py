"""Scale-out benchmark (issue 6): `prepare` on Dask over the FF++ sample's c23 videos.

Speed: the same videos with a local Dask cluster of 1 and of 2 workers, and through a
`dask scheduler` + `dask worker` started here as separate processes; videos/s and speed-up.
Each engine's client runs in a process of its own, as `unmask prepare` does. The three run
side by side and take the videos in turns, a chunk each, so that a load that changes during
the benchmark (a shared machine) weighs on all three alike. The time counted is processing
(first task sent to last record back), after a warm-up in which each worker loads MTCNN.
Memory: the peak RSS of the client process (a process of its own, talking to that
scheduler) at 100 and at 400 videos, during the run and after it commits the store.

    python benchmarks/bench_scale.py                       # about 5 minutes on 2 cores
    python benchmarks/bench_scale.py --videos 200 --memory-frames 7

The sample (../shared/data/ffpp-sample beside the repository) is research data; the
benchmark skips when it is absent. It is replicated with symlinks when more videos are asked.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from itertools import cycle, islice
from pathlib import Path

from common import SHARED_DATA, machine, peak_rss_mb
from unmask.config import preset
from unmask.datasets import open_dataset
from unmask.distributed import cluster_client, dask_runner
from unmask.prepare import prepare_dataset

SAMPLE = SHARED_DATA / "ffpp-sample"
CLUSTER_SETTINGS = """\
distributed:
  scheduler:
    allowed-failures: 2
    worker-saturation: 1.0
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
"""


def config_for(frames: int, size: int):
    """The seed preset (1 frame in 30, MTCNN > 0.9, no margin), with these frames and crop side."""
    seed = preset("seed")
    return replace(seed, frames=replace(seed.frames, max_frames=frames), faces=replace(seed.faces, size=size))


def replicate(count: int, folder: Path) -> Path:
    """A real/ + fake/ dataset of ``count`` symlinks to the sample's c23 videos, reals and fakes alternating."""
    scan = open_dataset(SAMPLE, ["Deepfakes"], ["c23"])
    reals = [v.path for v in scan.videos if v.label == 0]
    fakes = [v.path for v in scan.videos if v.label == 1]
    pairs = [p for pair in zip(reals, fakes) for p in pair]
    for number, path in enumerate(islice(cycle(pairs), count)):
        label = "real" if path in reals else "fake"
        link = folder / label / f"{number // len(pairs):02d}-{path.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return folder


@contextmanager
def dask_processes(workers: int, folder: Path):
    """`dask scheduler` and `dask worker --nworkers N --nthreads 1` as processes; yields the address.

    Both read the Dask settings docs/cluster.md recommends for a cluster of one's own, the
    ones ``cluster_client`` gives the local cluster it starts.
    """
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / "unmask.yaml").write_text(CLUSTER_SETTINGS)
    started = []

    def start(args, log):
        with (folder / log).open("w") as handle:
            started.append(subprocess.Popen([sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT,
                                            env={**os.environ, "DASK_CONFIG": str(folder / "config")},
                                            start_new_session=True))

    try:
        start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(folder / "scheduler.json")], "scheduler.log")
        deadline = time.monotonic() + 120
        while not (folder / "scheduler.json").exists():
            if time.monotonic() > deadline or started[0].poll() is not None:
                raise RuntimeError(f"dask scheduler did not start: {(folder / 'scheduler.log').read_text()}")
            time.sleep(0.1)
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        start(["distributed.cli.dask_worker", address, "--nworkers", str(workers), "--nthreads", "1",
               "--no-dashboard", "--local-directory", str(folder)], "workers.log")
        with cluster_client(scheduler=address) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait()


def drive(spec: dict) -> None:
    """One engine's client: start or join its cluster, warm it up, then process the next chunk
    of videos each time a line comes on stdin, answering with the seconds it took as JSON."""
    config = config_for(spec["frames"], spec["size"])
    videos = open_dataset(Path(spec["dataset"])).videos
    shards = Path(spec["shards"])
    shards.mkdir(parents=True)
    began = time.perf_counter()
    with cluster_client(**spec["cluster"]) as client:
        client.wait_for_workers(spec["workers"], timeout=120)
        startup = time.perf_counter() - began
        run = dask_runner(client, config)
        for _ in run([replace(v, key=f"warm-up/{v.key}") for v in videos[:2 * spec["workers"]]], shards):
            pass
        print(json.dumps({"startup_s": startup}), flush=True)
        for _, begin in zip(sys.stdin, range(0, len(videos), spec["chunk"])):
            began, in_tasks = time.perf_counter(), 0.0
            for record in run(videos[begin:begin + spec["chunk"]], shards):
                assert record["status"] != "error", record["reason"]
                in_tasks += record["seconds"]
            print(json.dumps({"seconds": time.perf_counter() - began, "in_tasks": in_tasks}), flush=True)


def race(engines: dict, dataset: Path, count: int, args, folder: Path) -> dict:
    """Run the engines' drivers chunk by chunk, in turns; per engine: cluster start, seconds
    processing, and seconds inside the tasks (their ratio is how many workers were busy)."""
    drivers, results = {}, {}
    for name, (cluster, workers) in engines.items():
        spec = {"cluster": cluster, "workers": workers, "dataset": str(dataset), "frames": args.frames,
                "size": args.size, "chunk": args.chunk, "shards": str(folder / name.replace(" ", "-"))}
        drivers[name] = subprocess.Popen([sys.executable, __file__, "--driver", json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        results[name] = {"seconds": 0.0, "in_tasks": 0.0, **json.loads(drivers[name].stdout.readline())}
    names = list(engines)
    for number in range(-(-count // args.chunk)):
        for name in names[number % len(names):] + names[:number % len(names)]:
            drivers[name].stdin.write("next\n")
            drivers[name].stdin.flush()
            for key, value in json.loads(drivers[name].stdout.readline()).items():
                results[name][key] += value
    for driver in drivers.values():
        driver.stdin.close()
        if driver.wait():
            raise RuntimeError("an engine's driver failed (its error is above)")
    return results


def client_run(address: str, dataset: Path, out: Path, frames: int, size: int) -> None:
    """The client alone in this process: run, then commit; print its peak RSS at each step as JSON."""
    config = config_for(frames, size)
    scan = open_dataset(dataset)
    peaks = {}
    with cluster_client(scheduler=address) as client:
        peaks["connected_mb"] = peak_rss_mb()[0]
        run = dask_runner(client, config)

        def runner(videos, shards):
            yield from run(videos, shards)
            peaks["run_mb"] = peak_rss_mb()[0]

        summary = prepare_dataset(scan, out, config, runner=runner)
    peaks["committed_mb"] = peak_rss_mb()[0]
    faces_mb = (out / "faces.npy").stat().st_size / 2**20
    print(json.dumps({"videos": summary.processed, "faces_mb": faces_mb, **peaks}))


def client_memory(address: str, dataset: Path, out: Path, frames: int, size: int) -> dict:
    command = [sys.executable, __file__, "--client-run", address, str(dataset), str(out),
               "--memory-frames", str(frames), "--size", str(size)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=62, help="videos for the speed runs (sample: 62 c23)")
    parser.add_argument("--frames", type=int, default=7, help="frames per video for the speed runs (seed: 7)")
    parser.add_argument("--chunk", type=int, default=8, help="videos per turn in the speed runs")
    parser.add_argument("--size", type=int, default=320, help="crop side (seed: 320)")
    parser.add_argument("--memory-videos", default="100,400", help="video counts for the client memory runs")
    parser.add_argument("--memory-frames", type=int, default=1,
                        help="frames per video for the memory runs (default 1: the client's memory does not "
                             "depend on it, and it keeps 500 videos quick)")
    parser.add_argument("--client-run", nargs=3, metavar=("ADDRESS", "DATASET", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--driver", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_run:
        address, dataset, out = args.client_run
        client_run(address, Path(dataset), Path(out), args.memory_frames, args.size)
        return 0
    if args.driver:
        drive(args.driver)
        return 0
    if not SAMPLE.is_dir():
        print(f"skipped: the FF++ sample is not at {SAMPLE} (research data, not in the repository)")
        return 0
    load_before = os.getloadavg()[0]
    print(f"machine: {machine()}, load average at start "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    config = config_for(args.frames, args.size)
    print(f"settings: seed preset, {args.frames} frames (1 in {config.frames.step}), crop {args.size}, "
          f"MTCNN confidence > {config.faces.min_confidence}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        dataset = replicate(args.videos, tmp / "speed")
        began = time.perf_counter()
        with dask_processes(2, tmp / "dask") as address:
            processes_s = time.perf_counter() - began
            engines = {"Dask LocalCluster, 1 worker": ({"workers": 1}, 1),
                       "Dask LocalCluster, 2 workers": ({"workers": 2}, 2),
                       "`dask scheduler` + 2 `dask worker` processes": ({"scheduler": address}, 2)}
            print(f"{args.videos} videos on each engine, {args.chunk} at a time...", file=sys.stderr, flush=True)
            results = race(engines, dataset, args.videos, args, tmp / "race")
            results["`dask scheduler` + 2 `dask worker` processes"]["startup_s"] += processes_s
            load_after = os.getloadavg()
            memory = []
            for count in (int(x) for x in args.memory_videos.split(",")):
                print(f"client memory over {count} videos...", file=sys.stderr, flush=True)
                memory.append(client_memory(address, replicate(count, tmp / f"memory-{count}"),
                                            tmp / f"memory-out-{count}", args.memory_frames, args.size))
    base = args.videos / results["Dask LocalCluster, 1 worker"]["seconds"]
    print(f"load average after the speed runs: {', '.join(f'{x:.1f}' for x in load_after)}")
    if load_before >= 1:
        print(f"warning: other programs were using the machine (1-minute load average {load_before:.1f} before "
              "the benchmark): the speed figures below measure a shared machine, not its capacity")
    print()
    print("| engine | cluster start (s) | videos | processing (s) | videos/s | speed-up vs 1 worker "
          "| s per video in a worker | workers busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        rate = args.videos / r["seconds"]
        print(f"| {name} | {r['startup_s']:.1f} | {args.videos} | {r['seconds']:.1f} | {rate:.2f} | "
              f"{rate / base:.2f}x | {r['in_tasks'] / args.videos:.2f} | {r['in_tasks'] / r['seconds']:.2f} |")
    print()
    print(f"client peak RSS (own process, `dask scheduler` + 2 `dask worker` processes; "
          f"{args.memory_frames} frame(s) per video, crop {args.size}):")
    print()
    print("| videos | faces written (MB) | after connecting (MB) | end of run (MB) | after commit (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for m in memory:
        print(f"| {m['videos']} | {m['faces_mb']:.0f} | {m['connected_mb']:.0f} | {m['run_mb']:.0f} | "
              f"{m['committed_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
