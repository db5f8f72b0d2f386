import tracemalloc

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from unmask.errors import UnmaskError
from unmask.features import FEATURES, Pixels, feature_dim
from unmask.models import MODELS, check_fit_memory, create_model, estimate_fit_memory
from unmask.models.classical import PRESETS, ChunkedStandardScaler
from unmask.splits import LEAKY_SPLITS, SPLITS

SMALL = {"rf": {"n_estimators": 20}, "hgb": {"max_iter": 20, "min_samples_leaf": 5}}


def easy_faces(n=80, size=16, seed=0):
    """Dim noisy crops; the fakes carry a bright square in the middle. Four crops per
    'identity', so group-aware cross-validation has something to respect."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    faces = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    faces[labels == 1, size // 4 : -size // 4, size // 4 : -size // 4] += 100
    return faces, labels, np.arange(n) // 4


def test_the_promised_models_are_registered():
    assert {"rf", "svm", "svm-c0.01", "logreg", "hgb"} <= set(MODELS.names())
    with pytest.raises(UnmaskError, match="rf"):
        create_model("random-forest")


@pytest.mark.parametrize("name", ["rf", "svm", "svm-c0.01", "logreg", "hgb"])
def test_builders_make_feature_to_classifier_pipelines(name):
    model = create_model(name)
    assert isinstance(model, Pipeline)
    assert model.steps[0][0] == "features" and model.steps[-1][0] == "classifier"
    expected = FeatureUnion if name == "hgb" else Pixels
    assert isinstance(model.named_steps["features"], expected)
    assert isinstance(create_model(name, features="spectrum").named_steps["features"], FEATURES.builder("spectrum"))


def test_rf_settings_are_the_studys():
    forest = create_model("rf", random_state=7).named_steps["classifier"]
    assert isinstance(forest, RandomForestClassifier)
    assert (forest.n_estimators, forest.n_jobs, forest.random_state) == (100, -1, 7)
    assert create_model("svm-c0.01").named_steps["classifier"].estimator.C == 0.01


def test_rf_on_small_pixels_separates_easy_classes():
    faces, labels, _ = easy_faces(n=100)
    model = create_model("rf", features=FEATURES.create("pixels-small", size=8), n_estimators=30)
    model.fit(faces[:80], labels[:80])
    assert (model.predict(faces[80:]) == labels[80:]).mean() >= 0.95


@pytest.mark.parametrize("name", ["rf", "svm", "svm-c0.01", "logreg", "hgb"])
def test_pipelines_cross_validate_on_4d_uint8_faces_by_group(name):
    faces, labels, groups = easy_faces()
    model = create_model(name, features=FEATURES.create("pixels-small", size=8), **SMALL.get(name, {}))
    with threadpool_limits(limits=1, user_api="openmp"):  # OpenMP crawls on a busy 2-core box
        scores = cross_val_score(model, faces, labels, groups=groups, cv=GroupKFold(n_splits=3))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    if name != "svm-c0.01":  # so smooth a boundary is allowed to underfit 50 crops
        assert scores.mean() >= 0.9


def test_fitted_pipeline_reads_a_memmap(tmp_path):
    faces, labels, _ = easy_faces(n=40)
    stored = np.lib.format.open_memmap(tmp_path / "faces.npy", mode="w+", dtype=np.uint8, shape=faces.shape)
    stored[:] = faces
    model = create_model("logreg", features="pixels").fit(stored, labels)
    proba = model.predict_proba(np.load(tmp_path / "faces.npy", mmap_mode="r"))
    assert proba.shape == (40, 2) and np.allclose(proba.sum(axis=1), 1)


def test_chunked_scaler_equals_standard_scaler_and_works_in_place():
    X = np.random.default_rng(0).normal(3, 2, (50, 7)).astype(np.float32)
    expected = StandardScaler().fit_transform(X)
    scaler = ChunkedStandardScaler(chunk_mb=8 * 7 * 3 / 2**20)  # three rows a chunk
    out = scaler.fit_transform(X)
    assert out is X and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert scaler.n_samples_seen_ == 50


@pytest.mark.parametrize("name", ["rf", "logreg"])
def test_pixel_pipelines_make_no_float64_copy(name):
    faces, labels, _ = easy_faces(n=400, size=32)  # many rows: lbfgs keeps ~40 vectors of length d
    model = create_model(name, features="pixels", **SMALL.get(name, {}))
    if name == "logreg":
        model.set_params(scale__chunk_mb=1)
    feature_bytes = faces.size * 4
    tracemalloc.start()
    try:
        model.fit(faces, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert feature_bytes <= peak < 1.5 * feature_bytes  # a float64 copy would be 2x more


def test_memory_estimates_follow_the_documented_formulas():
    n, d = 14_000, feature_dim("pixels", 320, 320)
    assert d == 307_200
    forest = estimate_fit_memory("rf", n, d)
    assert forest < 2 * 2**30  # the study's 17.2 GB of float32 pixels spill to disk: well under 8 GB of RAM
    assert estimate_fit_memory("rf", 1000, 3072) > 1000 * 3072 * 4  # small features stay in RAM
    assert estimate_fit_memory("svm", n, d) > 40 * 2**30  # libsvm copies to float64: refused on most machines
    assert estimate_fit_memory("hgb", n, feature_dim("spectrum+small", 320, 320)) < 2 * 2**30
    with pytest.raises(UnmaskError, match="unknown model"):
        estimate_fit_memory("nope", n, d)


def test_memory_guard_refuses_an_absurd_request():
    with pytest.raises(UnmaskError, match=r"needs about .* GiB.*pixels-small"):
        check_fit_memory("svm", 1_000_000, 307_200)
    with pytest.raises(UnmaskError, match="GiB"):
        check_fit_memory("svm", 14_000, 307_200, available=8 * 2**30)
    assert check_fit_memory("hgb", 14_000, 3_200, available=8 * 2**30) < 8 * 2**30


def test_seed_preset_names_things_that_exist():
    seed = PRESETS["seed"]
    assert seed["features"] in FEATURES and seed["model"] in MODELS
    assert seed["split"] in SPLITS and seed["split"] in LEAKY_SPLITS
    assert seed["model_params"] == {"n_estimators": 100} and seed["test_size"] == 0.2
    assert set(seed["reported_accuracy"]) <= set(MODELS.names())
