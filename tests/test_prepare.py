import json

import numpy as np
import pytest

from conftest import SHARED_DATA, make_ffpp_tree, needs_shared_data
from unmask.cli import main
from unmask.config import FaceDetection, FrameSampling, PrepareConfig, preset
from unmask.datasets import Video, open_dataset
from unmask.distributed import cluster_runner
from unmask.faces.crop import crop_face, keypoints_in_crop
from unmask.prepare import make_face_pass, prepare_dataset, process_video
from unmask.store import FaceStore

CONFIG = PrepareConfig(faces=FaceDetection(size=64))


@pytest.fixture(scope="module")
def detector():
    return make_face_pass(CONFIG)


def test_seed_preset_is_the_study():
    seed = preset("seed")
    assert seed.frames.indices(None) == [0, 30, 60, 90, 120, 150, 180]
    assert (seed.faces.min_confidence, seed.faces.margin, seed.faces.size) == (0.9, 0.0, 320)


def test_one_video_gives_seven_faces_traced_to_frame_and_box(face_video, detector):
    video = Video(path=face_video, label=0, key="astronaut.mp4", ids="a")
    shard = process_video(video, CONFIG, detector)
    assert shard.video["status"] == "ok" and shard.video["frames_read"] == 7
    assert [r["frame"] for r in shard.rows] == [0, 30, 60, 90, 120, 150, 180]
    assert shard.faces.shape == (7, 64, 64, 3) and shard.faces.dtype == np.uint8
    from unmask.video import read_frames
    _, frames = read_frames(face_video, [60])
    row = shard.rows[2]
    assert row["confidence"] > 0.9 and row["n_detections"] >= 1
    # the stored crop is exactly the crop of the recorded box in that frame
    box = (row["x1"], row["y1"], row["x2"], row["y2"])
    assert np.array_equal(shard.faces[2], crop_face(frames[0][1], box, 0.0, 64))
    # keypoints map into the crop: eyes above the mouth, inside the crop
    from unmask.store import KEYPOINT_COLUMNS
    points = np.array([row[c] for c in KEYPOINT_COLUMNS]).reshape(5, 2)
    in_crop = keypoints_in_crop(points, box, frames[0][1].shape, 0.0, 64)
    assert (in_crop > 0).all() and (in_crop < 64).all() and in_crop[0, 1] < in_crop[3, 1]
    # the face drifts right over time: boxes follow it
    assert shard.rows[-1]["x1"] > shard.rows[0]["x1"] + 20


def test_faceless_and_broken_videos_are_recorded_with_reasons(faceless_video, broken_files, detector):
    record = process_video(Video(path=faceless_video, label=1, key="g"), CONFIG, detector).video
    assert record["status"] == "no-face" and "no face with confidence over 0.9" in record["reason"]
    record = process_video(Video(path=broken_files["text"], label=1, key="t"), CONFIG, detector).video
    assert record["status"] == "error" and "not a readable video" in record["reason"]


def test_prepare_dataset_resumes_without_duplicates(tmp_path, ffpp_tree):
    scan = open_dataset(ffpp_tree)
    out = tmp_path / "faces"
    partial = type(scan)(root=scan.root, layout=scan.layout, videos=scan.videos[:3])
    first = prepare_dataset(partial, out, CONFIG)
    assert first.processed == 3
    seen = []
    second = prepare_dataset(scan, out, CONFIG, on_video=seen.append)
    assert second.processed == 5 and second.already_done == 3 and len(seen) == 5
    store = FaceStore(out)
    assert len(store.videos) == 8 and store.videos["video"].is_unique
    assert not store.table.duplicated(["video", "frame"]).any()
    capture = second.capture()
    assert capture["real"]["capture_rate"] == 1.0
    assert capture["fake"]["capture_rate"] == pytest.approx(0.5)  # the faceless "fakes" give none
    assert set(store.table["split"]) == {"train", "test"}
    assert store.table.loc[store.table["ids"] == "003_004", "split"].eq("test").all()
    keypoints = store.keypoints()
    assert keypoints.shape == (len(store), 5, 2) and (keypoints > 0).all() and (keypoints < 64).all()


def test_parallel_workers_write_the_same_store(tmp_path, ffpp_tree):
    scan = open_dataset(ffpp_tree)
    one = FaceStore(prepare_dataset(scan, tmp_path / "one", CONFIG) and tmp_path / "one")
    two = FaceStore(prepare_dataset(scan, tmp_path / "two", CONFIG, runner=cluster_runner(CONFIG, workers=2))
                    and tmp_path / "two")
    columns = ["video", "frame", "x1", "y1", "confidence"]
    assert one.table[columns].round(3).equals(two.table[columns].round(3))
    assert np.abs(one.faces.astype(int) - two.faces.astype(int)).max() <= 2


def test_cli_prepare_summary_json_sheet_and_exit_codes(tmp_path, capsys):
    root = make_ffpp_tree(tmp_path / "ff", ids=("001", "002"))
    (root / "original_sequences/youtube/c23/videos/009.mp4").write_text("not a video")
    out = tmp_path / "faces"
    code = main(["prepare", str(root), "--out", str(out), "--size", "48", "--workers", "1", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["videos"] == 5 and summary["status_counts"] == {"ok": 3, "no-face": 1, "error": 1}
    assert summary["per_class"]["real"] == {"videos": 3, "frames": 4, "faces": 4, "capture_rate": 1.0}
    assert [s["video"] for s in summary["skipped"] if s["status"] == "error"] == [
        "original_sequences/youtube/c23/videos/009.mp4"]
    assert (out / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert FaceStore(out).faces.shape[1:] == (48, 48, 3)
    # text summary on a re-run: nothing new to do, still exit 0
    assert main(["prepare", str(root), "--out", str(out), "--size", "48", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "0 processed now, 5 already done" in text and "capture rate 100.00%" in text


def test_cli_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset not found" in err
    root = make_ffpp_tree(tmp_path / "ff", ids=("001", "002"))
    assert main(["prepare", str(root), "--out", str(tmp_path / "o"), "--methods", "DeepFake"]) == 2
    assert "unknown method 'DeepFake'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", str(root), "--out", str(tmp_path / "o"), "--frames", "0"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # an --out the file system refuses to make
    assert main(["prepare", str(root), "--out", str(tmp_path / "dangling" / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("unmask prepare: error:") and "dangling" in err


def test_nothing_processable_exits_one(tmp_path, capsys):
    (tmp_path / "d" / "real").mkdir(parents=True)
    (tmp_path / "d" / "real" / "x.mp4").write_bytes(b"")
    assert main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--workers", "1"]) == 1
    assert "empty file" in capsys.readouterr().out


@needs_shared_data("ffpp-sample")
def test_real_ffpp_video_faces(tmp_path):
    path = SHARED_DATA / "ffpp-sample/original_sequences/youtube/c23/videos/183.mp4"
    config = PrepareConfig(frames=FrameSampling(max_frames=2), faces=FaceDetection(size=320))
    shard = process_video(Video(path=path, label=0, key="183"), config, make_face_pass(config))
    assert shard.video["faces"] == 2 and shard.faces.shape == (2, 320, 320, 3)


def test_ctrl_c_during_a_parallel_prepare_stops_quietly(tmp_path, face_video):
    """Issue 30.6: Ctrl+C (SIGINT to the terminal's process group: the command and its Dask workers)
    exited 130 with the right line, but each worker printed its own KeyboardInterrupt traceback."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    for label in ("real", "fake"):
        (tmp_path / "videos" / label).mkdir(parents=True)
        for k in range(6):
            shutil.copy(face_video, tmp_path / "videos" / label / f"{k}.mp4")
    out = tmp_path / "faces"
    process = subprocess.Popen([sys.executable, "-m", "unmask", "prepare", str(tmp_path / "videos"), "--out", str(out),
                                "--size", "48", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # its own process group, as a terminal gives
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("shards/*.json")) and process.poll() is None:  # the workers are at work
            assert time.monotonic() < deadline, "no video was prepared in 2 minutes"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "unmask prepare: interrupted (finished work is kept; run again to resume)"


def test_face_crops_taken_as_given_keep_the_same_faces_framed_whole(tmp_path, face_video, capsys):
    """`--crop given` (the DFDC faces): each image is the face, resized; the detector still decides which
    images hold a face and where its keypoints are, so only the framing differs from `--crop detected`.
    A video cannot be taken as a crop, and `check` detects faces whatever its model was trained on."""
    import cv2

    from unmask.check import Checker
    from unmask.sample import astronaut
    from unmask.store import FaceStore

    crops = tmp_path / "crops"
    crops.mkdir()
    face = astronaut()[20:260, 150:330]  # a loose crop around her face, taller than wide
    cv2.imwrite(str(crops / "a.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(crops / "b.png"), np.full((120, 100, 3), 128, np.uint8))  # no face in it
    (tmp_path / "faces.csv").write_text("file,label,group,part\na,real,p1,train\nb,fake,p2,train\n")
    stores = {}
    for crop in ("given", "detected"):
        out = tmp_path / crop
        assert main(["prepare", str(tmp_path / "faces.csv"), "--out", str(out), "--size", "64", "--workers", "1",
                     "--crop", crop]) == 0
        stores[crop] = FaceStore(out)
    given, detected = stores["given"], stores["detected"]
    assert list(given.table["video"]) == list(detected.table["video"]) == ["a"]  # b has no face either way
    assert given.settings["faces"]["crop"] == "given"
    np.testing.assert_array_equal(given.faces[0], cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(given.faces[0], detected.faces[0])
    assert given.table["confidence"][0] == pytest.approx(detected.table["confidence"][0], abs=1e-6)
    # the keypoints are the detector's, in the crop's own pixels: the eyes sit in its upper half
    eyes = given.keypoints(np.array([0]))[0][:2]
    assert (eyes[:, 1] < 32).all() and (eyes[:, 0] > 0).all() and (eyes[:, 0] < 64).all()
    capsys.readouterr()

    video_list = tmp_path / "videos.csv"
    video_list.write_text(f"path,label\n{face_video},real\n")
    main(["prepare", str(video_list), "--out", str(tmp_path / "v"), "--size", "64", "--workers", "1",
          "--crop", "given", "--json"])
    assert "a video is not a face crop" in capsys.readouterr().out

    from unmask.models.cnn import TorchFaceClassifier
    from unmask.models.io import save_model

    net = TorchFaceClassifier(arch="meso4", init="released", epochs=0, device="cpu")
    net.fit(np.zeros((2, 256, 256, 3), np.uint8), np.array([0, 1]))  # epochs=0: the released net as is
    card = {"title": "trained on crops as given", "estimator": {"name": "meso4", "params": net.get_params()},
            "input": {"size": 64, "margin": 0.0, "min_confidence": 0.9, "detector": given.settings["faces"]},
            "threshold": 0.5, "aggregate": "mean"}
    checker = Checker(save_model(net, tmp_path / "model", card))
    assert checker.detection.crop == "detected"
    assert len(checker.check(face_video).faces) > 0
