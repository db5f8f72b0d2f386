"""Motion residual features: a face that flickers from frame to frame (as one synthesised frame
by frame does) stands out from a face that only moves; prepare --motion stores them.

Data: the public-domain astronaut portrait drifting across a noisy frame (``unmask.sample``),
and the same clip with a flicker painted into the face ellipse only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from unmask.cli import main
from unmask.config import MOTION_ON, MotionSampling
from unmask.errors import UnmaskError
from unmask.faces.crop import keypoints_in_crop
from unmask.faces.mtcnn import MTCNN
from unmask.faces.motion import (
    MOTION_COLUMNS,
    MOTION_FEATURES,
    region_labels,
    motion_features,
    motion_features_of_faces,
    neighbours,
    wanted_frames,
)
from unmask.store import FaceStore
from unmask.video import write_video

from conftest import face_frames, flickering

MARGIN = 0.3
FEATURE = {name: i for i, name in enumerate(MOTION_FEATURES)}


@pytest.fixture(scope="module")
def clips():
    """(honest frames, flickering frames, box and keypoints of the face in frame 0)."""
    honest = face_frames(40, seed=1)[:8]  # drifting 2 px a frame
    face = max(MTCNN(device="cpu").detect([honest[0]])[0], key=lambda d: d.confidence)
    return honest, flickering(honest, seed=2), face.box, face.keypoints


def test_regions_are_the_face_its_border_and_the_rest():
    keypoints = np.array([[93, 110], [166, 110], [128, 141], [99, 170], [158, 171]], np.float32)
    labels = region_labels(keypoints, 256)
    face, edge, outside = (labels == region for region in range(3))
    for x, y in keypoints.astype(int):
        assert face[y, x]
    assert outside[0, 0] and outside[255, 255] and outside[128, 5]
    assert face.sum() > 5000 and edge.sum() > 3000 and outside.sum() > 20000
    gaps = labels == 3  # between face and edge, and between edge and outside
    assert 0 < gaps.sum() < face.sum()


def test_a_flickering_face_stands_out_from_one_that_only_moves(clips):
    honest, fake, box, keypoints = clips
    settings = MotionSampling(offsets=(1, 2, 3))
    real_features = motion_features(honest[:4], box, keypoints, MARGIN, settings)
    fake_features = motion_features(fake[:4], box, keypoints, MARGIN, settings)
    assert real_features.shape == (len(MOTION_FEATURES),) and np.isfinite(real_features).all()

    def contrast(features, name):  # the face against its surroundings, in log units
        return features[FEATURE[f"{name}_face"]] - features[FEATURE[f"{name}_outside"]]

    assert contrast(fake_features, "residual") > contrast(real_features, "residual") + 1.0
    assert contrast(fake_features, "fine_residual") > contrast(real_features, "fine_residual") + 1.0
    # The head moves the same in both clips, and its motion is measured (it drifts to the right).
    assert fake_features[FEATURE["head_motion"]] == pytest.approx(real_features[FEATURE["head_motion"]], abs=0.5)
    assert real_features[FEATURE["head_motion"]] > np.log(0.5)


def test_features_need_a_later_frame_and_many_faces_match_one_by_one(clips):
    honest, fake, box, keypoints = clips
    assert np.isnan(motion_features(honest[:1], box, keypoints, MARGIN, MOTION_ON)).all()
    faces = [(honest[:4], box, keypoints), (fake[:4], box, keypoints), (honest[:1], box, keypoints)]
    together = motion_features_of_faces(faces, MARGIN, MOTION_ON, threads=2)
    one_by_one = np.stack([motion_features(*face, MARGIN, MOTION_ON) for face in faces])
    np.testing.assert_array_equal(together, one_by_one)
    assert motion_features_of_faces([], MARGIN, MOTION_ON).shape == (0, len(MOTION_FEATURES))


def test_the_face_region_follows_the_keypoints_into_the_crop(clips):
    honest, _, box, keypoints = clips
    in_crop = keypoints_in_crop(keypoints, box, honest[0].shape, MARGIN, 256)
    nose = in_crop[2].astype(int)
    assert region_labels(in_crop, 256)[nose[1], nose[0]] == 0


def test_neighbouring_frames_are_read_and_found():
    assert wanted_frames([0, 30, 60], MOTION_ON) == [0, 1, 2, 3, 30, 31, 32, 33, 60, 61, 62, 63]
    assert wanted_frames([0, 30], MotionSampling()) == [0, 30]
    decoded = {i: np.full((2, 2, 3), i, np.uint8) for i in (30, 31, 32)}  # 33 is past the end
    assert [int(image[0, 0, 0]) for image in neighbours(30, decoded, MOTION_ON)] == [30, 31, 32]
    with pytest.raises(UnmaskError, match="at least 1"):
        MotionSampling(offsets=(0,))


def test_prepare_with_motion_stores_the_features_and_without_says_how_to_get_them(tmp_path, capsys):
    honest = face_frames(40, width=640, height=480, seed=1)
    for folder, frames in (("real", honest), ("fake", flickering(honest, seed=2))):
        (tmp_path / "clips" / folder).mkdir(parents=True)
        write_video(tmp_path / "clips" / folder / "clip.mp4", frames)
    assert main(["prepare", str(tmp_path / "clips"), "--out", str(tmp_path / "faces"), "--step", "10",
                 "--frames", "3", "--margin", "0.3", "--size", "64", "--motion", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status_counts"] == {"ok": 2}
    store = FaceStore(tmp_path / "faces")
    assert store.settings["motion"] == {"offsets": [1, 2, 3], "size": 256, "flow": "dis-fast"}
    assert list(store.table.columns[-len(MOTION_COLUMNS):]) == MOTION_COLUMNS
    motion = store.motion()
    assert motion.shape == (6, len(MOTION_FEATURES)) and np.isfinite(motion).all()
    assert (store.videos["motion_s"] > 0).all()
    contrast = motion[:, FEATURE["residual_face"]] - motion[:, FEATURE["residual_outside"]]
    labels = store.table["label"].to_numpy()
    assert contrast[labels == 1].min() > contrast[labels == 0].max()  # H.264 keeps the flicker apart

    assert main(["prepare", str(tmp_path / "clips"), "--out", str(tmp_path / "plain"), "--frames", "2",
                 "--size", "64"]) == 0
    capsys.readouterr()
    # Another optical flow is another store: resuming this one with it is refused.
    assert main(["prepare", str(tmp_path / "clips"), "--out", str(tmp_path / "faces"), "--step", "10",
                 "--frames", "3", "--margin", "0.3", "--size", "64", "--motion", "dis-medium"]) == 2
    assert "flow" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(tmp_path / "clips"), "--out", str(tmp_path / "x"), "--motion", "farneback"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    plain = FaceStore(tmp_path / "plain")
    assert "motion" not in plain.settings and "motion_residual_face" not in plain.table
    with pytest.raises(UnmaskError, match="prepare the faces again with --motion"):
        plain.motion()
    # A store measured with another set of features (an older unmask) is not read as this one.
    older = json.loads((tmp_path / "faces" / "store.json").read_text())
    older["motion_features"] = older["motion_features"][:-1]
    (tmp_path / "faces" / "store.json").write_text(json.dumps(older))
    with pytest.raises(UnmaskError, match="older set of motion features"):
        FaceStore(tmp_path / "faces").motion()
