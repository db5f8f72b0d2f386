"""The `unmask` command: parse arguments, call one function per command, print, set the exit code.

Exit codes: 0 = it ran; 1 = some input could not be used (`check`: a video could not be read;
`prepare`: not one video could be prepared); 2 = wrong options, input or paths (a report that
cannot be written, say); 130 = interrupted (Ctrl+C).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from unmask import __version__
from unmask.config import FLOWS, MOTION_ON
from unmask.errors import UnmaskError

# Idle OpenMP threads sleep instead of spinning: on a small shared CPU, spinning threads made
# torch 5-9x slower. OpenMP reads this once, when torch loads, so it is set before any import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def _ranged(convert: Callable[[str], float], low: float, high: float | None = None, above: bool = False):
    """An argparse type: ``convert`` the text, then check ``low <= value <= high`` (``above``:
    strictly over ``low``), so a bad number is one clear usage line."""
    def parse(text: str):
        value = convert(text)
        if (value <= low if above else value < low) or (high is not None and value > high):
            wanted = (f"over {low}" if above else f"at least {low}") if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its "invalid ... value" message
    return parse


_positive_int = _ranged(int, 1)
_probability = _ranged(float, 0.0, 1.0)
_positive_float = _ranged(float, 0.0, above=True)
_port = _ranged(int, 0, 65535)


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
    parser.add_argument("--max-side", type=_ranged(int, 0), metavar="PIXELS",
                        help="scale frames larger than this down before finding faces, bounding memory "
                             "(default: 1920, so up to 1080p is untouched; 0: never scale)")
    parser.add_argument("--size", type=_positive_int, help="side of the square face crop (seed: 320)")
    parser.add_argument("--motion", nargs="?", const=MOTION_ON.flow, choices=FLOWS, metavar="FLOW",
                        help="also read the 3 frames after each sampled one and store each face's motion "
                             "residual features (what the default model mesonet-motion judges besides the crop); "
                             f"FLOW: optical flow, one of {', '.join(FLOWS)} (default: {MOTION_ON.flow})")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="parallel processes (default: number of CPU cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_cluster_arguments(parser)
    return _run_prepare


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: local processes (default), an existing Dask cluster, or a batch queue."""
    group = parser.add_argument_group("cluster", "run on Dask: local processes by default (see docs/cluster.md)")
    group.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://head:8786")
    group.add_argument("--cluster", choices=("slurm", "lsf", "pbs"),
                       help="submit Dask workers as batch jobs (dask-jobqueue)")
    group.add_argument("--jobs", type=_positive_int, help="with --cluster: how many batch jobs (default: 1)")
    group.add_argument("--cluster-config", type=Path, metavar="FILE",
                       help="with --cluster: YAML/JSON job options (cores, memory, walltime, queue, account, "
                            "job_extra_directives, ...)")


def cluster_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``unmask.distributed.cluster_client`` from ``add_cluster_arguments``'s options."""
    return {"scheduler": args.scheduler, "cluster": args.cluster, "jobs": args.jobs,
            "config_file": args.cluster_config}


def _prepare_config(args: argparse.Namespace):
    from unmask.config import preset

    base = preset(args.preset)
    frames = replace(base.frames, **{k: v for k, v in (("step", args.step), ("max_frames", args.frames)) if v})
    face_overrides = {"min_confidence": args.min_confidence, "margin": args.margin, "size": args.size,
                      "device": args.device}
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


# --------------------------------------------------------------------------- synth
@command("synth")
def _synth_command(parser: argparse.ArgumentParser):
    """Make a labelled training set from real faces only: self-blended and face-swapped fakes."""
    parser.add_argument("source", type=Path, help="a folder of real videos and/or photos, or a face store")
    parser.add_argument("--out", type=Path, required=True, help="face store to write (real faces + fakes)")
    parser.add_argument("--kinds", type=_csv_list, default=["sbi", "swap"],
                        help="sbi (self-blended, Shiohara & Yamasaki 2022), swap (FaceSwap-like); default: both")
    parser.add_argument("--per-face", type=_positive_int, default=1, help="fakes made from each real face (default: 1)")
    parser.add_argument("--margin", type=float, default=0.0, help="crop margin when faces are extracted (default: 0)")
    parser.add_argument("--size", type=_positive_int, default=320, help="crop size (default: 320)")
    parser.add_argument("--frames", type=_positive_int, default=7, help="frames per video (default: 7)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workers", type=_positive_int, default=None, help="parallel processes for face extraction")
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
        _print_json({"store": str(store.root), "faces": len(store), "per_method": counts, "contact_sheet": str(sheet)})
    else:
        print(f"training store: {store.root} ({len(store)} faces: "
              + ", ".join(f"{n} {m}" for m, n in counts.items()) + ")")
        print(f"contact sheet: {sheet}")
    return EXIT_OK


# --------------------------------------------------------------------------- train / evaluate / tune
def _param_value(text: str):
    """Parse a --param value: JSON when it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UnmaskError(f"--param takes NAME=VALUE, got {pair!r}")
        params[name.replace("-", "_")] = _param_value(value)
    return params


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", type=Path, help="face store made by `unmask prepare`")
    parser.add_argument("--model", default="rf", help="model name, as `unmask models` lists them (default: rf)")
    parser.add_argument("--features", default=None,
                        help="feature extractor for classical models (default: the model's own; "
                             "see `unmask models`)")
    parser.add_argument("--param", action="append", metavar="NAME=VALUE",
                        help="model parameter, repeatable (e.g. --param n_estimators=2000)")
    parser.add_argument("--folds", type=_positive_int, default=5, help="folds for cross-validation (default: 5)")
    parser.add_argument("--aggregate", default="mean", help="frame -> video score: mean, median, max, "
                        "trimmed-mean (default: mean)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_cluster_arguments(parser)


@contextmanager
def _joblib_cluster(args: argparse.Namespace):
    """With --scheduler or --cluster, scikit-learn's parallel work (trees, folds) runs on Dask."""
    if not (args.scheduler or args.cluster):
        yield
        return
    from unmask.distributed import cluster_client, joblib_on_cluster

    with cluster_client(**cluster_options(args)) as client, joblib_on_cluster(client):
        yield


def _options(args: argparse.Namespace, **extra):
    from unmask.train import TrainOptions

    return TrainOptions(model=args.model, features=args.features, params=_params(args.param),
                        folds=args.folds, aggregate=args.aggregate, seed=args.seed, **extra)


@command("train")
def _train_command(parser: argparse.ArgumentParser):
    """Fit a model on a face store, report on held-out faces, save it with a model card.

    CNN models train on a CUDA GPU when present, else on all CPU cores. Under torchrun they train
    with DistributedDataParallel, one process per GPU or core, and rank 0 writes the model:
    `torchrun --standalone --nproc-per-node=2 --no-python unmask train faces/ --model meso4 --out m/`
    (docs/cluster.md).
    """
    _add_model_arguments(parser)
    parser.add_argument("--split", default="official",
                        help="official (FF++ lists), videos (identity-grouped 80/20), frames (the study's "
                             "random 80/20 over frames: leaks identities), cv (identity-grouped k-fold), "
                             "none (default: official)")
    parser.add_argument("--calibrate", choices=["isotonic", "sigmoid"],
                        help="calibrate probabilities and choose the threshold on identity-grouped held-out faces")
    parser.add_argument("--title", help="a name for the model card")
    parser.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32",
                        help="float16 halves a CNN's folder: its large tensors are rounded once fitted, before "
                             "calibration, evaluation and saving (default: float32)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--report", type=Path, help="also write a report (metrics.json, report.md, plots) here")
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    from unmask.distributed import torch_process_group
    from unmask.store import FaceStore
    from unmask.train import train

    store = FaceStore(args.store)
    options = _options(args, split=args.split, calibrate=args.calibrate, title=args.title,
                       weights_dtype=args.weights_dtype)

    def on_fold(number: int, fold: dict) -> None:
        if rank != 0:
            return
        video = fold["metrics"]["video"]
        print(f"fold {number + 1}/{args.folds}: frame AUC {_fmt(fold['metrics']['frame']['roc_auc'])}, "
              f"video AUC {_fmt(video['roc_auc'])}, fit {fold['fit_s']:.1f} s", file=sys.stderr)

    with torch_process_group() as (rank, _), _joblib_cluster(args):
        result = train(store, options, args.out, args.report, on_fold=on_fold)
    if rank != 0:  # under torchrun, rank 0 speaks for all
        return EXIT_OK
    if args.json:
        _print_json({"model_dir": str(result.model_dir), "metrics": result.metrics, "cross_validation": result.cv,
                     "threshold": result.card["threshold"]})
        return EXIT_OK
    print(f"model saved to {result.model_dir} (card: {result.model_dir / 'card.json'})")
    if result.card["training"]["leak_warning"]:
        print(f"WARNING: {result.card['training']['leak_warning']}")
    if result.metrics:
        _print_metrics(result.metrics)
    if result.cv:
        _print_cv(result.cv)
    if not result.metrics and not result.cv:
        print("no held-out faces to report on (use --split videos or cv)")
    if args.report:
        print(f"report: {args.report / 'report.md'}")
    return EXIT_OK


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_metrics(metrics: dict) -> None:
    for level in ("frame", "video"):
        m = metrics[level]
        print(f"{level:5s}: accuracy {_fmt(m['accuracy'])}  AUC {_fmt(m['roc_auc'])}  EER {_fmt(m['eer'])}  "
              f"AP {_fmt(m['average_precision'])}  ECE {_fmt(m['ece'])}  (n={m['n']})")


def _print_cv(cv: dict) -> None:
    for name, stats in cv["summary"].items():
        print(f"cv {name}: {stats['mean']:.3f} ± {stats['std']:.3f}")
    for cell, stats in cv.get("per_method", {}).items():
        spread = stats["fold_video_roc_auc"]
        print(f"cv {cell}: video AUC {_fmt(stats['video_roc_auc'])} pooled"
              + (f" ({spread['mean']:.3f} ± {spread['std']:.3f} over {spread['folds']} folds)" if spread else "")
              + f", frame AUC {_fmt(stats['frame_roc_auc'])}, {stats['videos']} videos")


@command("evaluate")
def _evaluate_command(parser: argparse.ArgumentParser):
    """Score a saved model on a face store (any dataset) at frame and video level, with a report."""
    parser.add_argument("model", type=Path, help="model folder written by `unmask train`")
    parser.add_argument("store", type=Path, help="face store to score (made by `unmask prepare`)")
    parser.add_argument("--split", choices=["train", "val", "test"], help="score only this split (default: all)")
    parser.add_argument("--aggregate", help="frame -> video score (default: the model card's)")
    parser.add_argument("--report", type=Path, help="write metrics.json, report.md and plots here")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return _run_evaluate


def _run_evaluate(args: argparse.Namespace) -> int:
    from unmask.models.io import load_model
    from unmask.store import FaceStore
    from unmask.train import evaluate_model

    result = evaluate_model(load_model(args.model), FaceStore(args.store), args.split, args.aggregate, args.report)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['faces']} faces scored")
        _print_metrics(result["metrics"])
        if args.report:
            print(f"report: {args.report / 'report.md'}")
    return EXIT_OK


@command("tune")
def _tune_command(parser: argparse.ArgumentParser):
    """Search a model's parameters with identity-grouped cross-validation only."""
    _add_model_arguments(parser)
    parser.add_argument("--grid", action="append", metavar="NAME=V1,V2,...", required=True,
                        help="values to try for one parameter, repeatable (e.g. --grid n_estimators=100,500,2000)")
    return _run_tune


def _run_tune(args: argparse.Namespace) -> int:
    from unmask.store import FaceStore
    from unmask.train import tune

    grid = {}
    for item in args.grid:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise UnmaskError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        grid[name.replace("-", "_")] = [_param_value(v) for v in _csv_list(values)]

    def on_trial(trial: dict) -> None:
        s = trial["summary"]
        print(f"{trial['params']}: video AUC {_fmt(s.get('video_roc_auc', {}).get('mean'))}, "
              f"frame AUC {_fmt(s.get('frame_roc_auc', {}).get('mean'))}", file=sys.stderr)

    with _joblib_cluster(args):
        result = tune(FaceStore(args.store), _options(args, split="cv"), grid, on_trial)
    if args.json:
        _print_json(result)
    else:
        best = result["best"]
        print(f"best of {len(result['trials'])} by identity-grouped {args.folds}-fold CV: {best['params']}")
        for name, stats in best["summary"].items():
            print(f"  {name}: {stats['mean']:.3f} ± {stats['std']:.3f}")
    return EXIT_OK


@command("models")
def _models_command(parser: argparse.ArgumentParser):
    """List the models and feature extractors that --model and --features accept."""
    return _run_models


def _run_models(args: argparse.Namespace) -> int:
    from unmask.features import FEATURES
    from unmask.models import MODELS

    print("models:")
    for name, text in MODELS.describe().items():
        print(f"  {name:16s} {text}")
    print("features (classical models):")
    for name, text in FEATURES.describe().items():
        print(f"  {name:16s} {text}")
    return EXIT_OK


# --------------------------------------------------------------------------- check / serve / sample
@command("check")
def _check_command(parser: argparse.ArgumentParser):
    """Check videos for deepfaked faces: a verdict per video (FAKE, REAL or NO FACE FOUND) with its probability."""
    from unmask.config import CheckSettings

    defaults = CheckSettings()
    parser.add_argument("paths", nargs="+", type=Path, metavar="VIDEO",
                        help="video files or folders (searched recursively for video files)")
    parser.add_argument("--model", type=Path, help="model folder (default: the model shipped with unmask)")
    parser.add_argument("--frames", type=_positive_int, default=defaults.frames,
                        help=f"frames looked at, spread evenly over the video (default: {defaults.frames})")
    parser.add_argument("--aggregate", help="face scores -> track score: mean, median, max, trimmed-mean "
                                            "(default: the model card's)")
    parser.add_argument("--min-confidence", type=_probability, default=defaults.min_confidence,
                        help=f"ignore faces the detector is less sure of (default: {defaults.min_confidence})")
    parser.add_argument("--max-side", type=_ranged(int, 0), default=defaults.max_side, metavar="PIXELS",
                        help=f"scale frames larger than this down as they are decoded, so memory stays bounded "
                             f"whatever the resolution (default: {defaults.max_side}; 0: never scale)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON record per video (JSON Lines)")
    reports = parser.add_mutually_exclusive_group()
    reports.add_argument("--report", type=Path, metavar="FILE.html", help="write an HTML report (one video)")
    reports.add_argument("--report-dir", type=Path, metavar="DIR", help="write one HTML report per video here")
    add_cluster_arguments(parser)
    return _run_check


def _run_check(args: argparse.Namespace) -> int:
    from unmask.check import Checker, CheckSettings
    from unmask.datasets import find_videos

    videos = []
    for path in args.paths:
        found = find_videos(path)
        if not found:
            raise UnmaskError(f"no video files under {path}")
        videos += found
    if args.report and len(videos) > 1:
        raise UnmaskError(f"--report writes the report of one video, and {len(videos)} were given; "
                          "use --report-dir DIR for one report per video")
    settings = CheckSettings(frames=args.frames, min_confidence=args.min_confidence, aggregate=args.aggregate,
                             max_side=args.max_side or None, device=args.device)
    checker = Checker(args.model, settings)
    names: set[str] = set()
    errors = 0
    verdicts: dict[str, int] = {}
    with _check_results(args, videos, checker, settings) as results:
        for video, result in results:
            errors += _show_check(args, video, result, checker, settings, names, verdicts)
    if not args.json and len(videos) > 1:
        print(f"{len(videos)} videos: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
    return EXIT_NOTHING_DONE if errors else EXIT_OK


@contextmanager
def _check_results(args: argparse.Namespace, videos: list[Path], checker, settings):
    """(video, result) pairs: checked here in order (the next video decoding while this one is
    scored), or on a Dask cluster as they finish."""
    if not (args.scheduler or args.cluster):
        yield checker.check_many(videos)
        return
    from unmask.distributed import check_on_cluster, cluster_client

    with cluster_client(**cluster_options(args)) as client:
        yield ((Path(r.path), r) for r in check_on_cluster(client, videos, args.model, settings))


def _show_check(args, video: Path, result, checker, settings, names: set[str], verdicts: dict) -> bool:
    """Print one result (and write its report); True when the video could not be checked."""
    from unmask.check import ERROR
    from unmask.report import write_report

    verdicts[result.verdict] = verdicts.get(result.verdict, 0) + 1
    target = args.report or (args.report_dir / _report_name(video, names) if args.report_dir else None)
    try:
        report = write_report(target, result, checker) if target else None
    except OSError:
        _print_check(args, result, settings, None)  # the verdict is known: show it before the report's error
        raise
    _print_check(args, result, settings, report)
    return result.verdict == ERROR


def _print_check(args, result, settings, report: Path | None) -> None:
    if args.json:
        print(json.dumps(result.to_json() | ({"report": str(report)} if report else {})), flush=True)
    else:
        print(_verdict_line(result, settings), flush=True)
        if report:
            print(f"  report: {report}", flush=True)


def _report_name(video: Path, taken: set[str]) -> str:
    """``<stem>.html``, numbered when two videos share a stem."""
    name, number = f"{video.stem}.html", 1
    while name in taken:
        number += 1
        name = f"{video.stem}-{number}.html"
    taken.add(name)
    return name


def _verdict_line(result, settings) -> str:
    """suspicious.mp4: FAKE (fake probability 0.91, very sure) - 16 frames, 1 face track, 0.8 s"""
    from unmask.check import ERROR, NO_FACE

    if result.verdict == ERROR:
        return f"{result.path}: ERROR - {result.error}"
    if result.verdict == NO_FACE:
        return (f"{result.path}: NO FACE FOUND - {result.frames_sampled} frames, none with a face the detector "
                f"is over {settings.min_confidence:g} sure of, {result.elapsed_s:.1f} s")
    tracks = len(result.tracks)
    return (f"{result.path}: {result.verdict} (fake probability {result.fake_probability:.2f}, {result.certainty})"
            f" - {result.frames_sampled} frames, {tracks} face track{'s' if tracks != 1 else ''}, "
            f"{result.elapsed_s:.1f} s")


@command("serve")
def _serve_command(parser: argparse.ArgumentParser):
    """Serve the web page and HTTP API: upload a video, get its verdict and report."""
    from unmask.config import CHECK_MEMORY_MB, ServeSettings

    defaults = ServeSettings()
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0: any free port)")
    parser.add_argument("--model", type=Path, help="model folder (default: the model shipped with unmask)")
    parser.add_argument("--max-upload-mb", type=_positive_float, default=defaults.max_upload_mb,
                        help=f"largest video accepted, in MB (default: {defaults.max_upload_mb:g})")
    parser.add_argument("--workers", type=_positive_int, default=defaults.workers,
                        help=f"videos checked at the same time; more wait their turn (default: {defaults.workers})")
    parser.add_argument("--memory-budget-mb", type=_positive_float, default=defaults.memory_budget_mb, metavar="MB",
                        help=f"memory checks in progress may hold together, beyond the models; each holds at most "
                             f"{CHECK_MEMORY_MB} MB, so fewer than --workers run at once when it is small "
                             f"(default: {defaults.memory_budget_mb:g})")
    parser.add_argument("--max-uploads", type=_positive_int, default=defaults.max_uploads,
                        help=f"uploads received at once; more get 503 (default: {defaults.max_uploads})")
    parser.add_argument("--max-queued", type=_positive_int, default=defaults.max_queued,
                        help=f"checks waiting or running at once; more get 503 (default: {defaults.max_queued})")
    parser.add_argument("--upload-timeout", type=_positive_float, default=defaults.upload_timeout_s, metavar="S",
                        help=f"longest an upload may take, in seconds; slower ones get 408 "
                             f"(default: {defaults.upload_timeout_s:g})")
    parser.add_argument("--stall-timeout", type=_positive_float, default=defaults.stall_timeout_s, metavar="S",
                        help=f"longest wait for more of an upload, in seconds; a stalled one gets 408 "
                             f"(default: {defaults.stall_timeout_s:g})")
    parser.add_argument("--upload-dir", type=Path,
                        help="where uploads wait while checked (default: the system's temporary folder)")
    return _run_serve


def _run_serve(args: argparse.Namespace) -> int:
    import socket

    from unmask.config import ServeSettings
    from unmask.web.app import Server, create_app

    settings = ServeSettings(max_upload_mb=args.max_upload_mb, workers=args.workers, max_uploads=args.max_uploads,
                             max_queued=args.max_queued, upload_timeout_s=args.upload_timeout,
                             stall_timeout_s=args.stall_timeout, upload_dir=args.upload_dir,
                             memory_budget_mb=args.memory_budget_mb)
    app = create_app(args.model, settings)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as err:
        listener.close()
        raise UnmaskError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    listener.listen(128)  # from here on, connections wait in the backlog while uvicorn starts
    host, port = listener.getsockname()[:2]
    if host not in ("127.0.0.1", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine can upload videos", file=sys.stderr)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"unmask: serving on http://{shown}:{port} (API docs at /docs); Ctrl+C stops", flush=True)
    try:
        Server(app).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shuts down (requests in progress get 503), then passes Ctrl+C on
        print("unmask serve: stopped", file=sys.stderr)
    return EXIT_OK


@command("sample")
def _sample_command(parser: argparse.ArgumentParser):
    """Write a demo video made from a public-domain portrait, to try `unmask check` on."""
    parser.add_argument("path", nargs="?", type=Path, default=Path("sample.mp4"),
                        help="video file to write (default: sample.mp4)")
    parser.add_argument("--seconds", type=_positive_float, default=8.0, help="length (default: 8)")
    return _run_sample


def _run_sample(args: argparse.Namespace) -> int:
    from unmask.datasets import VIDEO_SUFFIXES
    from unmask.sample import make_sample_video

    if args.path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UnmaskError(f"{args.path}: give the video a video file name ({', '.join(VIDEO_SUFFIXES)})")
    if args.path.is_dir():
        raise UnmaskError(f"{args.path} is a folder; give a file name")
    if not args.path.parent.is_dir():
        raise UnmaskError(f"folder {args.path.parent} does not exist")
    make_sample_video(args.path, seconds=args.seconds)
    print(f"wrote {args.path} ({args.seconds:g} s, 1280x720, NASA's public-domain portrait of Eileen Collins); "
          f"try: unmask check {args.path}")
    return EXIT_OK


# --------------------------------------------------------------------------- dataset
@command("dataset")
def _dataset_command(parser: argparse.ArgumentParser):
    """Get FaceForensics++ whole: check a download against the official lists, or finish it with the official script."""
    from unmask.dataset_check import CORE_DATASETS, DATASET_FOLDERS
    from unmask.dataset_fetch import SERVERS, FetchSettings

    names = ", ".join(DATASET_FOLDERS)
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="what is missing, broken or stray in a FaceForensics++ download (exit 1 if not complete)",
        description="Count the videos of a FaceForensics++ download against the official lists (per official "
                    "split), and find the empty, unreadable and truncated ones. Exit 0 when complete, 1 when "
                    "something is missing or broken, 2 on bad input.")
    check.add_argument("root", type=Path, help="the download's root folder (holding original_sequences/ ...)")
    check.add_argument("--method", type=_csv_list, help=f"datasets, comma separated, or all: {names} (default: "
                       "the five of FF++, and any other that has a folder)")
    check.add_argument("--compression", type=_csv_list,
                       help="raw,c23,c40, comma separated (default: those with anything downloaded)")
    check.add_argument("--list-missing", action="store_true", help="name every missing file, not the first few")
    check.add_argument("--workers", type=_positive_int, default=2, help="files read at once (default: 2)")
    check.add_argument("--splits", type=Path, metavar="DIR",
                       help="train/val/test.json to expect instead of the official lists (shipped with unmask)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(dataset_handler=_run_dataset_check)

    defaults = FetchSettings()
    fetch = actions.add_parser(
        "fetch", help="run your official download script until the download is complete, then check it",
        description="Run the official FaceForensics++ download script (sent by the authors to those who accept "
                    "the terms through their form) once per dataset and compression, with retries, back-off, a "
                    "change of server after repeated failures and removal of partial files; then `dataset check`. "
                    "Re-running, or running after Ctrl+C, resumes.")
    fetch.add_argument("root", type=Path, help="the download's root folder (created if absent)")
    fetch.add_argument("--script", type=Path, required=True, help="your copy of the official download script")
    fetch.add_argument("--method", type=_csv_list, default=list(CORE_DATASETS),
                       help=f"datasets, comma separated, or all: {names} (default: {','.join(CORE_DATASETS)})")
    fetch.add_argument("--compression", type=_csv_list, default=["c23"],
                       help="raw,c23,c40, comma separated (default: c23)")
    fetch.add_argument("--server", default=defaults.server,
                       help=f"server to start with, {', '.join(SERVERS)} (default: {defaults.server})")
    fetch.add_argument("--attempts", type=_positive_int, default=defaults.attempts,
                       help=f"runs of the script per dataset and compression, at most (default: {defaults.attempts})")
    fetch.add_argument("--switch-after", type=_positive_int, default=defaults.switch_after,
                       help=f"failed runs on one server before the next (default: {defaults.switch_after})")
    fetch.add_argument("--backoff", type=_ranged(float, 0.0), default=defaults.backoff_s, metavar="SECONDS",
                       help=f"wait after the first failed run, doubling after each (default: {defaults.backoff_s:g})")
    fetch.add_argument("--stall", type=_positive_float, default=defaults.stall_s, metavar="SECONDS",
                       help="stop a run that neither downloads nor prints for this long, and retry "
                            f"(default: {defaults.stall_s:g})")
    fetch.add_argument("--agree-tos", action="store_true",
                       help="confirm that you agreed to the FaceForensics terms of use, which the script asks "
                            "on every run (asked once here otherwise)")
    fetch.add_argument("--splits", type=Path, metavar="DIR", help="train/val/test.json to expect instead of the official lists")
    fetch.add_argument("--json", action="store_true", help="print the runs and the final check as JSON")
    fetch.set_defaults(dataset_handler=_run_dataset_fetch)
    return lambda args: args.dataset_handler(args)


def _dataset_names(methods: list[str] | None) -> list[str] | None:
    from unmask.dataset_check import DATASET_FOLDERS

    return list(DATASET_FOLDERS) if methods == ["all"] else methods


def _run_dataset_check(args: argparse.Namespace) -> int:
    from unmask.dataset_check import check_dataset, load_splits

    splits = load_splits(args.splits) if args.splits else None
    report = check_dataset(args.root, _dataset_names(args.method), args.compression, splits, args.workers)
    if args.json:
        _print_json(report.to_json())
    else:
        _print_dataset_report(report, args.list_missing)
    return EXIT_OK if report.complete else EXIT_NOTHING_DONE


def _print_dataset_report(report, list_missing: bool) -> None:
    state = "complete" if report.complete else "INCOMPLETE"
    print(f"FaceForensics++ at {report.root}: {state} ({report.files_checked} files read in {report.seconds:.1f} s; "
          "expected: the official lists, 1000 videos per dataset, train/val/test 720/140/140)")
    header = ["dataset", "comp", "train", "val", "test", "whole", "missing", "broken", "stray"]
    rows = []
    for f in report.folders:
        if f.listed:
            counts = [f"{f.splits[s].ok}/{f.splits[s].expected}" for s in ("train", "val", "test")]
            total = f"{f.ok}/{f.expected}" + ("" if f.exists else " (no folder)")
        else:
            counts, total = ["-", "-", "-"], f"{f.ok} (no list)" if f.exists else "0 (no folder)"
        rows.append([f.dataset, f.compression, *counts, total,
                     str(len(f.missing)) if f.listed else "-", str(len(f.broken)), str(len(f.stray))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if report.unchecked:
        print(f"not checked (nothing downloaded): {', '.join(report.unchecked)}; --compression to ask for them")
    shown = None if list_missing else 8
    for f in report.folders:
        where = f"{f.dataset} {f.compression}"
        if f.missing and f.exists:
            whole = [f"{s} ({c.expected})" for s, c in f.splits.items()
                     if len(c.missing) == c.expected and not list_missing]
            parts = [f"all of {' and '.join(whole)}"] if whole else []
            for split, count in f.splits.items():
                if count.missing and (list_missing or len(count.missing) < count.expected):
                    names = [Path(n).stem for n in count.missing]
                    more = f" ... and {len(names) - shown} more" if shown and len(names) > shown else ""
                    parts.append(f"{split} ({len(names)}): {', '.join(names[:shown])}{more}")
            hint = " (--list-missing names them all)" if shown and any(" more" in p for p in parts) else ""
            print(f"missing in {where} ({len(f.missing)}): {'; '.join(parts)}{hint}")
        for b in f.broken:
            print(f"broken in {where}: {b.name}: {b.problem} ({b.detail})")
        if f.stray:
            print(f"stray in {f.folder}: {', '.join(f.stray[:shown])}"
                  + (f" ... and {len(f.stray) - shown} more" if shown and len(f.stray) > shown else ""))


def _run_dataset_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unmask.dataset_check import load_splits
    from unmask.dataset_fetch import FetchSettings, fetch_dataset, servers_from

    servers_from(args.server)  # a bad value is one line before anything runs
    splits = load_splits(args.splits) if args.splits else None
    agreed = args.agree_tos or _ask_terms()
    settings = FetchSettings(server=args.server, attempts=args.attempts, switch_after=args.switch_after,
                             backoff_s=args.backoff, stall_s=args.stall)
    bars: dict[tuple[str, str], tqdm] = {}

    def on_event(event) -> None:
        key = (event.dataset, event.compression)
        if event.kind == "start":
            bars[key] = tqdm(total=event.total, initial=event.done, unit="video", file=sys.stderr,
                             desc=f"{event.dataset} {event.compression}", dynamic_ncols=True)
        bar = bars.get(key)
        if bar is not None:
            bar.n = event.done
            bar.refresh()
        if event.message:
            tqdm.write(f"unmask dataset fetch: {event.dataset} {event.compression}: {event.message}", file=sys.stderr)
        if event.kind == "done" and bar is not None:
            bar.close()

    try:
        report = fetch_dataset(args.root, args.script, _dataset_names(args.method), args.compression, agreed,
                               settings, splits, on_event)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        _print_json({"attempts": [{**vars(a), "failure": a.failure} for a in report.attempts],
                     "removed": report.removed, "check": report.check.to_json()})
    else:
        failed = sum(1 for a in report.attempts if a.failure)
        print(f"{len(report.attempts)} run(s) of the script, {failed} failed; "
              f"{len(report.removed)} partial file(s) removed")
        _print_dataset_report(report.check, list_missing=False)
    return EXIT_OK if report.complete else EXIT_NOTHING_DONE


def _ask_terms() -> bool:
    """The script asks for this on every run; asked here once, and passed on to each run."""
    if not sys.stdin.isatty():
        raise UnmaskError("the download script asks you to confirm that you agreed to the FaceForensics terms of "
                          "use; run this in a terminal to be asked, or pass --agree-tos")
    print("The download script asks you to confirm that you have agreed to the FaceForensics terms of use "
          "(https://github.com/ondyari/FaceForensics). Have you? [y/N] ", end="", file=sys.stderr, flush=True)
    if input().strip().lower() not in ("y", "yes"):
        raise UnmaskError("not confirmed; nothing downloaded")
    return True


# --------------------------------------------------------------------------- main
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every sub-command with its one-line help, and the arguments of ``command`` alone: a
    sub-command's set-up may import what its defaults come from, and `unmask --help` or
    `unmask check --help` must not pay for the others (torch, scikit-learn, FastAPI)."""
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
        if name == command:
            child.set_defaults(handler=setup(child))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.handler(args)
    except UnmaskError as err:
        print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # the file system said no: a path that cannot be made or read, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"unmask {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"unmask {args.command}: interrupted (finished work is kept; run again to resume)", file=sys.stderr)
        return 130
