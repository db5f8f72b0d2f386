"""Fuzzing `unmask check`: hundreds of mutated videos and model folders, never a traceback or a hang."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from unmask.cli import main
from unmask.video import write_video

from conftest import face_frames

SECONDS_PER_INPUT = 20.0
"""A generous bound on one input on a slow 2-core machine (the median is a small fraction of it)."""


def _mutations(base: bytes, other: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Bytes flipped (a few to many), cut short, and headers swapped with another container's."""
    out = []
    for k in range(count):
        data = bytearray(base)
        kind = k % 4
        if kind == 0:  # a few flipped bytes anywhere
            for position in rng.integers(0, len(data), rng.integers(1, 8)):
                data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # a run of garbage
            start = int(rng.integers(0, len(data)))
            length = int(rng.integers(1, max(2, len(data) // 4)))
            data[start:start + length] = rng.integers(0, 256, len(data[start:start + length]), dtype=np.uint8).tobytes()
        elif kind == 2:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        else:  # the header of another container on this one's body, or the reverse
            cut = int(rng.integers(16, 4096))
            data = bytearray(other[:cut] + base[cut:]) if k % 8 == 3 else bytearray(base[:cut] + other[cut:])
        out.append(bytes(data))
    return out


def test_mutated_videos_each_get_one_record_and_no_traceback(tmp_path, released_model, capsys):
    frames = face_frames(30, width=240, height=160)
    mp4, mkv = tmp_path / "base.mp4", tmp_path / "base.mkv"
    write_video(mp4, frames, gop=10)
    write_video(mkv, frames[::-1], gop=10)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    rng = np.random.default_rng(2026)
    for k, data in enumerate(_mutations(mp4.read_bytes(), mkv.read_bytes(), rng, 240)):
        (folder / f"{k:03d}.mp4").write_bytes(data)
    started = time.perf_counter()
    code = main(["check", str(folder), "--model", str(released_model), "--frames", "4", "--json"])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert code in (0, 1) and "Traceback" not in err
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in folder.iterdir())  # one record each
    assert all(r["elapsed_s"] < SECONDS_PER_INPUT for r in records) and elapsed < SECONDS_PER_INPUT * len(records)
    for record in records:
        assert record["verdict"] in ("FAKE", "REAL", "NO FACE FOUND", "ERROR")
        if record["verdict"] == "ERROR":
            assert record["error"] and "\n" not in record["error"]
        else:
            assert record["error"] is None
        if record["fake_probability"] is not None:
            assert 0.0 <= record["fake_probability"] <= 1.0
    assert {r["verdict"] for r in records} >= {"ERROR", "FAKE" if any(r["verdict"] == "FAKE" for r in records)
                                               else "REAL"}


MODEL_KINDS = 7
SIZE_KIND, NESTING_KIND = 5, 6
"""Mutations no model written by unmask has, which must be refused (exit 2) rather than maybe work."""


def _model_mutations(folder, rng: np.random.Generator, count: int, into) -> list:
    """Model folders cut short, with bytes flipped in the card or the safetensors header, with card
    values of the wrong type or missing, with flipped bytes among the weights (which still load), with
    a file grown past its size limit (the card padded out, the weights or the ONNX export made sparse
    and huge), or with a card value nested thousands of levels deep."""
    card, weights = (folder / "card.json").read_bytes(), (folder / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(weights[:8], "little")
    oddities = [None, [], {}, "x", -1, 1e309, "../../etc/passwd", {"name": "os.system"}]
    grown = ["card.json", "model.safetensors"] + (["model.onnx"] if (folder / "model.onnx").is_file() else [])
    made = []
    for k in range(count):
        target = into / f"model-{k:02d}"
        shutil.copytree(folder, target)
        kind = k % MODEL_KINDS
        name, data = ("card.json", bytearray(card)) if kind in (0, 3) else ("model.safetensors", bytearray(weights))
        if kind in (0, 1):  # cut short
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:  # flipped bytes in the safetensors header (names, shapes, offsets)
            for position in rng.integers(0, header, rng.integers(1, 4)):
                data[position] = int(rng.integers(0, 256))
        elif kind == 3:  # a card value of the wrong type, or a key gone
            document = json.loads(card)
            path, node = [], document
            while isinstance(node, dict) and node and (not path or rng.random() < 0.5):
                key = list(node)[int(rng.integers(0, len(node)))]
                path.append(key)
                parent, node = node, node[key]
            if rng.random() < 0.3:
                del parent[path[-1]]
            else:
                parent[path[-1]] = oddities[int(rng.integers(0, len(oddities)))]
            data = bytearray(json.dumps(document).encode())
        elif kind == 4:  # flipped bytes among the weights: a model that loads and scores differently
            for position in rng.integers(header, len(data), rng.integers(1, 50)):
                data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == SIZE_KIND:  # past the limits of 8 MiB for the card and 256 MiB for the others
            name = grown[k // MODEL_KINDS % len(grown)]
            if name == "card.json":
                data = bytearray(card[:-1] + b" " * int(rng.integers(8 * 2**20, 9 * 2**20)) + b"}")
            else:
                with (target / name).open("r+b") as handle:  # sparse: large on paper, no disk used
                    handle.truncate(int(rng.integers(256 * 2**20 + 1, 4 * 2**30)))
                made.append(target)
                continue
        else:  # a card value nested far deeper than any parser's recursion
            depth = int(rng.integers(2_000, 200_001))
            opening, closing = ("[", "]") if rng.random() < 0.5 else ('{"a": ', "}")
            deep = opening * depth + "0" + closing * depth
            name, data = "card.json", bytearray(card[:-1] + b', "deep": ' + deep.encode() + b"}")
        (target / name).write_bytes(bytes(data))
        made.append(target)
    return made


def test_mutated_model_folders_are_one_line_or_work(tmp_path, released_model, short_face_video, capsys):
    rng = np.random.default_rng(7)
    for k, folder in enumerate(_model_mutations(released_model, rng, 8 * MODEL_KINDS, tmp_path)):
        started = time.perf_counter()
        code = main(["check", str(short_face_video), "--model", str(folder), "--frames", "2", "--json"])
        out, err = capsys.readouterr()
        assert time.perf_counter() - started < SECONDS_PER_INPUT
        assert "Traceback" not in err
        if k % MODEL_KINDS in (SIZE_KIND, NESTING_KIND):
            assert code == 2, (folder, err)
        if code == 2:
            assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("unmask check: error: "), err
        else:  # the mutation left a loadable model (a flipped weight): it must still give one honest record
            assert code in (0, 1) and err == ""
            (record,) = [json.loads(line) for line in out.splitlines()]
            assert record["verdict"] != "ERROR" or "not numbers" in record["error"], record


@pytest.mark.parametrize("name", ["card.json", "model.safetensors"])
def test_a_missing_model_file_is_one_line(tmp_path, released_model, short_face_video, capsys, name):
    folder = tmp_path / "model"
    shutil.copytree(released_model, folder)
    (folder / name).unlink()
    assert main(["check", str(short_face_video), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(folder) in err
