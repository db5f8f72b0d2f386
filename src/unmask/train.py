"""Fitting, cross-validation, tuning and evaluation of any registered model on a face store.

Every path here keeps identities apart unless the user asks for the study's leaky frame
split, and then the reports say so. What a model needs besides faces and labels (identity
groups for its own validation split, keypoints for self-blended fakes) is passed only to
estimators whose ``fit`` asks for it.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unmask.util import torch_world
from unmask.errors import UnmaskError
from unmask.evaluate import choose_threshold, evaluate_scores, per_method_metrics, save_plots, write_report
from unmask.models import check_fit_memory, create_model, per_face_inputs
from unmask.models.io import LoadedModel, apply_calibration, fit_calibration, round_weights, save_model
from unmask.splits import LEAKY_SPLITS, grouped_kfold, identity_groups, split_indices
from unmask.store import AnyStore, faces_at
from unmask.usage import measure_usage

SPLIT_CHOICES = ("official", "videos", "frames", "cv", "none")


@dataclass
class TrainOptions:
    """What to fit and how to judge it."""

    model: str = "rf"
    features: str | None = None
    """Feature extractor for classical models (None: the model's default)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Extra parameters for the model builder (e.g. n_estimators=2000, epochs=5)."""
    split: str = "official"
    """official (FF++ lists), videos (identity-grouped 80/20), frames (the study's, leaky),
    cv (identity-grouped k-fold report, then a fit on everything), none (fit on everything)."""
    folds: int = 5
    calibrate: str | None = None
    """isotonic or sigmoid: fit on an identity-grouped part of the training faces."""
    aggregate: str = "mean"
    seed: int = 42
    title: str | None = None
    data_terms: str | None = None
    """The terms of use of the data trained on (e.g. "DFDC: research and non-commercial use"), for the card:
    a model trained on research-only data carries them."""
    weights_dtype: str = "float32"
    """float16: a torch model's large tensors rounded to half precision once fitted, before calibration,
    evaluation and saving, so the folder is half the size and what is measured is what is saved."""


def build_estimator(options: TrainOptions):
    params = dict(options.params)
    params.setdefault("random_state", options.seed)
    return create_model(options.model, features=options.features, **params)


def fit_estimator(estimator, store: AnyStore, rows: np.ndarray):
    """Fit on the given table positions, handing groups/keypoints/motion/methods to estimators that take them."""
    table = store.table.iloc[rows]
    extra = per_face_inputs(estimator.fit, {"groups": lambda: identity_groups(table["ids"]),
                                            "keypoints": lambda: store.keypoints(rows),
                                            "motion": lambda: store.motion(rows),
                                            "methods": lambda: balance_cells(table)})
    return estimator.fit(faces_at(store, rows), table["label"].to_numpy(), **extra)


def balance_cells(table: pd.DataFrame) -> np.ndarray:
    """What training balances: the method of each face, as "dataset/method" when stores are combined."""
    methods = table["method"].astype(str).to_numpy()
    if "dataset" not in table:
        return methods
    return (table["dataset"].astype(str) + "/" + table["method"].astype(str)).to_numpy()


def official_splits(table: pd.DataFrame) -> np.ndarray:
    """Each face's official split; in combined stores, a store that has none (photos, say) only trains."""
    split = table["split"].astype(str).to_numpy()
    if "dataset" in table:
        unsplit = table.groupby("dataset")["split"].transform(lambda s: (s.astype(str) == "").all()).to_numpy()
        split = np.where(unsplit, "train", split)
    return split


def predict_fake(estimator, store: AnyStore, rows: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    extra = per_face_inputs(estimator.predict_proba, {"motion": lambda: store.motion(rows)})
    return apply_calibration(calibration, estimator.predict_proba(faces_at(store, rows), **extra)[:, 1])


def _check_memory(options: TrainOptions, store: AnyStore, n_rows: int) -> None:
    from unmask.features import feature_dim

    estimator = build_estimator(options)
    steps = getattr(estimator, "named_steps", {})
    if "features" in steps:
        dim = feature_dim(steps["features"], store.crop_size, store.crop_size)
        check_fit_memory(options.model, n_rows, dim)


def _split(store: AnyStore, how: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) positions. Validation exists only for the official split."""
    table = store.table
    empty = np.array([], dtype=int)
    if how in ("cv", "none"):
        return np.arange(len(table)), empty, empty
    if how == "official":
        split = official_splits(table)
        if (split == "").all():
            raise UnmaskError("these faces have no official split information; use --split videos or cv")
        train, val, test = (np.flatnonzero(split == name) for name in ("train", "val", "test"))
        if train.size == 0:
            raise UnmaskError("the official split has no training faces in this store")
        return train, val, test
    train, test = split_indices(table, how, random_state=seed)
    return train, empty, test


def _calibration_part(store: AnyStore, train: np.ndarray, val: np.ndarray, seed: int):
    """Validation for calibration: the official val rows, else an identity-grouped 20% of train."""
    if val.size:
        return train, val
    inner_fit, inner_val = split_indices(store.table.iloc[train], "videos", random_state=seed)
    return train[inner_fit], train[inner_val]


def data_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts per class, method and compression: what a model card says it saw."""
    return {
        "faces": len(table), "videos": int(table["video"].nunique()),
        "identity_groups": int(len(np.unique(identity_groups(table["ids"])))) if len(table) else 0,
        "per_class": table.groupby("label").size().rename(index={0: "real", 1: "fake"}).to_dict(),
        "per_method": table.groupby("method").size().to_dict(),
        "per_compression": table.groupby("compression").size().to_dict(),
        **({"per_dataset": table.groupby(["dataset", "label"]).size().unstack(fill_value=0)
            .rename(columns={0: "real", 1: "fake"}).to_dict("index")} if "dataset" in table else {}),
    }


@dataclass
class TrainResult:
    model_dir: Path
    card: dict
    metrics: dict | None
    cv: dict | None = None


def train(store: AnyStore, options: TrainOptions, out_dir: Path, report_dir: Path | None = None,
          on_fold: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Fit a model, report on its held-out part (or by cross-validation), and save it with its card.

    Under ``torchrun`` every process runs this: the CNN fits train together, and rank 0 writes.
    """
    if options.split not in SPLIT_CHOICES:
        raise UnmaskError(f"unknown split {options.split!r}; choose one of: {', '.join(SPLIT_CHOICES)}")
    if len(store) == 0:
        raise UnmaskError(f"{store.root} holds no faces")
    train_rows, val_rows, test_rows = _split(store, options.split, options.seed)
    _check_memory(options, store, len(train_rows))
    estimator = build_estimator(options)
    if options.weights_dtype != "float32" and not hasattr(estimator, "weights"):
        raise UnmaskError(f"--weights-dtype {options.weights_dtype} is for the torch models; {options.model} is a "
                          "scikit-learn model")
    rank, processes = torch_world()
    if processes > 1 and not hasattr(estimator, "weights"):
        raise UnmaskError(f"torchrun trains the CNN models; {options.model} is a scikit-learn model: train it in "
                          "one process (with --scheduler or --cluster to use a Dask cluster)")
    cv = cross_validate(store, options, on_fold=on_fold) if options.split == "cv" else None

    calibration, threshold = None, 0.5
    fit_rows = train_rows
    if options.calibrate:
        fit_rows, val_rows = _calibration_part(store, train_rows, val_rows, options.seed)
    with measure_usage() as fit_usage:
        fit_estimator(estimator, store, fit_rows)
    round_weights(estimator, options.weights_dtype)
    if options.calibrate:
        raw = predict_fake(estimator, store, val_rows)
        labels = store.table["label"].to_numpy()[val_rows]
        calibration = fit_calibration(options.calibrate, raw, labels)
        threshold = choose_threshold(labels, apply_calibration(calibration, raw))

    metrics = None
    usage = {"fit": fit_usage}
    if test_rows.size:
        with measure_usage() as eval_usage:
            p_fake = predict_fake(estimator, store, test_rows, calibration)
        metrics = evaluate_scores(store.table.iloc[test_rows], p_fake, threshold, options.aggregate)
        usage["evaluate"] = eval_usage
    card = _card(estimator, store, options, fit_rows, test_rows, calibration, threshold, metrics, cv, usage)
    if rank != 0:
        return TrainResult(Path(out_dir), card, metrics, cv)
    save_model(estimator, out_dir, card)
    reported = metrics if metrics is not None else (cv or {}).get("pooled_out_of_fold")
    if report_dir is not None and reported is not None:
        context = {"model": options.model, "features": card["features"], "split": options.split,
                   "data": str(store.root), "model_dir": str(out_dir),
                   "scored_faces": int(test_rows.size) if metrics is not None else len(store.table)}
        if cv:
            spreads = ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in cv["summary"].items())
            context["cross_validation"] = (f"identity-grouped {options.folds}-fold; metrics below pool the "
                                           f"out-of-fold scores; per-fold mean ± std: {spreads}")
        write_report(report_dir, reported, usage, context, save_plots(reported, report_dir))
    return TrainResult(Path(out_dir), card, metrics, cv)


def _card(estimator, store, options, fit_rows, test_rows, calibration, threshold, metrics, cv, usage) -> dict:
    steps = getattr(estimator, "named_steps", {})
    features = type(steps["features"]).__name__ if "features" in steps else "image"
    preprocessing = estimator.preprocessing() if hasattr(estimator, "preprocessing") else {}
    if "motion" in preprocessing.get("needs", ()):  # what `unmask check` must measure the same way
        preprocessing["motion"] = store.settings["motion"]
    return {
        "title": options.title or f"{options.model}" + (f" on {options.features}" if options.features else ""),
        "estimator": {"name": options.model, "params": _plain_params(estimator)},
        "features": options.features or features,
        "input": {"size": store.crop_size, "margin": store.margin, "colour": "RGB", "dtype": "uint8",
                  "min_confidence": store.settings["faces"]["min_confidence"],
                  "detector": store.settings["faces"], **preprocessing},
        "threshold": threshold,
        "calibration": calibration,
        **({"weights_dtype": options.weights_dtype} if hasattr(estimator, "weights") else {}),
        "aggregate": options.aggregate,
        "training": {
            "store": store.root.name, "split": options.split, "seed": options.seed,
            "data_terms": options.data_terms,
            "leak_warning": LEAKY_SPLITS.get(options.split),
            "data": data_summary(store.table.iloc[fit_rows]),
            "test_data": data_summary(store.table.iloc[test_rows]) if test_rows.size else None,
            "frames": store.settings["frames"],
            "usage": {name: u.as_dict() for name, u in usage.items()},
            "processes": torch_world()[1],  # > 1: DistributedDataParallel under torchrun
        },
        "metrics": metrics,
        "cross_validation": cv,
    }


def _plain_params(estimator) -> dict:
    """The builder parameters a torch model is rebuilt from (sklearn ones live in the skops file)."""
    if hasattr(estimator, "weights"):
        return {k: v for k, v in estimator.get_params(deep=False).items() if _is_plain(v)}
    return {}


def _is_plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))


def cross_validate(store: AnyStore, options: TrainOptions,
                   on_fold: Callable[[int, dict], None] | None = None) -> dict:
    """Identity-grouped k-fold: per-fold frame and video metrics, their mean and spread."""
    folds = []
    out_of_fold = np.full(len(store.table), np.nan)
    for number, (train_rows, test_rows) in enumerate(grouped_kfold(store.table, options.folds, options.seed)):
        estimator = build_estimator(options)
        with measure_usage() as usage:
            fit_estimator(estimator, store, train_rows)
        p_fake = predict_fake(estimator, store, test_rows)
        out_of_fold[test_rows] = p_fake
        metrics = evaluate_scores(store.table.iloc[test_rows], p_fake, 0.5, options.aggregate)
        methods = per_method_metrics(store.table.iloc[test_rows], p_fake, 0.5, options.aggregate)
        fold = {"fold": number, "train_faces": int(train_rows.size), "test_faces": int(test_rows.size),
                "fit_s": usage.wall_s, "peak_rss_mb": usage.peak_rss_mb, "metrics": metrics,
                "per_method_video_auc": {cell: m["video"]["roc_auc"] for cell, m in methods.items()}}
        folds.append(fold)
        if on_fold:
            on_fold(number, fold)
    pooled = evaluate_scores(store.table, out_of_fold, 0.5, options.aggregate)
    return {"folds": folds, "summary": summarize_folds(folds), "n_splits": options.folds,
            "pooled_out_of_fold": pooled, "per_method": _per_method_summary(store.table, out_of_fold, folds,
                                                                            options.aggregate)}


def _per_method_summary(table: pd.DataFrame, out_of_fold: np.ndarray, folds: list[dict], aggregate: str) -> dict:
    """Per "Method compression": AUCs of the pooled out-of-fold scores, and the video AUC's spread over
    the folds that hold both classes of that cell."""
    summary = {}
    for cell, metrics in per_method_metrics(table, out_of_fold, 0.5, aggregate).items():
        values = [f["per_method_video_auc"][cell] for f in folds
                  if f["per_method_video_auc"].get(cell) is not None]
        summary[cell] = {"video_roc_auc": metrics["video"]["roc_auc"], "frame_roc_auc": metrics["frame"]["roc_auc"],
                         "videos": metrics["video"]["n"], "faces": metrics["frame"]["n"],
                         "fold_video_roc_auc": {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                                "folds": len(values)} if values else None}
    return summary


def summarize_folds(folds: list[dict]) -> dict:
    summary = {}
    for level in ("frame", "video"):
        for metric in ("roc_auc", "accuracy", "average_precision", "eer"):
            values = [f["metrics"][level].get(metric) for f in folds]
            values = [v for v in values if v is not None]
            if values:
                summary[f"{level}_{metric}"] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                                "values": values}
    return summary


def tune(store: AnyStore, options: TrainOptions, grid: dict[str, list],
         on_trial: Callable[[dict], None] | None = None) -> dict:
    """Try every combination of ``grid`` with identity-grouped k-fold; rank by video AUC, then frame AUC."""
    if options.split in ("frames",):
        raise UnmaskError("tuning uses identity-grouped cross-validation only; the frame split leaks")
    names = sorted(grid)
    trials = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = {**options.params, **dict(zip(names, values))}
        trial_options = TrainOptions(**{**asdict(options), "params": params})
        _check_memory(trial_options, store, len(store))
        result = cross_validate(store, trial_options)
        trial = {"params": dict(zip(names, values)), "summary": result["summary"]}
        trials.append(trial)
        if on_trial:
            on_trial(trial)

    def key(trial):
        s = trial["summary"]
        return (s.get("video_roc_auc", {}).get("mean", 0.0), s.get("frame_roc_auc", {}).get("mean", 0.0))

    trials.sort(key=key, reverse=True)
    return {"model": options.model, "features": options.features, "folds": options.folds,
            "trials": trials, "best": trials[0] if trials else None}


def evaluate_model(model: LoadedModel, store: AnyStore, split: str | None = None, aggregate: str | None = None,
                   report_dir: Path | None = None) -> dict:
    """Score the faces of a store (all, or one split of them) and report at frame and video level."""
    table = store.table
    rows = np.arange(len(table))
    if split:
        rows = np.flatnonzero(table["split"].astype(str).to_numpy() == split)
        if rows.size == 0:
            raise UnmaskError(f"no faces of split {split!r} in {store.root}; leave out --split to score all")
    if rows.size == 0:
        raise UnmaskError(f"{store.root} holds no faces")
    warnings = model.check_faces(store.crop_size, store.margin)
    aggregate = aggregate or model.card.get("aggregate", "mean")
    with measure_usage() as usage:
        motion = store.motion(rows) if model.needs_motion else None
        p_fake = model.fake_probability(faces_at(store, rows), motion=motion)
    metrics = evaluate_scores(table.iloc[rows], p_fake, model.threshold, aggregate)
    if report_dir is not None:
        context = {"model": model.name, "model_dir": str(model.path), "data": str(store.root),
                   "split": split or "all", "faces": int(rows.size),
                   "trained_with_split": model.card["training"]["split"], "warnings": warnings}
        write_report(report_dir, metrics, {"evaluate": usage}, context, save_plots(metrics, report_dir))
    return {"metrics": metrics, "usage": usage.as_dict(), "warnings": warnings, "faces": int(rows.size)}
