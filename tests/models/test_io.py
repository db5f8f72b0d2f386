"""Model folders are data, never code: attacks and damaged files are refused in one line."""
from __future__ import annotations

import functools
import json
import operator
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from unmask.cli import main
from unmask.errors import UnmaskError
from unmask.models import create_model
from unmask.models.io import SKOPS_ALLOWED_TYPES, load_model, save_model


def _faces(n: int = 16, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.array([0, 1] * (n // 2))


CARD = {"title": "test", "input": {"size": 32, "margin": 0.0}, "threshold": 0.5, "aggregate": "mean",
        "training": {"description": "random faces"}}


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory) -> Path:
    X, y = _faces()
    estimator = create_model("logreg", features="spectrum").fit(X, y)
    card = {**CARD, "estimator": {"name": "logreg", "params": {}}}
    return save_model(estimator, tmp_path_factory.mktemp("models") / "logreg", card)


def _marker_payload(marker: Path) -> dict[str, object]:
    """Estimators that, if ever constructed and used, would run code (each touches ``marker``)."""
    command = f"touch {marker}"
    return {
        "eval via numpy.full_like": Pipeline([
            ("bytes", FunctionTransformer(np.full_like, kw_args={"fill_value": f"__import__('os').system('{command}')"})),
            ("run", FunctionTransformer(eval))]),
        "exec": FunctionTransformer(exec),
        "os.system": FunctionTransformer(os.system),
        "getattr": FunctionTransformer(getattr),
        "__import__": FunctionTransformer(__import__),
        "functools.partial": FunctionTransformer(functools.partial(os.system, command)),
        "operator.attrgetter": FunctionTransformer(operator.attrgetter("system")),
    }


def _attack_folder(good: Path, folder: Path, estimator, card_lists_types: bool) -> Path:
    shutil.copytree(good, folder)
    data = skops.io.dumps(estimator)
    (folder / "model.skops").write_bytes(data)
    if card_lists_types:  # the attacker also edits the card to declare what the file holds
        card = json.loads((folder / "card.json").read_text())
        card["skops_types"] = skops.io.get_untrusted_types(data=data)
        (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("card_lists_types", [False, True], ids=["card-untouched", "card-edited"])
def test_code_in_a_skops_file_is_refused_before_anything_is_built(sklearn_model, tmp_path, monkeypatch,
                                                                  card_lists_types):
    marker = tmp_path / "pwned"
    built = []
    monkeypatch.setattr(skops.io, "load", lambda *a, **k: built.append(a))  # nothing may get this far
    for name, estimator in _marker_payload(marker).items():
        folder = _attack_folder(sklearn_model, tmp_path / name.replace(" ", "-"), estimator, card_lists_types)
        with pytest.raises(UnmaskError, match="refused") as refused:
            load_model(folder)
        assert "\n" not in str(refused.value)
    assert built == [] and not marker.exists()


def test_check_refuses_an_attack_folder_in_one_line(sklearn_model, tmp_path, face_video, capsys):
    marker = tmp_path / "pwned"
    estimator = _marker_payload(marker)["eval via numpy.full_like"]
    folder = _attack_folder(sklearn_model, tmp_path / "shared-model", estimator, card_lists_types=True)
    assert main(["check", str(face_video), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "builtins.eval" in err
    assert not marker.exists()


def test_our_own_models_load_and_record_their_types(sklearn_model):
    card = json.loads((sklearn_model / "card.json").read_text())
    assert set(card["skops_types"]) <= SKOPS_ALLOWED_TYPES
    X, _ = _faces(4)
    assert load_model(sklearn_model).fake_probability(X).shape == (4,)


def test_a_model_with_an_unreviewed_type_is_not_saved(tmp_path):
    X, y = _faces()
    estimator = Pipeline([("odd", FunctionTransformer(np.copy)), ("lr", create_model("logreg", features="pixels-small"))])
    with pytest.raises(UnmaskError, match="numpy.copy"):
        save_model(estimator.fit(X, y), tmp_path / "m", {**CARD, "estimator": {"name": "x"}})
    assert not (tmp_path / "m" / "model.skops").exists()


def _damaged(released_model: Path, sklearn_model: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Model folders broken as they are in the wild: (folder, words the one-line error must hold)."""
    cases = {}

    def copy(name: str, source: Path) -> Path:
        target = folder / name
        shutil.copytree(source, target)
        return target

    target = copy("garbage-safetensors", released_model)
    (target / "model.safetensors").write_bytes(os.urandom(5000))
    cases["garbage-safetensors"] = (target, "model.safetensors")
    target = copy("pickle-safetensors", released_model)
    (target / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    cases["pickle-safetensors"] = (target, "model.safetensors")
    target = copy("truncated-safetensors", released_model)
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated-safetensors"] = (target, "model.safetensors")
    target = copy("card-without-kind", released_model)
    card = json.loads((target / "card.json").read_text())
    del card["kind"]
    (target / "card.json").write_text(json.dumps(card))
    cases["card-without-kind"] = (target, "kind")
    target = copy("card-is-a-list", released_model)
    (target / "card.json").write_text("[1, 2, 3]")
    cases["card-is-a-list"] = (target, "not a JSON object")
    target = copy("card-escapes-folder", released_model)
    card = json.loads((target / "card.json").read_text())
    card["file"] = "../../model.safetensors"
    (target / "card.json").write_text(json.dumps(card))
    cases["card-escapes-folder"] = (target, "file")
    target = copy("skops-is-a-pickle", sklearn_model)
    (target / "model.skops").write_bytes(pickle.dumps(create_model("logreg", features="spectrum")))
    cases["skops-is-a-pickle"] = (target, "model.skops")
    target = copy("card-not-utf8", released_model)
    (target / "card.json").write_bytes(b"\xff\xfe{\x00")
    cases["card-not-utf8"] = (target, "card.json")
    return cases


def test_a_damaged_model_folder_is_one_line_and_exit_2(released_model, sklearn_model, tmp_path, face_video):
    for name, (folder, words) in _damaged(released_model, sklearn_model, tmp_path).items():
        run = subprocess.run([sys.executable, "-m", "unmask", "check", str(face_video), "--model", str(folder),
                              "--frames", "2"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, (name, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, (name, run.stderr)
        assert words in run.stderr and str(folder) in run.stderr, (name, run.stderr)
