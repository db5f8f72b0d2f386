"""Mean-logit ensembles of CNN detectors.

Why: the two released MesoNets misjudge different faces. Averaging their logits of P(fake) needs
no training and, in identity-grouped cross-validation on the FF++ sample, scored above either
net alone (``benchmarks/bench_cnn.py``), for the price of running both.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from unmask.errors import UnmaskError
from unmask.models import MODELS
from unmask.models.cnn import LogitClassifierMixin, TorchFaceClassifier, images_only

CROP_KEYS = ("input_size", "resize", "colour", "crop_margin")
"""What members must agree on: the crops they are given."""


class LogitEnsemble(LogitClassifierMixin, BaseEstimator):
    """CNN detectors that take the same crops, judged together by the mean of their logits.

    Parameters
    ----------
    archs : one member per architecture name (``unmask.models.architectures.ARCHITECTURES``); all must
        take the same input size and crop margin.
    member_params : ``TorchFaceClassifier`` parameters every member gets (init, epochs, lr, ...).
    seed : member ``i`` is seeded ``seed + i``.

    Fitted attributes: ``members_`` (fitted ``TorchFaceClassifier``), ``net_`` (their networks in
    one ``nn.ModuleList``, so ``net_.to(device)`` moves them all), ``classes_``.
    """

    def __init__(self, archs: Iterable[str] = ("mesoinception4", "meso4"), member_params: dict | None = None,
                 seed: int = 42):
        self.archs = archs
        self.member_params = member_params
        self.seed = seed

    def _members(self) -> list[TorchFaceClassifier]:
        archs = list(self.archs)
        if not archs:
            raise UnmaskError("an ensemble needs at least one member architecture")
        members = [TorchFaceClassifier(arch=arch, seed=self.seed + i, **(self.member_params or {}))
                   for i, arch in enumerate(archs)]
        crops = {tuple(member.preprocessing()[key] for key in CROP_KEYS) for member in members}
        if len(crops) > 1:
            raise UnmaskError(f"ensemble members {', '.join(archs)} must take the same crops "
                              "(input size and crop margin); set member_params input_size")
        return members

    def fit(self, X: np.ndarray, y: np.ndarray, groups: Iterable[Any] | None = None,
            keypoints: np.ndarray | None = None, methods: Iterable[str] | None = None) -> LogitEnsemble:
        """Fit every member on the same faces (see ``TorchFaceClassifier.fit``)."""
        groups = None if groups is None else list(groups)
        methods = None if methods is None else list(methods)
        return self._adopt([member.fit(X, y, groups=groups, keypoints=keypoints, methods=methods)
                            for member in self._members()])

    def _adopt(self, members: list[TorchFaceClassifier]) -> LogitEnsemble:
        self.members_ = members
        self.net_ = nn.ModuleList([member.net_ for member in members])
        self.classes_ = np.array([0, 1])
        return self

    def preprocessing(self) -> dict[str, Any]:
        """How faces must be cut and fed: the members' shared crops; each member scales them its own way."""
        conventions = [member.preprocessing() for member in self._members()]
        if all(convention == conventions[0] for convention in conventions):
            return conventions[0]
        return {**conventions[0], "scale": "per member", "normalisation": [c["normalisation"] for c in conventions]}

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Mean over members of the logit of P(fake), (N,) float32."""
        check_is_fitted(self, "members_")
        return np.mean([member.decision_function(X) for member in self.members_], axis=0).astype(np.float32)

    def gradcam(self, X: np.ndarray) -> np.ndarray:
        """Mean of the members' Grad-CAM maps (each in [0, 1]): (N, H, W) float32."""
        check_is_fitted(self, "members_")
        return np.mean([member.gradcam(X) for member in self.members_], axis=0).astype(np.float32)

    def weights(self) -> dict[str, torch.Tensor]:
        """Every member's state, its names prefixed with the member's position ("0.", "1.", ...)."""
        check_is_fitted(self, "members_")
        return {f"{i}.{name}": tensor for i, member in enumerate(self.members_)
                for name, tensor in member.weights().items()}

    def load_weights(self, state: dict[str, torch.Tensor]) -> LogitEnsemble:
        """Make this ensemble the one ``weights()`` saved, ready to predict without ``fit``."""
        members = self._members()
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in state.items():
            position, _, rest = name.partition(".")
            parts.setdefault(position, {})[rest] = tensor
        if sorted(parts) != sorted(str(i) for i in range(len(members))):
            raise UnmaskError(f"these weights hold {len(parts)} networks, not the {len(members)} of "
                              f"this ensemble ({', '.join(self.archs)})")
        return self._adopt([member.load_weights(parts[str(i)]) for i, member in enumerate(members)])


@MODELS.register("mesonet-ensemble", help="mean logit of MesoInception-4 and Meso-4, released weights "
                                          "(--param epochs=N fine-tunes both)")
def _mesonet_ensemble(features: Any = None, random_state: int = 42, **params: Any) -> LogitEnsemble:
    images_only(features)
    return LogitEnsemble(("mesoinception4", "meso4"), {"init": "released", "epochs": 0, **params}, random_state)
