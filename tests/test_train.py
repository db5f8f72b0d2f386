"""train / evaluate / tune end to end on a small generated face store."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import face_frames
from unmask.cli import main
from unmask.models.io import load_model
from unmask.store import KEYPOINT_COLUMNS, Shard, StoreWriter

SIZE = 32


def easy_store(root, n_pairs=10, faces_per_video=4, seed=0, size=SIZE, split_of=None):
    """Originals are smooth noise; each fake carries a bright blended square: learnable by pixels."""
    rng = np.random.default_rng(seed)
    writer = StoreWriter(root, {"faces": {"size": size, "margin": 0.0, "min_confidence": 0.9},
                                "frames": {"step": 30, "max_frames": faces_per_video}})
    split_of = split_of or (lambda pair: ("train", "train", "train", "val", "test")[pair % 5])
    for pair in range(n_pairs):
        a, b = f"{2 * pair:03d}", f"{2 * pair + 1:03d}"
        for ids, label in ((a, 0), (b, 0), (f"{a}_{b}", 1), (f"{b}_{a}", 1)):
            faces = rng.integers(60, 140, (faces_per_video, size, size, 3)).astype(np.uint8)
            if label:
                faces[:, 8:20, 10:22] = np.clip(faces[:, 8:20, 10:22].astype(int) + 90, 0, 255)
            key = f"{'fake' if label else 'real'}/{ids}.mp4"
            base = {"video": key, "label": label, "method": "Deepfakes" if label else "original",
                    "compression": "c23", "ids": ids, "split": split_of(pair)}
            rows = [{**base, "source": "", "frame": 30 * i, "x1": 0, "y1": 0, "x2": size, "y2": size,
                     "crop_x1": 0, "crop_y1": 0, "crop_x2": size, "crop_y2": size, "confidence": 0.99,
                     **dict(zip(KEYPOINT_COLUMNS, [10, 12, 22, 12, 16, 18, 11, 24, 21, 24])),
                     "n_detections": 1, "path": key} for i in range(faces_per_video)]
            writer.write(Shard({**base, "path": key, "status": "ok", "reason": "", "faces": faces_per_video,
                                "frames_read": faces_per_video}, rows, faces))
    return writer.commit()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return easy_store(tmp_path_factory.mktemp("train") / "faces")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_videos_split_reports_and_saves_without_pickle(store, tmp_path, capsys):
    code, out, _ = run(capsys, "train", store.root, "--model", "rf", "--features", "pixels-small",
                       "--split", "videos", "--out", tmp_path / "m", "--report", tmp_path / "r", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["metrics"]["frame"]["roc_auc"] > 0.95 and result["metrics"]["video"]["roc_auc"] > 0.95
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "model.skops"]
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["data"]["per_class"] == {"real": card["training"]["data"]["faces"] // 2,
                                                      "fake": card["training"]["data"]["faces"] // 2}
    assert card["input"]["size"] == SIZE and card["kind"] == "sklearn" and card["versions"]["scikit-learn"]
    assert card["training"]["leak_warning"] is None
    report = (tmp_path / "r" / "report.md").read_text()
    assert "WARNING" not in report
    for name in ("metrics.json", "report.md"):
        assert (tmp_path / "r" / name).exists()
    assert any(p.suffix == ".png" for p in (tmp_path / "r").iterdir())
    # the saved model scores the same as it did at training time
    model = load_model(tmp_path / "m")
    assert model.fake_probability(store.faces[:8]).shape == (8,)


def test_frame_split_is_labelled_as_leaking(store, tmp_path, capsys):
    code, out, _ = run(capsys, "train", store.root, "--model", "logreg", "--features", "pixels-small",
                       "--split", "frames", "--out", tmp_path / "m", "--report", tmp_path / "r")
    assert code == 0 and "WARNING: frame split" in out
    assert "WARNING: leaky split" in (tmp_path / "r" / "report.md").read_text()


def test_cross_validation_and_calibration(store, tmp_path, capsys):
    code, out, err = run(capsys, "train", store.root, "--model", "hgb", "--features", "pixels-small",
                         "--param", "max_iter=30", "--split", "cv", "--folds", "3", "--calibrate", "isotonic",
                         "--out", tmp_path / "m", "--report", tmp_path / "r")
    assert code == 0 and err.count("fold ") == 3
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    cv = card["cross_validation"]
    assert len(cv["folds"]) == 3 and cv["summary"]["video_roc_auc"]["mean"] > 0.9
    # Per method and compression: pooled over the folds, with the spread over them, printed as well.
    cell = cv["per_method"]["Deepfakes c23"]
    assert cell["videos"] == cv["pooled_out_of_fold"]["video"]["n"] and cell["video_roc_auc"] == cv["pooled_out_of_fold"]["video"]["roc_auc"]
    assert cell["fold_video_roc_auc"]["folds"] == 3
    assert cell["fold_video_roc_auc"]["mean"] == pytest.approx(np.mean([f["per_method_video_auc"]["Deepfakes c23"]
                                                                        for f in cv["folds"]]))
    assert f"cv Deepfakes c23: video AUC {cell['video_roc_auc']:.3f} pooled" in out
    groups = [set(f["metrics"]["frame"]["n"] for f in cv["folds"])]
    assert groups and card["calibration"]["method"] == "isotonic"
    assert 0 < card["threshold"] < 1
    assert "cross_validation" in json.loads((tmp_path / "r" / "metrics.json").read_text())["context"]


def test_half_precision_weights_are_refused_for_a_scikit_learn_model_before_any_fit(store, tmp_path, capsys):
    code, _, err = run(capsys, "train", store.root, "--model", "rf", "--features", "pixels-small",
                       "--weights-dtype", "float16", "--out", tmp_path / "m")
    assert code == 2 and "--weights-dtype float16 is for the torch models" in err and not (tmp_path / "m").exists()


def test_evaluate_on_faces_from_another_folder(store, tmp_path, capsys):
    assert run(capsys, "train", store.root, "--model", "rf", "--features", "pixels-small", "--split", "official",
               "--out", tmp_path / "m")[0] == 0
    unseen = easy_store(tmp_path / "other", n_pairs=4, seed=7, split_of=lambda pair: "test")
    code, out, _ = run(capsys, "evaluate", tmp_path / "m", unseen.root, "--split", "test",
                       "--report", tmp_path / "r", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["faces"] == len(unseen) and result["metrics"]["video"]["roc_auc"] > 0.95
    assert result["metrics"]["video"]["n"] == 16
    assert (tmp_path / "r" / "report.md").exists()


def test_incompatible_inputs_fail_with_one_line(store, tmp_path, capsys):
    assert run(capsys, "train", store.root, "--model", "rf", "--features", "pixels", "--split", "none",
               "--out", tmp_path / "m")[0] == 0
    bigger = easy_store(tmp_path / "big", n_pairs=1, size=48)
    code, _, err = run(capsys, "evaluate", tmp_path / "m", bigger.root)
    assert code == 2 and "trained on 32px crops" in err and err.count("\n") == 1
    code, _, err = run(capsys, "evaluate", tmp_path / "nowhere", store.root)
    assert code == 2 and "not a model folder" in err
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    card["format_version"] = 99
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    code, _, err = run(capsys, "evaluate", tmp_path / "m", store.root)
    assert code == 2 and "retrain it" in err
    code, _, err = run(capsys, "train", store.root, "--model", "forest", "--out", tmp_path / "x")
    assert code == 2 and "unknown model 'forest'" in err
    code, _, err = run(capsys, "train", store.root, "--split", "frames", "--param", "oops", "--out", tmp_path / "x")
    assert code == 2 and "NAME=VALUE" in err


def test_tune_ranks_by_grouped_cv(store, capsys):
    code, out, err = run(capsys, "tune", store.root, "--model", "rf", "--features", "pixels-small", "--folds", "3",
                         "--grid", "n_estimators=5,40", "--grid", "max_depth=1,8", "--json")
    assert code == 0 and err.count("video AUC") == 4
    result = json.loads(out)
    assert len(result["trials"]) == 4
    scores = [t["summary"]["video_roc_auc"]["mean"] for t in result["trials"]]
    assert scores == sorted(scores, reverse=True) and result["best"] == result["trials"][0]


def test_cnn_trains_saves_as_safetensors_and_reloads(store, tmp_path, capsys):
    code, out, _ = run(capsys, "train", store.root, "--model", "resnet-small", "--param", "epochs=2",
                       "--param", "input_size=32", "--param", "batch_size=16", "--split", "videos",
                       "--out", tmp_path / "m", "--json")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "model.onnx", "model.safetensors"]
    model = load_model(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["kind"] == "torch" and card["estimator"]["params"]["epochs"] == 2
    first = model.fake_probability(store.faces[:6])
    again = load_model(tmp_path / "m").fake_probability(store.faces[:6])
    assert np.allclose(first, again) and ((first >= 0) & (first <= 1)).all()


def test_mesonet_ensemble_is_a_model_like_any_other(store, tmp_path, capsys):
    code, out, _ = run(capsys, "train", store.root, "--model", "mesonet-ensemble", "--split", "cv", "--folds", "2",
                       "--out", tmp_path / "m", "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result["cross_validation"]["folds"]) == 2
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["kind"] == "torch" and card["estimator"]["params"]["archs"] == ["mesoinception4", "meso4"]
    assert card["input"]["input_size"] == 256 and card["input"]["crop_margin"] == 0.3
    code, out, _ = run(capsys, "evaluate", tmp_path / "m", store.root, "--json")
    assert code == 0 and json.loads(out)["metrics"]["frame"]["n"] == len(store)


def torchrun_train(store, out, *options):
    """``unmask train`` in 2 processes started by torchrun (the command docs/cluster.md gives)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "unmask", "train", store.root, "--out", out, "--json", *options]
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300)


def test_cnn_trains_under_torchrun_and_rank_0_alone_writes(store, tmp_path):
    done = torchrun_train(store, tmp_path / "m", "--model", "resnet-small", "--param", "epochs=2",
                          "--param", "input_size=32", "--param", "batch_size=8", "--split", "videos")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # one JSON document: only rank 0 spoke
    assert result["metrics"]["frame"]["n"] > 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "model.onnx", "model.safetensors"]
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["processes"] == 2
    probabilities = load_model(tmp_path / "m").fake_probability(store.faces[:4])
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_torchrun_refuses_scikit_learn_models_with_one_line(store, tmp_path):
    done = torchrun_train(store, tmp_path / "m", "--model", "rf", "--features", "pixels-small", "--split", "videos")
    assert done.returncode != 0
    assert done.stderr.count("unmask train: error: torchrun trains the CNN models; rf is a scikit-learn model") == 2
    # torchrun then reports the failed processes with its own traceback; none comes from unmask.
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert frames and not [line for line in frames if "unmask" in line]
    assert not (tmp_path / "m").exists()


def test_tune_runs_its_forest_work_on_a_dask_cluster(store, capsys):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        code, out, _ = run(capsys, "tune", store.root, "--model", "rf", "--features", "pixels-small", "--folds", "2",
                           "--grid", "n_estimators=5,10", "--scheduler", cluster.scheduler_address, "--json")
        tasks = sum(worker.state.executed_count for worker in cluster.workers.values())
    assert code == 0 and len(json.loads(out)["trials"]) == 2
    assert tasks > 0  # joblib sent the trees to the cluster


def face_image_set(folder, count=8):
    """A face-image set laid out as the DFDC faces are: crops named by video in a subfolder, parts.csv
    with label, group and part; one row with a bad label and one whose image is missing."""
    import cv2

    (folder / "crops").mkdir(parents=True)
    lines = ["video,label,group,part"]
    for number, frame in enumerate(face_frames(count, width=240, height=160)):
        name = f"v{number:02d}"
        cv2.imwrite(str(folder / "crops" / f"{name}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        lines.append(f"{name},{'FAKE' if number % 2 else 'REAL'},g{number // 2},{('train', 'val', 'test')[number % 3]}")
    lines += ["v98,MAYBE,g0,train", "v99,FAKE,g0,train"]
    (folder / "parts.csv").write_text("\n".join(lines) + "\n")
    return folder / "parts.csv"


def test_a_face_image_set_prepares_and_trains_beside_videos(store, tmp_path, capsys):
    code, out, err = run(capsys, "prepare", face_image_set(tmp_path / "set"), "--out", tmp_path / "images",
                         "--size", str(SIZE), "--margin", "0", "--workers", "1", "--json")
    assert code == 0, err
    assert "warning: line 10: label 'MAYBE' is not real/fake/0/1" in err
    assert "warning: line 11: no such file 'v99'" in err
    from unmask.store import FaceStore

    images = FaceStore(tmp_path / "images")
    table = images.table.sort_values("video")
    assert list(table["video"]) == [f"v{n:02d}" for n in range(8)]  # every crop's face found, one each
    assert list(table["ids"]) == [f"g{n // 2}" for n in range(8)]
    assert list(table["split"]) == [("train", "val", "test")[n % 3] for n in range(8)]
    # The videos' store and the image set train one model, balanced by source, method and class.
    code, out, err = run(capsys, "train", store.root, images.root, "--model", "efficientnet-lite0",
                         "--param", "init=imagenet", "--param", "input_size=64", "--param", "epoch_faces=48",
                         "--param", "epochs=2", "--param", "batch_size=16", "--param", "val_fraction=0",
                         "--param", 'source_weights={"images": 2}',  # the image set drawn twice as often
                         "--split", "official", "--out", tmp_path / "m", "--json")
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    per_dataset = card["training"]["data"]["per_dataset"]
    assert set(per_dataset) == {store.root.name, "images"}
    assert per_dataset["images"] == {"real": 2, "fake": 1}  # the image set's train part
    assert card["training"]["store"] == f"{store.root.name} + images"
    assert card["metrics"]["frame"]["n"] == (table["split"] == "test").sum() + (store.table["split"] == "test").sum()
    assert card["estimator"]["params"]["epoch_faces"] == 48
    assert card["estimator"]["params"]["source_weights"] == {"images": 2}
    model = load_model(tmp_path / "m")
    probabilities = model.fake_probability(images.faces[:4])
    assert probabilities.shape == (4,) and ((probabilities >= 0) & (probabilities <= 1)).all()
