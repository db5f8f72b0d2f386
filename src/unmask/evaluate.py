"""Scores -> metrics, plots and a report, per frame and per video; and what a run cost.

A face is called fake when ``p_fake > threshold`` (strictly, like sklearn's
``predict``, so a 100-tree forest's 50/50 votes count as real). Videos get one score
aggregated from their frames, which is what a user of the detector sees.
Every file is written atomically (temporary name in the same folder, then renamed),
so a crashed run never leaves a half-written report that looks complete.
"""
from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from unmask.aggregate import AGGREGATES
from unmask.errors import UnmaskError
from unmask.splits import LEAKY_SPLITS
from unmask.usage import Usage
from unmask.util import atomic_path

CLASS_NAMES = ("real", "fake")
"""Label 0 and label 1."""

ECE_BINS = 15
ROC_POINTS = 200
"""ROC curves are stored with at most this many points: enough to draw, small in JSON."""

def video_scores(p_fake, videos, labels, aggregate: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video keys, video scores, video labels), sorted by key; frames of a video must share a label."""
    reduce = AGGREGATES.builder(aggregate)
    frames = pd.DataFrame(
        {"video": np.asarray(videos), "p": np.asarray(p_fake, dtype=float), "label": np.asarray(labels)}
    )
    grouped = frames.groupby("video", sort=True)
    mixed = grouped["label"].nunique()
    if (mixed > 1).any():
        raise UnmaskError(f"video {mixed.index[mixed > 1][0]!r} has frames labelled both real and fake")
    scores = grouped["p"].agg(lambda p: reduce(p.to_numpy()))
    return scores.index.to_numpy(), scores.to_numpy(dtype=float), grouped["label"].first().to_numpy(dtype=int)


def compute_metrics(y_true, p_fake, threshold: float = 0.5) -> dict[str, Any]:
    """Everything worth knowing about binary scores, as plain JSON-ready values.

    Threshold-free scores (ROC AUC, EER, average precision) are None when only one class
    is present. ECE and the reliability bins compare ``p_fake`` with the share of fakes
    in 15 equal-width bins (the reliability diagram of ``sklearn.calibration_curve``).
    """
    y = np.asarray(y_true)
    p = np.asarray(p_fake, dtype=float)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"need two equally long non-empty 1D arrays, got shapes {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("scores must be probabilities in [0, 1]")
    y = y.astype(int)
    predicted = (p > threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=[0, 1], zero_division=0)
    classes = {
        name: {
            "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])
        }
        for i, name in enumerate(CLASS_NAMES)
    }
    for average in ("macro", "weighted"):
        avg = precision_recall_fscore_support(y, predicted, labels=[0, 1], average=average, zero_division=0)
        classes[f"{average} avg"] = {
            "precision": float(avg[0]), "recall": float(avg[1]), "f1": float(avg[2]), "support": int(y.size)
        }
    both = support.min() > 0
    metrics: dict[str, Any] = {
        "n": int(y.size),
        "counts": {name: int(support[i]) for i, name in enumerate(CLASS_NAMES)},
        "predicted_counts": {name: int((predicted == i).sum()) for i, name in enumerate(CLASS_NAMES)},
        "threshold": float(threshold),
        "accuracy": float((predicted == y).mean()),
        "balanced_accuracy": float(np.mean(recall[support > 0])),
        "classes": classes,
        "confusion_matrix": {
            "labels": list(CLASS_NAMES),
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion_matrix(y, predicted, labels=[0, 1]).tolist(),
        },
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "average_precision": float(average_precision_score(y, p)) if both else None,
        "eer": None,
        "eer_threshold": None,
        "roc_curve": None,
        "brier": float(np.mean((p - y) ** 2)),
    }
    if both:
        fpr, tpr, thresholds = roc_curve(y, p)
        metrics["eer"], metrics["eer_threshold"] = _equal_error_rate(fpr, tpr, thresholds)
        keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, ROC_POINTS)).round().astype(int))
        metrics["roc_curve"] = {
            "fpr": fpr[keep].tolist(),
            "tpr": tpr[keep].tolist(),
            "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds[keep]],
        }
    metrics["ece"], metrics["reliability"] = _calibration(y, p)
    return metrics


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float | None]:
    """Where false positive and false negative rates meet, linearly between ROC points."""
    gap = (1 - tpr) - fpr  # falls from 1 to -1 along the curve
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        rate = float(fpr[i])
    else:
        t = gap[i - 1] / (gap[i - 1] - gap[i])
        rate = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    return rate, float(thresholds[i]) if np.isfinite(thresholds[i]) else None


def _calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, dict[str, Any]]:
    edges = np.linspace(0, 1, ECE_BINS + 1)
    bin_of = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
    bins, ece = [], 0.0
    for b in np.unique(bin_of):
        inside = bin_of == b
        mean_p, share_fake = float(p[inside].mean()), float(y[inside].mean())
        ece += inside.mean() * abs(share_fake - mean_p)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(inside.sum()),
                "mean_predicted": mean_p,
                "fraction_fake": share_fake,
            }
        )
    return float(ece), {"n_bins": ECE_BINS, "bins": bins}


def evaluate_scores(table: pd.DataFrame, p_fake, threshold: float = 0.5, aggregate: str = "mean") -> dict[str, dict]:
    """Metrics per frame and per video for scores aligned with the rows of ``table``."""
    p_fake = np.asarray(p_fake, dtype=float)
    if len(p_fake) != len(table):
        raise ValueError(f"{len(p_fake)} scores for {len(table)} faces")
    _, scores, labels = video_scores(p_fake, table["video"], table["label"], aggregate)
    video = compute_metrics(labels, scores, threshold)
    video["aggregate"] = aggregate
    return {"frame": compute_metrics(table["label"].to_numpy(), p_fake, threshold), "video": video}


def per_method_metrics(table: pd.DataFrame, p_fake, threshold: float = 0.5,
                       aggregate: str = "mean") -> dict[str, dict]:
    """``evaluate_scores`` of each manipulation method's fakes against the originals of the same
    compression, keyed "Method compression" (e.g. "Face2Face c23"); faces without a score (NaN)
    left out, and a cell without both classes skipped.

    Why: a detector is only as good as its worst method, and a pooled AUC hides a method it misses
    behind one it catches."""
    p_fake = np.asarray(p_fake, dtype=float)
    label = table["label"].to_numpy()
    method = table["method"].astype(str).to_numpy()
    compression = table["compression"].astype(str).to_numpy()
    out = {}
    for name in sorted(set(method[label == 1])):
        for level in sorted(set(compression)):
            rows = np.isfinite(p_fake) & (compression == level) & ((label == 0) | (method == name))
            if (label[rows] == 1).any() and (label[rows] == 0).any():
                out[f"{name} {level}"] = evaluate_scores(table.iloc[np.flatnonzero(rows)], p_fake[rows], threshold,
                                                         aggregate)
    return out


def bootstrap_auc(y_true, p_fake, rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of the ROC AUC over ``rounds`` resamples of the scored items,
    drawn with replacement within each class (so every resample has both): how far the figure could
    move with another draw of test items of the same kind. It says nothing of the spread between
    training runs, which only more runs measure."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_fake, dtype=float)
    if not ((y == 0).any() and (y == 1).any()):
        raise UnmaskError("an AUC needs both real and fake items")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == label) for label in (0, 1)]
    aucs = []
    for _ in range(rounds):
        rows = np.concatenate([rng.choice(g, len(g)) for g in groups])
        aucs.append(roc_auc_score(y[rows], p[rows]))
    low, high = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def choose_threshold(y_true, p_fake) -> float:
    """The threshold with the best balanced accuracy (Youden's J = TPR - FPR).

    Returned halfway between two neighbouring scores, so ``p > threshold`` makes the
    chosen split on these scores and leaves a margin on new ones. Choose it on
    validation data, never on the test set.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_fake, dtype=float)
    if np.unique(y).size < 2:
        raise UnmaskError("choosing a threshold needs both real and fake examples")
    fpr, tpr, thresholds = roc_curve(y, p)
    best = thresholds[1 + int(np.argmax((tpr - fpr)[1:]))]  # thresholds[0] is +inf
    below = p[p < best]
    return float((best + below.max()) / 2) if below.size else float(np.nextafter(best, -np.inf))


def save_plots(metrics: Mapping[str, dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """confusion.png, roc.png and reliability.png, each showing every level of
    ``metrics`` (``{"frame": ..., "video": ...}`` from ``evaluate_scores``)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = list(metrics.items())
    paths = {}

    fig = Figure(figsize=(4.6 * len(levels), 4.2), layout="constrained")
    for ax, (level, m) in zip(np.atleast_1d(fig.subplots(1, len(levels))), levels):
        counts = np.array(m["confusion_matrix"]["matrix"])
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, f"{count:,}\n{share[row, col]:.1%}", ha="center", va="center",
                    color="white" if share[row, col] > 0.6 else "black", fontsize=11)
        ax.set_xticks([0, 1], [f"predicted {c}" for c in CLASS_NAMES])
        ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES])
        ax.set_title(f"{_level_title(level, m)}\naccuracy {m['accuracy']:.1%} at p(fake) > {m['threshold']:.2f}")
        fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    paths["confusion"] = _save_figure(fig, out_dir / "confusion.png")

    fig = Figure(figsize=(5.6, 5.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for level, m in levels:
        if m["roc_curve"] is None:
            continue
        line, = ax.plot(m["roc_curve"]["fpr"], m["roc_curve"]["tpr"], lw=2,
                        label=f"{_level_title(level, m)}: AUC {m['roc_auc']:.3f}, EER {m['eer']:.1%}")
        ax.plot([m["eer"]], [1 - m["eer"]], "o", color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC curve (dots: equal error rate)",
           xlabel="false positive rate (real faces called fake)", ylabel="true positive rate (fakes caught)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    paths["roc"] = _save_figure(fig, out_dir / "roc.png")

    fig = Figure(figsize=(5.6, 6.4), layout="constrained")
    curve, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    curve.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    width = 1 / ECE_BINS / (len(levels) + 1)
    for k, (level, m) in enumerate(levels):
        bins = m["reliability"]["bins"]
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        line, = curve.plot([b["mean_predicted"] for b in bins], [b["fraction_fake"] for b in bins], "o-",
                           label=f"{_level_title(level, m)}: ECE {m['ece']:.3f}")
        hist.bar(np.array(centres) + (k - (len(levels) - 1) / 2) * width, [b["count"] / m["n"] for b in bins],
                 width=width, color=line.get_color())
    curve.set(xlim=(0, 1), ylim=(-0.03, 1.03), ylabel="share that is fake", title=f"Reliability ({ECE_BINS} bins)")
    curve.grid(alpha=0.3)
    curve.legend(loc="upper left", fontsize=9)
    hist.set(xlabel="predicted p(fake)", ylabel="share of items")
    hist.grid(alpha=0.3)
    paths["reliability"] = _save_figure(fig, out_dir / "reliability.png")
    return paths


def _level_title(level: str, m: dict) -> str:
    if level == "video":
        return f"videos (n={m['n']:,}, {m.get('aggregate', 'mean')} of frames)"
    return f"{level}s (n={m['n']:,})"


def _save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=144)
    _atomic_write(path, buffer.getvalue())
    return path


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, dict],
    usage: Mapping[str, Usage | Mapping[str, Any]] | None,
    context: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Path]:
    """metrics.json (everything, machine-readable) and report.md (for people).

    ``metrics``: levels from ``evaluate_scores``; ``usage``: phase name -> ``Usage``;
    ``context``: what was run (model, features, split, data ...). A ``context["split"]``
    named in ``LEAKY_SPLITS`` puts a warning at the top of the report. ``plots``: the
    result of ``save_plots``, linked from the report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phases = {name: u.as_dict() if isinstance(u, Usage) else dict(u) for name, u in (usage or {}).items()}
    warning = LEAKY_SPLITS.get(context.get("split"))
    document = {"context": dict(context), "leak_warning": warning, "metrics": dict(metrics), "usage": phases}
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "report.md"}
    _atomic_write(paths["json"], json.dumps(_plain(document), indent=2, allow_nan=False) + "\n")
    _atomic_write(paths["markdown"], _markdown(metrics, phases, context, warning, plots or {}, out_dir))
    return paths


def _markdown(metrics, phases, context, warning, plots, out_dir: Path) -> str:
    lines = ["# unmask evaluation report", ""]
    if warning:
        lines += [f"> **WARNING: leaky split.** {warning[0].upper()}{warning[1:]}.", ""]
    if context:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in context.items()]
        lines.append("")
    for level, m in metrics.items():
        lines += [f"## {_level_title(level, m).capitalize()}", ""]
        lines += [f"Called fake when p(fake) > {m['threshold']:.3g}. "
                  f"Accuracy **{m['accuracy']:.2%}**, balanced accuracy {m['balanced_accuracy']:.2%}.", ""]
        lines += ["| class | precision | recall | f1-score | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']:,} |"
                  for name, c in m["classes"].items()]
        matrix = m["confusion_matrix"]["matrix"]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
                  "| | predicted real | predicted fake |", "|---|---:|---:|"]
        lines += [f"| true {name} | {row[0]:,} | {row[1]:,} |" for name, row in zip(CLASS_NAMES, matrix)]
        lines += ["", "| ROC AUC | EER | average precision | ECE | Brier |", "|---:|---:|---:|---:|---:|",
                  f"| {_num(m['roc_auc'])} | {_num(m['eer'], '.2%')} | {_num(m['average_precision'])} "
                  f"| {_num(m['ece'])} | {_num(m['brier'])} |", ""]
    if phases:
        lines += ["## Resources", "", "| phase | wall | CPU | cores busy | peak RSS |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {u['wall_s']:.1f} s | {u['cpu_s']:.1f} s | {u['cores']:.1f} | "
                  f"{_num(u['peak_rss_mb'], ',.0f')} MB |" for name, u in phases.items()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({Path(os.path.relpath(path, out_dir)).as_posix()})" for name, path in plots.items()]
        lines.append("")
    return "\n".join(lines)


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_plain(value))
    return text.replace("|", "\\|")


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, paths to str, NaN to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data, encoding="utf-8")
