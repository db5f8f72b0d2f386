"""`unmask prepare` and `unmask synth`: videos (or photos) in, a face store out."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from unmask.commands import (
    EXIT_NOTHING_DONE, EXIT_OK, Commands, add_cluster_arguments, cluster_options, csv_list, positive_int,
    print_json, ranged,
)
from unmask.config import CROPS, FLOWS, MOTION_ON
from unmask.errors import UnmaskError

COMMANDS = Commands()


@COMMANDS.register("prepare")
def _prepare_command(parser: argparse.ArgumentParser):
    """Turn a video dataset into a face store: sample frames, detect faces (MTCNN), crop, store."""
    parser.add_argument("dataset", type=Path, help="FaceForensics++ root, a folder with real/ and fake/, "
                        "or a CSV manifest (path,label[,group,split,method])")
    parser.add_argument("--out", type=Path, required=True, help="face store folder (created; re-running resumes)")
    parser.add_argument("--methods", type=csv_list, default=["Deepfakes"],
                        help="FF++ manipulation methods, comma separated (default: Deepfakes; originals always come)")
    parser.add_argument("--compression", type=csv_list, default=["c23"],
                        help="FF++ compressions raw,c23,c40, comma separated (default: c23)")
    parser.add_argument("--preset", default="seed", help="settings preset (default: seed, the study's)")
    parser.add_argument("--step", type=positive_int, help="take one frame every STEP frames (seed: 30)")
    parser.add_argument("--frames", type=positive_int, help="at most this many frames per video (seed: 7)")
    parser.add_argument("--min-confidence", type=float, help="keep faces with MTCNN confidence over this (seed: 0.9)")
    parser.add_argument("--min-face-size", type=positive_int, help="smallest face searched, in pixels (default: 40)")
    parser.add_argument("--margin", type=float, help="border added around the box, fraction of its size (seed: 0)")
    parser.add_argument("--max-side", type=ranged(int, 0), metavar="PIXELS",
                        help="scale frames larger than this down before finding faces, bounding memory "
                             "(default: 1920, so up to 1080p is untouched; 0: never scale)")
    parser.add_argument("--size", type=positive_int, help="side of the square face crop (seed: 320)")
    parser.add_argument("--crop", choices=CROPS, help="detected: cut each face at the detector's box (default); "
                        "given: the images of a face-image set are face crops already, each is taken whole "
                        "(the detector still runs, for confidence and keypoints)")
    parser.add_argument("--motion", nargs="?", const=MOTION_ON.flow, choices=FLOWS, metavar="FLOW",
                        help="also read the 3 frames after each sampled one and store each face's motion "
                             "residual features (what the default model mesonet-motion judges besides the crop); "
                             f"FLOW: optical flow, one of {', '.join(FLOWS)} (default: {MOTION_ON.flow})")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="parallel processes (default: number of CPU cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_cluster_arguments(parser)
    return _run_prepare


def _prepare_config(args: argparse.Namespace):
    from unmask.config import preset

    base = preset(args.preset)
    frames = replace(base.frames, **{k: v for k, v in (("step", args.step), ("max_frames", args.frames)) if v})
    face_overrides = {"min_confidence": args.min_confidence, "margin": args.margin, "size": args.size,
                      "device": args.device, "crop": args.crop}
    faces = replace(base.faces, **{k: v for k, v in face_overrides.items() if v is not None})
    if args.min_face_size:
        faces = replace(faces, mtcnn=replace(faces.mtcnn, min_face_size=args.min_face_size))
    if args.max_side is not None:
        faces = replace(faces, max_side=args.max_side or None)
    return replace(base, frames=frames, faces=faces,
                   motion=replace(MOTION_ON, flow=args.motion) if args.motion else base.motion)


def _run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unmask.datasets import open_dataset
    from unmask.distributed import cluster_runner
    from unmask.prepare import prepare_dataset
    from unmask.store import FaceStore
    from unmask.visualize import contact_sheet

    config = _prepare_config(args)
    runner = cluster_runner(config, workers=args.workers, **cluster_options(args))
    scan = open_dataset(args.dataset, args.methods, args.compression)
    for problem in scan.problems:
        print(f"warning: {problem}", file=sys.stderr)
    with tqdm(total=len(scan.videos), unit="video", desc="prepare", file=sys.stderr,
              disable=None) as bar:
        bar.update(0)

        def on_video(record: dict) -> None:
            bar.set_postfix_str(f"{Path(record['video']).name}: {record['status']}", refresh=False)
            bar.update(1)

        summary = prepare_dataset(scan, args.out, config, on_video=on_video, runner=runner)
        bar.update(summary.already_done)
    sheet = contact_sheet(FaceStore(args.out), args.out / "contact_sheet.png")
    result = summary.to_dict() | {"store": str(args.out), "contact_sheet": str(sheet) if sheet else None}
    if args.json:
        print_json(result)
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


@COMMANDS.register("synth")
def _synth_command(parser: argparse.ArgumentParser):
    """Make a labelled training set from real faces only: self-blended and face-swapped fakes."""
    parser.add_argument("source", type=Path, help="a folder of real videos and/or photos, or a face store")
    parser.add_argument("--out", type=Path, required=True, help="face store to write (real faces + fakes)")
    parser.add_argument("--kinds", type=csv_list, default=["sbi", "swap"],
                        help="sbi (self-blended, Shiohara & Yamasaki 2022), swap (FaceSwap-like); default: both")
    parser.add_argument("--per-face", type=positive_int, default=1, help="fakes made from each real face (default: 1)")
    parser.add_argument("--margin", type=float, default=0.0, help="crop margin when faces are extracted (default: 0)")
    parser.add_argument("--size", type=positive_int, default=320, help="crop size (default: 320)")
    parser.add_argument("--frames", type=positive_int, default=7, help="frames per video (default: 7)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workers", type=positive_int, default=None, help="parallel processes for face extraction")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return _run_synth


def _run_synth(args: argparse.Namespace) -> int:
    from unmask.config import FaceDetection, FrameSampling, PrepareConfig
    from unmask.datasets import DatasetScan, real_sources
    from unmask.distributed import cluster_runner
    from unmask.prepare import prepare_dataset
    from unmask.store import FaceStore
    from unmask.synth import KINDS, synthesize_store
    from unmask.visualize import contact_sheet

    for kind in args.kinds:
        if kind not in KINDS:
            raise UnmaskError(f"unknown kind {kind!r}; choose from: {', '.join(KINDS)}")
    if (args.source / "faces.csv").is_file():
        real = FaceStore(args.source)
    else:
        config = PrepareConfig(frames=FrameSampling(max_frames=args.frames),
                               faces=FaceDetection(margin=args.margin, size=args.size))
        scan = DatasetScan(root=args.source, layout="real", videos=real_sources(args.source))
        prepare_dataset(scan, args.out / "real", config,
                        runner=cluster_runner(config, workers=args.workers or os.cpu_count() or 1))
        real = FaceStore(args.out / "real")
    if len(real) == 0:
        raise UnmaskError(f"no faces found in {args.source}")
    store = synthesize_store(real, args.out / "train", args.kinds, args.per_face, args.seed)
    sheet = contact_sheet(store, args.out / "train" / "contact_sheet.png")
    counts = store.table.groupby("method").size().to_dict()
    if args.json:
        print_json({"store": str(store.root), "faces": len(store), "per_method": counts, "contact_sheet": str(sheet)})
    else:
        print(f"training store: {store.root} ({len(store)} faces: "
              + ", ".join(f"{n} {m}" for m, n in counts.items()) + ")")
        print(f"contact sheet: {sheet}")
    return EXIT_OK
