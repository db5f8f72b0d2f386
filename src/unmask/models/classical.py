"""Scikit-learn models: the study's three, and gradient boosting on compact features.

Every builder returns ``Pipeline([("features", ...), ..., ("classifier", ...)])`` that
takes uint8 face crops. Memory is the limit with the study's 307,200-value pixel
vectors, so the pipelines are built never to hold a float64 copy that sklearn does
not force: features come out float32 (trees work in float32 anyway), scaling is done
in place, chunk by chunk. ``FIT_MEMORY`` states what is left, per model.
"""
from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from unmask.features import FEATURES, SPILL_BYTES
from unmask.models import FIT_MEMORY, MODELS

PRESETS: dict[str, dict] = {
    "seed": {
        "description": (
            "The study: 320x320x3 MTCNN crops flattened to 307,200 values (BGR, 0..255), "
            "random forest of 100 trees, random 80/20 split over frames (leaks identities)."
        ),
        "features": "pixels",
        "model": "rf",
        "model_params": {"n_estimators": 100},
        "split": "frames",
        "test_size": 0.2,
        "random_state": 42,
        "reported_accuracy": {"rf": 0.856, "svm": 0.853, "logreg": 0.651},
    },
}
"""Training recipes as data; ``seed`` reproduces the study (its other models: svm, logreg)."""


class ChunkedStandardScaler(StandardScaler):
    """StandardScaler that learns its statistics chunk by chunk and scales in place.

    Stock ``fit`` makes a float64 ``X - mean`` temporary and a NaN mask as large as X (on
    14,000 x 307,200 pixels: +34 GB and +4 GB); ``partial_fit`` over chunks of rows of
    at most ``chunk_mb`` (counted as float64) keeps that to one chunk, with the same
    float64 accumulators. ``copy=False`` by default: in these pipelines its input is
    always the fresh output of the feature step.
    """

    def __init__(self, *, copy=False, with_mean=True, with_std=True, chunk_mb=64):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.chunk_mb = chunk_mb

    def fit(self, X, y=None, sample_weight=None):
        self._reset()
        rows = max(1, int(self.chunk_mb * 2**20) // (8 * max(1, X.shape[1])))
        for start in range(0, X.shape[0], rows):
            stop = start + rows
            self.partial_fit(X[start:stop], sample_weight=None if sample_weight is None else sample_weight[start:stop])
        return self


def _pipeline(features: str | BaseEstimator, *steps: tuple[str, BaseEstimator]) -> Pipeline:
    extractor = FEATURES.create(features) if isinstance(features, str) else features
    return Pipeline([("features", extractor), *steps])


@MODELS.register("rf", help="random forest, 100 trees (the study's best: 85.6% on a leaky split)")
def random_forest(features="pixels", random_state=42, **params) -> Pipeline:
    """The study's random forest; ``params`` override RandomForestClassifier's."""
    forest = RandomForestClassifier(**{"n_estimators": 100, "n_jobs": -1, "random_state": random_state, **params})
    return _pipeline(features, ("classifier", forest))


def _svm(features, random_state, C, params) -> Pipeline:
    # SVC(probability=True) is deprecated from scikit-learn 1.9; this is its replacement
    # and the same method: Platt scaling fitted on 5-fold cross-validated decision values.
    svc = SVC(**{"C": C, "kernel": "rbf", "gamma": "scale", "random_state": random_state, **params})
    calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=5, ensemble=False)
    return _pipeline(features, ("scale", ChunkedStandardScaler()), ("classifier", calibrated))


@MODELS.register("svm", help="standardised features, RBF SVM, C=1, Platt-scaled probabilities (the study: 85.3%)")
def svm(features="pixels", random_state=42, **params) -> Pipeline:
    """The study's SVM; ``params`` override SVC's."""
    return _svm(features, random_state, 1.0, params)


@MODELS.register("svm-c0.01", help="as svm but C=0.01: a much smoother boundary, less room to memorise faces")
def svm_c001(features="pixels", random_state=42, **params) -> Pipeline:
    """Strong regularisation: with 307,200 dimensions and one identity per few frames,
    C=1 can fit each identity separately; C=0.01 tests whether that is what scores."""
    return _svm(features, random_state, 0.01, params)


@MODELS.register("logreg", help="standardised features, L2 logistic regression (the study: 65.1%)")
def logistic_regression(features="pixels", random_state=42, **params) -> Pipeline:
    """The study's linear baseline; ``params`` override LogisticRegression's."""
    linear = LogisticRegression(**{"max_iter": 1000, "random_state": random_state, **params})
    return _pipeline(features, ("scale", ChunkedStandardScaler()), ("classifier", linear))


@MODELS.register("hgb", help="histogram gradient boosting on spectrum+small: strongest classical model, seconds to fit")
def gradient_boosting(features="spectrum+small", random_state=42, **params) -> Pipeline:
    """Boosted trees on compact features.

    Trees need no scaling, mix the spectrum and colour features freely and, unlike a
    forest on raw pixels, fit 14,000 faces in about 1 GB. A fixed number of rounds
    instead of early stopping: sklearn's early stopping holds out random frames, which
    share identities with the training frames and would stop too late.
    """
    boosted = HistGradientBoostingClassifier(
        **{
            "max_iter": 200,
            "learning_rate": 0.1,
            "l2_regularization": 1.0,
            "early_stopping": False,
            "random_state": random_state,
            **params,
        }
    )
    return _pipeline(features, ("classifier", boosted))


# Peak fit memory in bytes for n samples x d features (the float32 feature matrix is
# 4nd), with the default settings. The face array is not counted: a memmap is page cache
# the kernel can drop. Totals quoted for 14,000 faces, in GB (1e9 bytes); measured peak
# RSS of rf and logreg on 1,000 x 307,200, and of svm on 400 x 307,200 through its
# calibration folds, stayed under them.
_BASE = 512 * 2**20  # interpreter, libraries, one chunk of temporaries


def _forest_memory(n: int, d: int) -> int:
    """Features (4nd, in RAM up to SPILL_BYTES, beyond that a memory-mapped temporary file
    the trees read as is: float32 C-ordered needs no copy) + 100 fully grown trees (<= 2n
    nodes of ~100 B). pixels (307,200) at 14,000 faces: 0.8 GB of RAM plus 17.2 GB on disk;
    pixels-small: 1.0 GB."""
    features = 4 * n * d
    return _BASE + (features if features <= SPILL_BYTES else 0) + 100 * 2 * n * 100


def _svm_memory(n: int, d: int) -> int:
    """Features (4nd, scaled in place) + libsvm's float64 copy of each training fold
    during the 5-fold Platt calibration (0.8 n: 3.2nd float32 index copy + 6.4nd float64),
    + the 200 MB kernel cache: 13.6nd. pixels: 59 GB; pixels-small: 1.3 GB."""
    return _BASE + int(13.6 * n * d) + 200 * 2**20


def _logreg_memory(n: int, d: int) -> int:
    """Features (4nd, scaled in place; lbfgs works in float32) + lbfgs history and
    gradients (~40 float64 vectors of length d). pixels: 17.8 GB; pixels-small: 0.7 GB."""
    return _BASE + 4 * n * d + 40 * 8 * d


def _hgb_memory(n: int, d: int) -> int:
    """Features (4nd) + sklearn's float64 copy (8nd) + the uint8 binned copy (nd): 13nd.
    spectrum+small (3,200): 1.1 GB; pixels: 56 GB."""
    return _BASE + 13 * n * d


FIT_MEMORY.update(
    {
        "rf": _forest_memory,
        "svm": _svm_memory,
        "svm-c0.01": _svm_memory,
        "logreg": _logreg_memory,
        "hgb": _hgb_memory,
    }
)
