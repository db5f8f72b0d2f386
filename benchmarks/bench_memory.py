"""Peak memory of `unmask check` whatever the video's resolution, and of `unmask serve` after many uploads.

Each check runs as its own `unmask check VIDEO` process (the default model, 16 frames and their
neighbours), and its peak resident memory is read from the kernel (``ru_maxrss`` of a small
wrapper's only child, so no parent's memory is counted). The baseline, measured in the same run,
is the same command on a 360p clip: the process, its libraries and the models, with almost no frame
memory. Each resolution is run with frames bounded (the default, ``--max-side 1920``) and with
frames at their own size (``--max-side 0``; the face pass still holds only a few at a time). Then `unmask serve` takes 20 uploads, 4K and 720p in turn,
two at a time, and its resident memory is read after them. Target: under 1.5 GB for a check
whatever the resolution.

    python benchmarks/bench_memory.py [--seconds 2] [--skip-server]
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

from common import machine, markdown_table, median
from unmask.sample import sample_frames
from unmask.video import write_video

TARGET_MB = 1500
SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160), "8K": (7680, 4320)}
WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_clip(folder: Path, name: str, seconds: float) -> Path:
    """The astronaut portrait drifting across the frame, encoded at the given resolution."""
    width, height = SIZES[name]
    path = folder / f"{name}.mp4"
    frames = (cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
              for frame in sample_frames(seconds=seconds, fps=25, width=640, height=360))
    write_video(path, frames)
    return path


def check_peak_mb(video: Path, *options: str) -> float:
    """Peak RSS of one whole `unmask check` process, in MB."""
    run = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "unmask", "check", str(video),
                          "--json", *options], capture_output=True, text=True, check=True)
    return int(run.stdout.strip()) / 1024


def server_memory(videos: list[Path], uploads: int = 20) -> dict[str, float]:
    """`unmask serve` (2 workers): resident memory idle, at its peak and after ``uploads`` uploads."""
    import httpx

    process = subprocess.Popen([sys.executable, "-m", "unmask", "serve", "--port", "0", "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://\S+", line)[0]

        def status(field: str) -> float:
            text = Path(f"/proc/{process.pid}/status").read_text()
            return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1]) / 1024

        idle = status("VmRSS")

        def upload(k: int) -> int:
            video = videos[k % len(videos)]
            with video.open("rb") as handle:
                answer = httpx.post(f"{url}/api/check", files={"video": (video.name, handle, "video/mp4")},
                                    timeout=600)
            return answer.status_code

        with ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(upload, range(uploads)))
        time.sleep(1.0)
        return {"idle": idle, "peak": status("VmHWM"), "after": status("VmRSS"),
                "ok": sum(code == 200 for code in codes), "uploads": uploads}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each generated clip (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell; the median is shown (default: 2)")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = {name: make_clip(folder, name, args.seconds) for name in SIZES}
        baseline = median([check_peak_mb(clips["360p"]) for _ in range(args.repeats)])
        print(f"baseline: `unmask check` of a 360p clip peaks at {baseline:.0f} MB (process, libraries, models)")
        rows = []
        for name in list(SIZES)[1:]:
            bounded = median([check_peak_mb(clips[name]) for _ in range(args.repeats)])
            # Unscaled 8K frames are 100 MB each: measured with 4 frames (16 decoded), to stay quick.
            frames = ["--frames", "4"] if name == "8K" else []
            unbounded = median([check_peak_mb(clips[name], "--max-side", "0", *frames) for _ in range(args.repeats)])
            rows.append([name, f"{bounded:.0f}", f"{bounded / baseline:.2f}", "yes" if bounded < TARGET_MB else "NO",
                         f"{unbounded:.0f}" + (" (4 frames)" if frames else "")])
        print(markdown_table(["video", "peak MB (bounded, default)", "/ baseline", f"< {TARGET_MB} MB",
                              "peak MB, frames not scaled (--max-side 0)"], rows))
        if not args.skip_server:
            served = server_memory([clips["4K"], clips["720p"]])
            print(f"unmask serve, 2 workers, {served['uploads']} uploads (4K and 720p in turn, 2 at a time, "
                  f"{served['ok']} answered 200): idle {served['idle']:.0f} MB, peak {served['peak']:.0f} MB, "
                  f"after {served['after']:.0f} MB")
        print(json.dumps({"baseline_mb": baseline, "rows": rows}))


if __name__ == "__main__":
    main()
