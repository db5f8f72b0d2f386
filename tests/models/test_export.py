"""model.onnx: a torch model's per-face function exported, scored without torch within 1e-4 of it.

Data: faces cut from the astronaut portrait and from a generated video of it (with their measured
motion features), and random crops with made-up motion features for the models fitted here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("onnx")

from unmask.check import Checker, CheckSettings  # noqa: E402
from unmask.faces.crop import crop_face  # noqa: E402
from unmask.faces.mtcnn_onnx import OnnxMTCNN  # noqa: E402
from unmask.faces.motion import MOTION_FEATURES  # noqa: E402
from unmask.errors import UnmaskError  # noqa: E402
from unmask.models import create_model  # noqa: E402
from unmask.models.io import export_onnx, load_inference_model, load_model, save_model  # noqa: E402
from unmask.models.onnx_model import ONNX_FILE, OnnxModel  # noqa: E402

TOLERANCE = 1e-4

CARD = {"title": "fusion", "estimator": {"name": "mesonet-motion", "params": {}},
        "input": {"size": 64, "margin": 0.3, "needs": ["motion"], "motion_features": list(MOTION_FEATURES),
                  "motion": {"offsets": [1, 2, 3], "size": 256, "flow": "dis-fast"}}}


@pytest.fixture(scope="module")
def default():
    """The packaged default model, both ways: from its safetensors (torch) and from its model.onnx."""
    return load_model(), load_inference_model(device="cpu")


def _astronaut_faces(size: int, margin: float) -> np.ndarray:
    """The astronaut's face as MTCNN finds it, straight and flipped, and with its box moved and grown."""
    images = [skimage_data.astronaut(), np.ascontiguousarray(skimage_data.astronaut()[:, ::-1])]
    crops = []
    for image, faces in zip(images, OnnxMTCNN(min_face_size=40).detect(images)):
        x1, y1, x2, y2 = faces[0].box
        for dx, grow in ((0, 0), (8, 0), (-6, 12)):
            crops.append(crop_face(image, (x1 + dx - grow, y1 - grow, x2 + dx + grow, y2 + grow), margin, size))
    return np.stack(crops)


def test_default_model_export_matches_torch_on_the_astronaut(default):
    torch_model, onnx_model = default
    assert isinstance(onnx_model.estimator, OnnxModel) and not isinstance(torch_model.estimator, OnnxModel)
    faces = _astronaut_faces(int(torch_model.input["size"]), float(torch_model.input["margin"]))
    motion = np.random.default_rng(0).normal(0, 1, (len(faces), len(MOTION_FEATURES))).astype(np.float32)
    motion[1, :4] = np.nan  # no later frame for some features
    np.testing.assert_allclose(onnx_model.estimator.decision_function(faces, motion),
                               torch_model.estimator.decision_function(faces, motion), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(onnx_model.fake_probability(faces, motion), torch_model.fake_probability(faces, motion),
                               rtol=0, atol=TOLERANCE)


def test_default_model_export_matches_torch_on_a_video(default, face_video):
    torch_model, onnx_model = default
    faces = Checker(onnx_model, CheckSettings(device="cpu")).faces.run(face_video, [0, 60, 120, 199]).faces
    crops, motion = np.stack([f.crop for f in faces]), np.stack([f.motion for f in faces])
    assert len(faces) == 4 and np.isnan(motion[-1]).any()  # the last frame has no later frames
    np.testing.assert_allclose(onnx_model.fake_probability(crops, motion), torch_model.fake_probability(crops, motion),
                               rtol=0, atol=TOLERANCE)


def _made_up(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    motion = rng.normal(0, 1, (count, len(MOTION_FEATURES))).astype(np.float32)
    motion[:, 0] += 2.0 * labels
    return rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8), labels, motion


@pytest.mark.parametrize("archs", [("meso4",), ()], ids=["cnn+motion", "motion-only"])
def test_save_model_writes_the_export_and_check_loads_it(tmp_path, archs):
    faces, labels, motion = _made_up(40, seed=0)
    fitted = create_model("mesonet-motion", archs=archs).fit(faces, labels, motion=motion)
    folder = save_model(fitted, tmp_path / "m", {**CARD, "estimator": {"name": "mesonet-motion",
                                                                       "params": {"archs": list(archs)}}})
    card = json.loads((folder / "card.json").read_text())
    assert card["onnx"]["file"] == ONNX_FILE and (folder / ONNX_FILE).is_file()
    assert card["onnx"]["inputs"] == (["faces", "motion"] if archs else ["motion"])
    lean = load_inference_model(folder, "cpu")
    assert isinstance(lean.estimator, OnnxModel)
    np.testing.assert_allclose(lean.fake_probability(faces, motion), load_model(folder).fake_probability(faces, motion),
                               rtol=0, atol=TOLERANCE)
    with pytest.raises(UnmaskError, match="needs motion features"):
        lean.fake_probability(faces)
    assert not isinstance(load_inference_model(folder, "cuda").estimator, OnnxModel)  # GPUs run torch


def test_a_model_that_does_not_export_is_checked_with_torch(tmp_path, monkeypatch):
    faces, labels, motion = _made_up(40, seed=1)
    fitted = create_model("mesonet-motion").fit(faces, labels, motion=motion)
    folder = save_model(fitted, tmp_path / "m", CARD)
    assert (folder / ONNX_FILE).is_file()

    def fails(estimator, out_dir, weights):
        raise RuntimeError("Exporting the operator 'aten::made_up' is not supported")

    monkeypatch.setattr("unmask.models.export.write_onnx", fails)
    with pytest.warns(UserWarning, match="no model.onnx .*aten::made_up"):
        save_model(fitted, folder, CARD)  # saved again over the exported one: the old export must go
    assert not (folder / ONNX_FILE).exists() and "onnx" not in json.loads((folder / "card.json").read_text())
    assert not isinstance(load_inference_model(folder, "cpu").estimator, OnnxModel)
    monkeypatch.undo()

    export_onnx(folder)  # what tools/export_onnx.py runs
    assert isinstance(load_inference_model(folder, "cpu").estimator, OnnxModel)
    exported = (folder / ONNX_FILE).read_bytes()
    (folder / ONNX_FILE).write_bytes(exported + b"\0")  # not the export the card names: torch scores it
    assert not isinstance(load_inference_model(folder, "cpu").estimator, OnnxModel)
    (folder / ONNX_FILE).write_bytes(exported)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])  # nor weights it was not exported from: torch reads them
    with pytest.raises(UnmaskError, match="model.safetensors cannot be read"):
        load_inference_model(folder, "cpu")


def test_only_torch_models_export(tmp_path):
    faces, labels, _ = _made_up(16, seed=2)
    folder = save_model(create_model("logreg", features="spectrum").fit(faces, labels), tmp_path / "lr",
                        {**CARD, "estimator": {"name": "logreg", "params": {}}, "input": {"size": 64, "margin": 0.0}})
    with pytest.raises(UnmaskError, match="only torch models"):
        export_onnx(folder)


def test_the_shipped_nets_and_default_are_exported_and_packaged():
    from unmask.faces.mtcnn_onnx import NETS, weights_dir
    from unmask.models.io import default_model_dir

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"faces/weights/*"' in pyproject and '"models/default/*"' in pyproject
    assert all((Path(str(weights_dir())) / f"{net}.onnx").is_file() for net in NETS)
    assert json.loads((default_model_dir() / "card.json").read_text())["onnx"]["file"] == ONNX_FILE
