"""Model folders are data, never code: attacks and damaged files are refused in one line."""
from __future__ import annotations

import functools
import hashlib
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
    monkeypatch.setattr(skops.io, "loads", lambda *a, **k: built.append(a))  # nothing may get this far
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
    card = json.loads((released_model / "card.json").read_text())
    if "onnx" in card:  # the export, where the onnx package made one (OpenCV's message ends in a newline)
        target = copy("garbage-onnx", released_model)
        garbage = os.urandom(5000)
        (target / "model.onnx").write_bytes(garbage)
        card["onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()  # the card edited to name it
        (target / "card.json").write_text(json.dumps(card))
        cases["garbage-onnx"] = (target, "model.onnx cannot be read as an ONNX model")
    return cases


def test_a_damaged_model_folder_is_one_line_and_exit_2(released_model, sklearn_model, tmp_path, face_video):
    for name, (folder, words) in _damaged(released_model, sklearn_model, tmp_path).items():
        run = subprocess.run([sys.executable, "-m", "unmask", "check", str(face_video), "--model", str(folder),
                              "--frames", "2"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, (name, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, (name, run.stderr)
        assert words in run.stderr and str(folder) in run.stderr, (name, run.stderr)


# ------------------------------------------------------------------ crafted trees (skops rebuilds node arrays as given)
TREE_MODELS = {"rf": {"n_estimators": 3}, "hgb": {"max_iter": 3, "min_samples_leaf": 2}}
"""The two tree models, small: a random forest (``sklearn.tree._tree.Tree``) and boosted trees (``TreePredictor``)."""
CRAFTED_TREES = {
    "rf": {"child out of range": ("left_child", 10**12), "feature out of range": ("feature", 10**9),
           "own child": ("left_child", 0), "threshold not a number": ("threshold", np.nan)},
    "hgb": {"child out of range": ("left", 10**9), "feature out of range": ("feature_idx", 10**9),
            "own child": ("left", 0), "threshold not a number": ("num_threshold", np.inf),
            "categorical split": ("is_categorical", 1)},
}
"""(field of the root split, value written there) per model: what crashed or hung the process before."""


@pytest.fixture(scope="module")
def tree_models(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """The tree models fitted on random 32-px faces (bright ones fake, so the trees split), and a
    face store of such faces to evaluate them on."""
    from unmask.store import Shard, StoreWriter

    folder = tmp_path_factory.mktemp("trees")
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 20)
    X = rng.integers(0, 128, (40, 32, 32, 3), dtype=np.uint8) + (y * 120)[:, None, None, None].astype(np.uint8)
    models = {name: save_model(create_model(name, features="spectrum", **params).fit(X, y), folder / name,
                               {**CARD, "estimator": {"name": name, "params": params}})
              for name, params in TREE_MODELS.items()}
    writer = StoreWriter(folder / "store", {"faces": {"size": 32, "margin": 0.0}})
    for k in range(4):
        rows = [{"video": f"v{k}.mp4", "label": k % 2, "frame": 30 * i, "confidence": 0.99} for i in range(2)]
        writer.write(Shard({"video": f"v{k}.mp4", "label": k % 2, "status": "ok", "faces": 2, "frames_read": 7},
                           rows, X[2 * k:2 * k + 2]))
    writer.commit()
    return models, folder / "store"


def _craft_root_split(good: Path, folder: Path, field: str, value) -> Path:
    """A copy of ``good`` whose first tree with a split at its root has ``field`` of that split set to
    ``value``: the node array edited inside model.skops, as an attacker would edit it."""
    import zipfile
    from io import BytesIO

    shutil.copytree(good, folder)
    data = (folder / "model.skops").read_bytes()
    with zipfile.ZipFile(BytesIO(data)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}

    def node_files(schema):
        """The .npy file of each tree's node array, in order."""
        if isinstance(schema, dict):
            if schema.get("__class__") in ("Tree", "TreePredictor"):
                yield schema["content"]["content"]["nodes"]["file"]
                return
            for child in schema.values():
                yield from node_files(child)
        elif isinstance(schema, list):
            for child in schema:
                yield from node_files(child)

    for name in node_files(json.loads(members["schema.json"])):
        nodes = np.load(BytesIO(members[name]), allow_pickle=False)
        is_split = nodes["left_child"][0] != -1 if "left_child" in nodes.dtype.names else not nodes["is_leaf"][0]
        if is_split:
            nodes[field][0] = value
            buffer = BytesIO()
            np.save(buffer, nodes, allow_pickle=False)
            members[name] = buffer.getvalue()
            break
    else:
        raise AssertionError(f"{good} has no tree with a split at its root")
    with zipfile.ZipFile(folder / "model.skops", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return folder


DRIVER = """
import contextlib, io, json, sys
from unmask.cli import main
for line in sys.stdin:
    argv, err = json.loads(line), io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    print(json.dumps([argv[0], argv, code, err.getvalue()]), flush=True)
"""
"""Runs `unmask` commands one by one in a single process (a crash ends it: the test sees which
command it was on without paying for a process per command)."""


def test_crafted_trees_are_refused_in_one_line_by_check_and_evaluate(tree_models, tmp_path, face_video):
    models, store = tree_models
    commands = []
    for name, cases in CRAFTED_TREES.items():
        for case, (field, value) in cases.items():
            folder = _craft_root_split(models[name], tmp_path / f"{name}-{case.replace(' ', '-')}", field, value)
            commands += [["check", str(face_video), "--model", str(folder), "--frames", "2"],
                         ["evaluate", str(folder), str(store)]]
    healthy = [["evaluate", str(models[name]), str(store)] for name in models]  # the untouched models work
    run = subprocess.run([sys.executable, "-c", DRIVER], input="\n".join(json.dumps(c) for c in healthy + commands),
                         capture_output=True, text=True, timeout=300)
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    everything = healthy + commands
    assert run.returncode == 0 and len(answers) == len(everything), (
        f"the process died (code {run.returncode}) after {len(answers)} commands, on {everything[len(answers)]}")
    for command, argv, code, err in answers[:len(healthy)]:
        assert code == 0, (argv, err)
    for command, argv, code, err in answers[len(healthy):]:
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith(f"unmask {command}: error: ") and "model.skops: refused: " in err, (argv, err)


def test_a_tree_model_holds_up_after_the_checks(tree_models, face_video, capsys):
    models, _ = tree_models
    for folder in models.values():
        assert main(["check", str(face_video), "--model", str(folder), "--frames", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["verdict"] in ("FAKE", "REAL")


# ------------------------------------------------------------------ size limits, checked before reading
def _declared_size(data: bytes, member: str, size: int) -> bytes:
    """The zip ``data`` with ``member``'s uncompressed size rewritten to ``size`` in its local and
    central headers (what a zip bomb declares; Python's reader never gives more than that)."""
    import struct
    import zipfile
    from io import BytesIO

    data = bytearray(data)
    with zipfile.ZipFile(BytesIO(bytes(data))) as archive:
        info, at = archive.getinfo(member), archive.start_dir
    struct.pack_into("<I", data, info.header_offset + 22, size)
    while data[at:at + 4] == b"PK\x01\x02":
        name_length, extra, comment = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46:at + 46 + name_length].decode() == member:
            struct.pack_into("<I", data, at + 24, size)
        at += 46 + name_length + extra + comment
    return bytes(data)


def _oversized(released_model: Path, sklearn_model: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Model folders whose files are too large or too deep to read: (folder, words the error holds)."""
    import zipfile
    from io import BytesIO

    card_limit, file_limit = 8 * 2**20, 256 * 2**20  # as the README's "Safety and limits" states them

    def copy(name: str, source: Path) -> Path:
        shutil.copytree(source, folder / name)
        return folder / name

    cases = {}
    target = copy("card-too-large", released_model)
    card = (target / "card.json").read_text()
    (target / "card.json").write_text(card[:-1] + " " * card_limit + "}")  # valid JSON, mostly blanks
    size = (target / "card.json").stat().st_size
    cases["card-too-large"] = (target, f"card.json is {size:,} bytes, over the limit of 8 MiB")
    target = copy("card-nested-deep", released_model)
    card = json.loads((target / "card.json").read_text())
    (target / "card.json").write_text(json.dumps(card)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    cases["card-nested-deep"] = (target, "card.json is nested too deeply")
    for name in ("model.safetensors", "model.onnx"):  # sparse files: large on paper, no disk used
        target = copy(f"{name}-too-large", released_model)
        with (target / name).open("r+b") as handle:
            handle.truncate(file_limit + 1)
        cases[f"{name}-too-large"] = (target, f"{name} is 268,435,457 bytes, over the limit of 256 MiB")
    target = copy("skops-member-declares-3-GiB", sklearn_model)
    data = (target / "model.skops").read_bytes()
    with zipfile.ZipFile(BytesIO(data)) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size).filename
    (target / "model.skops").write_bytes(_declared_size(data, largest, 3 * 2**30))
    with zipfile.ZipFile(target / "model.skops") as archive:
        declared = sum(info.file_size for info in archive.infolist())
    cases["skops-member-declares-3-GiB"] = (target, f"refused: it unpacks to {declared:,} bytes, over the limit")
    return cases


def test_model_files_over_the_limits_are_refused_unread_in_one_line(released_model, sklearn_model, tmp_path,
                                                                    face_video, capsys):
    for name, (folder, words) in _oversized(released_model, sklearn_model, tmp_path).items():
        assert main(["check", str(face_video), "--model", str(folder), "--frames", "2"]) == 2, name
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and words in err, (name, err)


def test_a_skops_member_longer_than_it_declares_is_never_read_past_that(sklearn_model, tmp_path, face_video, capsys):
    import zipfile
    from io import BytesIO

    folder = tmp_path / "lying-member"
    shutil.copytree(sklearn_model, folder)
    data = (folder / "model.skops").read_bytes()
    with zipfile.ZipFile(BytesIO(data)) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    (folder / "model.skops").write_bytes(_declared_size(data, largest.filename, 16))
    assert main(["check", str(face_video), "--model", str(folder), "--frames", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.skops cannot be read" in err, err
