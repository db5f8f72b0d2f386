"""Every model by name, and a memory check before fitting one.

``create_model("rf", features="pixels-small")`` returns an unfitted scikit-learn
``Pipeline`` whose first step turns uint8 face crops into features, so one object goes
from faces to ``predict_proba`` and can be cross-validated or saved as a whole.

Model modules register their builders in ``MODELS`` when imported; every module in
``MODEL_MODULES`` is imported the first time ``MODELS`` is asked for a model or the list, so all
models are always listed (scikit-learn ones in ``unmask.models.classical``, torch ones in
``unmask.models.cnn``, ``unmask.models.ensemble`` and ``unmask.models.fusion``), while importing
this package (as ``unmask check`` does, through ``unmask.models.io``) imports neither torch nor
scikit-learn.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from unmask.errors import UnmaskError
from unmask.registry import Registry

MODEL_MODULES: tuple[str, ...] = ("unmask.models.classical", "unmask.models.cnn", "unmask.models.ensemble",
                                  "unmask.models.fusion")
"""Modules that register models when imported."""

MODELS: Registry[Any] = Registry("model", MODEL_MODULES)

FIT_MEMORY: dict[str, Callable[[int, int], int]] = {}
"""model name -> f(n_samples, n_features) giving peak bytes to fit it; see ``estimate_fit_memory``."""


def create_model(name: str, features: Any = None, **params: Any) -> Any:
    """An unfitted model: ``features`` is an extractor name or instance (None: the
    model's default); other keyword arguments go to the model's builder."""
    if features is not None:
        params["features"] = features
    return MODELS.create(name, **params)


def per_face_inputs(method: Callable[..., Any], available: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """The inputs beside the face crops (groups, keypoints, motion) that ``method`` takes, each
    made only if it is taken: reading motion features fails on a store prepared without them."""
    accepted = inspect.signature(method).parameters
    return {name: make() for name, make in available.items() if name in accepted}


def estimate_fit_memory(model_name: str, n_samples: int, n_features: int) -> int | None:
    """Peak bytes, beyond the face array itself, to extract features and fit the model.

    ``n_features`` is the feature length (``unmask.features.feature_dim``). None when the
    model has no estimate (a model that streams batches does not need one).
    """
    MODELS.builder(model_name)  # unknown names fail with the list of choices
    estimate = FIT_MEMORY.get(model_name)
    return None if estimate is None else int(estimate(n_samples, n_features))


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup v2 limit."""
    available = _meminfo_available()
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fit_memory(model_name: str, n_samples: int, n_features: int, available: int | None = None) -> int | None:
    """Raise UnmaskError if fitting would need more memory than is available.

    Returns the estimate (None if the model has none). Run it before extracting
    features, so a doomed run fails in a second rather than after an hour of swapping.
    """
    needed = estimate_fit_memory(model_name, n_samples, n_features)
    available = available_memory() if available is None else available
    if needed is not None and needed > available:
        raise UnmaskError(
            f"fitting {model_name!r} on {n_samples:,} faces x {n_features:,} features needs about "
            f"{needed / 2**30:.1f} GiB of memory but only {available / 2**30:.1f} GiB is available; "
            "use compact features (pixels-small, spectrum, spectrum+small) or fewer faces"
        )
    return needed
