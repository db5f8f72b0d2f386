"""The study's classical recipe against our best classical model, honestly measured.

On faces prepared from the FF++ sample (Deepfakes + originals, c23 and c40, seed preset:
7 frames, MTCNN > 0.9, 320x320, no margin): identity-grouped 5-fold cross-validation of
the seed recipe (every pixel + 100-tree random forest) and of compact-feature models, with
fit time and peak memory; then the seed recipe under the study's frame split, beside it,
to show how much a split that leaks identities inflates the numbers.

    python benchmarks/bench_classical.py [--store DIR] [--folds 5]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import REPO, SHARED_DATA, machine, markdown_table, require
from unmask.config import preset
from unmask.datasets import open_dataset
from unmask.distributed import cluster_runner
from unmask.evaluate import evaluate_scores
from unmask.prepare import prepare_dataset
from unmask.splits import split_indices
from unmask.store import FaceStore
from unmask.train import TrainOptions, build_estimator, cross_validate, fit_estimator, predict_fake
from unmask.usage import measure_usage

RECIPES = [
    ("seed: pixels + random forest (100 trees)", TrainOptions(model="rf", features="pixels")),
    ("random forest on spectrum+small", TrainOptions(model="rf", features="spectrum+small")),
    ("gradient boosting on spectrum+small", TrainOptions(model="hgb", features="spectrum+small")),
    ("logistic regression on spectrum", TrainOptions(model="logreg", features="spectrum")),
]


def seed_store(path: Path, data: Path, workers: int) -> FaceStore:
    """The benchmark's faces, prepared once and reused (prepare resumes)."""
    if not (path / "faces.csv").exists():
        scan = open_dataset(require(data), ["Deepfakes"], ["c23", "c40"])
        prepare_dataset(scan, path, preset("seed"), runner=cluster_runner(preset("seed"), workers=workers))
    return FaceStore(path)


def spread(cv: dict, key: str) -> str:
    stats = cv["summary"].get(key)
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--store", type=Path, default=REPO / "benchmarks" / ".cache" / "ffpp-deepfakes-seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    store = seed_store(args.store, args.data, args.workers)
    table = store.table
    print(f"machine: {machine()}")
    print(f"data: FF++ sample, Deepfakes + originals, c23 + c40: {len(table)} faces from "
          f"{table['video'].nunique()} videos ({(table['label'] == 0).sum()} real, {(table['label'] == 1).sum()} fake "
          f"faces), seed preset; identity-grouped {args.folds}-fold cross-validation (mean ± std over folds)")
    rows = []
    for name, options in RECIPES:
        options.folds = args.folds
        cv = cross_validate(store, options)
        fit_s = np.median([f["fit_s"] for f in cv["folds"]])
        peak = max(f["peak_rss_mb"] or 0 for f in cv["folds"])
        rows.append([name, "identity-grouped 5-fold", spread(cv, "frame_roc_auc"), spread(cv, "frame_accuracy"),
                     spread(cv, "video_roc_auc"), spread(cv, "video_accuracy"), f"{fit_s:.1f}", f"{peak:.0f}"])
    options = RECIPES[0][1]
    train_rows, test_rows = split_indices(table, "frames", random_state=42)
    estimator = build_estimator(options)
    with measure_usage() as usage:
        fit_estimator(estimator, store, train_rows)
    metrics = evaluate_scores(table.iloc[test_rows], predict_fake(estimator, store, test_rows))
    rows.append([RECIPES[0][0], "**study's frame split (leaks identities)**",
                 f"{metrics['frame']['roc_auc']:.3f}", f"{metrics['frame']['accuracy']:.3f}",
                 f"{metrics['video']['roc_auc']:.3f}", f"{metrics['video']['accuracy']:.3f}",
                 f"{usage.wall_s:.1f}", f"{usage.peak_rss_mb or 0:.0f}"])
    print(markdown_table(["recipe", "split", "frame AUC", "frame accuracy", "video AUC", "video accuracy",
                          "fit s (median)", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
