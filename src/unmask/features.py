"""Feature extractors: uint8 face crops (N, H, W, 3) RGB -> float32 (N, D).

Each extractor is a scikit-learn transformer so it can be the first step of a
``Pipeline`` and be cross-validated, cloned and saved with the classifier. They work
chunk by chunk on the face array, which may be a memmap much larger than memory: only
the float32 output (N, D) is ever held whole, never a float copy of the input.
"""
from __future__ import annotations

import tempfile
from functools import lru_cache

import cv2
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import FeatureUnion
from sklearn.utils.validation import check_is_fitted

from unmask.errors import UnmaskError
from unmask.store import FaceArray
from unmask.registry import Registry

FEATURES: Registry[BaseEstimator] = Registry("feature extractor")

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY."""


class FaceTransformer(TransformerMixin, BaseEstimator):
    """Base class: checks the face array, runs ``_transform_chunk`` over row chunks.

    ``fit`` learns nothing but the crop shape, so a model trained on 320x320 crops
    refuses 160x160 ones with a clear message instead of a shape error deep in sklearn.
    """

    chunk_size: int

    def fit(self, X, y=None):
        self.image_shape_ = _check_faces(X).shape[1:]
        return self

    def transform(self, X):
        check_is_fitted(self, "image_shape_")
        X = _check_faces(X)
        if X.shape[1:] != self.image_shape_:
            raise UnmaskError(
                f"this model was fitted on faces of shape {self.image_shape_}, got "
                f"{X.shape[1:]}; prepare the faces with the same crop size"
            )
        # Chunks are written straight into the result: fresh pages are costly to touch,
        # so nothing of the output's size is allocated twice.
        out = feature_matrix(len(X), self._n_features(*X.shape[1:3]))
        for start in range(0, len(X), self.chunk_size):
            stop = start + self.chunk_size
            self._transform_chunk(X[start:stop], out[start:stop])
        return out

    def _n_features(self, height: int, width: int) -> int:
        raise NotImplementedError

    def _transform_chunk(self, faces: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


SPILL_BYTES = 2 * 2**30
"""Feature matrices larger than this live in an unlinked temporary file (memory-mapped)
instead of anonymous memory: the study's 14,000 x 307,200 pixels are 17.2 GB of float32,
which then costs page cache the kernel can evict, not RAM the process must hold."""


def feature_matrix(n: int, d: int) -> np.ndarray:
    """An (n, d) float32 array for features, on disk when it is large (see ``SPILL_BYTES``)."""
    if 4 * n * d <= SPILL_BYTES:
        return np.empty((n, d), dtype=np.float32)
    return np.memmap(tempfile.TemporaryFile(prefix="unmask-features-"), dtype=np.float32, mode="w+", shape=(n, d))


def _check_faces(X) -> np.ndarray:
    if isinstance(X, FaceArray):  # faces read from stores one by one: these models need them in memory
        X = np.asarray(X)
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[-1] != 3 or X.dtype != np.uint8:
        raise UnmaskError(
            "feature extractors expect uint8 face crops of shape (N, H, W, 3), got "
            f"{type(X).__name__} {getattr(X, 'dtype', '')} {getattr(X, 'shape', '')}".rstrip()
        )
    if len(X) == 0:
        raise UnmaskError("there are no faces to extract features from")
    return X


@FEATURES.register("pixels", help="the study's input: every pixel of the crop, BGR order (307,200 values at 320x320)")
class Pixels(FaceTransformer):
    """The whole crop flattened, as the study fed it to its classifiers.

    The study read its crops with OpenCV, so its vectors were in **BGR** order; this
    extractor flips the RGB store to BGR so a model fitted here sees the same feature
    order. Values stay 0..255 (uint8 -> float32 only): the study did not rescale.
    """

    def __init__(self, chunk_size: int = 256):
        self.chunk_size = chunk_size

    def _n_features(self, height, width):
        return height * width * 3

    def _transform_chunk(self, faces, out):
        for face, row in zip(faces, out):
            row.reshape(face.shape)[...] = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)


@FEATURES.register("pixels-small", help="the crop area-downscaled to size x size RGB, flattened (3,072 values at 32)")
class SmallPixels(FaceTransformer):
    """The crop shrunk with area averaging, flattened (RGB, values 0..255).

    Keeps colour and coarse layout at 1/100 of the size of ``pixels``, so trees and
    kernels train in seconds and far from memory limits; area averaging also removes
    most of the JPEG noise that a 307,200-dimensional model can overfit to.
    """

    def __init__(self, size: int = 32, chunk_size: int = 256):
        self.size = size
        self.chunk_size = chunk_size

    def _n_features(self, height, width):
        return self.size * self.size * 3

    def _transform_chunk(self, faces, out):
        side = (self.size, self.size)
        for face, row in zip(faces, out):
            row.reshape(self.size, self.size, 3)[...] = cv2.resize(
                face.astype(np.float32), side, interpolation=cv2.INTER_AREA
            )


@FEATURES.register("spectrum", help="Durall et al. 2020: azimuthally averaged log power spectrum of the grey face")
class Spectrum(FaceTransformer):
    """1D power spectrum, after Durall et al. 2020, "Unmasking DeepFakes with simple features".

    Grey image -> 2D FFT -> 20*log(|F| + eps) -> mean over rings of equal radius ->
    resampled to ``n_bins`` points from the centre (0) to the corner (1) -> min-max
    scaled per face. Up-sampling in generators leaves periodic high-frequency traces
    that show up at the tail of this curve, whatever the face looks like.
    """

    def __init__(self, n_bins: int = 128, eps: float = 1e-8, chunk_size: int = 8):
        self.n_bins = n_bins
        self.eps = eps
        self.chunk_size = chunk_size

    def _n_features(self, height, width):
        return self.n_bins

    def _transform_chunk(self, faces, out):
        height, width = faces.shape[1:3]
        grey = faces.astype(np.float32) @ _GRAY_WEIGHTS
        power = np.abs(np.fft.rfft2(grey)).reshape(len(faces), -1)  # numpy keeps float32 (complex64)
        log_power = 20 * np.log(power + self.eps, dtype=np.float32)
        ring_means, resample = _radial_profile(height, width, self.n_bins)
        profile = np.asarray((ring_means @ log_power.T).T) @ resample
        low = profile.min(axis=1, keepdims=True)
        span = profile.max(axis=1, keepdims=True) - low
        out[...] = (profile - low) / np.where(span > 0, span, 1)


@lru_cache(maxsize=8)
def _radial_profile(height: int, width: int, n_bins: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Matrices turning a flattened ``rfft2`` log spectrum into ``n_bins`` radial means.

    ``ring_means`` (rings x half-plane pixels) averages each 1-pixel-wide ring around the
    zero frequency. The half plane of ``rfft2`` is 4x cheaper than ``fft2`` and loses
    nothing: for a real image |F(-k)| = |F(k)|, so columns with a mirror outside the
    half plane count twice and the means equal those over the full plane.
    ``resample`` (rings x n_bins) linearly interpolates the ring curve at ``n_bins``
    evenly spaced radii, so crops of any size give the same length.
    """
    fy = np.fft.fftfreq(height) * height
    fx = np.fft.rfftfreq(width) * width
    radius = np.hypot(fy[:, None], fx[None, :]).ravel()
    mirrored = np.full(fx.size, 2.0)
    mirrored[0] = 1.0
    if width % 2 == 0:
        mirrored[-1] = 1.0  # the Nyquist column is its own mirror
    weight = np.broadcast_to(mirrored, (height, fx.size)).ravel()
    ring = radius.astype(np.int64)
    totals = np.bincount(ring, weights=weight)
    present = np.flatnonzero(totals)
    ring_means = sparse.csr_matrix(
        (weight / totals[ring], (np.searchsorted(present, ring), np.arange(radius.size))),
        shape=(present.size, radius.size),
        dtype=np.float32,
    )
    targets = np.linspace(0, present[-1], n_bins)
    resample = np.stack([np.interp(targets, present, basis) for basis in np.eye(present.size)])
    return ring_means, resample.astype(np.float32)


@FEATURES.register("spectrum+small", help="spectrum and pixels-small side by side: frequency traces, colour, layout")
def spectrum_and_small(n_bins: int = 128, size: int = 32) -> FeatureUnion:
    """Both compact views at once (3,200 values by default).

    ``spectrum`` sees up-sampling traces but is blind to colour; blending seams and
    colour mismatch of a swapped face live in ``pixels-small``. Together they stay small
    enough for gradient boosting.
    """
    return FeatureUnion([("spectrum", Spectrum(n_bins=n_bins)), ("small", SmallPixels(size=size))])


def feature_dim(features: str | BaseEstimator, height: int, width: int) -> int:
    """Length of the feature vector an extractor makes from height x width crops.

    Found by running it on one black crop, so it is right for any extractor, and cheap;
    used to check memory before extracting anything.
    """
    extractor = FEATURES.create(features) if isinstance(features, str) else features
    return extractor.fit_transform(np.zeros((1, height, width, 3), dtype=np.uint8)).shape[1]
