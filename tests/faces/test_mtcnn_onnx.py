"""The torch-free MTCNN (exported nets on OpenCV, glue in numpy) finds the torch MTCNN's faces."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage.data")

from conftest import face_frames  # noqa: E402
from test_mtcnn import _make  # noqa: E402
from unmask.config import FaceDetection  # noqa: E402
from unmask.errors import UnmaskError  # noqa: E402
from unmask.faces.detectors import create_detector  # noqa: E402
from unmask.faces.mtcnn import MTCNN  # noqa: E402
from unmask.faces.mtcnn_onnx import OnnxMTCNN  # noqa: E402

TOLERANCE = 1e-4
"""Confidences, keypoints and boxes (pixels). Boxes pass through the nets' regression offsets
times box sizes of ~100-300 px, so a net's float rounding (~1e-7 relative) could reach ~1e-4 px
at 4K; measured at most 6e-5 px here."""


@pytest.fixture(scope="module")
def pair():
    cache = {}

    def get(min_face_size: int):
        if min_face_size not in cache:
            cache[min_face_size] = MTCNN(min_face_size=min_face_size), OnnxMTCNN(min_face_size=min_face_size)
        return cache[min_face_size]

    return get


def _assert_same(images, torch_mtcnn, onnx_mtcnn) -> int:
    """Compare detections image by image; the number of faces found."""
    expected, found = torch_mtcnn.detect(images), onnx_mtcnn.detect(images)
    assert [len(faces) for faces in found] == [len(faces) for faces in expected]
    for faces, reference in zip(found, expected):
        for ours, theirs in zip(faces, reference):
            np.testing.assert_allclose(ours.box, theirs.box, rtol=0, atol=TOLERANCE)
            assert ours.confidence == pytest.approx(theirs.confidence, abs=TOLERANCE)
            np.testing.assert_allclose(ours.keypoints, theirs.keypoints, rtol=0, atol=TOLERANCE)
            assert isinstance(ours.box, tuple) and ours.keypoints.dtype == np.float32
    return sum(len(faces) for faces in found)


@pytest.mark.parametrize("min_face_size, names", [
    (20, ["astronaut_third", "astronaut_half", "coffee"]),
    (40, ["astronaut", "astronaut_flipped", "two_astronauts", "frame_720p", "gradient"]),
])
def test_same_detections_as_torch_on_the_astronaut(pair, min_face_size, names):
    """The reference images, batched with several sizes: one face, two, none."""
    assert _assert_same([_make(name) for name in names], *pair(min_face_size)) >= len(names) - 1


def test_same_detections_as_torch_on_video_frames(pair):
    frames = face_frames(6, seed=3)[::2] + face_frames(2, width=640, height=360, seed=4)
    _assert_same(frames, *pair(40))


def test_empty_and_tiny_inputs(pair):
    onnx_mtcnn = pair(20)[1]
    assert onnx_mtcnn.detect([]) == []
    assert onnx_mtcnn.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]) == [[], []]


def test_rejects_bad_images_and_settings(pair):
    with pytest.raises(UnmaskError, match="image 0"):
        pair(20)[1].detect([np.zeros((32, 32), np.uint8)])
    with pytest.raises(UnmaskError, match="min_face_size"):
        OnnxMTCNN(min_face_size=0)


def test_cpu_gets_the_torch_free_detector():
    assert isinstance(create_detector(FaceDetection(device="cpu")), OnnxMTCNN)


def test_one_detector_shared_by_threads_finds_what_it_finds_alone(pair):
    """``unmask check FOLDER`` and the server run several videos' detections on one detector at
    once: each net takes its calls in turn, so no thread's batch is mixed up with another's."""
    from concurrent.futures import ThreadPoolExecutor

    onnx_mtcnn = pair(40)[1]
    batches = [[_make("astronaut")], face_frames(3, seed=5), [_make("two_astronauts"), _make("gradient")],
               face_frames(2, width=640, height=360, seed=6)] * 3
    alone = [onnx_mtcnn.detect(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(onnx_mtcnn.detect, batches))
    assert sum(len(faces) for found in alone for faces in found) >= len(batches)
    for found, reference in zip(together, alone):  # a mixed-up batch moves boxes by pixels, not by 1e-3
        assert [len(faces) for faces in found] == [len(faces) for faces in reference]
        for faces, expected in zip(found, reference):
            for face, want in zip(faces, expected):
                np.testing.assert_allclose(face.box, want.box, atol=1e-3)
                assert face.confidence == pytest.approx(want.confidence, abs=1e-5)
