"""`unmask check` end to end on generated videos: verdict lines, JSON records, reports, errors."""
import base64
import json
import re
import shutil

import cv2
import numpy as np
import pytest

from unmask.check import ERROR, FAKE, NO_FACE, REAL, Checker, CheckSettings
from unmask.faces.tracks import link_tracks
from unmask.cli import main
from unmask.models.io import default_model_dir
from unmask.sample import astronaut
from unmask.video import probe, write_video

VERDICT_LINE = re.compile(r"^(?P<name>.+): (?P<verdict>FAKE|REAL) \(fake probability (?P<p>[01]\.\d\d), "
                          r"(?P<sure>very sure|fairly sure|unsure)\) - 16 frames, (?P<tracks>\d+) face tracks?, "
                          r"\d+\.\d s$")


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def two_people_frames(count: int = 40) -> list[np.ndarray]:
    """Two portraits side by side: the astronaut, and her mirror image with a blue tint."""
    face = cv2.resize(astronaut(), (260, 260), interpolation=cv2.INTER_AREA)
    other = np.clip(face[:, ::-1].astype(int) + [-30, 0, 40], 0, 255).astype(np.uint8)
    frames = []
    for i in range(count):
        canvas = np.full((320, 640, 3), 110, np.uint8)
        shift = int(20 * i / count)
        canvas[20 + shift // 2:280 + shift // 2, 20 + shift:280 + shift] = face
        canvas[30:290, 360 - shift:620 - shift] = other
        frames.append(canvas)
    return frames


def test_link_tracks_follows_each_face_and_opens_new_ones():
    a = [np.array([10, 10, 60, 60]), np.array([14, 12, 64, 62]), np.array([18, 14, 68, 64])]
    b = [np.array([200, 10, 250, 60]), np.array([196, 12, 246, 62])]
    newcomer = np.array([100, 150, 140, 190])
    # B listed first in the second frame, A alone in the third, plus a new face there
    ids = link_tracks([[a[0], b[0]], [b[1], a[1]], [a[2], newcomer]], min_iou=0.3)
    assert ids == [[0, 1], [1, 0], [0, 2]]
    # two boxes in one frame never share a track, even when both overlap the same old box
    assert link_tracks([[a[0]], [a[1], a[2]]], min_iou=0.3) == [[0], [0, 1]]


def test_a_track_survives_a_gap_of_damaged_frames():
    """Across frames that could not be decoded a face may have moved anywhere: it continues the
    track of a face of like size, nearest first; without a gap, no overlap still means a new person."""
    left, right = np.array([10, 10, 60, 60]), np.array([200, 10, 250, 60])
    moved_left, moved_right = np.array([70, 20, 122, 72]), np.array([260, 10, 308, 58])  # no overlap left
    tiny = np.array([400, 200, 410, 210])
    frames = [[left, right], [moved_right, tiny, moved_left]]
    assert link_tracks(frames, min_iou=0.3) == [[0, 1], [2, 3, 4]]
    assert link_tracks(frames, min_iou=0.3, after_gap=[False, True]) == [[0, 1], [1, 2, 0]]


def test_face_video_gives_a_verdict_with_traced_faces(face_video, released_model, capsys):
    assert main(["check", str(face_video), "--model", str(released_model), "--json"]) == 0
    out, err = capsys.readouterr()
    (record,) = _records(out)
    assert err == ""
    assert record["path"] == str(face_video)
    assert record["verdict"] in (FAKE, REAL) and 0.0 <= record["fake_probability"] <= 1.0
    assert record["certainty"] in ("very sure", "fairly sure", "unsure")
    assert record["model"]["name"] == "MesoInception-4 (released weights)" and record["threshold"] == 0.5
    assert record["frames_sampled"] == 16 and record["frame_count"] == 200 and record["fps"] == 25.0
    assert (record["width"], record["height"]) == (480, 320) and record["elapsed_s"] > 0
    assert len(record["tracks"]) == 1 and record["tracks"][0]["faces"] == 16
    assert record["fake_probability"] == pytest.approx(np.mean([f["fake_probability"] for f in record["faces"]]))
    frames = [f["frame"] for f in record["faces"]]
    assert frames == CheckSettings().frame_indices(200) and frames[0] == 0 and frames[-1] == 199
    for face in record["faces"]:
        assert face["time"] == pytest.approx(face["frame"] / 25.0)
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 480 and 0 <= y1 < y2 <= 320 and face["detection_confidence"] > 0.9
    assert record["faces"][-1]["box"][0] > record["faces"][0]["box"][0] + 20  # the face drifts right

    # the same check for people: one line
    assert main(["check", str(face_video), "--model", str(released_model), "--frames", "8"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.match(VERDICT_LINE.pattern.replace("16 frames", "8 frames"), line), line
    assert line.startswith(f"{face_video}: {record['verdict']} (fake probability ")


def test_faceless_video_is_no_face_found_and_exits_zero(faceless_video, released_model, capsys):
    assert main(["check", str(faceless_video), "--model", str(released_model)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{faceless_video}: NO FACE FOUND - 16 frames") and "\n" not in line


@pytest.mark.parametrize("kind,reason", [("text", "not a readable video"), ("garbage", "not a readable video"),
                                         ("empty", "empty file")])
def test_unreadable_file_is_one_error_line_and_exit_one(broken_files, released_model, capsys, kind, reason):
    assert main(["check", str(broken_files[kind]), "--model", str(released_model)]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == out.strip().splitlines()[0]  # one line
    assert out.startswith(f"{broken_files[kind]}: ERROR - ") and reason in out
    assert "Traceback" not in out + err


def test_folder_gives_one_json_line_per_video_and_a_report_each(tmp_path, face_video, faceless_video, broken_files,
                                                                released_model, capsys):
    folder = tmp_path / "videos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(face_video, folder / "a-face.mp4")
    shutil.copy(faceless_video, folder / "nested" / "b-nothing.MP4")
    shutil.copy(broken_files["text"], folder / "nested" / "c-notes.mp4")
    (folder / "readme.txt").write_text("not a video name: skipped")
    reports = tmp_path / "reports"
    assert main(["check", str(folder), "--model", str(released_model), "--json", "--report-dir", str(reports)]) == 1
    records = _records(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(folder / "a-face.mp4"), str(folder / "nested" / "b-nothing.MP4"),
                                            str(folder / "nested" / "c-notes.mp4")]
    assert [r["verdict"] for r in records][1:] == [NO_FACE, ERROR]
    assert records[2]["error"].startswith("not a readable video")
    assert sorted(p.name for p in reports.iterdir()) == ["a-face.html", "b-nothing.html", "c-notes.html"]
    assert [r["report"] for r in records] == [str(reports / n) for n in ("a-face.html", "b-nothing.html",
                                                                         "c-notes.html")]
    assert "could not be checked: not a readable video" in (reports / "c-notes.html").read_text()

    # without the broken file everything ran: exit 0, and a summary line after the verdicts
    (folder / "nested" / "c-notes.mp4").unlink()
    assert main(["check", str(folder), "--model", str(released_model)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith(f"{folder / 'nested' / 'b-nothing.MP4'}: NO FACE FOUND")
    assert lines[2] == f"2 videos: 1 {records[0]['verdict']}, 1 NO FACE FOUND"


def test_report_is_self_contained_html_with_faces_timeline_and_heatmaps(tmp_path, face_video, released_model, capsys):
    video = tmp_path / "clip <b>&'quoted'.mp4"  # the name must come out escaped
    shutil.copy(face_video, video)
    report = tmp_path / "out" / "report.html"
    assert main(["check", str(video), "--model", str(released_model), "--report", str(report)]) == 0
    verdict = VERDICT_LINE.match(capsys.readouterr().out.splitlines()[0])["verdict"]
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert f"<div class=\"verdict\">{verdict}</div>" in page
    assert "clip &lt;b&gt;&amp;&#x27;quoted&#x27;.mp4" in page and "<b>&" not in page
    assert "MesoInception-4 (released weights)" in page and "threshold 0.50" in page
    # everything embedded: no links out, no scripts, every image a data: URL
    text = re.sub(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|ftp:|(src|href)=\"//|url\(|@import", text, re.I)
    assert "<script" not in page and "<link" not in page and "<iframe" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert sum(s.startswith("data:image/png") for s in sources) == 1  # the score timeline
    assert len(re.findall(r'alt="face at frame \d+"', page)) == 16
    assert len(re.findall(r'alt="heatmap of face at frame \d+"', page)) == 16  # Grad-CAM: a CNN model
    assert "frame 0 &middot; 0.00 s" in page and "frame 199 &middot; 7.96 s" in page
    # the embedded images decode
    jpeg = next(s for s in sources if s.startswith("data:image/jpeg"))
    image = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (144, 144, 3)


def test_report_shows_an_even_selection_of_many_faces(tmp_path, face_video, released_model):
    report = tmp_path / "many.html"
    assert main(["check", str(face_video), "--model", str(released_model), "--frames", "70", "--report",
                 str(report)]) == 0
    page = report.read_text()
    assert "Showing 64 of 70 faces." in page and len(re.findall(r'alt="face at frame \d+"', page)) == 64
    assert len(re.findall(r'alt="heatmap of face at frame \d+"', page)) == 64
    assert 'alt="face at frame 0"' in page and 'alt="face at frame 199"' in page


def test_no_face_report_says_so(tmp_path, faceless_video, released_model):
    report = tmp_path / "nothing.html"
    assert main(["check", str(faceless_video), "--model", str(released_model), "--report", str(report)]) == 0
    page = report.read_text()
    assert "NO FACE FOUND" in page and "No face was found in the 16 frames" in page and "data:image" not in page


def test_two_people_give_two_tracks_and_the_verdict_follows_the_worse(tmp_path, released_model, capsys):
    video = tmp_path / "two.mp4"
    write_video(video, two_people_frames())
    assert main(["check", str(video), "--model", str(released_model), "--json", "--report",
                 str(tmp_path / "two.html")]) == 0
    (record,) = _records(capsys.readouterr().out)
    assert len(record["tracks"]) == 2 and [t["faces"] for t in record["tracks"]] == [16, 16]
    worst = max(t["fake_probability"] for t in record["tracks"])
    assert record["tracks"][0]["fake_probability"] == worst == record["fake_probability"]
    assert record["verdict"] == (FAKE if worst > record["threshold"] else REAL)
    for track in record["tracks"]:
        boxes = np.array([f["box"] for f in record["faces"] if f["track"] == track["track"]])
        assert np.ptp(boxes[:, 0]) < 40  # each track stays on one side: one person each
    page = (tmp_path / "two.html").read_text()
    assert "People in the video" in page and "track 0: fake probability" in page and "track 1: fake probability" in page


def test_options_reach_the_checker(face_video, released_model, capsys):
    assert main(["check", str(face_video), "--model", str(released_model), "--json", "--frames", "5",
                 "--aggregate", "max", "--min-confidence", "0.5", "--device", "cpu"]) == 0
    (record,) = _records(capsys.readouterr().out)
    assert record["frames_sampled"] == 5 and record["aggregate"] == "max"
    assert record["fake_probability"] == pytest.approx(max(f["fake_probability"] for f in record["faces"]))


def test_a_classical_model_reports_without_heatmaps(tmp_path, ffpp_tree, face_video, capsys):
    from unmask.config import FaceDetection, PrepareConfig
    from unmask.datasets import open_dataset
    from unmask.prepare import prepare_dataset
    from unmask.store import FaceStore
    from unmask.train import TrainOptions, train

    prepare_dataset(open_dataset(ffpp_tree), tmp_path / "faces", PrepareConfig(faces=FaceDetection(size=64)))
    model = tmp_path / "rf"
    train(FaceStore(tmp_path / "faces"), TrainOptions(model="rf", features="pixels-small", split="none",
                                                       params={"n_estimators": 20}), model)
    report = tmp_path / "rf.html"
    assert main(["check", str(face_video), "--model", str(model), "--report", str(report)]) == 0
    assert VERDICT_LINE.match(capsys.readouterr().out.splitlines()[0])
    page = report.read_text()
    assert "Heatmaps are not available for this model kind (rf on pixels-small)" in page
    assert len(re.findall(r'alt="face at frame', page)) == 16 and "heatmap of face" not in page


def test_bad_input_gives_one_line_and_exit_two(tmp_path, face_video, released_model, capsys):
    cases = [
        (["check", str(tmp_path / "missing.mp4")], "no such file or folder"),
        (["check", str(tmp_path)], "no videos or photos under"),
        (["check", str(face_video), str(face_video), "--report", str(tmp_path / "r.html")], "--report-dir"),
        (["check", str(face_video), "--model", str(tmp_path)], "is not a model folder"),
        (["check", str(face_video), "--model", str(released_model), "--aggregate", "mode"], "unknown frame aggregate"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("unmask check: error: ") and err.count("\n") == 1 and message in err, err
    for bad in (["--frames", "0"], ["--min-confidence", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["check", str(face_video), *bad])
        assert exit_info.value.code == 2


def test_checker_is_reused_across_videos(face_video, faceless_video, released_model):
    checker = Checker(released_model)
    first, none, again = checker.check(face_video), checker.check(faceless_video), checker.check(face_video, name="x")
    assert none.verdict == NO_FACE and none.fake_probability is None and none.faces == [] and none.crops == []
    assert again.path == "x" and again.fake_probability == pytest.approx(first.fake_probability)
    assert len(first.crops) == 16 and first.crops[0].shape == (256, 256, 3)
    assert "crops" not in first.to_dict()


@pytest.mark.skipif(not (default_model_dir() / "card.json").is_file(),
                    reason=f"no default model packaged at {default_model_dir()}")
def test_readme_first_commands_sample_then_check_with_the_default_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--seconds", "2"]) == 0
    assert "wrote sample.mp4" in capsys.readouterr().out
    info = probe(tmp_path / "sample.mp4")
    assert (info.width, info.height, info.frame_count) == (1280, 720, 50)
    assert main(["check", "sample.mp4", "--json"]) == 0
    (record,) = _records(capsys.readouterr().out)
    assert record["verdict"] in (FAKE, REAL) and record["model"]["path"] == str(default_model_dir())
    assert len(record["tracks"]) == 1 and len(record["faces"]) == 16
    # The default model also judges motion: the report says its heatmaps show only the CNN's part.
    assert main(["check", "sample.mp4", "--report", "report.html"]) == 0
    assert "how the face changed over the next frames" in (tmp_path / "report.html").read_text()


def test_sample_refuses_a_name_that_is_not_a_video(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "sample.txt")]) == 2
    assert "give the video a video file name" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "no" / "such" / "dir.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_report_path_that_is_not_a_regular_file_is_refused_before_the_check(tmp_path, face_video,
                                                                             released_model, capsys):
    """Issue 30.2: the report was renamed over whatever the path held (a device, a FIFO, a link) after
    the check. Now only a missing path or a regular file is written, and that is known before the check."""
    import os
    import stat
    from pathlib import Path

    folder, pipe, link, target = tmp_path / "reports", tmp_path / "pipe.html", tmp_path / "link.html", tmp_path / "t"
    folder.mkdir()
    os.mkfifo(pipe)
    target.write_text("kept")
    link.symlink_to(target)
    (tmp_path / "file").write_text("not a folder")
    inside_a_file = tmp_path / "file" / "r.html"
    cases = [(folder, "is a folder"), (pipe, "is a named pipe (FIFO)"), (link, "is a symbolic link"),
             (inside_a_file, f"cannot write {inside_a_file}: {tmp_path / 'file'} is not a folder")]
    if Path("/dev/full").exists():
        cases.append((Path("/dev/full"), "is a character device"))
    for path, words in cases:
        assert main(["check", str(face_video), "--model", str(released_model), "--report", str(path)]) == 2, path
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and words in err and err.startswith("unmask check: error: "), err
    (folder / f"{face_video.stem}.html").symlink_to(target)  # one report of --report-dir would replace a link
    assert main(["check", str(face_video), "--model", str(released_model), "--report-dir", str(folder)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode) and link.is_symlink() and target.read_text() == "kept"
    assert not Path("/dev/full").exists() or stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link.html", "pipe.html", "reports", "t"]


def test_a_report_that_cannot_be_written_is_named_as_given_not_by_its_temporary_name(tmp_path):
    import errno

    from unmask.util import atomic_path

    report = tmp_path / "report.html"
    with pytest.raises(OSError) as failed:
        with atomic_path(report) as tmp:  # a full disk, as the write into the temporary file meets it
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert failed.value.filename == str(report) and failed.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_photos_is_checked_like_the_photos_themselves(tmp_path, released_model, capsys):
    """Issue 31.4: `unmask check faces/` said "no video files under faces/" for a folder of photos."""
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    portrait = cv2.cvtColor(cv2.resize(astronaut(), (256, 256)), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "a.jpg"), portrait)
    cv2.imwrite(str(folder / "more" / "b.PNG"), portrait[:, ::-1])
    (folder / "notes.txt").write_text("neither a video nor a photo: skipped")
    assert main(["check", str(folder), "--model", str(released_model), "--json"]) == 0
    records = _records(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(folder / "a.jpg"), str(folder / "more" / "b.PNG")]
    assert all(r["verdict"] in (FAKE, REAL) and r["still_image"] for r in records)
    assert main(["check", str(folder / "a.jpg"), "--model", str(released_model), "--json"]) == 0
    assert _records(capsys.readouterr().out)[0]["fake_probability"] == pytest.approx(records[0]["fake_probability"])


def test_a_broken_link_in_a_folder_gets_its_record(tmp_path, face_video, released_model, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(face_video, folder / "a.mp4")
    (folder / "b.mp4").symlink_to(tmp_path / "moved-away.mp4")
    assert main(["check", str(folder), "--model", str(released_model), "--json"]) == 1
    records = _records(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(folder / "a.mp4"), str(folder / "b.mp4")]
    assert records[1]["verdict"] == ERROR
    assert records[1]["error"] == f"a broken link (to {tmp_path / 'moved-away.mp4'}, which does not exist)"


def test_readme_and_the_cli_docstring_give_the_same_exit_codes():
    from pathlib import Path

    import unmask.cli

    def exit_codes(text: str) -> str:
        return " ".join(re.search(r"Exit codes: .+?\)\.", text, re.DOTALL)[0].split())

    documented = exit_codes(unmask.cli.__doc__)
    readme = (Path(unmask.cli.__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert exit_codes(readme) == documented
    assert [int(code) for code in re.findall(r"(\d+) = ", documented)] == [0, 1, 2, 130]
