"""The mean-logit ensemble: exactly the mean of its members, one model folder on disk, members
that take other crops refused, and every member trained when it is fitted."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from unmask.errors import UnmaskError
from unmask.models import create_model
from unmask.models.ensemble import LogitEnsemble
from unmask.models.io import load_model, save_model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """The astronaut's face (public domain) at 256 px, brightened and darkened, plus two noise images."""
    face = cv2.resize(data.astronaut()[40:200, 160:290], (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    noise = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3))
    return np.clip(np.stack([face, face * 1.2, face * 0.7, *noise]), 0, 255).astype(np.uint8)


def released(name: str, faces: np.ndarray):
    return create_model(name, init="released", epochs=0, device="cpu").fit(faces[:2], np.array([0, 1]))


@pytest.fixture(scope="module")
def ensemble(faces) -> LogitEnsemble:
    return create_model("mesonet-ensemble", device="cpu").fit(faces[:2], np.array([0, 1]))


def test_scores_the_mean_logit_of_the_released_nets(ensemble, faces):
    members = [released(name, faces).decision_function(faces) for name in ("mesoinception4", "meso4")]
    assert np.array_equal(ensemble.decision_function(faces), np.mean(members, axis=0).astype(np.float32))
    assert not np.allclose(members[0], members[1])  # two different opinions were averaged
    probabilities = ensemble.predict_proba(faces)
    assert np.allclose(probabilities[:, 1], 1 / (1 + np.exp(-ensemble.decision_function(faces))))
    assert np.array_equal(ensemble.predict(faces), (probabilities[:, 1] > 0.5).astype(int))
    maps = ensemble.gradcam(faces[:2])
    assert maps.shape == (2, 256, 256) and maps.min() >= 0 and maps.max() <= 1


def test_saves_and_reloads_as_one_model_folder(ensemble, faces, tmp_path):
    card = {"estimator": {"name": "mesonet-ensemble", "params": ensemble.get_params(deep=False)},
            "input": {"size": 256, "margin": 0.3}}
    save_model(ensemble, tmp_path, card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "model.onnx", "model.safetensors"]
    assert {name.split(".")[0] for name in ensemble.weights()} == {"0", "1"}
    loaded = load_model(tmp_path)
    assert isinstance(loaded.estimator, LogitEnsemble)
    assert np.array_equal(loaded.estimator.predict_proba(faces), ensemble.predict_proba(faces))
    with pytest.raises(UnmaskError, match="hold 2 networks, not the 3"):
        LogitEnsemble(("meso4", "meso4", "meso4")).load_weights(ensemble.weights())


def test_refuses_members_that_take_other_crops(faces):
    with pytest.raises(UnmaskError, match="must take the same crops"):
        LogitEnsemble(("meso4", "resnet-small")).fit(faces[:2], np.array([0, 1]))
    mixed = LogitEnsemble(("meso4", "resnet-small"), {"input_size": 256})
    assert mixed.preprocessing()["normalisation"] == [None, {"mean": [0.5] * 3, "std": [0.25] * 3}]


def test_fitting_trains_every_member(faces):
    labels = np.array([0, 1, 0, 1, 0])
    ensemble = create_model("mesonet-ensemble", epochs=1, batch_size=5, val_fraction=0, augment=False,
                            device="cpu").fit(faces, labels)
    for member, name in zip(ensemble.members_, ("mesoinception4", "meso4")):
        assert len(member.history_) == 1 and member.history_[0]["faces"] == 5
        start = released(name, faces).weights()
        assert any(not torch.equal(tensor, start[key]) for key, tensor in member.weights().items())
