"""CNN detectors against the released MesoNet and the seed recipe, by identity-grouped 5-fold CV.

Data: the FF++ sample, Deepfakes + originals, c23 and c40 (7 frames per video, MTCNN > 0.9,
each with the motion residual features of its next 3 frames). CNNs see 256 px crops with a
30% margin (MesoNet's convention); the seed recipe sees its own 320 px crops without margin.
Every candidate is cross-validated on the same identity-grouped folds and measured in the same
run; inference and training throughput are faces/s on this machine, and so is measuring the
motion features. ``--generalisation`` gives three tables instead: trained on Deepfakes, scored
on the other methods (c40); trained on self-blended fakes only, scored on Deepfakes; and the
packaged default's verdicts on real videos from other sources (false alarms). ``--repeat-cv N``
runs the default model and the released nets alone under N fold assignments: on 74 videos one
assignment's figures are partly luck, their paired difference much less so.

    python benchmarks/bench_cnn.py [--folds 5] [--generalisation | --repeat-cv 8]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import REPO, SHARED_DATA, machine, markdown_table, median, require
from unmask.check import Checker
from unmask.config import MOTION_ON, FaceDetection, MotionSampling, PrepareConfig, preset
from unmask.datasets import VIDEO_SUFFIXES, open_dataset
from unmask.evaluate import evaluate_scores
from unmask.models import per_face_inputs
from unmask.motion import motion_features_of_faces, neighbours, wanted_frames
from unmask.prepare import prepare_dataset
from unmask.store import KEYPOINT_COLUMNS, FaceStore
from unmask.synth import real_sources, synthesize_store
from unmask.train import TrainOptions, build_estimator, cross_validate, fit_estimator, predict_fake
from unmask.video import read_frames

CACHE = REPO / "benchmarks" / ".cache"
CNN_CROPS = PrepareConfig(faces=FaceDetection(margin=0.3, size=256), motion=MOTION_ON)

CANDIDATES = {
    "released Meso-4 + motion features, logistic regression": TrainOptions(model="mesonet-motion"),
    "released MesoNets + motion features, logistic regression": TrainOptions(model="mesonet-motion", params={
        "archs": ["mesoinception4", "meso4"]}),
    "motion features alone, logistic regression": TrainOptions(model="mesonet-motion", params={"archs": []}),
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
DEFAULT = "released Meso-4 + motion features, logistic regression"
"""The candidate the packaged default model is."""
SEED = ("seed recipe: pixels + random forest", TrainOptions(model="rf", features="pixels"))


def store_of(name: str, data: Path, methods, compressions, config: PrepareConfig) -> FaceStore:
    path = CACHE / name
    if not (path / "faces.csv").exists():
        prepare_dataset(open_dataset(require(data), methods, compressions), path, config, workers=2)
    return FaceStore(path)


def deepfakes_store(data: Path) -> FaceStore:
    """The FF++ sample's Deepfakes and originals, c23 + c40, CNN crops with motion features:
    what every cross-validated figure here and in bench_ddp is measured on."""
    return store_of("ffpp-deepfakes-m30-motion", data, ["Deepfakes"], ["c23", "c40"], CNN_CROPS)


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
        extra = per_face_inputs(estimator.predict_proba, {"motion": lambda: store.motion(np.arange(128))})
        estimator.predict_proba(faces[:16], **{k: v[:16] for k, v in extra.items()})
        models[name] = (estimator, faces, extra)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (estimator, faces, extra) in models.items():
            started = time.perf_counter()
            estimator.predict_proba(faces, **extra)
            rates[name].append(len(faces) / (time.perf_counter() - started))
    return {name: median(values) for name, values in rates.items()}


def motion_rate(store: FaceStore, faces: int = 32, repeats: int = 5) -> float:
    """Faces/s of measuring the motion features (3 optical flows per face, one thread per core),
    from frames already decoded: the extra work a motion model asks of ``unmask check``."""
    settings = MotionSampling.from_record(store.settings["motion"])
    jobs = []
    for _, row in store.table.iloc[:faces].iterrows():
        _, frames = read_frames(Path(row["path"]), wanted_frames([int(row["frame"])], settings))
        keypoints = row[KEYPOINT_COLUMNS].to_numpy(np.float32).reshape(5, 2)
        jobs.append((neighbours(int(row["frame"]), dict(frames), settings),
                     row[["x1", "y1", "x2", "y2"]].to_numpy(float), keypoints))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        motion_features_of_faces(jobs, store.margin, settings)
        times.append(time.perf_counter() - started)
    return len(jobs) / median(times)


def cross_validation_table(data: Path, folds: int) -> None:
    cnn_store = deepfakes_store(data)
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
    motion = motion_rate(cnn_store)
    # A motion model's face costs its motion features too (measured from decoded frames), one after the other.
    needs_motion = {name for name, (options, _) in candidates.items() if options.model == "mesonet-motion"}
    total = {name: 1 / (1 / rate + (1 / motion if name in needs_motion else 0)) for name, rate in rates.items()}
    print(markdown_table(["model", "frame AUC", "video AUC", "frame accuracy", "video accuracy",
                          "fit faces/s (incl. epochs)", "inference faces/s (median of 5)"],
                         [[*row, f"{total[name]:.0f}"] for name, row in rows.items()]))
    print(f"inference faces/s of a motion model includes measuring its motion features (3 optical flows per face, "
          f"from decoded frames): {motion:.0f} faces/s alone (median of 5); the default's model part alone: "
          f"{rates[DEFAULT]:.0f} faces/s")


def repeated_cv(data: Path, folds: int, repeats: int) -> None:
    """The default model against the released nets alone under ``repeats`` fold assignments:
    one assignment's mean is luck of the draw on 74 videos; the paired difference is not."""
    store = deepfakes_store(data)
    names = (DEFAULT, "released MesoNets, mean logit")
    means = {name: {"frame_roc_auc": [], "video_roc_auc": []} for name in names}
    for seed in range(1, repeats + 1):
        for name in names:
            options = TrainOptions(model=CANDIDATES[name].model, params=CANDIDATES[name].params, folds=folds, seed=seed)
            summary = cross_validate(store, options)["summary"]
            for key, values in means[name].items():
                values.append(summary[key]["mean"])
    rows = []
    for key in ("frame_roc_auc", "video_roc_auc"):
        new, old = np.array(means[names[0]][key]), np.array(means[names[1]][key])
        rows.append([key.replace("_roc_auc", " AUC"), f"{new.mean():.3f} ({new.min():.3f}-{new.max():.3f})",
                     f"{old.mean():.3f} ({old.min():.3f}-{old.max():.3f})", f"{(new - old).mean():+.3f}",
                     f"{(new > old).sum()}/{repeats}"])
    print(f"{repeats} identity-grouped {folds}-fold assignments (seeds 1-{repeats}): mean over folds, "
          "averaged over assignments (range)")
    print(markdown_table(["level", names[0], names[1], "difference", "assignments won"], rows))


def generalisation_tables(data: Path) -> None:
    options = CANDIDATES["fine-tuned Meso-4 (+SBI)"]
    deepfakes = deepfakes_store(data)
    rows = []
    models = {name: build_estimator(CANDIDATES[name])
              for name in (DEFAULT, "released MesoNets, mean logit", "released MesoInception-4")}
    for label, estimator in (*models.items(), ("fine-tuned on Deepfakes (+SBI)", build_estimator(options))):
        fit_estimator(estimator, deepfakes, np.arange(len(deepfakes)))
        for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
            other = store_of(f"ffpp-{method.lower()}-c40-m30-motion", data, [method], ["c40"], CNN_CROPS)
            metrics = evaluate_scores(other.table, predict_fake(estimator, other, np.arange(len(other))))
            trained = "fine" in label or "logistic" in label
            seen = " (seen in training)" if method == "Deepfakes" and trained else ""
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
    real_videos_elsewhere()


def real_videos_elsewhere() -> None:
    """The packaged default's verdicts, through ``Checker`` as ``unmask check`` gives them, on real
    talking-head videos from other sources than FF++: none of them trained or chose the model,
    so every FAKE is a false alarm measured outside the data the design was tuned on."""
    checker = Checker()  # the packaged default, default settings
    by_source: dict[str, list[float | None]] = {}  # None: no verdict (no face found, unreadable)
    for video in real_sources(require(SHARED_DATA / "real-faces")):
        if video.path.suffix.lower() in VIDEO_SUFFIXES:
            by_source.setdefault(video.key.split("/")[0], []).append(checker.check(video.path).fake_probability)
    rows = []
    for source, scores in by_source.items():
        judged = [p for p in scores if p is not None]
        rows.append([source, len(scores), len(scores) - len(judged), sum(p >= checker.model.threshold for p in judged),
                     f"{median(judged):.2f}", f"{max(judged):.2f}"])
    print(f"packaged default model ({checker.model.name}) on real videos from elsewhere (real-faces/)")
    print(markdown_table(["source", "videos", "no verdict", "called FAKE", "median P(fake)", "highest P(fake)"], rows))


def _real_faces_store() -> FaceStore:
    """Faces of the real talking-head videos (no fakes) with the CNN crop settings."""
    from unmask.datasets import DatasetScan

    path = CACHE / "real-faces-m30"
    if not (path / "faces.csv").exists():
        folder = require(SHARED_DATA / "real-faces")
        videos = [v for v in real_sources(folder) if not v.key.startswith("utkface")]
        still = PrepareConfig(faces=CNN_CROPS.faces)  # self-blends are stills: no motion to measure
        prepare_dataset(DatasetScan(root=folder, layout="real", videos=videos), path, still, workers=2)
    return FaceStore(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--generalisation", action="store_true", help="only the generalisation tables")
    parser.add_argument("--repeat-cv", type=int, metavar="N",
                        help="only: the default model against the released nets under N fold assignments")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.repeat_cv:
        repeated_cv(args.data, args.folds, args.repeat_cv)
    elif args.generalisation:
        generalisation_tables(args.data)
    else:
        cross_validation_table(args.data, args.folds)


if __name__ == "__main__":
    main()
