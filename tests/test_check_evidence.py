"""What a verdict rests on: damaged videos, still images, filtered tracks, and a batch that never dies."""
from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest

import unmask.faces.face_pass
from unmask.check import ERROR, FAKE, REAL, Checker, CheckSettings, certainty, judged_tracks
from unmask.cli import main
from unmask.sample import astronaut
from unmask.video import write_video

from conftest import face_frames


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def checker(released_model) -> Checker:
    return Checker(released_model)


@pytest.fixture(scope="module")
def corrupt_middle(tmp_path_factory) -> str:
    """8 s of the astronaut with a keyframe every second, and a sixth of its bytes garbled in the middle."""
    path = tmp_path_factory.mktemp("videos") / "corrupt-middle.mp4"
    write_video(path, face_frames(200), gop=25)
    data = bytearray(path.read_bytes())
    third, sixth = len(data) // 3, len(data) // 6
    data[third:third + sixth] = np.random.default_rng(0).integers(0, 256, sixth, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def mostly_damaged(tmp_path_factory) -> str:
    """The drifting astronaut of ``corrupt_middle`` with 60% of its bytes garbled, from a fifth in: the
    face is seen at both ends only, far apart."""
    path = tmp_path_factory.mktemp("videos") / "mostly-damaged.mp4"
    write_video(path, face_frames(200), gop=25)
    data = bytearray(path.read_bytes())
    start, end = len(data) // 5, len(data) * 4 // 5
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_the_line_a_person_reads_says_what_the_verdict_rests_on(released_model, mostly_damaged, tmp_path, capsys):
    """Issue 30.5: the JSON said a verdict rested on a few frames or on a photo; the plain line did not
    (and the one person was split into two tracks across the damage, and a photo was "1 frames")."""
    assert main(["check", str(mostly_damaged), "--model", str(released_model)]) == 0
    verdict, *warnings = capsys.readouterr().out.splitlines()
    assert re.match(r".+: (FAKE|REAL) \(fake probability 0\.\d\d, \w+( \w+)?\) - \d frames, 1 face track, ", verdict)
    assert warnings and re.match(r"  warning: only \d of the 16 frames asked for could be decoded \(damaged or "
                                 r"missing: frames \d+-\d+\)", warnings[0]), warnings
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(astronaut(), (256, 256)), cv2.COLOR_RGB2BGR))
    assert main(["check", str(photo), "--model", str(released_model)]) == 0
    verdict, *warnings = capsys.readouterr().out.splitlines()
    assert " - a still image, 1 face track, " in verdict
    assert warnings == ["  warning: a still image: judged by the look of its face alone",
                        "  warning: the verdict rests on 1 face: too little to be sure"]


def test_a_damaged_middle_is_read_around_and_said(checker, corrupt_middle):
    result = checker.check(corrupt_middle)
    assert result.verdict in (FAKE, REAL)
    assert result.frames_asked == 16 and 8 <= result.frames_sampled < 16
    assert result.damaged_frames and all(a <= b for a, b in result.damaged_frames)
    assert {f.frame for f in result.faces} <= set(CheckSettings().frame_indices(200))
    missing = sum(1 for a, b in result.damaged_frames for f in CheckSettings().frame_indices(200) if a <= f <= b)
    assert missing == 16 - result.frames_sampled
    assert any(f"{result.frames_sampled} of the 16 frames" in w for w in result.warnings)


def test_still_images_are_judged_as_such(checker, tmp_path):
    portrait = cv2.cvtColor(cv2.resize(astronaut(), (256, 256)), cv2.COLOR_RGB2BGR)
    photo, renamed, one_frame = tmp_path / "face.png", tmp_path / "photo.mp4", tmp_path / "one-frame.mp4"
    cv2.imwrite(str(photo), portrait)
    shutil.copy(photo, renamed)
    write_video(one_frame, [cv2.cvtColor(portrait, cv2.COLOR_BGR2RGB)])
    for path in (photo, renamed, one_frame):
        result = checker.check(path)
        assert result.verdict in (FAKE, REAL), (path, result.error)
        assert result.still_image and any("still image" in w for w in result.warnings), path
        assert result.certainty == "unsure" and len(result.faces) == 1, path  # one look is never sure
        assert any("rests on 1 face" in w for w in result.warnings)


def test_certainty_grows_with_the_evidence():
    assert certainty(0.99, 0.5) == "very sure"
    assert certainty(0.99, 0.5, faces=1) == "unsure"
    assert certainty(0.99, 0.5, faces=3) == "fairly sure"
    assert certainty(0.01, 0.5, faces=16) == "very sure"
    assert certainty(0.55, 0.5, faces=16) == "unsure"


def test_a_verdict_even_when_the_longest_track_is_small_and_the_largest_short():
    # as in a DFDC video: a small face in every frame, a large one in a few
    sizes, lengths = {0: 60.0, 1: 200.0}, {0: 16, 1: 2}
    assert judged_tracks(sizes, lengths, min_face_share=0.5, min_track_share=0.2) == {1}
    assert judged_tracks({0: 100.0, 1: 90.0, 2: 95.0}, {0: 16, 1: 1, 2: 9}, 0.5, 0.2) == {0, 2}
    assert judged_tracks({}, {}, 0.5, 0.2) == set()


def test_a_video_whose_faces_all_fail_the_old_filters_gets_a_verdict(checker, tmp_path):
    small = cv2.resize(astronaut(), (90, 90), interpolation=cv2.INTER_AREA)
    large = cv2.resize(astronaut(), (230, 230), interpolation=cv2.INTER_AREA)[:, ::-1]
    frames = []
    for i in range(80):
        canvas = np.full((300, 600, 3), 100, np.uint8)
        canvas[20:110, 20 + i // 4:110 + i // 4] = small  # always there, small
        if i < 8:  # big, but in only the first sampled frames
            canvas[40:270, 320:550] = large
        frames.append(canvas)
    path = tmp_path / "small-long-large-short.mp4"
    write_video(path, frames)
    result = checker.check(path)
    assert result.verdict in (FAKE, REAL), result.error
    assert len(result.tracks) == 1 and result.tracks[0]["faces"] <= 3


def test_a_batch_goes_on_whatever_one_video_does(tmp_path, face_video, released_model, capsys, monkeypatch):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("a.mp4", "b-explodes.mp4", "c.mp4"):
        shutil.copy(face_video, folder / name)
    run = unmask.faces.face_pass.FacePass.run

    def explode_on_b(self, path, sampled, decode_threads=None):  # fault injection: anything going wrong in one video
        if "explodes" in str(path):
            raise RuntimeError("something nobody foresaw\nsecond line")
        return run(self, path, sampled, decode_threads)

    monkeypatch.setattr(unmask.faces.face_pass.FacePass, "run", explode_on_b)
    assert main(["check", str(folder), "--model", str(released_model), "--frames", "4", "--json"]) == 1
    records = _records(capsys.readouterr().out)
    assert [r["verdict"] for r in records][1] == ERROR and [r["verdict"] for r in records][::2] != [ERROR, ERROR]
    assert records[1]["error"] == "could not be checked (RuntimeError: something nobody foresaw)"
    assert main(["check", str(folder), "--model", str(released_model), "--frames", "4"]) == 1
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if not line.startswith("  warning: ")]
    assert len(lines) == 4 and lines[1].endswith("ERROR - could not be checked (RuntimeError: something nobody foresaw)")
    assert lines[3].startswith("3 videos: ") and "1 ERROR" in lines[3]


def test_check_many_keeps_the_order_with_the_next_video_decoding_ahead(checker, face_video, faceless_video,
                                                                       broken_files):
    """The videos in flight share one detector and detect at the same time: each gets what it gets alone."""
    alone = checker.check(face_video)
    paths = [face_video, broken_files["text"], face_video, faceless_video, face_video]
    results = list(checker.check_many(paths))
    assert [path for path, _ in results] == paths
    assert [r.verdict for _, r in results][1::2] == [ERROR, "NO FACE FOUND"]
    for _, result in results[::2]:
        assert result.fake_probability == pytest.approx(alone.fake_probability, abs=1e-6)
        boxes = [f.box for f in result.faces]  # rounded to 0.1 px
        np.testing.assert_allclose(boxes, [f.box for f in alone.faces], atol=0.11)
