"""Our MTCNN against facenet-pytorch's on generated images (see tools/record_mtcnn_reference.py)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

skimage_data = pytest.importorskip("skimage.data")

from unmask.errors import UnmaskError  # noqa: E402
from unmask.faces.detection import Detection  # noqa: E402
from unmask.faces.mtcnn import MTCNN  # noqa: E402
from unmask.faces.mtcnn_onnx import _Integral  # noqa: E402

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "mtcnn_reference.json").read_text())


def _downscale(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].reshape(h // k, k, w // k, k, 3).astype(np.float64)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _make(name: str) -> np.ndarray:
    """Rebuild a reference image by the recipe recorded in the JSON."""
    astronaut = skimage_data.astronaut()
    if name == "astronaut":
        img = astronaut
    elif name == "astronaut_flipped":
        img = astronaut[:, ::-1]
    elif name == "astronaut_half":
        img = _downscale(astronaut, 2)
    elif name == "astronaut_third":
        img = _downscale(astronaut, 3)
    elif name == "two_astronauts":
        img = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    elif name == "frame_720p":
        img = np.full((720, 1280, 3), 96, dtype=np.uint8)
        img[100:612, 400:912] = astronaut
    elif name == "coffee":
        img = skimage_data.coffee()
    elif name == "gradient":
        ramp = np.linspace(0, 255, 640).round().astype(np.uint8)
        img = np.repeat(np.repeat(ramp[None, :, None], 480, axis=0), 3, axis=2)
    else:
        raise KeyError(name)
    return np.ascontiguousarray(img)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_same(ours: list[Detection], theirs: list[Detection], atol: float = 1e-3) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.box, b.box, atol=atol)
        assert a.confidence == pytest.approx(b.confidence, abs=atol)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=atol)


@pytest.fixture(scope="module")
def detectors():
    """One detector per min_face_size, shared by the tests in this module."""
    cache: dict[int, MTCNN] = {}

    def get(min_face_size: int = 20) -> MTCNN:
        if min_face_size not in cache:
            cache[min_face_size] = MTCNN(min_face_size=min_face_size)
        return cache[min_face_size]

    return get


def _check_against_reference(found: list[Detection], case: dict) -> None:
    ours = [d for d in found if d.confidence > 0.9]
    theirs = [f for f in case["faces"] if f["confidence"] > 0.9]
    assert len(ours) == len(theirs)
    for face in theirs:
        best = max(ours, key=lambda d: _iou(d.box, face["box"]))
        assert _iou(best.box, face["box"]) >= 0.95
        assert best.confidence == pytest.approx(face["confidence"], abs=0.01)
        assert np.abs(best.keypoints - np.array(face["keypoints"])).max() <= 2.0


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['image']}-min{c['min_face_size']}")
def test_matches_facenet_pytorch(detectors, case):
    img = _make(case["image"])
    assert list(img.shape) == case["shape"]
    assert hashlib.sha256(img.tobytes()).hexdigest() == case["sha256"], "image recipe no longer reproduces"
    _check_against_reference(detectors(case["min_face_size"]).detect([img])[0], case)


def test_integral_images_hold_the_sums():
    images = np.random.default_rng(1).integers(0, 256, (3, 37, 50, 3), dtype=np.uint8)
    table = _Integral(images).table
    assert np.abs(table[:, 0]).sum() == 0 and np.abs(table[:, :, 0]).sum() == 0
    assert np.array_equal(table[:, -1, -1], images.sum(axis=(1, 2)))


def test_area_resampling_is_torchs():
    """Pyramid levels and crops read off integral images equal F.interpolate(mode="area"), as in facenet-pytorch."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 61, 83, 3), dtype=np.uint8)
    integral = _Integral(images)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    for size in [(13, 17), (40, 61), (61, 83), (90, 100)]:
        expected = torch.nn.functional.interpolate(as_float, size=size, mode="area").permute(0, 2, 3, 1)
        torch.testing.assert_close(torch.from_numpy(integral.pyramid_level(*size)), expected, rtol=0, atol=1e-4)
    boxes = [(1, 0, 0, 83, 61), (0, 5, 7, 30, 20), (1, 40, 10, 49, 60), (0, 70, 50, 83, 61)]
    image, x0, y0, x1, y1 = (np.array(v) for v in zip(*boxes))
    crops = torch.from_numpy(integral.crops(image, x0, y0, x1, y1, 24))
    for crop, (i, a, b, c, d) in zip(crops, boxes):
        expected = torch.nn.functional.interpolate(as_float[i:i + 1, :, b:d, a:c], size=(24, 24), mode="area")
        torch.testing.assert_close(crop, expected[0].permute(1, 2, 0), rtol=0, atol=1e-4)


def test_detection_fields_and_order(detectors):
    found = detectors().detect([_make("two_astronauts")])[0]
    assert len(found) == 2
    assert [d.confidence for d in found] == sorted((d.confidence for d in found), reverse=True)
    for d in found:
        assert isinstance(d.box, tuple) and len(d.box) == 4 and all(isinstance(v, float) for v in d.box)
        x1, y1, x2, y2 = d.box
        assert x1 < x2 and y1 < y2
        assert d.keypoints.shape == (5, 2) and d.keypoints.dtype == np.float32
        # Keypoints lie in the box; the left eye is left of the right eye (image coordinates).
        assert np.all((d.keypoints[:, 0] > x1) & (d.keypoints[:, 0] < x2))
        assert np.all((d.keypoints[:, 1] > y1) & (d.keypoints[:, 1] < y2))
        assert d.keypoints[0, 0] < d.keypoints[1, 0]


def test_no_face(detectors):
    assert detectors().detect([_make("coffee"), _make("gradient")]) == [[], []]


def test_batch_of_different_sizes_equals_one_by_one(detectors):
    detector = detectors(40)
    images = [_make(name) for name in ("astronaut", "two_astronauts", "coffee", "astronaut_flipped",
                                       "astronaut_half", "frame_720p")]
    batched = detector.detect(images)
    assert len(batched) == len(images)
    for img, found in zip(images, batched):
        _assert_same(found, detector.detect([img])[0])
    assert [len(found) for found in batched] == [1, 2, 0, 1, 1, 1]


def test_min_face_size(detectors):
    img = _make("astronaut_third")  # face about 29 x 36 pixels
    assert detectors(80).detect([img]) == [[]]
    found = detectors(20).detect([img])[0]
    assert len(found) == 1 and found[0].confidence > 0.99


def test_tiny_and_empty_inputs(detectors):
    assert detectors().detect([]) == []
    # Too small for even one pyramid level.
    assert detectors().detect([np.zeros((8, 8, 3), np.uint8)]) == [[]]


@pytest.mark.parametrize("bad", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32),
                                 np.zeros((32, 32, 4), np.uint8), "not an image"])
def test_rejects_bad_images(detectors, bad):
    with pytest.raises(UnmaskError):
        detectors().detect([bad])


@pytest.mark.parametrize("kwargs", [{"min_face_size": 0}, {"scale_factor": 1.0}, {"thresholds": (0.6, 0.7)}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(UnmaskError):
        MTCNN(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_reference():
    by_size: dict[int, list[dict]] = {}
    for case in REFERENCE["cases"]:
        by_size.setdefault(case["min_face_size"], []).append(case)
    for min_face_size, cases in by_size.items():
        found = MTCNN(min_face_size=min_face_size, device="cuda").detect([_make(c["image"]) for c in cases])
        for faces, case in zip(found, cases):
            _check_against_reference(faces, case)
