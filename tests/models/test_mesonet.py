"""The PyTorch MesoNet port against outputs recorded from the authors' original Keras models
(tools/record_mesonet_reference.py): same numbers, plus the basics a detector needs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.transform import resize

from unmask.models.nets.mesonet import INPUT_SIZE, Meso4, MesoInception4, load_released

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "mesonet_reference.json").read_text())
RECIPE = FIXTURE["recipe"]
SHARED_MESONET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pretrained" / "mesonet"
NAMES = ["meso4", "mesoinception4"]
P_TOL = 1e-4


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _astronaut() -> np.ndarray:
    top, bottom, left, right = RECIPE["astronaut"]["box_top_bottom_left_right"]
    face = data.astronaut()[top:bottom, left:right]
    return resize(face, (INPUT_SIZE, INPUT_SIZE), order=1, anti_aliasing=False).astype(np.float32)[None]


def _random() -> np.ndarray:
    return np.random.default_rng(0).random((4, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)


def _reference_images() -> np.ndarray:
    """Read as the authors' Keras generator did: PIL, RGB, nearest resize to 256, times 1/255."""
    folder = SHARED_MESONET / "reference-images"
    if not folder.is_dir():
        pytest.skip(f"MesoNet reference images are research-only data, not in the repo; absent at {folder}")
    recipe = RECIPE["reference_images"]
    arrays = [np.asarray(Image.open(folder / f).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.NEAREST))
              for f in recipe["files"]]
    digests = [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
    assert digests == recipe["sha256_uint8_rgb"], "JPEG decode/resize differs from the Keras run; outputs not comparable"
    return np.stack(arrays).astype(np.float32) * np.float32(1 / 255)


INPUTS = {"astronaut": _astronaut, "random": _random, "reference_images": _reference_images}


@pytest.fixture(scope="module", params=NAMES)
def released(request) -> tuple[str, torch.nn.Module]:
    return request.param, load_released(request.param)


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_matches_keras_reference(released, inputs):
    name, model = released
    expected = FIXTURE["outputs"][name][inputs]
    with torch.no_grad():
        logit = model(_nchw(INPUTS[inputs]())).double().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), expected["p_real"], rtol=0, atol=P_TOL)
    # P(real) saturates (MesoInception gives 1.0 on noise), so the logit is checked too.
    np.testing.assert_allclose(logit, expected["logit"], rtol=1e-5, atol=1e-4)


def test_reference_images_are_classified_correctly(released):
    """A sanity check on the weights themselves: the authors' own examples, df < 0.5 < real."""
    name, model = released
    with torch.no_grad():
        p_real = torch.sigmoid(model(_nchw(_reference_images()))).numpy()
    labels = [f.split("/")[0] for f in RECIPE["reference_images"]["files"]]
    assert [("real" if p > 0.5 else "df") for p in p_real] == labels, (name, p_real)


@pytest.mark.parametrize("architecture", [Meso4, MesoInception4])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(architecture, batch):
    out = architecture().eval()(torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE))
    assert out.shape == (batch,) and out.dtype == torch.float32


def test_eval_is_deterministic(released):
    """Eval mode must switch dropout off and use the stored batch-norm statistics."""
    _, model = released
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[:1])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[:1])


def test_released_weights_are_finetunable(released):
    """Gradients reach every parameter and one SGD step lowers the loss."""
    name, _ = released
    model = load_released(name)  # a fresh copy: this test changes the weights
    x, target = _nchw(_random()[:2]), torch.zeros(2)  # noise labelled fake: far from the prediction
    loss_fn = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss = loss_fn(model(x), target)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    optimizer.step()
    with torch.no_grad():
        assert float(loss_fn(model(x), target)) < float(loss)


def test_load_released_rejects_unknown_name():
    with pytest.raises(ValueError, match="meso4"):
        load_released("meso5")
