"""The detector that learns from thousands of people (issue #29): EfficientNet-Lite0 fine-tuned on the DFDC
faces, every FF++ method and the real-faces photos together, plus the motion regression, against the
current default; trained in the background, checkpointed, resumable.

The stores come from ``benchmarks/dfdc_data.py`` (run it first). One fold of an identity-grouped k-fold
over the FF++ sample's people is held out of training (``--fold``), so the FF++ figures are on people the
model never saw; DFDC's own parts are honoured: train trains, val calibrates the threshold (neither expert
trained on it), test is what is reported.

    python benchmarks/bench_dfdc.py train  [--fold 0] [--folds 5] [--fold-seed 1] [--size 160] [--threads 1]  # rerun resumes
    python benchmarks/bench_dfdc.py report [--fold 0] ...                                         # the tables
    python benchmarks/bench_dfdc.py without-dfdc [--fold 0] ...      # cross-dataset: FF++ + photos only, scored on DFDC

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

from common import REPO, SHARED_DATA, machine, markdown_table, median, require
from unmask.evaluate import evaluate_scores, per_method_metrics
from unmask.faces.motion import MOTION_FEATURES
from unmask.models.fusion import LITE0_RECIPE
from unmask.splits import grouped_kfold
from unmask.store import CombinedStore, FaceStore, faces_at
from unmask.train import TrainOptions, predict_fake, train

STORES = ("dfdc-m0-224", "ffpp-m0-224-motion", "photos-m0-224")
"""The sources, as ``dfdc_data.py`` names their folders: DFDC faces, the FF++ sample's videos, photos."""
FFPP = "ffpp-m0-224-motion"
DATA_TERMS = {"dfdc-m0-224": "DFDC (Dolhansky et al. 2020): research and non-commercial use under the DFDC terms",
              FFPP: "FaceForensics++ (Rossler et al. 2019): research use under the FaceForensics++ terms",
              "photos-m0-224": "UTKFace: non-commercial research only"}
"""What each source's faces may be used for; a model trained on them says so in its card."""


def recipe(size: int, checkpoints: Path) -> dict:
    """How the backbone learns: ``LITE0_RECIPE`` at scale. An epoch is 8,000 faces drawn balanced by
    source x method x class; 9 of them (72,000 faces, about 70 minutes on 2 cores) under a cosine
    schedule; a fifth of every source's people held out, 2,500 of them scored after each epoch to keep
    the best; 20% of the real faces drawn turned into self-blended fakes."""
    return {**LITE0_RECIPE, "input_size": size, "epochs": 9, "epoch_faces": 8000, "schedule": "cosine",
            "synth_ratio": 0.2, "val_max_faces": 2500, "patience": 100, "checkpoint_dir": str(checkpoints),
            "checkpoint_minutes": 10.0, "progress": True}


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


def model_dir(args: argparse.Namespace) -> Path:
    return args.work / "models" / f"lite0-motion-dfdc-{args.size}px-fold{args.fold}of{args.folds}-seed{args.fold_seed}"


def run_training(args: argparse.Namespace) -> None:
    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    out = model_dir(args)
    options = TrainOptions(model="lite0-motion", split="official", calibrate="sigmoid", weights_dtype="float16",
                           params={"member_params": recipe(args.size, out.with_name(out.name + "-checkpoints"))},
                           title=f"EfficientNet-Lite0 ({args.size} px) fine-tuned on DFDC faces, every FF++ method "
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
    frame = evaluate_scores(dfdc.table.iloc[test], model.fake_probability(faces_at(dfdc, test),
                                                                         motion=np.full((len(test), len(MOTION_FEATURES)), np.nan)),
                            model.threshold, "mean")["frame"]
    print(f"trained without DFDC, scored on the DFDC test part ({len(test)} faces): frame AUC {frame['roc_auc']:.3f}, "
          f"accuracy at its threshold {frame['accuracy']:.3f}")
    store = combined(args.work, args.fold, args.folds, args.fold_seed)
    print_ffpp_fold(args, store, model)


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
    params = {k: v for k, v in recipe(args.size, checkpoints).items()
              if k not in ("checkpoint_dir", "progress", "checkpoint_minutes")}
    backbone = TorchFaceClassifier(arch="efficientnet-lite0", **params)
    backbone.load_weights(tensors["best"] if "best" in tensors else tensors["model"])
    round_weights(backbone, "float16")
    val = np.flatnonzero(store.table["split"].to_numpy() == "val")
    raw = predict_fake(backbone, store, val)
    labels = store.table["label"].to_numpy()[val]
    calibration = fit_calibration("sigmoid", raw, labels)
    card = {"title": f"EfficientNet-Lite0 ({args.size} px) fine-tuned on DFDC faces, every FF++ method and real photos "
                     f"(epoch {epoch} of {state['epoch']} trained; FF++ fold {args.fold} of {args.folds} held out)",
            "estimator": {"name": "efficientnet-lite0", "params": backbone.get_params()},
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
    dfdc_test = np.flatnonzero((table["dataset"].to_numpy() == "dfdc-m0-224") & (table["split"].to_numpy() == "test"))
    p_fake = model.fake_probability(faces_at(store, dfdc_test), motion=store.motion(dfdc_test)
                                    if model.needs_motion else None)
    frame = evaluate_scores(table.iloc[dfdc_test], p_fake, model.threshold, "mean")["frame"]
    print(f"\nDFDC test part ({len(dfdc_test)} faces, one per video; never trained or tuned on): frame AUC "
          f"{frame['roc_auc']:.3f}, accuracy at the shipped threshold {frame['accuracy']:.3f}, balanced accuracy "
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


def print_ffpp_fold(args: argparse.Namespace, store: CombinedStore, model) -> None:
    """Video and frame AUC per method and compression on the held-out FF++ people."""
    table = store.table
    test = np.flatnonzero((table["dataset"].to_numpy() == FFPP) & (table["split"].to_numpy() == "test"))
    p_fake = model.fake_probability(faces_at(store, test), motion=store.motion(test) if model.needs_motion else None)
    rows = [[cell, m["video"]["n"], f"{m['video']['roc_auc']:.3f}", f"{m['frame']['roc_auc']:.3f}"]
            for cell, m in sorted(per_method_metrics(table.iloc[test], p_fake, model.threshold, "mean").items())]
    print(f"\nFF++ sample, fold {args.fold} of {args.folds} of its people (fold seed {args.fold_seed}), never trained on; "
          "each method's fakes against the originals of the same compression:")
    print(markdown_table(["method", "videos", "video AUC", "frame AUC"], rows))


def measure_height(path: Path) -> int:
    from unmask.video import read_frames

    return read_frames(path, [0])[0].height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["train", "report", "without-dfdc"])
    parser.add_argument("--work", type=Path, default=REPO.parent / "data", help="where dfdc_data.py put the stores")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=160, help="the network's input side (160 or 224)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own; 1 leaves a core "
                        "to whatever else runs)")
    parser.add_argument("--timing-videos", type=int, default=6, help="720p videos timed per model (default: 6)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    {"train": run_training, "report": report, "without-dfdc": without_dfdc}[args.what](args)


if __name__ == "__main__":
    main()
