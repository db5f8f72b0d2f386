"""Synthetic fakes: masks cover the face and only the face, SBI changes only what it blends,
swaps land the source on the target's keypoints, and swap pairs cross identities."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from unmask.synth import BLEND_RATIOS, align_keypoints, face_mask, face_swap, self_blend, synthesize_fakes

SEEDS = range(10)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The astronaut's face (public domain), 180x180."""
    return np.ascontiguousarray(data.astronaut()[30:210, 140:320])


@pytest.fixture(scope="module")
def keypoints() -> np.ndarray:
    """Left eye, right eye, nose, mouth left, mouth right, measured by hand on ``face``."""
    return np.array([[65, 71], [106, 73], [85, 95], [67, 112], [103, 112]], np.float32)


def similarity(angle: float, scale: float, shift: tuple[float, float], center: tuple[float, float]) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D(center, angle, scale)
    matrix[:, 2] += shift
    return matrix


def move(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_mask_covers_keypoints_not_corners(face, keypoints):
    plain = face_mask(face.shape, keypoints)
    for mask in [plain] + [face_mask(face.shape, keypoints, np.random.default_rng(seed)) for seed in SEEDS]:
        assert mask.shape == face.shape[:2] and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() == pytest.approx(1.0, abs=1e-3)
        assert (mask[keypoints[:, 1].round().astype(int), keypoints[:, 0].round().astype(int)] > 0.8).all()
        assert mask[[0, 0, -1, -1], [0, -1, 0, -1]].max() == 0.0
        # A face, not the whole crop: between a sixth and a half of this loosely cropped image.
        assert 1 / 6 < (mask > 0.5).mean() < 1 / 2


def test_mask_randomness_is_seeded(face, keypoints):
    first = face_mask(face.shape, keypoints, np.random.default_rng(3))
    assert np.array_equal(first, face_mask(face.shape, keypoints, np.random.default_rng(3)))
    assert not np.array_equal(first, face_mask(face.shape, keypoints, np.random.default_rng(4)))
    assert np.abs(first - face_mask(face.shape, keypoints)).max() > 0.5


def test_mask_follows_the_keypoints(face, keypoints):
    moved = keypoints + [30, -20]
    np.testing.assert_allclose(np.roll(face_mask(face.shape, keypoints), (-20, 30), axis=(0, 1)),
                               face_mask(face.shape, moved), atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.zeros((68, 2))])
def test_mask_rejects_bad_keypoints(face, bad):
    with pytest.raises(ValueError):
        face_mask(face.shape, bad)


def test_self_blend_changes_only_the_masked_face(face, keypoints):
    # Where any SBI mask may reach: the plain face grown by 3/4 of the eye distance.
    grow = int(1.5 * np.linalg.norm(keypoints[1] - keypoints[0])) | 1
    reach = cv2.dilate((face_mask(face.shape, keypoints) > 0.5).astype(np.uint8),
                       cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
    ratios = set()
    for seed in SEEDS:
        fake, mask = self_blend(face, keypoints, np.random.default_rng(seed))
        assert fake.shape == face.shape and fake.dtype == np.uint8 and mask.shape == face.shape[:2]
        changed = (fake != face).any(axis=2)
        assert not changed[mask == 0].any()
        assert not (mask > 0)[reach == 0].any()
        core = mask >= 0.9 * mask.max()
        assert error(fake[core], face[core]) > 1.0
        ratios.add(round(float(mask.max()), 2))
    assert ratios <= set(BLEND_RATIOS) and len(ratios) > 1


def test_self_blend_is_seeded(face, keypoints):
    first = self_blend(face, keypoints, np.random.default_rng(7))
    again = self_blend(face, keypoints, np.random.default_rng(7))
    other = self_blend(face, keypoints, np.random.default_rng(8))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_align_keypoints_recovers_a_similarity(keypoints):
    truth = similarity(angle=20, scale=0.8, shift=(12, -7), center=(90, 90))
    source_kps = move(keypoints, cv2.invertAffineTransform(truth))
    matrix = align_keypoints(source_kps, keypoints)
    np.testing.assert_allclose(matrix, truth, atol=1e-3)
    np.testing.assert_allclose(move(source_kps, matrix), keypoints, atol=0.05)


def test_swap_lands_the_source_on_the_target_keypoints(face, keypoints):
    """The source is the target itself, turned, shrunk, moved and tinted: if alignment and
    colour matching work, the swapped face is the target again."""
    turn = similarity(angle=-25, scale=0.75, shift=(-15, 10), center=(90, 90))
    source = cv2.warpAffine(face, turn, (180, 180), borderMode=cv2.BORDER_REFLECT_101)
    source = cv2.convertScaleAbs(source, alpha=0.7, beta=40)
    source_kps = move(keypoints, turn)
    for seed in range(3):
        fake, mask = face_swap(face, keypoints, source, source_kps, np.random.default_rng(seed))
        assert fake.shape == face.shape and fake.dtype == np.uint8
        assert not (fake != face).any(axis=2)[mask == 0].any()
        core = mask > 0.9
        assert core.mean() > 0.1
        assert error(fake[core], face[core]) < 6.0
        # Pasting the same source without alignment is far off.
        assert error(source[core], face[core]) > 4 * error(fake[core], face[core])


def test_swap_content_comes_from_the_source(face, keypoints):
    cat = np.ascontiguousarray(data.chelsea()[60:240, 150:330])
    fake, mask = face_swap(face, keypoints, cat, keypoints, np.random.default_rng(0))
    core = mask > 0.9
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[core].astype(np.float64) for image in (fake, cat, face)]
    assert np.corrcoef(grey[0], grey[1])[0, 1] > 0.9
    assert np.corrcoef(grey[0], grey[2])[0, 1] < 0.5
    # Colour is the target's: the orange cat turns skin-coloured.
    assert np.abs(fake[core].mean(axis=0) - face[core].mean(axis=0)).max() < 8


@pytest.fixture(scope="module")
def crowd(face, keypoints):
    """Six faces of three 'identities': the astronaut moved about and tinted."""
    faces, kps = [], []
    for i, (angle, scale, shift) in enumerate([(0, 1, (0, 0)), (8, 0.9, (5, 3)), (-6, 1.05, (-4, 2)),
                                               (3, 0.95, (2, -5)), (-10, 0.85, (0, 6)), (5, 1.1, (-3, -3))]):
        matrix = similarity(angle, scale, shift, (90, 90))
        warped = cv2.warpAffine(face, matrix, (180, 180), borderMode=cv2.BORDER_REFLECT_101)
        faces.append(cv2.convertScaleAbs(warped, alpha=1 - 0.05 * i, beta=4 * i))
        kps.append(move(keypoints, matrix))
    return np.stack(faces), np.stack(kps), ["a", "a", "b", "b", "c", "c"]


def test_synthesize_fakes(crowd):
    faces, kps, groups = crowd
    fakes, records = synthesize_fakes(faces, kps, groups, np.random.default_rng(0), per_face=3)
    assert fakes.shape == (18, *faces.shape[1:]) and fakes.dtype == np.uint8
    assert [r["target"] for r in records] == [i for i in range(6) for _ in range(3)]
    assert {r["kind"] for r in records} == {"sbi", "swap"}
    for fake, record in zip(fakes, records):
        assert not np.array_equal(fake, faces[record["target"]])
        if record["kind"] == "sbi":
            assert record["source"] is None
        else:
            assert groups[record["source"]] != groups[record["target"]]
    again, same_records = synthesize_fakes(faces, kps, groups, np.random.default_rng(0), per_face=3)
    assert np.array_equal(fakes, again) and records == same_records


def test_synthesize_swaps_only_across_groups(crowd):
    faces, kps, groups = crowd
    _, records = synthesize_fakes(faces, kps, groups, np.random.default_rng(1), kinds=("swap",), per_face=4)
    assert all(r["kind"] == "swap" and groups[r["source"]] != groups[r["target"]] for r in records)


def test_synthesize_with_one_group(crowd):
    faces, kps, _ = crowd
    _, records = synthesize_fakes(faces, kps, ["x"] * 6, np.random.default_rng(0))
    assert all(r["kind"] == "sbi" for r in records)
    with pytest.raises(ValueError):
        synthesize_fakes(faces, kps, ["x"] * 6, np.random.default_rng(0), kinds=("swap",))


@pytest.mark.parametrize("change", [{"groups": ["a"] * 5}, {"kinds": ("gan",)}, {"kinds": ()}, {"per_face": 0}])
def test_synthesize_rejects_bad_arguments(crowd, change):
    faces, kps, groups = crowd
    arguments = {"groups": groups, "kinds": ("sbi", "swap"), "per_face": 1, **change}
    with pytest.raises(ValueError):
        synthesize_fakes(faces, kps, rng=np.random.default_rng(0), **arguments)
