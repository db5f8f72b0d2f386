"""mesonet-motion: the released MesoNets' logit and the motion residual features weighed by a
logistic regression. It learns which inputs tell fakes apart, round-trips through safetensors,
refuses to run without motion features, and works end to end: prepare --motion, train, check.

Data: random crops with made-up motion features for the estimator; for the end-to-end test,
the astronaut clip and the same clip with a flicker painted into the face (``tests/conftest.py``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from unmask.cli import main
from unmask.errors import UnmaskError
from unmask.models import create_model
from unmask.models.fusion import MotionFusion
from unmask.models.io import load_inference_model, load_model, round_weights, save_model
from unmask.faces.motion import MOTION_FEATURES
from unmask.video import write_video

from conftest import face_frames, flickering

CARD = {"title": "fusion", "estimator": {"name": "mesonet-motion", "params": {}},
        "input": {"size": 64, "margin": 0.3, "needs": ["motion"], "motion_features": list(MOTION_FEATURES),
                  "motion": {"offsets": [1, 2, 3], "size": 256, "flow": "dis-fast"}}}


def made_up(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise crops; the fakes' faces flicker more than their surroundings (feature 0 vs 2)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    faces = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
    motion = rng.normal(0, 1, (count, len(MOTION_FEATURES))).astype(np.float32)
    motion[:, 0] += 2.0 * labels
    return faces, labels, motion


@pytest.fixture(scope="module")
def fitted() -> MotionFusion:
    faces, labels, motion = made_up(200, seed=0)
    return create_model("mesonet-motion").fit(faces, labels, motion=motion)


def test_it_learns_what_separates_the_classes(fitted):
    faces, labels, motion = made_up(100, seed=1)
    assert roc_auc_score(labels, fitted.predict_proba(faces, motion=motion)[:, 1]) > 0.85  # the best: 0.92
    weights = fitted.weighting()
    assert list(weights) == [*MOTION_FEATURES, "cnn_logit"]
    assert weights["residual_face"] == max(weights.values(), key=abs) > 0
    assert fitted.predict(faces, motion=motion).tolist() == (fitted.decision_function(faces, motion) > 0).tolist()


def test_a_face_without_later_frames_is_judged_on_the_crop_alone(fitted):
    faces, _, motion = made_up(4, seed=2)
    missing = np.full_like(motion, np.nan)
    logit = fitted.decision_function(faces, missing)
    head = fitted.head_
    standardised_cnn = (fitted.cnn_.decision_function(faces) - head.mean[-1].item()) / head.scale[-1].item()
    expected = head.linear.bias.item() + head.linear.weight[0, -1].item() * standardised_cnn
    np.testing.assert_allclose(logit, expected, rtol=1e-4, atol=1e-4)


def test_saved_as_safetensors_it_scores_the_same(fitted, tmp_path):
    faces, _, motion = made_up(8, seed=3)
    folder = save_model(fitted, tmp_path / "m", CARD)
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx", "model.safetensors"]
    loaded = load_model(folder)
    assert loaded.needs_motion
    np.testing.assert_allclose(loaded.fake_probability(faces, motion), fitted.predict_proba(faces, motion=motion)[:, 1],
                               rtol=1e-6)
    with pytest.raises(UnmaskError, match="needs motion features"):
        loaded.fake_probability(faces)
    with pytest.raises(UnmaskError, match=rf"motion features must be \(faces, {len(MOTION_FEATURES)}\)"):
        loaded.fake_probability(faces, motion[:, :3])
    with pytest.raises(UnmaskError, match="no part of this model"):
        clone(fitted).load_weights({"other.weight": fitted.weights()["head.linear.weight"]})


def test_a_model_of_another_motion_feature_set_is_refused(fitted, tmp_path):
    """A card listing other features than this version measures would be fed the wrong columns."""
    older = {**CARD, "input": {**CARD["input"], "motion_features": list(MOTION_FEATURES[:-1])}}
    folder = save_model(fitted, tmp_path / "m", older)
    with pytest.raises(UnmaskError, match="another set of motion features"):
        load_model(folder)


def test_training_needs_motion_features_that_exist():
    faces, labels, motion = made_up(10, seed=4)
    with pytest.raises(UnmaskError, match="prepare the faces with --motion"):
        create_model("mesonet-motion").fit(faces, labels)
    motion[:, 3] = np.nan
    with pytest.raises(UnmaskError, match="missing for every training face"):
        create_model("mesonet-motion").fit(faces, labels, motion=motion)


def test_prepare_train_and_check_a_flickering_face_end_to_end(tmp_path, capsys):
    clips = tmp_path / "clips"
    for seed in (1, 2):
        honest = face_frames(40, width=640, height=480, seed=seed)
        for folder, frames in (("real", honest), ("fake", flickering(honest, seed=seed + 10))):
            (clips / folder).mkdir(parents=True, exist_ok=True)
            write_video(clips / folder / f"clip{seed}.mp4", frames)
    assert main(["prepare", str(clips), "--out", str(tmp_path / "faces"), "--step", "6", "--frames", "6",
                 "--margin", "0.3", "--size", "256", "--motion"]) == 0
    assert main(["train", str(tmp_path / "faces"), "--model", "mesonet-motion", "--split", "none",
                 "--out", str(tmp_path / "model")]) == 0
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["input"]["motion"] == {"offsets": [1, 2, 3], "size": 256, "flow": "dis-fast"}
    assert card["input"]["needs"] == ["motion"]
    capsys.readouterr()
    # Clips it has not seen: the checker reads each sampled frame's neighbours itself.
    honest = face_frames(40, width=640, height=480, seed=3)
    write_video(tmp_path / "honest.mp4", honest)
    write_video(tmp_path / "flicker.mp4", flickering(honest, seed=13))
    assert main(["check", str(tmp_path / "honest.mp4"), str(tmp_path / "flicker.mp4"),
                 "--model", str(tmp_path / "model"), "--json"]) == 0
    honest_record, flicker_record = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert honest_record["frames_sampled"] == 16 and len(flicker_record["faces"]) == 16
    assert flicker_record["fake_probability"] > honest_record["fake_probability"]
    assert flicker_record["verdict"] == "FAKE" and honest_record["verdict"] == "REAL"
    # Faces prepared without --motion cannot be judged by it: one line that says what to do.
    assert main(["prepare", str(clips), "--out", str(tmp_path / "plain"), "--frames", "2", "--margin", "0.3",
                 "--size", "256"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "model"), str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--motion" in err


def test_without_cnn_it_weighs_the_motion_features_alone(tmp_path):
    faces, labels, motion = made_up(100, seed=5)
    alone = create_model("mesonet-motion", archs=[]).fit(faces, labels, motion=motion)
    assert alone.cnn_ is None and list(alone.weighting()) == list(MOTION_FEATURES)
    assert alone.gradcam(faces[:2]) is None
    loaded = load_model(save_model(alone, tmp_path / "alone", {**CARD, "estimator": {
        "name": "mesonet-motion", "params": {"archs": []}}}))
    assert not any(name.startswith("cnn.") for name in alone.weights())
    np.testing.assert_allclose(loaded.fake_probability(faces, motion), alone.predict_proba(faces, motion=motion)[:, 1],
                               rtol=1e-6)


def test_with_a_fixed_cnn_weight_the_logits_of_both_experts_add():
    faces, labels, motion = made_up(200, seed=0)
    motion[:20] = np.nan  # faces without motion (photos) train only the CNN part
    fused = create_model("mesonet-motion", cnn_weight=1.0).fit(faces, labels, motion=motion)
    alone = create_model("mesonet-motion", archs=[]).fit(faces[20:], labels[20:], motion=motion[20:])
    test_faces, _, test_motion = made_up(50, seed=1)
    expected = alone.decision_function(test_faces, test_motion) + fused.cnn_.decision_function(test_faces)
    np.testing.assert_allclose(fused.decision_function(test_faces, test_motion), expected, rtol=1e-4, atol=1e-4)
    assert fused.weighting()["cnn_logit"] == 1.0


def test_lite0_motion_fits_saves_in_half_precision_and_scores_as_saved(tmp_path):
    """The every-method model: the pretrained backbone's log-odds plus the motion regression's. Saved with
    weights_dtype float16 its folder is about half the size, and the saved model (safetensors and its ONNX
    export alike) scores what the rounded model in memory scores."""
    faces, labels, motion = made_up(40, seed=6)
    fused = create_model("lite0-motion", member_params={"epochs": 1, "augment": False})
    fused.fit(faces, labels, groups=np.arange(40) // 4, motion=motion)
    member = fused.cnn_.members_[0]
    assert member.arch == "efficientnet-lite0" and member.init == "imagenet" and fused.cnn_weight == "validation"
    assert len(member.validation_rows_) == 8  # 2 of the 10 identities, weighed on
    test_faces, _, test_motion = made_up(6, seed=7)
    before = fused.cnn_.decision_function(test_faces)
    card = {**CARD, "estimator": {"name": "lite0-motion", "params": fused.get_params()}}
    full = save_model(fused, tmp_path / "full", card)
    round_weights(fused, "float16")
    assert 0 < np.abs(fused.cnn_.decision_function(test_faces) - before).max() < 0.05  # the backbone's, a little
    rounded = fused.decision_function(test_faces, test_motion)
    half = save_model(fused, tmp_path / "half", {**card, "weights_dtype": "float16"})
    size = {folder: (folder / "model.safetensors").stat().st_size for folder in (full, half)}
    assert 0.45 < size[half] / size[full] < 0.55
    loaded = load_model(half)
    assert loaded.card["weights_dtype"] == "float16" and loaded.card["onnx"]["file"] == "model.onnx"
    np.testing.assert_allclose(loaded.estimator.decision_function(test_faces, test_motion), rounded, atol=1e-5)
    exported = load_inference_model(half)  # on a CPU: the ONNX file, no torch
    np.testing.assert_allclose(exported.estimator.decision_function(test_faces, test_motion), rounded, atol=1e-4)


def test_a_larger_backbone_trains_by_the_same_recipe_and_is_rebuilt_from_its_card(tmp_path):
    """``archs=("efficientnet-lite1",)``: the same model with Lite1's ImageNet features; its folder names
    the backbone, so loading rebuilds Lite1 (safetensors and ONNX score alike)."""
    faces, labels, motion = made_up(24, seed=9)
    fused = create_model("lite0-motion", archs=["efficientnet-lite1"],
                         member_params={"epochs": 1, "augment": False, "input_size": 64})
    fused.fit(faces, labels, groups=np.arange(24) // 4, motion=motion)
    assert len(fused.cnn_.members_[0].net_.blocks) == 21  # Lite0 has 16
    test_faces, _, test_motion = made_up(4, seed=10)
    folder = save_model(fused, tmp_path / "lite1",
                        {**CARD, "estimator": {"name": "lite0-motion", "params": fused.get_params()}})
    loaded = load_model(folder)
    assert list(loaded.estimator.archs) == ["efficientnet-lite1"]
    expected = fused.decision_function(test_faces, test_motion)
    np.testing.assert_allclose(loaded.estimator.decision_function(test_faces, test_motion), expected, atol=1e-5)
    exported = load_inference_model(folder)
    np.testing.assert_allclose(exported.estimator.decision_function(test_faces, test_motion), expected, atol=1e-4)


def test_weighed_on_validation_the_experts_are_judged_on_identities_the_cnn_never_saw():
    faces, labels, motion = made_up(240, seed=8)
    groups = np.arange(240) // 6
    params = {"init": "scratch", "epochs": 1, "input_size": 32, "augment": False}
    fused = create_model("mesonet-motion", archs=("resnet-small",), member_params=params, cnn_weight="validation")
    fused.fit(faces, labels, groups=groups, motion=motion)
    held_out = fused.cnn_.members_[0].validation_rows_
    assert len(held_out) == 48 and len(np.unique(groups[held_out])) == 8
    weights = fused.weighting()
    assert weights["residual_face"] == max(weights.values(), key=abs) > 0  # noise crops: the motion decides
    test_faces, test_labels, test_motion = made_up(100, seed=9)
    assert roc_auc_score(test_labels, fused.predict_proba(test_faces, motion=test_motion)[:, 1]) > 0.85
    without = create_model("mesonet-motion", archs=("resnet-small",), member_params={**params, "val_fraction": 0.0},
                           cnn_weight="validation")
    with pytest.raises(UnmaskError, match="identity-grouped validation split"):
        without.fit(faces, labels, groups=groups, motion=motion)
