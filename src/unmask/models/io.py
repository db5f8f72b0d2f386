"""Save and load models without pickle: skops for scikit-learn pipelines, safetensors for
PyTorch nets (and, where the network exports, the same function as ``model.onnx``, which
``check`` runs on a CPU without importing torch), and beside each a JSON model card saying
what it is, how it was trained and how well it did. The card also carries what ``check`` must
honour: crop size and margin, probability calibration and the decision threshold.

A model folder may come from anyone, so reading one is bounded: each file's size is checked
before a byte of it is read (``MAX_CARD_BYTES``, ``MAX_MODEL_FILE_BYTES``, the latter also for what
a skops file unpacks to), and a scikit-learn model's trees are checked before they predict
(``unmask.models.tree_check``).

torch, scikit-learn and skops are imported only by the loaders and savers that need them.
"""
from __future__ import annotations

import json
import platform
import zipfile
from dataclasses import dataclass
from io import BytesIO
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from unmask import __version__
from unmask.errors import UnmaskError, one_line
from unmask.faces.motion import MOTION_FEATURES
from unmask.models import per_face_inputs
from unmask.models.onnx_model import ONNX_FILE
from unmask.util import atomic_path, write_json

FORMAT = "unmask-model"
FORMAT_VERSION = 1
CARD = "card.json"
MAX_CARD_BYTES = 8 * 2**20
"""Largest card.json read (8 MiB): the default model's, with its metrics per fold, is 89 kB."""
MAX_MODEL_FILE_BYTES = 256 * 2**20
"""Largest model file read (256 MiB): safetensors weights, a skops file and what it unpacks to, an
ONNX export. Ten times the largest model unmask trains (EfficientNet-Lite0, about 25 MB at float32);
the default model's folder is 0.3 MB."""
SKOPS_ALLOWED_TYPES = frozenset({
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "unmask.features.Pixels",
    "unmask.features.SmallPixels",
    "unmask.features.Spectrum",
    "unmask.models.classical.ChunkedStandardScaler",
})
"""Every type beyond skops' own safe defaults that our scikit-learn models contain, by exact
name. Never a prefix: ``builtins.eval`` and ``numpy.full_like`` are as much "builtins." and
"numpy." as ``builtins.int``, and a shared model folder must never be able to run code.
A new model whose file needs another type fails to save until the type is reviewed and added."""


WEIGHT_DTYPES = ("float32", "float16")
SMALL_TENSOR = 4096
"""Tensors of at most this many values (biases, batch-norm statistics, a fusion's standardisation) stay
float32 whatever ``weights_dtype`` says: they weigh nothing in the file and much in the result."""


def _stored_dtype(tensor: Any, dtype: str) -> Any:
    """The dtype ``tensor`` is saved in under ``weights_dtype`` ``dtype``: that for a large float tensor, else its own."""
    import torch

    if dtype != "float32" and tensor.is_floating_point() and tensor.numel() > SMALL_TENSOR:
        return getattr(torch, dtype)
    return tensor.dtype


def round_weights(estimator: Any, dtype: str) -> None:
    """Round a torch model's large floating-point tensors to ``dtype`` in place (they stay float32 tensors).

    Why: float16 halves the folder of a large network (EfficientNet-Lite0: 19 MB of weights to 9.5).
    Rounding the fitted model itself, before it is calibrated, judged, exported and saved, keeps all of
    those about the same numbers; rounding twice changes nothing, so ``save_model`` may do it again."""
    if dtype not in WEIGHT_DTYPES:
        raise UnmaskError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, not {dtype!r}")
    if dtype == "float32":
        return
    if not hasattr(estimator, "weights"):
        raise UnmaskError(f"weights_dtype {dtype} is for torch models; {type(estimator).__name__} is not one")
    import torch

    with torch.no_grad():
        for tensor in estimator.net_.state_dict().values():
            tensor.copy_(tensor.to(_stored_dtype(tensor, dtype)))


def versions() -> dict[str, str]:
    import sklearn
    import torch

    return {"unmask": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__}


def default_model_dir() -> Path:
    """The detector shipped inside the package (see its card for how it was made)."""
    return Path(str(files("unmask.models") / "default"))


@dataclass
class LoadedModel:
    """A fitted estimator and its card; ``fake_probability`` applies the card's calibration."""

    estimator: Any
    card: dict
    path: Path

    @property
    def name(self) -> str:
        return self.card.get("title") or self.card["estimator"]["name"]

    @property
    def threshold(self) -> float:
        return float(self.card.get("threshold", 0.5))

    @property
    def input(self) -> dict:
        return self.card["input"]

    @property
    def needs_motion(self) -> bool:
        """Whether the model also judges motion residual features (``unmask.faces.motion``)."""
        return "motion" in self.input.get("needs", ())

    def fake_probability(self, faces: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        extra = per_face_inputs(self.estimator.predict_proba, {"motion": lambda: motion})
        raw = self.estimator.predict_proba(faces, **extra)[:, 1]
        return apply_calibration(self.card.get("calibration"), raw)

    def check_faces(self, size: int, margin: float) -> list[str]:
        """Refuse faces this model cannot take; return warnings for ones it takes less well."""
        expected_size, expected_margin = int(self.input["size"]), float(self.input["margin"])
        if self.card["kind"] == "sklearn" and size != expected_size:
            raise UnmaskError(f"model {self.path} was trained on {expected_size}px crops, these are {size}px; "
                              f"prepare the faces with --size {expected_size}")
        warnings = []
        if abs(margin - expected_margin) > 1e-6:
            warnings.append(f"model {self.path.name} was trained on crops with margin {expected_margin}, "
                            f"these have margin {margin}: scores may be off")
        return warnings


def save_model(estimator: Any, out_dir: Path, card: dict) -> Path:
    """Write the estimator (skops or safetensors) and its card into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {"format": FORMAT, "format_version": FORMAT_VERSION, **card, "versions": versions()}
    card.pop("onnx", None)  # named below only when these weights were exported
    if hasattr(estimator, "weights") and hasattr(estimator, "load_weights"):
        from safetensors.torch import save_file

        from unmask.models.export import try_write_onnx

        dtype = card.setdefault("weights_dtype", "float32")
        round_weights(estimator, dtype)
        card.update(kind="torch", file="model.safetensors")
        (out_dir / ONNX_FILE).unlink(missing_ok=True)  # an earlier model's export must never stay beside these weights
        weights = {name: tensor.to(_stored_dtype(tensor, dtype)) for name, tensor in estimator.weights().items()}
        with atomic_path(out_dir / card["file"]) as tmp:
            save_file(weights, str(tmp))
        onnx = try_write_onnx(estimator, out_dir, out_dir / card["file"])
        if onnx is not None:
            card["onnx"] = onnx
    else:
        import skops.io

        data = skops.io.dumps(estimator)
        types = sorted(skops.io.get_untrusted_types(data=data))
        unreviewed = [t for t in types if t not in SKOPS_ALLOWED_TYPES]
        if unreviewed:
            raise UnmaskError(f"this model contains types unmask does not load: {', '.join(unreviewed)}; "
                              "review them and add them to unmask.models.io.SKOPS_ALLOWED_TYPES")
        card.update(kind="sklearn", file="model.skops", skops_types=types)
        with atomic_path(out_dir / card["file"]) as tmp:
            tmp.write_bytes(data)
    write_json(out_dir / CARD, card)
    return out_dir


def load_inference_model(path: Path | None = None, device: str = "cpu") -> LoadedModel:
    """The model to check videos with: on a CPU, a torch model whose card names its ``model.onnx``
    export runs from that, without importing torch; otherwise (a GPU, scikit-learn, no export, or
    files that are not the ones the card's export entry names) ``load_model``'s estimator."""
    path, card = _read_card(path)
    onnx = card.get("onnx")
    if device == "cpu" and card["kind"] == "torch" and onnx is not None:
        file, weights = path / onnx["file"], path / card["file"]
        if file.is_file() and weights.is_file() and _exported_from(file, weights, onnx):
            from unmask.models.onnx_model import OnnxModel

            try:
                return LoadedModel(OnnxModel(path, card, torch_model=lambda: load_model(path).estimator), card, path)
            except Exception as err:  # noqa: BLE001 - whatever a damaged file makes a reader raise, one line
                raise UnmaskError(f"{file} cannot be read as an ONNX model ({type(err).__name__}: "
                                  f"{one_line(err)})") from None
    return load_model(path)


def _exported_from(export: Path, weights: Path, entry: dict) -> bool:
    """Whether ``export`` is the file the card's ``onnx`` entry names, made from these ``weights``
    (both bounded in size before they are hashed)."""
    from unmask.onnxnet import sha256

    _check_size(export)
    _check_size(weights)
    return sha256(export) == entry["sha256"] and sha256(weights) == entry["weights_sha256"]


def _check_size(file: Path, limit: int = MAX_MODEL_FILE_BYTES) -> None:
    """Refuse ``file`` when it is over ``limit`` bytes, before a byte of it is read."""
    size = file.stat().st_size
    if size > limit:
        raise UnmaskError(f"{file} is {size:,} bytes, over the limit of {_mib(limit)} for this file; "
                          "it is not a model written by unmask")


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _read_within_limit(file: Path, limit: int = MAX_MODEL_FILE_BYTES) -> bytes:
    """The file's bytes, refused unread when larger than ``limit``, and refused when reading it gives
    more than its size said (a file still growing)."""
    _check_size(file, limit)
    with file.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UnmaskError(f"{file} grew past the limit of {_mib(limit)} for this file while it was read")
    return data


def _read_card(path: Path | None) -> tuple[Path, dict]:
    """The folder (None: the shipped default model) and its checked card."""
    path = Path(path) if path is not None else default_model_dir()
    card_path = path / CARD
    if not card_path.is_file():
        raise UnmaskError(f"{path} is not a model folder (no {CARD}); make one with `unmask train`")
    data = _read_within_limit(card_path, MAX_CARD_BYTES)
    try:
        card = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UnmaskError(f"{card_path} is not valid JSON: {err}") from None
    except RecursionError:
        raise UnmaskError(f"{card_path} is nested too deeply to be a model card") from None
    _check_card(card, card_path)
    if card.get("format") != FORMAT or card.get("format_version") != FORMAT_VERSION:
        raise UnmaskError(f"{path}: model format {card.get('format')} v{card.get('format_version')} is not "
                          f"{FORMAT} v{FORMAT_VERSION}; retrain it with this version of unmask")
    if "motion" in card["input"].get("needs", ()) and card["input"].get("motion_features") != list(MOTION_FEATURES):
        raise UnmaskError(f"{path} judges another set of motion features than this version of unmask measures; "
                          "retrain it on faces prepared with --motion")
    return path, card


def load_model(path: Path | None = None) -> LoadedModel:
    """Load a model folder written by ``save_model`` (None: the shipped default model)."""
    path, card = _read_card(path)
    file = path / card["file"]
    if not file.is_file():
        raise UnmaskError(f"{file} is missing (the model card names it)")
    _check_size(file)
    load = _load_torch if card["kind"] == "torch" else _load_sklearn
    try:
        estimator = load(file, card)
    except UnmaskError as err:
        raise UnmaskError(f"{file}: {err}") from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes a reader raise, the user gets one line
        raise UnmaskError(f"{file} cannot be read as a {card['kind']} model ({type(err).__name__}: "
                          f"{one_line(err)}); it is damaged or not a model written by unmask") from None
    return LoadedModel(estimator, card, path)


def _check_card(card: Any, card_path: Path) -> None:
    """The card's shape, checked before any of it is used, so a broken card is one clear line."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UnmaskError(f"{card_path}: {what}; it is damaged or not a model card written by unmask")

    need(isinstance(card, dict), "the card is not a JSON object")
    need(card.get("kind") in ("torch", "sklearn"), f"'kind' is {card.get('kind')!r}, not 'torch' or 'sklearn'")
    need(_file_name(card.get("file")), f"'file' is {card.get('file')!r}, not a file name inside the model folder")
    estimator = card.get("estimator")
    need(isinstance(estimator, dict) and isinstance(estimator.get("name"), str)
         and isinstance(estimator.get("params", {}), dict), "'estimator' lacks a name or its params")
    model_input = card.get("input")
    need(isinstance(model_input, dict) and isinstance(model_input.get("size"), int)
         and isinstance(model_input.get("margin"), (int, float)), "'input' lacks the crop size or margin")
    need(isinstance(card.get("threshold", 0.5), (int, float)), "'threshold' is not a number")
    need(card["kind"] != "sklearn" or isinstance(card.get("skops_types"), list),
         "'skops_types' (the types its file holds) is missing; a card of an older unmask: retrain the model")
    onnx = card.get("onnx")
    need(onnx is None or (isinstance(onnx, dict) and _file_name(onnx.get("file")) and isinstance(onnx.get("sha256"), str)
                          and isinstance(onnx.get("weights_sha256"), str) and isinstance(onnx.get("inputs"), list)), "'onnx' does not name an export in the model folder")


def _file_name(file: Any) -> bool:
    return isinstance(file, str) and file == Path(file).name and file not in ("", ".", "..")


def _load_torch(file: Path, card: dict):
    from safetensors.torch import load_file

    from unmask.models import create_model

    estimator = create_model(card["estimator"]["name"]).set_params(**card["estimator"].get("params", {}))
    estimator.load_weights(load_file(str(file)))
    return estimator


def _load_sklearn(file: Path, card: dict):
    """Only the exact types of ``SKOPS_ALLOWED_TYPES`` that the card says the file holds are
    trusted; skops reads the file's schema without constructing anything to tell us which it holds.
    The zip is read once, and what it declares it unpacks to is bounded before skops unpacks any of
    it (Python's zip reader never gives more than a member declares); the trees of what skops
    builds are checked before anything predicts with them."""
    import sklearn
    import skops.io

    from unmask.models.tree_check import check_trees

    saved = card.get("versions", {}).get("scikit-learn", "")
    if saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        raise UnmaskError(f"saved with scikit-learn {saved}, this is {sklearn.__version__}; "
                          "retrain it or install the same scikit-learn version")
    data = _read_within_limit(file)
    with zipfile.ZipFile(BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_MODEL_FILE_BYTES:
        raise UnmaskError(f"refused: it unpacks to {unpacked:,} bytes, over the limit of "
                          f"{_mib(MAX_MODEL_FILE_BYTES)} for a model")
    held = skops.io.get_untrusted_types(data=data)
    refused = sorted(t for t in held if t not in SKOPS_ALLOWED_TYPES or t not in card["skops_types"])
    if refused:
        raise UnmaskError(f"refused: it holds types unmask never loads ({', '.join(refused)}); "
                          "a model file must not be able to run code")
    estimator = skops.io.loads(data, trusted=held)
    check_trees(estimator)
    return estimator


def export_onnx(folder: Path) -> Path:
    """Write ``model.onnx`` into an existing model folder and name it in its card (what
    tools/export_onnx.py runs; ``save_model`` does it for every network it saves)."""
    from unmask.models.export import write_onnx

    loaded = load_model(folder)
    if loaded.card["kind"] != "torch":
        raise UnmaskError(f"{folder} holds a scikit-learn model; only torch models are exported to ONNX")
    entry = write_onnx(loaded.estimator, loaded.path, loaded.path / loaded.card["file"])
    write_json(loaded.path / CARD, {**loaded.card, "onnx": entry})
    return loaded.path / ONNX_FILE


# ------------------------------------------------------------------ calibration
def fit_calibration(method: str, p_fake: np.ndarray, y: np.ndarray) -> dict:
    """Map raw scores to probabilities on held-out data, as CalibratedClassifierCV does with
    a prefit model: isotonic regression, or a sigmoid (Platt) on the score's log-odds.
    Stored as plain numbers in the card, so no pickle is needed to apply it."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    p_fake, y = np.asarray(p_fake, float), np.asarray(y, int)
    if len(np.unique(y)) < 2:
        raise UnmaskError("calibration needs both real and fake faces in the validation part")
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p_fake, y)
        return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6).fit(_logit(p_fake)[:, None], y)
        return {"method": "sigmoid", "a": float(platt.coef_[0, 0]), "b": float(platt.intercept_[0])}
    raise UnmaskError(f"unknown calibration {method!r}; choose isotonic or sigmoid")


def apply_calibration(calibration: dict | None, p_fake: np.ndarray) -> np.ndarray:
    p_fake = np.asarray(p_fake, dtype=np.float64)
    if not calibration:
        return p_fake
    if calibration["method"] == "isotonic":
        return np.interp(p_fake, calibration["x"], calibration["y"])
    return 1.0 / (1.0 + np.exp(-(calibration["a"] * _logit(p_fake) + calibration["b"])))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))

