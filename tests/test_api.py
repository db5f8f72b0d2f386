"""The Python API (`from unmask import Detector`) on generated videos: the same verdicts, records
and reports as `unmask check`, a folder through `check_many`, and bad input."""
import dataclasses
import inspect
import json
import copy
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from unmask import Detector, Result, UnmaskError
from unmask.check import ERROR, FAKE, NO_FACE, REAL
from unmask.cli import main
from unmask.config import CheckSettings
from unmask.models.io import default_model_dir
from unmask.sample import astronaut, make_sample_video


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory):
    """What `unmask sample` writes (the public-domain portrait, 1280x720), 2 s long."""
    return make_sample_video(tmp_path_factory.mktemp("sample") / "sample.mp4", seconds=2)


@pytest.fixture(scope="module")
def default_detector():
    return Detector()


@pytest.fixture(scope="module")
def released_detector(released_model):
    return Detector(released_model)


def assert_same_record(ours, theirs, where="record"):
    """Equal JSON values, floats within 1e-6."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(ours) == sorted(theirs), where
        for key in theirs:
            assert_same_record(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_record(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-6), where
    else:
        assert ours == theirs, where


def test_the_default_model_judges_the_sample_video(default_detector, sample_video):
    result = default_detector.check(sample_video)
    assert isinstance(result, Result)
    card = json.loads((default_model_dir() / "card.json").read_text())
    assert result.model["name"] == default_detector.model["name"] == card["title"]
    assert result.threshold == default_detector.threshold == card.get("threshold", 0.5)
    assert result.verdict in (FAKE, REAL) and 0.0 <= result.fake_probability <= 1.0
    assert result.verdict == (FAKE if result.fake_probability > result.threshold else REAL)
    assert result.certainty in ("very sure", "fairly sure", "unsure")
    assert (result.width, result.height, result.frames_sampled) == (1280, 720, 16)
    assert len(result.tracks) == 1 and result.tracks[0]["faces"] == len(result.faces) == 16
    assert result.fake_probability == pytest.approx(result.tracks[0]["fake_probability"])
    assert result.warnings == [] and result.error is None
    # the model stays loaded: checking again gives the same scores
    again = default_detector.check(str(sample_video))
    assert again.fake_probability == pytest.approx(result.fake_probability, abs=1e-9)


def test_a_model_folder_and_settings_as_keywords(released_model, short_face_video):
    detector = Detector(released_model, frames=8, aggregate="max", min_confidence=0.95)
    assert detector.settings == CheckSettings(frames=8, aggregate="max", min_confidence=0.95)
    result = detector.check(short_face_video)
    assert result.model["name"] == "MesoInception-4 (released weights)" and result.aggregate == "max"
    assert result.frames_sampled == 8 and len(result.faces) == 8
    assert all(face.detection_confidence > 0.95 for face in result.faces)
    assert result.fake_probability == pytest.approx(max(face.fake_probability for face in result.faces))


def test_every_setting_of_the_check_is_a_keyword_with_its_default():
    parameters = inspect.signature(Detector).parameters
    settings = {field.name: field.default for field in dataclasses.fields(CheckSettings)}
    assert {name: parameters[name].default for name in settings} == settings
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in settings)
    assert set(parameters) == {"model", *settings}


def test_to_dict_is_the_cli_json_record(released_detector, released_model, short_face_video, capsys):
    ours = released_detector.check(short_face_video).to_dict()
    assert main(["check", str(short_face_video), "--model", str(released_model), "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert theirs["verdict"] in (FAKE, REAL)
    ours.pop("elapsed_s"), theirs.pop("elapsed_s")
    assert_same_record(json.loads(json.dumps(ours)), theirs)


def test_check_many_takes_folders_and_files_in_order(released_detector, short_face_video, faceless_video, tmp_path):
    folder = tmp_path / "videos"
    (folder / "more").mkdir(parents=True)
    shutil.copy(short_face_video, folder / "a.mp4")
    shutil.copy(faceless_video, folder / "more" / "b.mp4")
    (folder / "notes.txt").write_text("not a video, and not looked at")
    results = released_detector.check_many([folder, str(short_face_video)])
    assert inspect.isgenerator(results)
    results = list(results)
    assert [r.path for r in results] == [str(folder / "a.mp4"), str(folder / "more" / "b.mp4"), str(short_face_video)]
    assert [r.verdict in (FAKE, REAL) for r in results] == [True, False, True]
    assert results[1].verdict == NO_FACE and results[1].faces == []
    assert results[0].fake_probability == pytest.approx(results[2].fake_probability, abs=1e-6)
    # one path on its own, a folder included
    assert [r.path for r in released_detector.check_many(folder / "more")] == [str(folder / "more" / "b.mp4")]


def test_check_many_takes_the_photos_in_a_folder(released_detector, tmp_path):
    cv2.imwrite(str(tmp_path / "portrait.jpg"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    (result,) = released_detector.check_many(tmp_path)
    assert result.path == str(tmp_path / "portrait.jpg") and result.verdict in (FAKE, REAL)
    assert result.still_image and len(result.faces) == 1


def test_a_bad_file_in_check_many_is_an_error_result(released_detector, broken_files, short_face_video, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = [broken_files["garbage"], tmp_path / "missing.mp4", empty, short_face_video, broken_files["text"]]
    results = list(released_detector.check_many(paths))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.verdict for r in results[:3]] == [ERROR] * 3 and results[4].verdict == ERROR
    for bad in results[:3] + results[4:]:
        assert bad.error and "\n" not in bad.error and bad.fake_probability is None and bad.faces == []
    assert results[1].error == "no such file" and results[2].error == "no videos to check in this folder"
    assert results[3].verdict in (FAKE, REAL)  # the batch went on


def test_a_corrupt_video_checked_alone_is_an_error_result(released_detector, broken_files):
    result = released_detector.check(broken_files["empty"])
    assert result.verdict == ERROR and result.error and result.to_dict()["error"] == result.error


def test_save_report_writes_the_html_report(released_detector, short_face_video, tmp_path):
    result = released_detector.check(short_face_video)
    written = result.save_report(tmp_path / "report.html")
    assert written == tmp_path / "report.html"
    html = written.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and f"{short_face_video.name}: {result.verdict}" in html
    assert html.count('class="face') >= len(result.faces) and "http://" not in html and "https://" not in html


def test_a_result_copied_out_of_its_process_leaves_its_model_behind(released_detector, short_face_video, tmp_path):
    """What Dask sends between processes is the result's state (``__getstate__``, as deepcopy takes it):
    the record and the crops, not the model."""
    result = released_detector.check(short_face_video)
    copied = copy.deepcopy(result)
    assert copied.to_dict() == result.to_dict()
    assert all(np.array_equal(a, b) for a, b in zip(copied.crops, result.crops))
    with pytest.raises(UnmaskError, match="check the video again with a Detector"):
        copied.save_report(tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda folder: Detector(folder / "no-such-model"), "no model folder .*no-such-model.*'default'"),
    (lambda folder: Detector(folder), "is not a model folder"),
    (lambda folder: Detector(frames=0), "frames must be at least 1"),
    (lambda folder: Detector(min_confidence=1.5), "min_confidence must lie between 0 and 1"),
    (lambda folder: Detector(aggregate="mode"), "unknown frame aggregate 'mode'; choose one of"),
    (lambda folder: Detector(max_side=10), "at least 64 pixels"),
])
def test_a_bad_model_or_setting_is_one_clear_error(setup, message, tmp_path):
    with pytest.raises(UnmaskError, match=message) as error:
        setup(tmp_path)
    assert "\n" not in str(error.value)


def test_checking_a_missing_file_or_a_folder_alone_raises(released_detector, tmp_path):
    with pytest.raises(UnmaskError, match="no such file: .*missing.mp4"):
        released_detector.check(tmp_path / "missing.mp4")
    with pytest.raises(UnmaskError, match="is a folder; check_many checks every video in it"):
        released_detector.check(tmp_path)


def test_the_default_model_by_name():
    assert Detector("default").model == Detector().model


def test_importing_unmask_stays_light_until_the_api_is_asked_for():
    probe = ("import sys, unmask; light = sorted(m for m in sys.modules if m in ('unmask.api', 'numpy', 'cv2'))\n"
             "from unmask import Detector\n"
             "print(light, Detector.__module__, 'unmask.api' in sys.modules)\n"
             "try:\n    unmask.Nothing\nexcept AttributeError as err:\n    print(err)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[] unmask.api True", "module 'unmask' has no attribute 'Nothing'"]
