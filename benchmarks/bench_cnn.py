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

``--methods`` (issue #16) scores every FF++ method per compression: the every-method candidate
``lite0-motion`` (ImageNet-pretrained EfficientNet-Lite0 fine-tuned on all methods, plus the motion
regression), each of its two parts alone, and the current default, on the same folds, under several
fold assignments; ``--held-out`` leaves one method out (and trains on self-blends only);
``--variants`` compares the recipe with fine-tuning the last 8 blocks and with adding made fakes;
``--false-alarms DIR...`` checks the real-faces videos with those model folders (``--with-photos``: also
with the candidate fitted on every FF++ face and the real-faces photos). ``--made-fakes`` adds the
candidate trained on made fakes too (self-blends, real-faces photos and swaps of them): to
``--methods`` cross-validated on the same folds, to ``--false-alarms`` fitted on every face.
``--leave-source-out`` measures whether real video from outside FF++ in training stops the false
alarms: each real-faces source checked by the candidate trained with the other sources' videos.

    python benchmarks/bench_cnn.py [--folds 5] [--generalisation | --repeat-cv 8]
    python benchmarks/bench_cnn.py --methods --folds 5 --seeds 1,2 [--made-fakes]
    python benchmarks/bench_cnn.py --held-out --folds 2 --only-folds 1
    python benchmarks/bench_cnn.py --variants --folds 5
    python benchmarks/bench_cnn.py --false-alarms src/unmask/models/default --with-photos [--made-fakes]
    python benchmarks/bench_cnn.py --leave-source-out [--fit-seed 42]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from common import REPO, SHARED_DATA, machine, markdown_table, median, require
from unmask.check import Checker
from unmask.config import MOTION_ON, FaceDetection, FrameSampling, MotionSampling, PrepareConfig, preset
from unmask.datasets import VIDEO_SUFFIXES, open_dataset, real_sources
from unmask.distributed import cluster_runner
from unmask.evaluate import evaluate_scores, per_method_metrics
from unmask.models import create_model, per_face_inputs
from unmask.models.fusion import LITE0_RECIPE
from unmask.faces.face_pass import FacePass
from unmask.faces.motion import MOTION_FEATURES
from unmask.prepare import prepare_dataset
from unmask.store import FaceStore, faces_at
from unmask.synth import synthesize_store
from unmask.splits import grouped_kfold
from unmask.train import TrainOptions, build_estimator, cross_validate, fit_estimator, predict_fake
from unmask.util import atomic_path

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
        prepare_dataset(open_dataset(require(data), methods, compressions), path, config,
                        runner=cluster_runner(config, workers=2))
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


def motion_rate(store: FaceStore, videos: int = 8, repeats: int = 3) -> float:
    """Faces/s of measuring the motion features (3 optical flows per face, one thread per core) in
    the face pass, on the store's own frames of a few videos: the extra work a motion model asks
    of ``unmask check``."""
    faces = FacePass(FaceDetection.from_record(store.settings["faces"]),
                     MotionSampling.from_record(store.settings["motion"]), keep="best")
    frames = store.table.groupby("path")["frame"].apply(list).head(videos)
    seconds, found = [], 0
    for _ in range(repeats):
        passes = [faces.run(Path(path), wanted) for path, wanted in frames.items()]
        seconds.append(sum(p.motion_s for p in passes))
        found = sum(len(p.faces) for p in passes)
    return found / median(seconds)


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


def real_video_scores(checker: Checker, sources: set[str] | None = None) -> dict[str, list[float | None]]:
    """P(fake) of each real-faces video (of ``sources``, when given) as ``unmask check`` gives it, by
    source; None where there is no verdict (no face found, unreadable)."""
    by_source: dict[str, list[float | None]] = {}
    for video in real_sources(require(SHARED_DATA / "real-faces")):
        source = video.key.split("/")[0]
        if video.path.suffix.lower() in VIDEO_SUFFIXES and (sources is None or source in sources):
            by_source.setdefault(source, []).append(checker.check(video.path).fake_probability)
    return by_source


def real_videos_elsewhere(model: Path | None = None, sources: set[str] | None = None) -> dict[str, tuple[int, int]]:
    """A model's verdicts (the packaged default unless ``model`` is given), through ``Checker`` as
    ``unmask check`` gives them, on real talking-head videos from other sources than FF++ (only
    ``sources``, when given): none of them trained or chose the model, so every FAKE is a false alarm
    measured outside the data the design was tuned on. Returns (videos, false alarms) per source."""
    checker = Checker(model)  # default settings
    by_source = real_video_scores(checker, sources)
    rows = []
    for source, scores in by_source.items():
        judged = [p for p in scores if p is not None]
        rows.append([source, len(scores), len(scores) - len(judged), sum(p > checker.model.threshold for p in judged),
                     f"{median(judged):.2f}", f"{max(judged):.2f}"])
    alarms = sum(row[3] for row in rows)
    print(f"{'packaged default' if model is None else model} ({checker.model.name}, threshold "
          f"{checker.model.threshold:.3f}) on real videos from elsewhere (real-faces/): {alarms} false alarm(s) in "
          f"{sum(row[1] for row in rows)}")
    print(markdown_table(["source", "videos", "no verdict", "called FAKE", "median P(fake)", "highest P(fake)"], rows))
    return {row[0]: (row[1], row[3]) for row in rows}


def _real_faces_store(frames: FrameSampling = FrameSampling(), name: str = "real-faces-m30") -> FaceStore:
    """Faces of the real talking-head videos (no fakes) with the CNN crop settings, ``frames`` of each."""
    from unmask.datasets import DatasetScan

    path = CACHE / name
    if not (path / "faces.csv").exists():
        folder = require(SHARED_DATA / "real-faces")
        videos = [v for v in real_sources(folder) if not v.key.startswith("utkface")]
        still = PrepareConfig(frames=frames, faces=CNN_CROPS.faces)  # self-blends are stills: no motion
        prepare_dataset(DatasetScan(root=folder, layout="real", videos=videos), path, still,
                        runner=cluster_runner(still, workers=2))
    return FaceStore(path)


# ----- every method: a pretrained backbone, self-blended and swapped fakes (issue #16) -----

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
ALL_CROPS = PrepareConfig(frames=FrameSampling(step=18, max_frames=16), faces=CNN_CROPS.faces, motion=MOTION_ON)
"""16 frames a video (1 in 18, so all fit in the shortest c23 video), each with its motion features."""
CANDIDATE = "lite0-motion"
"""The every-method candidate: EfficientNet-Lite0 fine-tuned as ``LITE0_RECIPE`` says, plus the motion regression."""
RECIPE = hashlib.sha1(json.dumps(create_model(CANDIDATE).get_params(), sort_keys=True, default=str).encode()
                      ).hexdigest()[:8]
"""Names the score caches, so that a changed recipe is measured again instead of read back."""
EXTRA_PHOTOS = 300
"""Real photos (and as many swaps made from them) added to a training set where made fakes are asked for."""


def all_methods_store(data: Path) -> FaceStore:
    return store_of("ffpp-all-m30-motion-f16", data, list(METHODS), ["c23", "c40"], ALL_CROPS)


def photo_stores() -> tuple[FaceStore, FaceStore]:
    """The 2,000 real-faces photos (their own identities; never scored), and the same photos with one
    cross-identity swap each (``unmask synth --kinds swap``). The 29 real-faces videos stay out of
    training: they are the false-alarm test."""
    from unmask.datasets import DatasetScan

    path = CACHE / "real-faces-photos-m30"
    if not (path / "faces.csv").exists():
        folder = require(SHARED_DATA / "real-faces")
        photos = [v for v in real_sources(folder) if v.key.startswith("utkface")]
        config = PrepareConfig(faces=CNN_CROPS.faces)
        prepare_dataset(DatasetScan(root=folder, layout="real", videos=photos), path, config,
                        runner=cluster_runner(config, workers=2))
    photos = FaceStore(path)
    swaps = CACHE / "real-faces-photos-swap"
    return photos, (FaceStore(swaps) if (swaps / "faces.csv").exists()
                    else synthesize_store(photos, swaps, kinds=("swap",), seed=0))


def _training_arrays(store: FaceStore, rows: np.ndarray, extras: list[tuple[FaceStore, np.ndarray]] = ()):
    """Faces, labels and per-face inputs of FF++ rows plus the rows of extra stores (photos, swaps, real
    videos from elsewhere), for ``TorchFaceClassifier.fit``."""
    from unmask.splits import identity_groups

    parts = [(store, rows), *((extra, extra_rows) for extra, extra_rows in extras if len(extra_rows))]
    tables = [s.table.iloc[r] for s, r in parts]
    faces = np.concatenate([np.asarray(faces_at(s, r)) for s, r in parts])
    ids = np.concatenate([t["ids"].astype(str).to_numpy() for t in tables])
    return faces, np.concatenate([t["label"].to_numpy() for t in tables]), {
        "groups": identity_groups(pd.Series(ids)), "keypoints": np.concatenate([s.keypoints(r) for s, r in parts]),
        "methods": np.concatenate([t["method"].astype(str).to_numpy() for t in tables])}


def _fit_candidate(store: FaceStore, rows: np.ndarray, extras: list[tuple[FaceStore, np.ndarray]],
                   params: dict | None = None, seed: int = 42):
    """The candidate fitted on FF++ rows plus extra (photo, swap, real video) rows, which have no motion
    measured: they train the backbone only."""
    faces, labels, inputs = _training_arrays(store, rows, extras)
    extra_count = sum(len(extra_rows) for _, extra_rows in extras)
    motion = np.concatenate([store.motion(rows), np.full((extra_count, len(MOTION_FEATURES)), np.nan, np.float32)])
    options = TrainOptions(model=CANDIDATE, params=params or {}, seed=seed)
    return build_estimator(options).fit(faces, labels, motion=motion, **inputs)


MADE_FAKES = {"member_params": {**LITE0_RECIPE, "synth_ratio": 0.3}}
"""The candidate trained on made fakes too: 30% of its real faces self-blended on the fly, plus
``EXTRA_PHOTOS`` real-faces photos and as many cross-identity swaps of them."""


def candidate_with_photos(data: Path, made_fakes: bool = False, seed: int = 42) -> Path:
    """The candidate fitted on every FF++ face plus real-faces photos as real faces, saved once as a
    model folder: does seeing real faces from outside FF++ stop the backbone calling them fake? Without
    ``made_fakes``: all 2,000 photos; with: the ``MADE_FAKES`` recipe, as ``--methods --made-fakes``
    cross-validates it."""
    folder = CACHE / f"model-{CANDIDATE}-with-{'made-fakes' if made_fakes else 'photos'}-{RECIPE}-seed{seed}"
    if (folder / "card.json").exists():
        return folder
    store = all_methods_store(data)
    photos, swaps = photo_stores()
    extra, extra_rows = (swaps, _draw_extra(swaps, 0)) if made_fakes else (photos, np.arange(len(photos)))
    title = (f"{CANDIDATE} on the FF++ sample and {len(extra_rows)} real-faces photos"
             + (" and swaps, with self-blends" if made_fakes else ""))
    return _save_candidate(folder, store, [(extra, extra_rows)], title, MADE_FAKES if made_fakes else None, seed)


def _save_candidate(folder: Path, store: FaceStore, extras: list[tuple[FaceStore, np.ndarray]], title: str,
                    params: dict | None = None, seed: int = 42) -> Path:
    """The candidate fitted on every FF++ face plus ``extras``, saved as a model folder."""
    from unmask.models.io import save_model

    candidate = _fit_candidate(store, np.arange(len(store)), extras, params, seed)
    card = {"title": title, "estimator": {"name": CANDIDATE, "params": candidate.get_params()},
            "input": {"size": store.crop_size, "margin": store.margin, "detector": store.settings["faces"],
                      **candidate.preprocessing(), "motion": store.settings["motion"]},
            "weights_dtype": "float16",
            "training": {"store": " + ".join([store.root.name, *(extra.root.name for extra, _ in extras)])}}
    return save_model(candidate, folder, card)


REAL_VIDEO_FRAMES = FrameSampling(step=6, max_frames=24)
"""The real-faces videos as training material: 1 frame in 6, at most 24 a video (a 3-s GRID clip gives 13)."""


def leave_one_source_out(data: Path, seed: int = 42) -> None:
    """False alarms on real video of a source never trained on, with real video from the other sources
    in training: for each real-faces source, the candidate fitted on every FF++ face, the 2,000
    real-faces photos and the faces of the *other* sources' videos (all as real faces), then that
    source's videos checked as ``unmask check`` checks them. Beside it the candidate fitted on FF++ and
    the photos only (``--with-photos``), checked on the same videos: what real video from elsewhere adds."""
    store = all_methods_store(data)
    photos, _ = photo_stores()
    videos = _real_faces_store(REAL_VIDEO_FRAMES, "real-faces-m30-f24")
    source = videos.table["video"].astype(str).str.split("/").str[0].to_numpy()
    photos_only = real_videos_elsewhere(candidate_with_photos(data, seed=seed))
    rows = []
    for name, (count, photo_alarms) in photos_only.items():
        folder = CACHE / f"model-{CANDIDATE}-without-{name}-{RECIPE}-seed{seed}"
        others = np.flatnonzero(source != name)
        if not (folder / "card.json").exists():
            started = time.perf_counter()
            _save_candidate(folder, store, [(photos, np.arange(len(photos))), (videos, others)],
                            f"{CANDIDATE} on the FF++ sample, {len(photos)} real-faces photos and {len(others)} "
                            f"faces of real-faces videos not from {name}", seed=seed)
            print(f"  without {name}: fitted in {time.perf_counter() - started:.0f} s", flush=True)
        alarms = real_videos_elsewhere(folder, {name})[name][1]
        rows.append([name, count, photo_alarms, alarms,
                     f"{len(others)} faces of {len(set(videos.table['video'].iloc[others]))} videos"])
    print(f"false alarms on each real-faces source, never trained on; the candidate (fit seed {seed}) fitted on "
          "every FF++ face and the 2,000 real-faces photos, without and with the other sources' videos (1 frame "
          "in 6, at most 24 a video) as real faces")
    print(markdown_table(["source", "videos", "FF++ + photos", "FF++ + photos + other sources' videos",
                          "other sources' faces trained on"],
                         [*rows, ["all", *(sum(r[i] for r in rows) for i in (1, 2, 3)), ""]]))


def _draw_extra(swaps: FaceStore, seed: int, reals_only: bool = False) -> np.ndarray:
    """``EXTRA_PHOTOS`` real photos and (unless ``reals_only``) as many swaps, drawn with ``seed``."""
    table, rng = swaps.table, np.random.default_rng(seed)
    pick = [rng.choice(np.flatnonzero(table["label"].to_numpy() == label), EXTRA_PHOTOS, replace=False)
            for label in ((0,) if reals_only else (0, 1))]
    return np.sort(np.concatenate(pick))


def _backbone(params: dict | None = None, seed: int = 42):
    """The candidate's EfficientNet-Lite0 alone, trained as in the candidate, with ``params`` changed."""
    return build_estimator(TrainOptions(model="efficientnet-lite0", params={**LITE0_RECIPE, **(params or {})},
                                        seed=seed))


def _scores_cache(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    """Out-of-fold scores saved after every fold: a long run that is stopped resumes where it was."""
    path = CACHE / "scores" / f"{name}-{RECIPE}.npz"
    return path, (dict(np.load(path)) if path.exists() else {})


def _save_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **scores)


METHODS_CV_NAMES = {"candidate": f"{CANDIDATE}: Lite0 and motion, weighed on held-out identities",
                    "added": "Lite0 + motion, log-odds added (nothing fitted on top)",
                    "either": "Lite0 or motion, whichever is surer of a fake (max of the two log-odds)",
                    "lite0": "its EfficientNet-Lite0 alone (fine-tuned, all methods)",
                    "motion": "motion features alone, logistic regression",
                    "default": "current default: released Meso-4 + motion, logistic regression"}
MADE_FAKES_NAMES = {"made": f"{CANDIDATE} trained on made fakes too (self-blends, photos, swaps)",
                    "made_either": "its Lite0 or motion, whichever is surer of a fake",
                    "made_lite0": "its EfficientNet-Lite0 alone"}


def made_fakes_cv(store: FaceStore, folds: int, seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold P(fake) of the candidate trained as ``MADE_FAKES`` says (and of its backbone alone)
    on the ``--methods`` folds: each fold's extra photos and swaps are drawn afresh; they are never scored."""
    _, swaps = photo_stores()
    path, scores = _scores_cache(f"methods-cv-made-fakes-{folds}-{seed}")
    for number, (train_rows, test_rows) in enumerate(grouped_kfold(store.table, folds, seed)):
        if f"done{number}" in scores:
            continue
        started = time.perf_counter()
        for name in ("made", "made_lite0"):
            scores.setdefault(name, np.full(len(store), np.nan))
        candidate = _fit_candidate(store, train_rows, [(swaps, _draw_extra(swaps, seed * 100 + number))],
                                   MADE_FAKES, seed)
        scores["made"][test_rows] = predict_fake(candidate, store, test_rows)
        scores["made_lite0"][test_rows] = expit(candidate.cnn_.decision_function(faces_at(store, test_rows)))
        scores[f"done{number}"] = np.array(time.perf_counter() - started)
        _save_scores(path, scores)
        print(f"  made fakes, seed {seed} fold {number}: {scores[f'done{number}']:.0f} s", flush=True)
    return scores


def methods_cv(data: Path, folds: int, seeds: list[int], made_fakes: bool = False) -> dict[str, list[np.ndarray]]:
    """Identity-grouped k-fold on all methods, under each fold assignment in ``seeds``: out-of-fold
    P(fake) of the candidate, of its backbone alone, of the motion regression alone, of the two with
    their log-odds added, and of the current default, all on the same folds; with ``made_fakes``
    also of the candidate trained on made fakes."""
    store = all_methods_store(data)
    names = {**METHODS_CV_NAMES, **(MADE_FAKES_NAMES if made_fakes else {})}
    by_seed: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for seed in seeds:
        path, scores = _scores_cache(f"methods-cv-{folds}-{seed}")
        for number, (train_rows, test_rows) in enumerate(grouped_kfold(store.table, folds, seed)):
            if f"done{number}" in scores:
                continue
            started = time.perf_counter()
            for name in ("candidate", "lite0", "motion", "default"):
                scores.setdefault(name, np.full(len(store), np.nan))
            fitted = {name: fit_estimator(build_estimator(options), store, train_rows) for name, options in (
                ("candidate", TrainOptions(model=CANDIDATE, seed=seed)),
                ("motion", TrainOptions(model="mesonet-motion", params={"archs": []}, seed=seed)),
                ("default", TrainOptions(model=CANDIDATES[DEFAULT].model, params=CANDIDATES[DEFAULT].params,
                                         seed=seed)))}
            for name, estimator in fitted.items():
                scores[name][test_rows] = predict_fake(estimator, store, test_rows)
            scores["lite0"][test_rows] = expit(fitted["candidate"].cnn_.decision_function(faces_at(store, test_rows)))
            member = fitted["candidate"].cnn_.members_[0]
            scores[f"done{number}"] = np.array(time.perf_counter() - started)
            _save_scores(path, scores)
            weights = fitted["candidate"].weighting()
            print(f"  seed {seed} fold {number}: {scores[f'done{number}']:.0f} s, Lite0 kept epoch "
                  f"{member.best_epoch_} (identity-grouped validation AUC {member.val_auc_:.3f}), its logit "
                  f"weighed {weights['cnn_logit']:.2f}", flush=True)
        # Two rules over the experts alone, nothing fitted on top: functions of their scores, not stored.
        backbone, motion = logit(scores["lite0"]), logit(scores["motion"])
        scores["added"], scores["either"] = expit(backbone + motion), expit(np.maximum(backbone, motion))
        if made_fakes:
            scores.update(made_fakes_cv(store, folds, seed))
            scores["made_either"] = expit(np.maximum(logit(scores["made_lite0"]), motion))
        for name in names:
            by_seed[name].append(scores[name])
    return by_seed


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def methods_cv_table(data: Path, folds: int, seeds: list[int], made_fakes: bool = False) -> None:
    store = all_methods_store(data)
    table = store.table
    by_seed = methods_cv(data, folds, seeds, made_fakes)
    names = {**METHODS_CV_NAMES, **MADE_FAKES_NAMES}
    print(f"data: FF++ sample, all methods + originals, c23 + c40, 16 frames a video: {len(table)} faces, "
          f"{table['video'].nunique()} videos; identity-grouped {folds}-fold CV under {len(seeds)} fold "
          f"assignment(s) (seeds {seeds}); AUCs of the out-of-fold scores pooled over the folds, each method's "
          "fakes against the originals of the same compression; mean ± std over assignments")
    cells = list(per_method_metrics(table, by_seed["default"][0]))
    rows = []
    for name, runs in by_seed.items():
        metrics = [per_method_metrics(table, run) for run in runs]
        video = {cell: [m[cell]["video"]["roc_auc"] for m in metrics] for cell in cells}
        frame = {cell: [m[cell]["frame"]["roc_auc"] for m in metrics] for cell in cells}
        worst = [min(m[cell]["video"]["roc_auc"] for cell in cells) for m in metrics]
        rows.append([names[name], *(f"{_cell(video[cell])} / {_cell(frame[cell])}" for cell in cells),
                     _cell(worst)])
    print(markdown_table(["model (video AUC / frame AUC)", *cells, "worst video AUC"], rows))
    videos = per_method_metrics(table, by_seed["default"][0])
    print("videos scored per column (fakes + originals): " + ", ".join(f"{cell} {videos[cell]['video']['n']}"
                                                                       for cell in cells))


def held_out_methods(data: Path, folds: int, seed: int = 1, only_folds: int | None = None) -> None:
    """Leave one method out (trained on the rest with self-blends and swaps, scored on it) and
    self-blended only (real faces and their self-blends, no deepfake or swap), by identity-grouped
    k-fold: the test fold's originals and the held-out fakes are never trained on. The candidate's
    backbone alone: the motion regression needs real deepfakes to learn from. ``only_folds``: train
    and score only the first so many folds (the rest of the videos go unscored)."""
    store = all_methods_store(data)
    table = store.table
    _, swaps = photo_stores()
    method = table["method"].to_numpy()
    runs = {f"without {m}": m for m in METHODS}
    runs["self-blended only"] = None
    results = {}
    for run, left_out in runs.items():
        path, scores = _scores_cache(f"held-out-{run.replace(' ', '-')}-{folds}-{seed}")
        scores.setdefault("lite0", np.full(len(store), np.nan))
        for number, (train_rows, test_rows) in enumerate(grouped_kfold(table, folds, seed)):
            if f"done{number}" in scores or (only_folds is not None and number >= only_folds):
                continue
            started = time.perf_counter()
            if left_out is None:
                keep = train_rows[table["label"].to_numpy()[train_rows] == 0]
                extra, params = _draw_extra(swaps, seed * 100 + number, reals_only=True), {"synth_ratio": 0.5}
            else:
                keep = train_rows[method[train_rows] != left_out]
                extra, params = _draw_extra(swaps, seed * 100 + number), {"synth_ratio": 0.3}
            lite0 = _backbone(params, seed=seed)
            faces, labels, inputs = _training_arrays(store, keep, [(swaps, extra)])
            lite0.fit(faces, labels, **inputs)
            del faces
            scores["lite0"][test_rows] = predict_fake(lite0, store, test_rows)
            scores[f"done{number}"] = np.array(time.perf_counter() - started)
            _save_scores(path, scores)
            print(f"  {run} fold {number}: {scores[f'done{number}']:.0f} s", flush=True)
        metrics = per_method_metrics(table, scores["lite0"])
        results[run] = {cell: r for cell, r in metrics.items() if left_out is None or cell.startswith(f"{left_out} ")}
    print(f"the candidate's EfficientNet-Lite0 ({LITE0_RECIPE['epochs']} epochs, all blocks) scored on fakes of "
          f"methods it never saw; identity-grouped {folds}-fold CV (seed {seed})"
          + (f", only the first {only_folds} fold(s) trained and scored" if only_folds else "") + ", pooled AUC; "
          "each method's fakes against the originals of the same compression")
    rows = [[run, cell, f"{r['video']['roc_auc']:.3f}", f"{r['frame']['roc_auc']:.3f}", r["video"]["n"]]
            for run, cells in results.items() for cell, r in cells.items()]
    print(markdown_table(["trained on", "scored on", "video AUC", "frame AUC", "videos"], rows))


VARIANTS = {
    "last 8 of 16 blocks": ({"trainable_blocks": 8}, False),
    "+ self-blends, photos and swaps": ({"synth_ratio": 0.3}, True),
}
"""Fine-tuning variants measured against the candidate's recipe (all blocks, FF++ faces only) on one fold."""


def variants_table(data: Path, folds: int, seed: int = 1, number: int = 0) -> None:
    """Fine-tune the last 8 blocks instead of all, or add the made fakes, on fold ``number`` of the
    ``--methods`` folds (scored on its test videos; the recipe's own run is the one ``--methods`` made)."""
    store = all_methods_store(data)
    _, swaps = photo_stores()
    train_rows, test_rows = list(grouped_kfold(store.table, folds, seed))[number]
    runs = {"the recipe: all blocks, FF++ faces": methods_cv(data, folds, [seed])["lite0"][0]}
    for name, (params, extra) in VARIANTS.items():
        path, scores = _scores_cache(f"variant-{name.replace(' ', '-').replace(',', '')}-{folds}-{seed}-{number}")
        if "lite0" not in scores:
            started = time.perf_counter()
            lite0 = _backbone(params, seed=seed)
            faces, labels, inputs = _training_arrays(
                store, train_rows, [(swaps, _draw_extra(swaps, seed * 100 + number))] if extra else [])
            lite0.fit(faces, labels, **inputs)
            scores["lite0"] = np.full(len(store), np.nan)
            scores["lite0"][test_rows] = predict_fake(lite0, store, test_rows)
            scores["fit_s"] = np.array(time.perf_counter() - started)
            _save_scores(path, scores)
            print(f"  {name}: {scores['fit_s']:.0f} s", flush=True)
        runs[name] = scores["lite0"]
    only = np.full(len(store), np.nan)
    rows = []
    for name, p in runs.items():
        only[:] = np.nan
        only[test_rows] = p[test_rows]
        metrics = per_method_metrics(store.table, only)
        rows.append([name, *(f"{r['video']['roc_auc']:.3f} / {r['frame']['roc_auc']:.3f}" for r in metrics.values())])
    print(f"EfficientNet-Lite0 fine-tuning variants, fold {number} of the identity-grouped {folds}-fold "
          f"assignment (seed {seed}); video AUC / frame AUC on that fold's test videos")
    print(markdown_table(["variant", *metrics], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ffpp-sample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--generalisation", action="store_true", help="only the generalisation tables")
    parser.add_argument("--repeat-cv", type=int, metavar="N",
                        help="only: the default model against the released nets under N fold assignments")
    parser.add_argument("--methods", action="store_true",
                        help="only: every method, per method and compression, candidates on the same folds")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[1],
                        help="fold assignments for --methods (default: 1)")
    parser.add_argument("--made-fakes", action="store_true",
                        help="--methods: also the candidate trained on made fakes (self-blends, photos, swaps); "
                             "--false-alarms: also that candidate fitted on every face")
    parser.add_argument("--variants", action="store_true",
                        help="only: the recipe against fine-tuning its last 8 blocks and against adding made "
                             "fakes, on one fold")
    parser.add_argument("--only-folds", type=int, metavar="N", help="--held-out: train and score only N folds")
    parser.add_argument("--held-out", action="store_true",
                        help="only: leave-one-method-out and self-blended-only, each method scored unseen")
    parser.add_argument("--false-alarms", type=Path, nargs="*", metavar="MODEL",
                        help="only: these model folders' (none: the packaged default's) verdicts on the real-faces "
                             "videos through `unmask check`")
    parser.add_argument("--with-photos", action="store_true",
                        help="--false-alarms: also the candidate fitted with the real-faces photos as real faces")
    parser.add_argument("--leave-source-out", action="store_true",
                        help="only: false alarms on each real-faces source with the other sources' videos in "
                             "training (and the --with-photos candidate beside it)")
    parser.add_argument("--fit-seed", type=int, default=42,
                        help="seed of the candidates fitted on every face (--with-photos, --leave-source-out): "
                             "how much their false alarms swing from one training run to the next")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.leave_source_out:
        leave_one_source_out(args.data, args.fit_seed)
    elif args.false_alarms is not None:
        extra = [candidate_with_photos(args.data, seed=args.fit_seed)] if args.with_photos else []
        extra += [candidate_with_photos(args.data, made_fakes=True, seed=args.fit_seed)] if args.made_fakes else []
        for model in [*(args.false_alarms or [None]), *extra]:
            real_videos_elsewhere(model)
    elif args.variants:
        variants_table(args.data, args.folds)
    elif args.methods:
        methods_cv_table(args.data, args.folds, args.seeds, args.made_fakes)
    elif args.held_out:
        held_out_methods(args.data, args.folds, only_folds=args.only_folds)
    elif args.repeat_cv:
        repeated_cv(args.data, args.folds, args.repeat_cv)
    elif args.generalisation:
        generalisation_tables(args.data)
    else:
        cross_validation_table(args.data, args.folds)


if __name__ == "__main__":
    main()
