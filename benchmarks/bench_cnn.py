"""CNN detectors against the released MesoNet and the seed recipe, by identity-grouped 5-fold CV.

Data: the FF++ sample, Deepfakes + originals, c23 and c40 (7 frames per video, MTCNN > 0.9).
CNNs see 256 px crops with a 30% margin (MesoNet's convention); the seed recipe sees its own
320 px crops without margin. Every candidate is cross-validated on the same identity-grouped
folds and measured in the same run; inference and training throughput are faces/s on this
machine. ``--generalisation`` adds two tables: trained on Deepfakes, scored on the other
methods (c40); trained on self-blended fakes only, scored on Deepfakes.

    python benchmarks/bench_cnn.py [--folds 5] [--generalisation]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import REPO, SHARED_DATA, machine, markdown_table, median, require
from unmask.config import FaceDetection, PrepareConfig, preset
from unmask.datasets import open_dataset
from unmask.evaluate import evaluate_scores
from unmask.prepare import prepare_dataset
from unmask.store import FaceStore
from unmask.synth import synthesize_store
from unmask.train import TrainOptions, build_estimator, cross_validate, fit_estimator, predict_fake

CACHE = REPO / "benchmarks" / ".cache"
CNN_CROPS = PrepareConfig(faces=FaceDetection(margin=0.3, size=256))

CANDIDATES = {
    "released MesoNets, mean logit": TrainOptions(model="mesonet-ensemble"),
    "released MesoInception-4": TrainOptions(model="mesoinception4", params={"init": "released", "epochs": 0}),
    "released Meso-4": TrainOptions(model="meso4", params={"init": "released", "epochs": 0}),
    "fine-tuned MesoInception-4 (+SBI)": TrainOptions(model="mesoinception4", params={
        "init": "released", "epochs": 3, "synth_ratio": 0.3, "patience": 2}),
    "fine-tuned Meso-4 (+SBI)": TrainOptions(model="meso4", params={
        "init": "released", "epochs": 3, "synth_ratio": 0.3, "patience": 2}),
    "resnet-small from scratch (+SBI)": TrainOptions(model="resnet-small", params={
        "epochs": 8, "synth_ratio": 0.3, "patience": 3}),
}
SEED = ("seed recipe: pixels + random forest", TrainOptions(model="rf", features="pixels"))


def store_of(name: str, data: Path, methods, compressions, config: PrepareConfig) -> FaceStore:
    path = CACHE / name
    if not (path / "faces.csv").exists():
        prepare_dataset(open_dataset(require(data), methods, compressions), path, config, workers=2)
    return FaceStore(path)


def spread(cv: dict, key: str) -> str:
    stats = cv["summary"].get(key)
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}" if stats else "n/a"


def inference_rates(candidates: dict[str, tuple[TrainOptions, FaceStore]], repeats: int = 5) -> dict[str, float]:
    """Faces/s of predict_proba on 128 crops (resize included) per candidate, each fitted briefly
    (1 epoch on 32 faces). The candidates take turns, ``repeats`` times, so that a load that comes
    and goes on a shared machine weighs on all alike; the median of each is returned."""
    models = {}
    for name, (options, store) in candidates.items():
        quick = dict(options.params)
        if "epochs" in quick:
            quick["epochs"] = min(1, quick["epochs"])
        estimator = build_estimator(TrainOptions(model=options.model, features=options.features, params=quick))
        labels = store.table["label"].to_numpy()
        fit_estimator(estimator, store, np.r_[np.flatnonzero(labels == 0)[:16], np.flatnonzero(labels == 1)[:16]])
        faces = np.asarray(store.faces[:128])
        estimator.predict_proba(faces[:16])
        models[name] = (estimator, faces)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (estimator, faces) in models.items():
            started = time.perf_counter()
            estimator.predict_proba(faces)
            rates[name].append(len(faces) / (time.perf_counter() - started))
    return {name: median(values) for name, values in rates.items()}


def cross_validation_table(data: Path, folds: int) -> None:
    cnn_store = store_of("ffpp-deepfakes-m30", data, ["Deepfakes"], ["c23", "c40"], CNN_CROPS)
    seed_store = store_of("ffpp-deepfakes-seed", data, ["Deepfakes"], ["c23", "c40"], preset("seed"))
    table = cnn_store.table
    print(f"data: FF++ sample, Deepfakes + originals, c23 + c40: {len(table)} faces, "
          f"{table['video'].nunique()} videos; identity-grouped {folds}-fold CV (mean ± std over folds)")
    candidates = {name: (options, cnn_store) for name, options in CANDIDATES.items()}
    candidates[SEED[0]] = (SEED[1], seed_store)
    rows = {}
    for name, (options, store) in candidates.items():
        options.folds = folds
        cv = cross_validate(store, options)
        trained = [f for f in cv["folds"] if f["fit_s"] > 1]
        train_rate = (np.median([f["train_faces"] / f["fit_s"] for f in trained]) if trained else None)
        rows[name] = [name, spread(cv, "frame_roc_auc"), spread(cv, "video_roc_auc"),
                      spread(cv, "frame_accuracy"), spread(cv, "video_accuracy"),
                      f"{train_rate:.0f}" if train_rate else "-"]
        print(f"  done: {name}", flush=True)
    rates = inference_rates(candidates)
    print(markdown_table(["model", "frame AUC", "video AUC", "frame accuracy", "video accuracy",
                          "fit faces/s (incl. epochs)", "inference faces/s (median of 5)"],
                         [[*row, f"{rates[name]:.0f}"] for name, row in rows.items()]))


def generalisation_tables(data: Path) -> None:
    options = CANDIDATES["fine-tuned Meso-4 (+SBI)"]
    deepfakes = store_of("ffpp-deepfakes-m30", data, ["Deepfakes"], ["c23", "c40"], CNN_CROPS)
    rows = []
    models = {name: build_estimator(CANDIDATES[name])
              for name in ("released MesoNets, mean logit", "released MesoInception-4")}
    for label, estimator in (*models.items(), ("fine-tuned on Deepfakes (+SBI)", build_estimator(options))):
        fit_estimator(estimator, deepfakes, np.arange(len(deepfakes)))
        for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
            other = store_of(f"ffpp-{method.lower()}-c40-m30", data, [method], ["c40"], CNN_CROPS)
            metrics = evaluate_scores(other.table, predict_fake(estimator, other, np.arange(len(other))))
            seen = " (seen in training)" if method == "Deepfakes" and "fine" in label else ""
            rows.append([label, f"{method} c40{seen}", f"{metrics['frame']['roc_auc']:.3f}",
                         f"{metrics['video']['roc_auc']:.3f}", metrics["video"]["n"]])
    print("generalisation: trained on the Deepfakes sample (all of it), scored on each method's c40 sample "
          "(6 fakes + 6 originals; Deepfakes c40 overlaps the training videos)")
    print(markdown_table(["model", "scored on", "frame AUC", "video AUC", "videos"], rows))

    real = _real_faces_store()
    sbi = synthesize_store(real, CACHE / "real-faces-sbi", kinds=("sbi",), seed=0)
    rows = []
    for label, train_options in (("resnet-small", CANDIDATES["resnet-small from scratch (+SBI)"]),
                                 ("Meso-4 from released", options)):
        estimator = build_estimator(TrainOptions(model=train_options.model,
                                                 params={**train_options.params, "synth_ratio": 0.0}))
        fit_estimator(estimator, sbi, np.arange(len(sbi)))
        metrics = evaluate_scores(deepfakes.table, predict_fake(estimator, deepfakes, np.arange(len(deepfakes))))
        rows.append([label, f"{len(sbi)} faces from real-faces/ (no deepfake)", f"{metrics['frame']['roc_auc']:.3f}",
                     f"{metrics['video']['roc_auc']:.3f}", metrics["video"]["n"]])
    print("trained on self-blended fakes only, scored on the FF++ Deepfakes sample (c23 + c40)")
    print(markdown_table(["model", "trained on", "frame AUC", "video AUC", "videos"], rows))


def _real_faces_store() -> FaceStore:
    """Faces of the real talking-head videos (no fakes) with the CNN crop settings."""
    from unmask.datasets import DatasetScan
    from unmask.synth import real_sources

    path = CACHE / "real-faces-m30"
    if not (path / "faces.csv").exists():
        folder = require(SHARED_DATA / "real-faces")
        videos = [v for v in real_sources(folder) if not v.key.startswith("utkface")]
        prepare_dataset(DatasetScan(root=folder, layout="real", videos=videos), path, CNN_CROPS, workers=2)
    return FaceStore(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--generalisation", action="store_true", help="only the generalisation tables")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.generalisation:
        generalisation_tables(args.data)
    else:
        cross_validation_table(args.data, args.folds)


if __name__ == "__main__":
    main()
