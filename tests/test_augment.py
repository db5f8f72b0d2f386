"""Augmentation: shapes, determinism, that every stage does something, and that the flip is a flip."""
from __future__ import annotations

import copy
from dataclasses import fields, replace

import cv2
import numpy as np
import pytest
from skimage import data

from unmask.augment import PROBABILITIES, AugmentConfig, Augmenter, adjust_colors, jpeg_roundtrip


def only(stage: str, **ranges) -> Augmenter:
    return Augmenter(replace(AugmentConfig.none(), **{stage: 1.0}, **ranges))


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The astronaut's face (public domain), 128x128."""
    return cv2.resize(np.ascontiguousarray(data.astronaut()[30:210, 140:320]), (128, 128),
                      interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def keypoints() -> np.ndarray:
    """Measured by hand on the 180x180 crop, scaled to 128."""
    return np.array([[65, 71], [106, 73], [85, 95], [67, 112], [103, 112]], np.float32) * (128 / 180)


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_shape_dtype_and_determinism(face):
    augment = Augmenter()
    outputs = [augment(face, np.random.default_rng(seed)) for seed in range(12)]
    assert all(out.shape == face.shape and out.dtype == np.uint8 for out in outputs)
    again = [augment(face, np.random.default_rng(seed)) for seed in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs, again))
    assert len({out.tobytes() for out in outputs}) == len(outputs)


def test_all_stages_on_odd_non_square_face(face):
    always = Augmenter(AugmentConfig(**{stage: 1.0 for stage in PROBABILITIES}))
    odd = np.ascontiguousarray(face[:101, :77])
    out = always(odd, np.random.default_rng(0))
    assert out.shape == odd.shape and out.dtype == np.uint8


def test_all_off_is_identity_on_a_copy(face):
    out = Augmenter(AugmentConfig.none())(face, np.random.default_rng(0))
    assert np.array_equal(out, face) and not np.shares_memory(out, face)


@pytest.mark.parametrize("stage", PROBABILITIES)
def test_each_stage_changes_the_face(face, stage):
    out = only(stage)(face, np.random.default_rng(1))
    assert out.shape == face.shape and out.dtype == np.uint8
    assert error(out, face) > 0.5


def test_jpeg_error_falls_as_quality_rises(face):
    errors = [error(only("jpeg_p", jpeg_quality=(q, q))(face, np.random.default_rng(0)), face)
              for q in (10, 30, 50, 70, 90)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 2 * errors[-1]
    assert np.array_equal(only("jpeg_p", jpeg_quality=(50, 50))(face, np.random.default_rng(0)),
                          jpeg_roundtrip(face, 50))


def test_h264_error_rises_with_qp(face):
    errors = [error(only("h264_p", h264_qps=(qp,))(face, np.random.default_rng(0)), face)
              for qp in (15, 25, 35, 45)]
    assert errors == sorted(errors) and errors[-1] > 2 * errors[0]


def test_h264_result_does_not_depend_on_earlier_frames(face):
    """The cached encoder codes every frame on its own, and a copy (made through the same
    reduce protocol as a DataLoader worker's pickled one) starts afresh yet gives the same pixels."""
    augment = only("h264_p", h264_qps=(30,))
    first = augment(face, np.random.default_rng(0))
    augment(np.ascontiguousarray(face[::-1]), np.random.default_rng(0))
    assert np.array_equal(augment(face, np.random.default_rng(0)), first)
    assert np.array_equal(copy.deepcopy(augment)(face, np.random.default_rng(0)), first)


def test_flip_mirrors_face_and_keypoints(face, keypoints):
    flip = only("flip_p")
    assert np.array_equal(flip(face, np.random.default_rng(0)), face[:, ::-1])
    out, moved = flip.with_keypoints(face, keypoints, np.random.default_rng(0))
    assert np.array_equal(out, face[:, ::-1])
    width = face.shape[1]
    # The subject's eye that was on the right of the image is now on the left, and so on.
    np.testing.assert_allclose(moved, [[width - 1 - keypoints[1, 0], keypoints[1, 1]],
                                       [width - 1 - keypoints[0, 0], keypoints[0, 1]],
                                       [width - 1 - keypoints[2, 0], keypoints[2, 1]],
                                       [width - 1 - keypoints[4, 0], keypoints[4, 1]],
                                       [width - 1 - keypoints[3, 0], keypoints[3, 1]]])
    assert moved[0, 0] < moved[1, 0] and moved[3, 0] < moved[4, 0]


def test_keypoint_variant_gives_the_same_image(face, keypoints):
    augment = Augmenter()
    for seed in range(8):
        out, moved = augment.with_keypoints(face, keypoints, np.random.default_rng(seed))
        assert np.array_equal(out, augment(face, np.random.default_rng(seed)))
        assert moved.shape == (5, 2) and moved.dtype == np.float32


def test_adjust_colors(face):
    assert np.array_equal(adjust_colors(face), face)
    grey = np.full((8, 8, 3), 100, np.uint8)
    assert np.array_equal(adjust_colors(grey, saturation=1.5, hue=0.25), grey)
    assert adjust_colors(face, brightness=1.2).mean() > face.mean() + 10
    assert adjust_colors(face, contrast=0.5).std() < 0.6 * face.std()
    shifted = adjust_colors(grey, shift=(10, 0, -10))
    assert shifted[0, 0].tolist() == [110, 100, 90]
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 200
    # As in HSV, a third of a turn takes red to green, and back the other way to blue.
    forward, backward = adjust_colors(red, hue=1 / 3)[0, 0], adjust_colors(red, hue=-1 / 3)[0, 0]
    assert forward.argmax() == 1 and backward.argmax() == 2


def test_config_is_documented_and_validated():
    assert all(field.default is not None for field in fields(AugmentConfig))
    for bad in ({"jpeg_p": 1.5}, {"jpeg_quality": (90, 30)}, {"h264_qps": (60,)}, {"h264_qps": ()},
                {"resize_scale": (0.5, 1.5)}, {"hue": 0.7}, {"brightness": 1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_rejects_non_uint8_rgb(face):
    with pytest.raises(ValueError):
        Augmenter()(face.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError):
        Augmenter()(face[..., 0], np.random.default_rng(0))
