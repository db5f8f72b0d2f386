import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from unmask.errors import UnmaskError
from unmask.features import FEATURES, feature_dim


def random_faces(n=6, height=32, width=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def natural_images(n, size, seed):
    """Grey images with the 1/f spectrum of natural scenes, as (n, size, size) floats."""
    rng = np.random.default_rng(seed)
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    frequency[0, 0] = 1
    images = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) / frequency))
    return (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True) * 30 + 128


def test_registry_has_the_promised_extractors():
    assert {"pixels", "pixels-small", "spectrum", "spectrum+small"} <= set(FEATURES.names())
    with pytest.raises(UnmaskError, match="pixels-small"):
        FEATURES.create("pixel")


@pytest.mark.parametrize("name", ["pixels", "pixels-small", "spectrum", "spectrum+small"])
def test_every_extractor_gives_float32_rows_and_clones(name):
    faces = random_faces()
    extractor = clone(FEATURES.create(name))
    out = extractor.fit_transform(faces)
    assert out.dtype == np.float32
    assert out.shape == (len(faces), feature_dim(name, 32, 24))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["pixels", "pixels-small", "spectrum"])
def test_chunking_does_not_change_the_result(name):
    faces = random_faces(n=7)
    whole = FEATURES.create(name, chunk_size=100).fit_transform(faces)
    chunked = FEATURES.create(name, chunk_size=3).fit_transform(faces)
    # Equal up to float32 rounding: numpy's FFT may vectorise across a batch, so batches of 7 and 3
    # differ in the last bits on some machines (2e-7 seen); a classifier cannot tell 1e-5 apart.
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-6)


def test_pixels_are_the_studys_bgr_vector(tmp_path):
    faces = random_faces(n=3)
    stored = np.lib.format.open_memmap(tmp_path / "faces.npy", mode="w+", dtype=np.uint8, shape=faces.shape)
    stored[:] = faces
    out = FEATURES.create("pixels").fit_transform(stored)
    assert out.shape == (3, 32 * 24 * 3)
    np.testing.assert_array_equal(out, faces[..., ::-1].reshape(3, -1).astype(np.float32))


def test_pixels_small_is_an_area_average():
    faces = random_faces(n=2, height=32, width=32)
    out = FEATURES.create("pixels-small", size=8).fit_transform(faces)
    blocks = faces.reshape(2, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(out, blocks.reshape(2, -1), rtol=1e-5)


def reference_spectrum(face, n_bins):
    """Durall et al.'s recipe written out plainly: full FFT, shifted, ring by ring."""
    grey = face.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    log_power = 20 * np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey))) + 1e-8)
    height, width = grey.shape
    y, x = np.indices(grey.shape)
    ring = np.hypot(y - height // 2, x - width // 2).astype(int)
    radii = np.unique(ring)
    profile = np.interp(np.linspace(0, radii[-1], n_bins), radii, [log_power[ring == r].mean() for r in radii])
    return (profile - profile.min()) / (profile.max() - profile.min())


@pytest.mark.parametrize("shape", [(32, 32), (33, 20), (21, 32)])
def test_spectrum_matches_the_plain_full_plane_recipe(shape):
    faces = random_faces(n=2, height=shape[0], width=shape[1], seed=1)
    out = FEATURES.create("spectrum", n_bins=40).fit_transform(faces)
    expected = np.stack([reference_spectrum(face, 40) for face in faces])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == 0 and out.max() == 1


def test_spectrum_separates_upsampled_images():
    """Generators up-sample: a 2x nearest-neighbour image repeats its spectrum at high
    frequencies, which a linear model on the 1D spectrum must spot."""
    real = natural_images(20, 64, seed=0)
    upsampled = np.kron(natural_images(20, 32, seed=1), np.ones((1, 2, 2)))
    grey = np.clip(np.concatenate([real, upsampled]), 0, 255)
    faces = np.repeat(grey[..., None], 3, axis=3).astype(np.uint8)
    labels = np.repeat([0, 1], 20)
    spectrum = FEATURES.create("spectrum", n_bins=32).fit_transform(faces)
    assert cross_val_score(LogisticRegression(max_iter=1000), spectrum, labels, cv=5).mean() >= 0.95


def test_wrong_input_is_a_clear_user_error():
    extractor = FEATURES.create("pixels-small").fit(random_faces(height=32, width=32))
    with pytest.raises(UnmaskError, match="shape"):
        extractor.transform(random_faces(height=16, width=16))
    with pytest.raises(UnmaskError, match="uint8"):
        extractor.transform(random_faces().astype(np.float32))
    with pytest.raises(UnmaskError, match="uint8"):
        extractor.fit(random_faces()[..., 0])


def test_large_feature_matrices_spill_to_disk_and_the_forest_reads_them_without_a_copy(monkeypatch):
    import tracemalloc

    import unmask.features as features
    from unmask.models import create_model

    monkeypatch.setattr(features, "SPILL_BYTES", 1_000_000)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (120, 48, 48, 3), dtype=np.uint8)
    labels = np.arange(120) % 2
    faces[labels == 1, :10] = 255
    matrix = features.Pixels().fit_transform(faces)
    assert isinstance(matrix, np.memmap) and matrix.nbytes > 1_000_000
    model = create_model("rf", features="pixels", n_estimators=10, n_jobs=1)
    tracemalloc.start()
    model.fit(faces, labels)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < matrix.nbytes / 2  # the float32 pixels were never held in RAM
    assert model.score(faces, labels) > 0.9
