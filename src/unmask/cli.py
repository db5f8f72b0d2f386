"""The `unmask` command: parse arguments, call one function per command, print, set the exit code.

Exit codes: 0 = it ran; 1 = nothing could be processed; 2 = the input or the options are wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from unmask import __version__
from unmask.errors import UnmaskError

EXIT_OK, EXIT_NOTHING_DONE, EXIT_BAD_INPUT = 0, 1, 2
COMMANDS: dict[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {}


def command(name: str):
    """Register a sub-command: the function adds its arguments and returns its handler."""
    def decorator(setup):
        COMMANDS[name] = setup
        return setup
    return decorator


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- prepare
@command("prepare")
def _prepare_command(parser: argparse.ArgumentParser):
    """Turn a video dataset into a face store: sample frames, detect faces (MTCNN), crop, store."""
    parser.add_argument("dataset", type=Path, help="FaceForensics++ root, a folder with real/ and fake/, "
                        "or a CSV manifest (path,label[,group,split,method])")
    parser.add_argument("--out", type=Path, required=True, help="face store folder (created; re-running resumes)")
    parser.add_argument("--methods", type=_csv_list, default=["Deepfakes"],
                        help="FF++ manipulation methods, comma separated (default: Deepfakes; originals always come)")
    parser.add_argument("--compression", type=_csv_list, default=["c23"],
                        help="FF++ compressions raw,c23,c40, comma separated (default: c23)")
    parser.add_argument("--preset", default="seed", help="settings preset (default: seed, the study's)")
    parser.add_argument("--step", type=_positive_int, help="take one frame every STEP frames (seed: 30)")
    parser.add_argument("--frames", type=_positive_int, help="at most this many frames per video (seed: 7)")
    parser.add_argument("--min-confidence", type=float, help="keep faces with MTCNN confidence over this (seed: 0.9)")
    parser.add_argument("--min-face-size", type=_positive_int, help="smallest face searched, in pixels (default: 40)")
    parser.add_argument("--margin", type=float, help="border added around the box, fraction of its size (seed: 0)")
    parser.add_argument("--size", type=_positive_int, help="side of the square face crop (seed: 320)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="parallel processes (default: number of CPU cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return _run_prepare


def _prepare_config(args: argparse.Namespace):
    from unmask.config import preset

    base = preset(args.preset)
    frames = replace(base.frames, **{k: v for k, v in (("step", args.step), ("max_frames", args.frames)) if v})
    face_overrides = {
        "min_confidence": args.min_confidence, "min_face_size": args.min_face_size,
        "margin": args.margin, "size": args.size, "device": args.device,
    }
    faces = replace(base.faces, **{k: v for k, v in face_overrides.items() if v is not None})
    return replace(base, frames=frames, faces=faces)


def _run_prepare(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from unmask.datasets import open_dataset
    from unmask.prepare import prepare_dataset
    from unmask.store import FaceStore
    from unmask.visualize import contact_sheet

    config = _prepare_config(args)
    scan = open_dataset(args.dataset, args.methods, args.compression)
    for problem in scan.problems:
        print(f"warning: {problem}", file=sys.stderr)
    workers = args.workers or os.cpu_count() or 1
    with tqdm(total=len(scan.videos), unit="video", desc="prepare", file=sys.stderr,
              disable=None) as bar:
        bar.update(0)

        def on_video(record: dict) -> None:
            bar.set_postfix_str(f"{Path(record['video']).name}: {record['status']}", refresh=False)
            bar.update(1)

        summary = prepare_dataset(scan, args.out, config, workers=workers, on_video=on_video)
        bar.update(summary.already_done)
    sheet = contact_sheet(FaceStore(args.out), args.out / "contact_sheet.png")
    result = summary.to_dict() | {"store": str(args.out), "contact_sheet": str(sheet) if sheet else None}
    if args.json:
        _print_json(result)
    else:
        _print_prepare_summary(summary, args.out, sheet)
    return EXIT_OK if (summary.videos["status"] == "ok").any() else EXIT_NOTHING_DONE


def _print_prepare_summary(summary, out: Path, sheet: Path | None) -> None:
    counts = summary.videos["status"].value_counts().to_dict()
    print(f"face store: {out}")
    print(f"videos: {len(summary.videos)} ({summary.processed} processed now, {summary.already_done} already done; "
          f"ok {counts.get('ok', 0)}, no face {counts.get('no-face', 0)}, errors {counts.get('error', 0)})")
    for name, stats in summary.capture().items():
        print(f"  {name:5s} {stats['videos']:5d} videos  {stats['frames']:6d} frames  {stats['faces']:6d} faces  "
              f"capture rate {100 * stats['capture_rate']:.2f}%")
    failures = summary.failures()
    if len(failures):
        print(f"skipped {len(failures)} video(s):")
        for row in failures.itertuples():
            print(f"  {row.video}: {row.status}: {row.reason}")
    print(f"wall time {summary.wall_s:.1f} s, {summary.videos_per_s:.2f} videos/s")
    if sheet:
        print(f"contact sheet: {sheet}")


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unmask",
        description="Tell whether a video of a face is real or a deepfake; build, train and measure the "
                    "detector on FaceForensics++.",
    )
    parser.add_argument("--version", action="version", version=f"unmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, setup in COMMANDS.items():
        doc = (setup.__doc__ or "").strip()
        child = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        child.set_defaults(handler=setup(child))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UnmaskError as err:
        print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"unmask {args.command}: interrupted (finished work is kept; run again to resume)", file=sys.stderr)
        return 130
