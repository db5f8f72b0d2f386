"""A CNN's look at each face and the motion around it, weighed by one logistic regression.

Why: the released MesoNets judge a single frame's texture; the motion residual features
(``unmask.faces.motion``) see what frame-by-frame face synthesis does over time. In identity-grouped
cross-validation on the FF++ sample the two together scored above the CNNs alone, and at frame
level above the motion features alone (``benchmarks/bench_cnn.py``); with Meso-4 alone as the
CNN as well as with both MesoNets, at less than half the cost. The weighing is a logistic
regression on the standardised features and the CNN's logit, so it learns how far to trust each;
it is kept as a tiny torch module, so the whole model is saved as safetensors like any CNN.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from unmask.errors import UnmaskError
from unmask.models import MODELS
from unmask.models.cnn import LogitClassifierMixin, images_only
from unmask.models.ensemble import LogitEnsemble
from unmask.faces.motion import MOTION_FEATURES


class StandardisedLinear(nn.Module):
    """``(x - mean) / scale`` then one linear unit; a missing (NaN) input counts as its mean."""

    def __init__(self, inputs: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("scale", torch.ones(inputs))
        self.linear = nn.Linear(inputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.nan_to_num((x - self.mean) / self.scale, nan=0.0)
        return self.linear(z).squeeze(-1)


def _regression(inputs: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A logistic regression on standardised ``inputs`` (a missing value counts as its mean):
    (mean, scale, coefficients, intercept), the numbers ``StandardisedLinear`` holds."""
    scaler = StandardScaler().fit(inputs)  # NaN-aware: a missing feature is left out of its statistics
    regression = LogisticRegression(C=C, max_iter=10_000).fit(np.nan_to_num(scaler.transform(inputs), nan=0.0), y)
    return scaler.mean_, scaler.scale_, regression.coef_.ravel(), float(regression.intercept_[0])


class MotionFusion(LogitClassifierMixin, BaseEstimator):
    """Logistic regression over the motion residual features and a CNN ensemble's logit.

    Parameters
    ----------
    archs, member_params, seed : the CNN part, a ``LogitEnsemble`` (by default the released
        Meso-4 as it is; ``("mesoinception4", "meso4")`` for both MesoNets); no archs: the
        motion features alone.
    C : inverse L2 strength of the logistic regression (on standardised inputs).
    cnn_weight : None: the regression weighs the CNN's logit with the motion features. A number: the
        regression is fitted on the motion features alone and the CNN's logit is added with this weight
        (log-odds of two experts added). Why: a CNN fine-tuned on the same faces is overconfident on
        them, so a regression fitted there would trust it too much; and faces without motion (photos
        in training) then only train the CNN. "validation": both experts weighed by a regression on the
        faces the (single) CNN held out for its identity-grouped validation.

    ``fit`` and ``predict_proba`` take ``motion``: (N, len(MOTION_FEATURES)) from a store
    prepared with ``--motion`` or from ``unmask check``, which reads the neighbouring frames.

    Fitted attributes: ``cnn_`` (the fitted ensemble), ``head_`` (``StandardisedLinear``),
    ``net_`` (both, so ``net_.to(device)`` moves them), ``classes_``.
    """

    def __init__(self, archs: Iterable[str] = ("meso4",), member_params: dict | None = None,
                 C: float = 10.0, seed: int = 42, cnn_weight: float | None = None):
        self.archs = archs
        self.member_params = member_params
        self.C = C
        self.cnn_weight = cnn_weight
        self.seed = seed

    def _ensemble(self) -> LogitEnsemble | None:
        if not list(self.archs):
            return None
        return LogitEnsemble(self.archs, {"init": "released", "epochs": 0, **(self.member_params or {})}, self.seed)

    @staticmethod
    def _motion(X: np.ndarray, motion: np.ndarray | None) -> np.ndarray:
        if motion is None:
            raise UnmaskError("this model needs motion features: prepare the faces with --motion "
                              "(`unmask check` reads them from the video itself)")
        motion = np.asarray(motion, dtype=np.float32)
        if motion.shape != (len(X), len(MOTION_FEATURES)):
            raise UnmaskError(f"motion features must be (faces, {len(MOTION_FEATURES)}), not {motion.shape}")
        return motion

    def _inputs(self, X: np.ndarray, motion: np.ndarray | None) -> np.ndarray:
        motion = self._motion(X, motion)
        if self.cnn_ is None:
            return motion
        return np.column_stack([motion, self.cnn_.decision_function(X)])

    def fit(self, X: np.ndarray, y: np.ndarray, groups: Iterable[Any] | None = None,
            keypoints: np.ndarray | None = None, motion: np.ndarray | None = None,
            methods: Iterable[str] | None = None) -> MotionFusion:
        """Fit the CNN part (nothing to do for released nets), then the weighing on its logits."""
        motion = self._motion(X, motion)
        if np.isnan(motion).all(axis=0).any():
            raise UnmaskError("a motion feature is missing for every training face (no later frames?)")
        if self.cnn_weight == "validation" and not list(self.archs):
            raise UnmaskError('cnn_weight="validation" weighs a CNN against the motion features: give archs')
        ensemble = self._ensemble()
        self.cnn_ = None if ensemble is None else ensemble.fit(X, y, groups=groups, keypoints=keypoints,
                                                               methods=methods)
        y = np.asarray(y, dtype=int)
        has_motion = ~np.isnan(motion).all(axis=1)
        if self.cnn_ is None or self.cnn_weight is None:
            mean, scale, coef, bias = _regression(self._inputs(X, motion), y, self.C)
        elif self.cnn_weight == "validation":
            mean, scale, coef, bias = self._weighed_on_validation(X, y, motion, has_motion)
        else:  # the motion expert learns from the faces that have motion; the CNN's logit enters times cnn_weight
            mean, scale, coef, bias = _regression(motion[has_motion], y[has_motion], self.C)
            mean, scale, coef = np.r_[mean, 0.0], np.r_[scale, 1.0], np.r_[coef, float(self.cnn_weight)]
        head = StandardisedLinear(len(mean))
        with torch.no_grad():
            head.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            head.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
            head.linear.weight.copy_(torch.from_numpy(coef.astype(np.float32)[None]))
            head.linear.bias.copy_(torch.tensor([bias], dtype=torch.float32))
        return self._adopt(self.cnn_, head)

    def _weighed_on_validation(self, X: np.ndarray, y: np.ndarray, motion: np.ndarray,
                               has_motion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``cnn_weight="validation"``: the motion regression is fitted on the faces the CNN trained on, then
        both experts' logits are weighed by a second regression on the faces the CNN held out (its
        identity-grouped validation split), where neither expert has seen the answers."""
        members = self.cnn_.members_
        held_out = np.zeros(len(y), dtype=bool)
        if len(members) == 1:
            held_out[members[0].validation_rows_] = True
        fit, judge = ~held_out & has_motion, held_out & has_motion
        if len(members) != 1 or len(np.unique(y[judge])) < 2 or len(np.unique(y[fit])) < 2:
            raise UnmaskError('cnn_weight="validation" needs one CNN with an identity-grouped validation split '
                              "(val_fraction > 0 and groups) holding faces of both classes with motion features")
        mean, scale, coef, bias = _regression(motion[fit], y[fit], self.C)
        motion_logit = np.nan_to_num((motion[judge] - mean) / scale, nan=0.0) @ coef + bias
        experts = np.column_stack([motion_logit, self.cnn_.decision_function(np.asarray(X[judge]))])
        stack = LogisticRegression(C=self.C, max_iter=10_000).fit(experts, y[judge])
        (motion_weight, cnn_weight), offset = stack.coef_.ravel(), float(stack.intercept_[0])
        return (np.r_[mean, 0.0], np.r_[scale, 1.0], np.r_[motion_weight * coef, cnn_weight],
                motion_weight * bias + offset)

    def _adopt(self, cnn: LogitEnsemble | None, head: StandardisedLinear) -> MotionFusion:
        self.cnn_, self.head_ = cnn, head.eval()
        self.net_ = nn.ModuleList([head] if cnn is None else [cnn.net_, head])
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        """The logit of P(fake) per face, (N,) float32."""
        check_is_fitted(self, "head_")
        inputs = torch.from_numpy(self._inputs(X, motion).astype(np.float32))
        device = next(self.head_.parameters()).device
        with torch.inference_mode():
            return self.head_(inputs.to(device)).cpu().numpy().astype(np.float32)

    def predict_proba(self, X: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        return super().predict_proba(X, motion=motion)

    def predict(self, X: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        return super().predict(X, motion=motion)

    def weighting(self) -> dict[str, float]:
        """How much each standardised input moves the logit: the regression's coefficients."""
        check_is_fitted(self, "head_")
        names = [*MOTION_FEATURES, *(["cnn_logit"] if self.cnn_ is not None else [])]
        return dict(zip(names, self.head_.linear.weight.detach().cpu().numpy().ravel().tolist()))

    def preprocessing(self) -> dict[str, Any]:
        """The CNN part's crops, plus the motion features this model also needs."""
        ensemble = self._ensemble()
        crops = {"crop_margin": 0.3} if ensemble is None else ensemble.preprocessing()
        return {**crops, "needs": ["motion"], "motion_features": list(MOTION_FEATURES)}

    def gradcam(self, X: np.ndarray) -> np.ndarray | None:
        """What drove the CNN part's score (the motion part has no map; None without a CNN)."""
        check_is_fitted(self, "head_")
        return None if self.cnn_ is None else self.cnn_.gradcam(X)

    def weights(self) -> dict[str, torch.Tensor]:
        check_is_fitted(self, "head_")
        head = {f"head.{name}": tensor.detach().cpu().contiguous() for name, tensor in self.head_.state_dict().items()}
        cnn = {} if self.cnn_ is None else self.cnn_.weights()
        return {**{f"cnn.{name}": tensor for name, tensor in cnn.items()}, **head}

    def load_weights(self, state: dict[str, torch.Tensor]) -> MotionFusion:
        """Make this model the one ``weights()`` saved, ready to predict without ``fit``."""
        parts: dict[str, dict[str, torch.Tensor]] = {"cnn": {}, "head": {}}
        for name, tensor in state.items():
            part, _, rest = name.partition(".")
            if part not in parts:
                raise UnmaskError(f"weight {name!r} belongs to no part of this model")
            parts[part][rest] = tensor
        ensemble = self._ensemble()
        head = StandardisedLinear(len(MOTION_FEATURES) + (ensemble is not None))
        try:
            head.load_state_dict(parts["head"])
        except RuntimeError as error:
            raise UnmaskError(f"these weights do not fit this model's weighing: {error}") from None
        return self._adopt(None if ensemble is None else ensemble.load_weights(parts["cnn"]), head)


@MODELS.register("mesonet-motion", help="the default model: released Meso-4 and motion residual features, weighed "
                                        "by a logistic regression (needs faces prepared with --motion)")
def _mesonet_motion(features: Any = None, random_state: int = 42, **params: Any) -> MotionFusion:
    images_only(features)
    return MotionFusion(seed=random_state, **params)


LITE0_RECIPE = {"init": "imagenet", "epochs": 6, "lr": 3e-4, "batch_size": 32, "augment": True,
                "val_fraction": 0.2, "patience": 6}
"""How ``lite0-motion`` fine-tunes EfficientNet-Lite0: every block, 6 epochs of augmented faces (recompression,
rescaling, blur, noise, colour, flips), balanced per method and class, the epoch kept that scores best on an
identity-grouped fifth of the training videos. Settled on one identity-grouped fold of the FF++ sample
(with and without augmentation, 6-8 epochs), then measured on every fold by ``benchmarks/bench_cnn.py
--methods``; on 2 CPU cores about 30 s an epoch for 1,300 faces."""


@MODELS.register("lite0-motion", help="EfficientNet-Lite0 from ImageNet fine-tuned on every method and a logistic "
                                      "regression over the motion features, weighed on held-out identities "
                                      "(needs --motion; --param archs='[\"efficientnet-lite1\"]': a larger backbone)")
def _lite0_motion(features: Any = None, random_state: int = 42, member_params: dict | None = None,
                  cnn_weight: float | str | None = "validation", archs: Iterable[str] = ("efficientnet-lite0",),
                  **params: Any) -> MotionFusion:
    """A look at each face by a pretrained backbone and the motion around it, as two experts: the backbone
    sees what Face2Face and FaceSwap leave in a frame, the motion what Deepfakes leave over time; how far
    to trust each is learned on the identities the backbone held out. ``archs``: a larger backbone
    (``("efficientnet-lite1",)``), trained by the same recipe."""
    images_only(features)
    return MotionFusion(archs=tuple(archs), member_params={**LITE0_RECIPE, **(member_params or {})},
                        cnn_weight=cnn_weight, seed=random_state, **params)
