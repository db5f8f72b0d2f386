"""The face pass: one walk from a video to its faces, the same for prepare and check."""
from __future__ import annotations

import numpy as np
import pytest

from unmask.check import Checker, CheckSettings
from unmask.config import MOTION_ON, FaceDetection, FrameSampling, PrepareConfig
from unmask.datasets import Video
from unmask.faces.face_pass import FacePass
from unmask.prepare import make_face_pass, process_video
from unmask.video import VideoError, write_video

from conftest import face_frames


@pytest.fixture(scope="module")
def motion_model(tmp_path_factory):
    """A real motion model folder: released Meso-4 + a logistic regression, fitted on a few faces."""
    from unmask.faces.motion import MOTION_FEATURES
    from unmask.models.fusion import MotionFusion
    from unmask.models.io import save_model

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    motion = rng.normal(size=(8, len(MOTION_FEATURES))).astype(np.float32)
    fitted = MotionFusion().fit(faces, np.array([0, 1] * 4), motion=motion)
    card = {"title": "fusion", "estimator": {"name": "mesonet-motion", "params": fitted.get_params()},
            "input": {"size": 128, "margin": 0.3, "min_confidence": 0.9, "needs": ["motion"],
                      "motion_features": list(MOTION_FEATURES),
                      "motion": {"offsets": [1, 2, 3], "size": 256, "flow": "dis-fast"},
                      "detector": {"detector": "mtcnn", "mtcnn": {"min_face_size": 40, "thresholds": [0.6, 0.7, 0.7]},
                                   "max_side": 1920}},
            "threshold": 0.5, "aggregate": "mean"}
    return save_model(fitted, tmp_path_factory.mktemp("models") / "fusion", card)


def test_prepare_and_check_cut_and_measure_the_same_faces(face_video, motion_model):
    checker = Checker(motion_model, CheckSettings(frames=5))
    frames = CheckSettings(frames=5).frame_indices(200)
    config = PrepareConfig(frames=FrameSampling(step=1, max_frames=200),
                           faces=FaceDetection(margin=0.3, size=128), motion=MOTION_ON)
    checked = checker.faces.run(face_video, frames)
    prepared = make_face_pass(config).run(face_video, frames)
    assert [f.frame for f in checked.faces] == [f.frame for f in prepared.faces] == frames
    for a, b in zip(checked.faces, prepared.faces):
        assert np.array_equal(a.crop, b.crop)
        np.testing.assert_allclose(a.motion, b.motion, rtol=1e-5, atol=1e-6)  # float32 rounding at most
    # and what prepare stores is what the pass found
    shard = process_video(Video(path=face_video, label=0, key="a"), config, make_face_pass(config))
    chosen = [i for i, row in enumerate(shard.rows) if row["frame"] in frames]
    assert np.array_equal(shard.faces[chosen], np.stack([f.crop for f in prepared.faces]))


def test_batches_bound_what_is_held_and_change_nothing(face_video, monkeypatch):
    import unmask.faces.face_pass

    monkeypatch.setattr(unmask.faces.face_pass, "BATCH_PIXELS", 8 * 480 * 320)  # batches of 8 of these frames
    frames = list(range(0, 200, 9))  # 23 sampled frames: three batches
    one_pass = FacePass(FaceDetection(size=64), MOTION_ON)
    found = one_pass.run(face_video, frames)
    assert found.read == frames and not found.missing and found.info.frame_count == 200
    by_frame = {f.frame: f for f in found.faces}
    for frame in (0, 99, 198):
        alone = one_pass.run(face_video, [frame]).faces[0]
        assert np.array_equal(alone.crop, by_frame[frame].crop)
        np.testing.assert_allclose(alone.box, by_frame[frame].box, atol=1e-3)  # the detector's batch rounding


def test_neighbour_frames_converted_only_where_the_faces_are_change_nothing(face_video, monkeypatch):
    """The frames after each sampled one come as ``PartialFrame``s (only the faces' regions are
    converted to RGB); the faces and their motion must be those measured on whole frames."""
    import unmask.video

    frames = [0, 40, 120, 198]  # the last has one frame after it, of the 200
    converted = []
    region = unmask.video.PartialFrame.region
    monkeypatch.setattr(unmask.video.PartialFrame, "region",
                        lambda self, *bounds: converted.append(bounds) or region(self, *bounds))
    one_pass = FacePass(FaceDetection(size=64, margin=0.3), MOTION_ON)
    partial = one_pass.run(face_video, frames)
    assert len(converted) == 3 * 3 + 1  # one region per face in each neighbour frame
    monkeypatch.setattr(unmask.video.PartialFrame, "supports", staticmethod(lambda frame: False))
    whole = one_pass.run(face_video, frames)
    assert [f.frame for f in partial.faces] == [f.frame for f in whole.faces] == frames
    for a, b in zip(partial.faces, whole.faces):
        assert a.box == b.box and np.array_equal(a.crop, b.crop)
        assert np.array_equal(a.motion, b.motion, equal_nan=True)


def test_large_frames_are_scaled_and_boxes_reported_in_the_videos_own_pixels(tmp_path):
    big = [np.kron(frame, np.ones((2, 2, 1), np.uint8)) for frame in face_frames(8, width=480, height=320)]
    path = tmp_path / "big.mp4"
    write_video(path, big)
    full = FacePass(FaceDetection(size=64, max_side=None)).run(path, [0])
    scaled = FacePass(FaceDetection(size=64, max_side=480)).run(path, [0])
    assert full.info.width == scaled.info.width == 960
    (a,), (b,) = full.faces, scaled.faces
    assert np.allclose(a.box, b.box, atol=6.0)  # one pixel of the half-size frame is two here
    assert np.abs(a.crop.astype(int) - b.crop.astype(int)).mean() < 12


def test_photos_and_broken_files(tmp_path, broken_files):
    import cv2

    from unmask.sample import astronaut

    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    found = FacePass(FaceDetection(size=64), MOTION_ON).run(photo, [0])
    assert found.photo and len(found.faces) == 1 and np.isnan(found.faces[0].motion).all()
    # a photo larger than the bound is scaled like a video frame; its box stays in the photo's own pixels
    small = FacePass(FaceDetection(size=64, max_side=400)).run(photo, [0])
    assert len(small.faces) == 1
    np.testing.assert_allclose(small.faces[0].box, found.faces[0].box, atol=8.0)
    for kind in ("empty", "text", "garbage"):
        with pytest.raises(VideoError):
            FacePass(FaceDetection(size=64)).run(broken_files[kind], [0])
