"""`unmask train`, `evaluate`, `tune` and `models`: fit, measure and list the models."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from unmask.commands import (
    EXIT_OK, Commands, add_cluster_arguments, cluster_options, csv_list, positive_int, print_json,
)
from unmask.errors import UnmaskError

COMMANDS = Commands()


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
    parser.add_argument("store", type=Path, nargs="+",
                        help="face store made by `unmask prepare`; several (cut alike) are read as one, each "
                             "a source that training balances (e.g. FF++ videos, a face-image set, photos)")
    parser.add_argument("--model", default="rf", help="model name, as `unmask models` lists them (default: rf)")
    parser.add_argument("--features", default=None,
                        help="feature extractor for classical models (default: the model's own; "
                             "see `unmask models`)")
    parser.add_argument("--param", action="append", metavar="NAME=VALUE",
                        help="model parameter, repeatable (e.g. --param n_estimators=2000)")
    parser.add_argument("--folds", type=positive_int, default=5, help="folds for cross-validation (default: 5)")
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


@COMMANDS.register("train")
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
    parser.add_argument("--data-terms", metavar="TEXT",
                        help="the terms of use of the faces trained on, recorded in the model card "
                             "(e.g. 'DFDC: research and non-commercial use')")
    parser.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32",
                        help="float16 halves a CNN's folder: its large tensors are rounded once fitted, before "
                             "calibration, evaluation and saving (default: float32)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--report", type=Path, help="also write a report (metrics.json, report.md, plots) here")
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    from unmask.distributed import torch_process_group
    from unmask.store import open_stores
    from unmask.train import train

    store = open_stores(args.store)
    options = _options(args, split=args.split, calibrate=args.calibrate, title=args.title,
                       weights_dtype=args.weights_dtype, data_terms=args.data_terms)

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
        print_json({"model_dir": str(result.model_dir), "metrics": result.metrics, "cross_validation": result.cv,
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


@COMMANDS.register("evaluate")
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
    from unmask.store import open_stores
    from unmask.train import evaluate_model

    result = evaluate_model(load_model(args.model), open_stores([args.store]), args.split, args.aggregate,
                           args.report)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(f"{result['faces']} faces scored")
        _print_metrics(result["metrics"])
        if args.report:
            print(f"report: {args.report / 'report.md'}")
    return EXIT_OK


@COMMANDS.register("tune")
def _tune_command(parser: argparse.ArgumentParser):
    """Search a model's parameters with identity-grouped cross-validation only."""
    _add_model_arguments(parser)
    parser.add_argument("--grid", action="append", metavar="NAME=V1,V2,...", required=True,
                        help="values to try for one parameter, repeatable (e.g. --grid n_estimators=100,500,2000)")
    return _run_tune


def _run_tune(args: argparse.Namespace) -> int:
    from unmask.store import open_stores
    from unmask.train import tune

    grid = {}
    for item in args.grid:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise UnmaskError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        grid[name.replace("-", "_")] = [_param_value(v) for v in csv_list(values)]

    def on_trial(trial: dict) -> None:
        s = trial["summary"]
        print(f"{trial['params']}: video AUC {_fmt(s.get('video_roc_auc', {}).get('mean'))}, "
              f"frame AUC {_fmt(s.get('frame_roc_auc', {}).get('mean'))}", file=sys.stderr)

    with _joblib_cluster(args):
        result = tune(open_stores(args.store), _options(args, split="cv"), grid, on_trial)
    if args.json:
        print_json(result)
    else:
        best = result["best"]
        print(f"best of {len(result['trials'])} by identity-grouped {args.folds}-fold CV: {best['params']}")
        for name, stats in best["summary"].items():
            print(f"  {name}: {stats['mean']:.3f} ± {stats['std']:.3f}")
    return EXIT_OK


@COMMANDS.register("models")
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
