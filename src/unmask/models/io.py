"""Save and load models without pickle: skops for scikit-learn pipelines, safetensors for
PyTorch nets, and beside each a JSON model card saying what it is, how it was trained and
how well it did. The card also carries what ``check`` must honour: crop size and margin,
probability calibration and the decision threshold.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from unmask import __version__
from unmask.errors import UnmaskError
from unmask.models import per_face_inputs
from unmask.motion import MOTION_FEATURES
from unmask.store import atomic_path, write_json

FORMAT = "unmask-model"
FORMAT_VERSION = 1
CARD = "card.json"
TRUSTED_PREFIXES = ("sklearn.", "unmask.", "numpy.", "scipy.", "builtins.")
"""The only types a skops file may contain for us to load it."""


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
        """Whether the model also judges motion residual features (``unmask.motion``)."""
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
    if hasattr(estimator, "weights") and hasattr(estimator, "load_weights"):
        from safetensors.torch import save_file

        card.update(kind="torch", file="model.safetensors")
        with atomic_path(out_dir / card["file"]) as tmp:
            save_file(estimator.weights(), str(tmp))
    else:
        import skops.io

        card.update(kind="sklearn", file="model.skops")
        with atomic_path(out_dir / card["file"]) as tmp:
            skops.io.dump(estimator, tmp)
    write_json(out_dir / CARD, card)
    return out_dir


def load_model(path: Path | None = None) -> LoadedModel:
    """Load a model folder written by ``save_model`` (None: the shipped default model)."""
    path = Path(path) if path is not None else default_model_dir()
    card_path = path / CARD
    if not card_path.is_file():
        raise UnmaskError(f"{path} is not a model folder (no {CARD}); make one with `unmask train`")
    try:
        card = json.loads(card_path.read_text())
    except ValueError as err:
        raise UnmaskError(f"{card_path} is not valid JSON: {err}") from None
    if card.get("format") != FORMAT or card.get("format_version") != FORMAT_VERSION:
        raise UnmaskError(f"{path}: model format {card.get('format')} v{card.get('format_version')} is not "
                          f"{FORMAT} v{FORMAT_VERSION}; retrain it with this version of unmask")
    needs = card.get("input", {}).get("needs", ())
    if "motion" in needs and card["input"].get("motion_features") != list(MOTION_FEATURES):
        raise UnmaskError(f"{path} judges another set of motion features than this version of unmask measures; "
                          "retrain it on faces prepared with --motion")
    estimator = _load_torch(path, card) if card["kind"] == "torch" else _load_sklearn(path, card)
    return LoadedModel(estimator, card, path)


def _load_torch(path: Path, card: dict):
    from safetensors.torch import load_file

    from unmask.models import create_model

    estimator = create_model(card["estimator"]["name"]).set_params(**card["estimator"]["params"])
    estimator.load_weights(load_file(str(path / card["file"])))
    return estimator


def _load_sklearn(path: Path, card: dict):
    import sklearn
    import skops.io

    saved = card.get("versions", {}).get("scikit-learn", "")
    if saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        raise UnmaskError(f"{path} was saved with scikit-learn {saved}, this is {sklearn.__version__}; "
                          "retrain it or install the same scikit-learn version")
    file = path / card["file"]
    untrusted = skops.io.get_untrusted_types(file=file)
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise UnmaskError(f"{file} contains types unmask does not trust: {', '.join(foreign)}")
    return skops.io.load(file, trusted=untrusted)


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

