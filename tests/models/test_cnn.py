"""The CNN detectors behind the scikit-learn interface: they learn (the loss falls; a blended
boundary and self-blended fakes are told apart on held-out faces), train reproducibly, resume
from checkpoints exactly, round-trip their weights, and score the released MesoNet exactly as
the port does.

Data: jittered crops of the public-domain astronaut portrait (``skimage.data.astronaut()``)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from skimage import data
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from unmask.errors import UnmaskError
from unmask.faces.crop import crop_face, keypoints_in_crop
from unmask.models import MODELS, create_model
from unmask.models.architectures import ARCHITECTURES
from unmask.models.cnn import TorchFaceClassifier
from unmask.models.nets.mesonet import load_released
from unmask.synth import self_blend

#: MTCNN (unmask.faces.mtcnn, confidence 0.99999) on skimage.data.astronaut(): box and keypoints.
ASTRONAUT_BOX = np.array([181.1, 62.2, 267.7, 172.1])
ASTRONAUT_KEYPOINTS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]],
                               np.float32)
MARGIN = 0.3


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These nets and batches are tiny: with two OpenMP threads synchronisation dominates, and on a
    busy machine a descheduled thread stalls every op (measured: 4 minutes instead of 35 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def astronaut_faces(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 crops (margin 0.3) of boxes jittered in place and scale, with random
    brightness, colour cast and noise; and their keypoints in crop pixels."""
    image, rng = data.astronaut(), np.random.default_rng(seed)
    faces = np.empty((count, size, size, 3), np.uint8)
    keypoints = np.empty((count, 5, 2), np.float32)
    width, height = ASTRONAUT_BOX[2:] - ASTRONAUT_BOX[:2]
    for i in range(count):
        scale = rng.uniform(0.9, 1.1)
        cx, cy = (ASTRONAUT_BOX[:2] + ASTRONAUT_BOX[2:]) / 2 + rng.uniform(-0.08, 0.08, 2) * (width, height)
        box = (cx - scale * width / 2, cy - scale * height / 2, cx + scale * width / 2, cy + scale * height / 2)
        face = crop_face(image, box, MARGIN, size).astype(np.float32)
        face = face * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20, 3) + rng.normal(0, 3, face.shape)
        faces[i] = np.clip(face, 0, 255).astype(np.uint8)
        keypoints[i] = keypoints_in_crop(ASTRONAUT_KEYPOINTS, box, image.shape, MARGIN, size)
    return faces, keypoints


def rectangle_fake(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An easy fake: a random rectangle of the face darkened and tinted, feather-blended in."""
    height, width = face.shape[:2]
    x0, y0 = rng.integers(width // 6, width // 2), rng.integers(height // 6, height // 2)
    x1, y1 = x0 + rng.integers(width // 4, width // 2), y0 + rng.integers(height // 4, height // 2)
    mask = np.zeros((height, width), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    source = face.astype(np.float32) * rng.uniform(0.75, 0.85) + rng.uniform(-20, 20, 3)
    return np.clip(face * (1 - mask) + source * mask, 0, 255).astype(np.uint8)


def auc(model: TorchFaceClassifier, faces: np.ndarray, labels: np.ndarray) -> float:
    return roc_auc_score(labels, model.predict_proba(faces)[:, 1])


@pytest.fixture(scope="module")
def boundary_task() -> dict[str, np.ndarray]:
    """512 training and 160 held-out 32 px faces, every other one with a blended rectangle; 8 faces a group."""
    faces, _ = astronaut_faces(672, 32, seed=0)
    labels = np.arange(len(faces)) % 2
    rng = np.random.default_rng(1)
    faces[labels == 1] = np.stack([rectangle_fake(face, rng) for face in faces[labels == 1]])
    groups = np.array([f"person{i // 8}" for i in range(len(faces))])
    return {"X": faces[:512], "y": labels[:512], "groups": groups[:512], "X_test": faces[512:], "y_test": labels[512:]}


BOUNDARY_PARAMS = dict(arch="resnet-small", input_size=32, epochs=6, batch_size=32, lr=3e-3, augment=False,
                       val_fraction=0.2, patience=3, device="cpu", seed=0)


@pytest.fixture(scope="module")
def boundary_model(boundary_task) -> TorchFaceClassifier:
    task = boundary_task
    return TorchFaceClassifier(**BOUNDARY_PARAMS).fit(task["X"], task["y"], groups=task["groups"])


def test_loss_falls_and_validation_picks_the_best_epoch(boundary_model):
    history = boundary_model.history_
    losses = [epoch["loss"] for epoch in history]
    assert losses[-1] < 0.6 * losses[0]
    val_aucs = [epoch["val_auc"] for epoch in history]
    assert all(0.0 <= v <= 1.0 for v in val_aucs)
    assert boundary_model.best_epoch_ == 1 + int(np.argmax(val_aucs))
    assert boundary_model.val_auc_ == max(val_aucs)
    assert all(epoch["faces"] < 512 for epoch in history)  # the held-out groups are not trained on


def test_separates_an_easy_task_on_held_out_faces(boundary_model, boundary_task):
    assert auc(boundary_model, boundary_task["X_test"], boundary_task["y_test"]) > 0.9


def test_probabilities_and_predictions_agree(boundary_model, boundary_task):
    faces = boundary_task["X_test"][:40]
    proba = boundary_model.predict_proba(faces)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    logits = boundary_model.decision_function(faces)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
    np.testing.assert_array_equal(boundary_model.predict(faces), (proba[:, 1] > 0.5).astype(int))
    np.testing.assert_array_equal(boundary_model.classes_, [0, 1])
    # A read-only memmap-like input (the face store) works without copies being asked for.
    readonly = faces.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(boundary_model.predict_proba(readonly), proba)


def test_gradcam_maps_are_heatmaps_over_the_crops(boundary_model, boundary_task):
    faces = boundary_task["X_test"][:6]
    maps = boundary_model.gradcam(faces, layer="stages.1")
    assert maps.shape == (6, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps.reshape(6, -1).max(axis=1), 1.0).any()
    assert boundary_model.gradcam(faces).shape == (6, 32, 32)  # default: the last block


def test_weights_round_trip_gives_identical_predictions(boundary_model, boundary_task):
    state = boundary_model.weights()
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())
    restored = TorchFaceClassifier(**BOUNDARY_PARAMS).load_weights(state)
    faces = boundary_task["X_test"]
    np.testing.assert_array_equal(restored.predict_proba(faces), boundary_model.predict_proba(faces))
    state["head.3.bias"] += 5.0  # a copy: changing it leaves the model alone
    np.testing.assert_array_equal(restored.predict_proba(faces), boundary_model.predict_proba(faces))
    with pytest.raises(UnmaskError, match="not a meso4"):
        TorchFaceClassifier(arch="meso4").load_weights(boundary_model.weights())


def test_clone_gives_the_same_unfitted_estimator(boundary_model):
    copy = clone(boundary_model)
    assert copy.get_params() == boundary_model.get_params()
    assert not hasattr(copy, "net_")


def small_fit(seed: int = 0, **params) -> tuple[TorchFaceClassifier, np.ndarray]:
    """A quick fit with augmentation and self-blending on: every source of randomness in play."""
    faces, keypoints = astronaut_faces(48, 48, seed=3)
    labels = np.arange(48) % 3 == 0
    settings = dict(arch="resnet-small", input_size=32, epochs=2, batch_size=16, augment=True, synth_ratio=0.3,
                    val_fraction=0.0, device="cpu", seed=seed) | params
    model = TorchFaceClassifier(**settings).fit(faces, labels, keypoints=keypoints)
    return model, faces


def test_same_seed_same_model_on_cpu():
    first, faces = small_fit(seed=0)
    second, _ = small_fit(seed=0)
    other, _ = small_fit(seed=1)
    for name, tensor in first.weights().items():
        assert torch.equal(tensor, second.weights()[name]), name
    np.testing.assert_array_equal(first.predict_proba(faces), second.predict_proba(faces))
    assert not np.array_equal(first.predict_proba(faces), other.predict_proba(faces))


def test_checkpoint_resumes_where_it_stopped(tmp_path):
    straight, faces = small_fit(epochs=3)
    folder = tmp_path / "run"
    two, _ = small_fit(epochs=2, checkpoint_dir=folder)
    three, _ = small_fit(epochs=3, checkpoint_dir=folder)
    assert [p.name for p in folder.iterdir()] == ["checkpoint.safetensors"]  # no temporary file left behind
    # Epochs 1-2 come from the checkpoint (their timings too, so they were not run again).
    assert three.history_[:2] == two.history_
    assert [h["epoch"] for h in three.history_] == [1, 2, 3]
    np.testing.assert_allclose(three.predict_proba(faces), straight.predict_proba(faces), atol=1e-5)
    for name, tensor in straight.weights().items():
        torch.testing.assert_close(three.weights()[name], tensor, atol=1e-5, rtol=1e-5)
    # Asking again for what is done trains nothing.
    again, _ = small_fit(epochs=3, checkpoint_dir=folder)
    assert again.history_ == three.history_
    with pytest.raises(UnmaskError, match="other settings"):
        small_fit(epochs=3, checkpoint_dir=folder, lr=0.1)


def test_a_run_stopped_in_the_middle_of_an_epoch_resumes_from_that_step(tmp_path, monkeypatch):
    """Epochs of hours are saved between their steps too: a crash loses minutes, and the resumed run
    ends where an unbroken one does (balanced draws, cosine schedule and self-blends included)."""
    from unmask.models.batches import FaceBatches

    settings = dict(epochs=2, epoch_faces=64, schedule="cosine", warmup=0.2)
    methods = np.where(np.arange(48) % 3 == 0, "a/Deepfakes", np.where(np.arange(48) % 2, "a/original", "b/original"))
    faces, keypoints = astronaut_faces(48, 48, seed=3)
    labels = np.arange(48) % 3 == 0

    def fit(**params):
        model = TorchFaceClassifier(**(dict(arch="resnet-small", input_size=32, batch_size=16, augment=True,
                                            synth_ratio=0.3, val_fraction=0.0, device="cpu", seed=0)
                                       | settings | params))
        return model.fit(faces, labels, keypoints=keypoints, methods=methods)

    straight = fit()
    assert [h["faces"] for h in straight.history_] == [64, 64]
    folder = tmp_path / "run"
    made = FaceBatches.training
    calls = []

    def crash_at_batch_6(self, job):
        calls.append(job)
        if len(calls) == 6:  # the second batch of epoch 2: a power cut
            raise KeyboardInterrupt
        return made(self, job)

    monkeypatch.setattr(FaceBatches, "training", crash_at_batch_6)
    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint_dir=folder, checkpoint_minutes=1e-9, num_workers=0)  # saved after every step
    monkeypatch.setattr(FaceBatches, "training", made)
    from unmask.models.checkpoint import load_checkpoint

    assert {k: load_checkpoint(folder / "checkpoint.safetensors")[1][k] for k in ("epoch", "step")} == \
        {"epoch": 1, "step": 1}
    resumed = fit(checkpoint_dir=folder)
    assert [h["faces"] for h in resumed.history_] == [64, 64]
    for name, tensor in straight.weights().items():
        torch.testing.assert_close(resumed.weights()[name], tensor, atol=1e-5, rtol=1e-5)


def test_checkpoints_are_safetensors_and_a_damaged_one_is_refused_in_one_line(tmp_path):
    """Resuming reads another process's file, so it must not be a pickle (torch.save is one)."""
    folder = tmp_path / "run"
    small_fit(epochs=1, checkpoint_dir=folder)
    checkpoint = folder / "checkpoint.safetensors"
    with safe_open(str(checkpoint), framework="pt") as file:
        groups = {key.split("/")[0] for key in file.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)
        assert json.loads(file.metadata()["unmask-checkpoint"])["epoch"] == 1
    assert groups == {"model", "optimizer", "rng"}  # no validation here, so no best epoch to keep
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # a write cut short by a crash of the disk
    with pytest.raises(UnmaskError, match="not a readable checkpoint"):
        small_fit(epochs=2, checkpoint_dir=folder)


@pytest.mark.parametrize("name", ["meso4", "mesoinception4"])
def test_released_mesonet_scores_as_the_port(name):
    faces, _ = astronaut_faces(5, 320, seed=4)
    port = load_released(name)
    released = TorchFaceClassifier(arch=name, init="released", epochs=0, device="cpu").fit(faces, [0, 1, 0, 1, 0])
    assert released.history_ == []

    def port_p_fake(crops: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        with torch.no_grad():
            return torch.sigmoid(-port(x)).numpy()

    at_256 = np.stack([cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA) for face in faces])
    for crops in (at_256, faces):  # 256 px as is; 320 px crops resized by the wrapper
        np.testing.assert_allclose(released.predict_proba(crops)[:, 1], port_p_fake(at_256), atol=1e-5)
    np.testing.assert_allclose(released.decision_function(at_256), -port(torch.from_numpy(
        at_256.transpose(0, 3, 1, 2).astype(np.float32) / 255)).detach().numpy(), atol=1e-4)
    assert released.preprocessing()["crop_margin"] == 0.3
    assert released.preprocessing()["input_size"] == 256 and released.preprocessing()["normalisation"] is None
    weights = released.weights()
    assert all(torch.equal(weights[key], value) for key, value in port.state_dict().items())
    # The reordered fast forward needs positive batch-norm scales; otherwise the plain one runs.
    port.block2.bn.weight.data.neg_()
    flipped = TorchFaceClassifier(arch=name, device="cpu").load_weights(port.state_dict())
    np.testing.assert_allclose(flipped.predict_proba(at_256)[:, 1], port_p_fake(at_256), atol=1e-5)


def test_self_blending_on_the_fly_teaches_real_only_training_to_flag_blends():
    faces, keypoints = astronaut_faces(380, 64, seed=5)
    train, held_out = slice(0, 320), slice(320, 380)
    model = TorchFaceClassifier(arch="resnet-small", input_size=64, epochs=8, batch_size=32, lr=3e-3,
                                augment=False, synth_ratio=0.5, val_fraction=0.0, device="cpu", seed=0)
    model.fit(faces[train], np.zeros(320, int), keypoints=keypoints[train])
    assert all(0.35 * 320 < epoch["synth"] < 0.65 * 320 for epoch in model.history_)
    rng = np.random.default_rng(6)
    blended = np.stack([self_blend(face, kps, rng)[0] for face, kps in zip(faces[held_out], keypoints[held_out])])
    test = np.concatenate([faces[held_out], blended])
    assert auc(model, test, np.repeat([0, 1], 60)) > 0.75


def test_self_blending_without_keypoints_is_skipped_with_a_reason():
    faces, _ = astronaut_faces(8, 32, seed=7)
    model = TorchFaceClassifier(input_size=32, epochs=1, synth_ratio=0.5, val_fraction=0.0)
    with pytest.warns(UserWarning, match="needs each face's keypoints"), pytest.raises(UnmaskError, match="fake"):
        model.fit(faces, np.zeros(8, int))


def test_validation_needs_identity_groups(boundary_task):
    model = TorchFaceClassifier(input_size=32, epochs=1, augment=False, val_fraction=0.2, device="cpu")
    with pytest.warns(UserWarning, match="identity groups"):
        model.fit(boundary_task["X"][:32], boundary_task["y"][:32])
    assert model.val_auc_ is None and model.history_[0]["faces"] == 32


def test_registered_as_models():
    for name in ("meso4", "mesoinception4", "resnet-small"):
        assert name in MODELS and name in ARCHITECTURES
        model = create_model(name, random_state=7, epochs=3)
        assert isinstance(model, TorchFaceClassifier) and model.arch == name
        assert model.seed == 7 and model.epochs == 3
    assert create_model("resnet-small", features="image").arch == "resnet-small"
    with pytest.raises(UnmaskError, match="not --features"):
        create_model("meso4", features="pixels")
    faces = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(UnmaskError, match="no released weights"):
        TorchFaceClassifier(arch="resnet-small", init="released", epochs=0).fit(faces, [0, 1])
    with pytest.raises(UnmaskError, match="only takes 256"):
        TorchFaceClassifier(arch="meso4", input_size=128).fit(faces, [0, 1])
    with pytest.raises(UnmaskError, match="untrained"):
        TorchFaceClassifier(epochs=0).fit(faces, [0, 1])
    assert TorchFaceClassifier().preprocessing()["input_size"] == 160


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_trains_and_predicts_on_cuda(boundary_task):
    model = TorchFaceClassifier(**{**BOUNDARY_PARAMS, "device": "cuda", "epochs": 2})
    model.fit(boundary_task["X"], boundary_task["y"], groups=boundary_task["groups"])
    assert next(model.net_.parameters()).is_cuda
    proba = model.predict_proba(boundary_task["X_test"])
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)
    assert model.gradcam(boundary_task["X_test"][:4]).shape == (4, 32, 32)
    cpu = TorchFaceClassifier(**BOUNDARY_PARAMS).load_weights(model.weights())
    np.testing.assert_allclose(cpu.predict_proba(boundary_task["X_test"]), proba, atol=0.1)  # bf16 on GPU
