"""Fixtures that make their own data: videos of a public-domain face, faceless and broken files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unmask.sample import sample_frames
from unmask.video import write_video

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def needs_shared_data(*parts: str):
    """Skip a test when the research-only data beside the checkout is absent."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"research data not present at {path}")


def face_frames(count: int, width: int = 480, height: int = 320, seed: int = 0) -> list[np.ndarray]:
    return list(sample_frames(seconds=count / 25, fps=25, width=width, height=height, seed=seed))


def faceless_frames(count: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    return [np.broadcast_to(np.roll(ramp, i, axis=1), (height, width, 3)).copy() for i in range(count)]


def flickering(frames: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """The face ellipse of every frame gets its own brightness and noise, feathered in: what a
    face made anew for each frame leaves behind, while the head and background only move."""
    import cv2

    from unmask.faces.mtcnn_onnx import OnnxMTCNN

    detector, rng, out = OnnxMTCNN(), np.random.default_rng(seed), []
    for number, (frame, found) in enumerate(zip(frames, detector.detect(frames))):
        face = max(found, key=lambda d: d.confidence)
        (left_eye, right_eye, _, mouth_left, mouth_right) = face.keypoints
        centre = (left_eye + right_eye + mouth_left + mouth_right) / 4
        axes = (int(np.hypot(*(right_eye - left_eye))), int(np.hypot(*(mouth_left - left_eye))))
        mask = np.zeros(frame.shape[:2], np.float32)
        cv2.ellipse(mask, tuple(int(v) for v in centre), axes, 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 3)[..., None]
        change = rng.normal(0, 6, frame.shape) + (10 if number % 2 else -10)
        out.append(np.clip(frame + mask * change, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> Path:
    """200 frames (8 s at 25 fps) of the astronaut portrait drifting across the frame."""
    path = tmp_path_factory.mktemp("videos") / "astronaut.mp4"
    write_video(path, face_frames(200))
    return path


@pytest.fixture(scope="session")
def faceless_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "gradient.mp4"
    write_video(path, faceless_frames(60))
    return path


@pytest.fixture(scope="session")
def broken_files(tmp_path_factory, face_video) -> dict[str, Path]:
    """A zero-byte file, a text file named .mp4, random bytes, and a half-cut video."""
    folder = tmp_path_factory.mktemp("broken")
    files = {
        "empty": folder / "empty.mp4",
        "text": folder / "notes.mp4",
        "garbage": folder / "garbage.mp4",
        "truncated": folder / "truncated.mp4",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a video, just a text file with a .mp4 name\n")
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    data = face_video.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    return files


def make_ffpp_tree(root: Path, ids=("001", "002", "003", "004"), with_splits: bool = True) -> Path:
    """A miniature FaceForensics++ download: originals and Deepfakes at c23, pairs (001,002), (003,004)."""
    originals = root / "original_sequences" / "youtube" / "c23" / "videos"
    fakes = root / "manipulated_sequences" / "Deepfakes" / "c23" / "videos"
    originals.mkdir(parents=True)
    fakes.mkdir(parents=True)
    pairs = [(ids[i], ids[i + 1]) for i in range(0, len(ids) - 1, 2)]
    for seed, identity in enumerate(ids):
        write_video(originals / f"{identity}.mp4", face_frames(40, seed=seed))
    for seed, (target, source) in enumerate(pairs):
        write_video(fakes / f"{target}_{source}.mp4", face_frames(40, seed=10 + seed))
        write_video(fakes / f"{source}_{target}.mp4", faceless_frames(40))
    if with_splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.json").write_text(json.dumps([list(pairs[0])]))
        (root / "splits" / "test.json").write_text(json.dumps([list(p) for p in pairs[1:]]))
    return root


@pytest.fixture(scope="session")
def ffpp_tree(tmp_path_factory) -> Path:
    return make_ffpp_tree(tmp_path_factory.mktemp("ffpp"))


@pytest.fixture(scope="session")
def short_face_video(tmp_path_factory) -> Path:
    """50 frames (2 s) of the astronaut portrait: small enough to upload many times."""
    path = tmp_path_factory.mktemp("videos") / "short-astronaut.mp4"
    write_video(path, face_frames(50))
    return path


@pytest.fixture(scope="session")
def released_model(tmp_path_factory) -> Path:
    """A real CNN model folder: the authors' released MesoInception-4 weights (shipped in the
    package) saved as `unmask train --param epochs=0` saves them; one net, half the default's work."""
    from unmask.models.cnn import TorchFaceClassifier
    from unmask.models.io import save_model

    estimator = TorchFaceClassifier(arch="mesoinception4", init="released", epochs=0, device="cpu")
    estimator.fit(np.zeros((2, 256, 256, 3), np.uint8), np.array([0, 1]))  # epochs=0: adopts the released net
    card = {"title": "MesoInception-4 (released weights)",
            "estimator": {"name": "mesoinception4", "params": {"init": "released", "epochs": 0, "device": "cpu"}},
            "input": {"size": 256, "margin": 0.3}, "threshold": 0.5, "aggregate": "mean",
            "training": {"description": "the authors' Deepfakes weights (Afchar et al. 2018)"}}
    return save_model(estimator, tmp_path_factory.mktemp("models") / "mesoinception4", card)


@pytest.fixture(scope="session")
def web_server(tmp_path_factory, released_model):
    """`unmask serve` in a subprocess on a free port of 127.0.0.1: (base URL, its upload folder).
    Stopped with Ctrl+C (SIGINT) at the end, which must end it cleanly."""
    import select
    import shutil
    import signal
    import subprocess
    import sys
    import threading

    uploads = tmp_path_factory.mktemp("uploads")
    log = uploads.parent / "serve.log"
    # Its output goes to files: a pipe nobody reads would fill up and stall the server.
    with log.open("w") as errors, (uploads.parent / "access.log").open("w") as access:
        process = subprocess.Popen(
            [sys.executable, "-m", "unmask", "serve", "--port", "0", "--model", str(released_model),
             "--upload-dir", str(uploads), "--workers", "2", "--max-upload-mb", "5"],
            stdout=subprocess.PIPE, stderr=errors, text=True)
        drain = None
        try:
            ready, _, _ = select.select([process.stdout], [], [], 120)
            line = process.stdout.readline() if ready else ""
            if "serving on http://" not in line:
                pytest.fail(f"unmask serve did not start: {line!r} {log.read_text()}")
            drain = threading.Thread(target=shutil.copyfileobj, args=(process.stdout, access))
            drain.start()
            yield line.split("serving on ", 1)[1].split()[0], uploads
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if drain is not None:
                drain.join(timeout=30)
            process.stdout.close()
    assert process.returncode == 0, f"unmask serve did not stop cleanly on Ctrl+C: {log.read_text()}"
