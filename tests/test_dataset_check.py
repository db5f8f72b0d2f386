"""`unmask dataset check`: coverage against the official lists, broken and stray files, exit codes."""
import json
import shutil
from pathlib import Path

import av
import pytest
from conftest import SHARED_DATA, face_frames, needs_shared_data

from unmask.cli import main
from unmask.dataset_check import (
    DOES_NOT_OPEN,
    EMPTY,
    TRUNCATED,
    check_dataset,
    expected_files,
    inspect_video,
    load_splits,
    videos_folder,
)
from unmask.video import write_video

SMALL_SPLITS = {"train": [["001", "002"]], "val": [["003", "004"]], "test": [["005", "006"]]}
"""Three official-style pairs: 6 originals and 6 videos per method, so trees stay tiny."""


def make_tree(root: Path, datasets=("original", "Deepfakes"), compression: str = "c23") -> dict[str, bytes]:
    """A FaceForensics++ download as the official script lays it out, every video distinct;
    returns {relative path: bytes}."""
    contents = {}
    for dataset in datasets:
        folder = videos_folder(root, dataset, compression)
        folder.mkdir(parents=True)
        for name in expected_files(dataset, SMALL_SPLITS):
            write_video(folder / name, face_frames(12, width=96, height=64, seed=len(contents)))
            contents[(folder / name).relative_to(root).as_posix()] = (folder / name).read_bytes()
    return contents


def write_splits(folder: Path, splits=SMALL_SPLITS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        (folder / f"{name}.json").write_text(json.dumps(pairs))
    return folder


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ffpp-small")
    make_tree(root)
    return root


@pytest.fixture
def tree(small_tree, tmp_path) -> Path:
    """A fresh copy to damage."""
    return Path(shutil.copytree(small_tree, tmp_path / "ffpp"))


def folder_report(report, dataset: str, compression: str = "c23"):
    return next(f for f in report.folders if (f.dataset, f.compression) == (dataset, compression))


def faststart_copy(source: Path, target: Path) -> None:
    """The same packets with the index (moov) first, so a file cut short still opens."""
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)


def test_shipped_official_splits_cover_every_id_once():
    splits = load_splits()
    assert {name: len(pairs) for name, pairs in splits.items()} == {"train": 360, "val": 70, "test": 70}
    ids = [i for pairs in splits.values() for pair in pairs for i in pair]
    assert sorted(ids) == [f"{i:03d}" for i in range(1000)]
    assert len(expected_files("original", splits)) == len(expected_files("Deepfakes", splits)) == 1000
    assert expected_files("Deepfakes", splits)["054_071.mp4"] == "train"  # both orders of a pair


def test_complete_tree_is_complete(small_tree):
    report = check_dataset(small_tree, ["original", "Deepfakes"], splits=SMALL_SPLITS)
    assert report.complete and report.files_checked == 12
    assert [(f.dataset, f.compression, f.ok, f.expected) for f in report.folders] == [
        ("original", "c23", 6, 6), ("Deepfakes", "c23", 6, 6)]


def test_counts_per_split_and_names_what_is_missing(tree):
    (videos_folder(tree, "Deepfakes", "c23") / "004_003.mp4").unlink()
    (videos_folder(tree, "original", "c23") / "005.mp4").unlink()
    report = check_dataset(tree, ["original", "Deepfakes"], ["c23"], SMALL_SPLITS)
    fakes, originals = folder_report(report, "Deepfakes"), folder_report(report, "original")
    assert not report.complete
    assert fakes.missing == ["004_003.mp4"] and originals.missing == ["005.mp4"]
    assert {s: (c.ok, c.expected) for s, c in fakes.splits.items()} == {"train": (2, 2), "val": (1, 2), "test": (2, 2)}
    assert (originals.ok, originals.expected, originals.splits["test"].missing) == (5, 6, ("005.mp4",))


def test_default_covers_the_five_datasets_at_downloaded_compressions(small_tree):
    report = check_dataset(small_tree, splits=SMALL_SPLITS)
    rows = {(f.dataset, f.compression): f for f in report.folders}
    assert list(rows) == [(d, "c23") for d in ("original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")]
    assert rows["original", "c23"].complete and rows["Deepfakes", "c23"].complete
    assert not rows["Face2Face", "c23"].exists and len(rows["Face2Face", "c23"].missing) == 6
    assert report.unchecked == ["raw", "c40"]


def test_broken_files_empty_not_a_video_truncated(tree, broken_files, tmp_path):
    originals = videos_folder(tree, "original", "c23")
    shutil.copy(broken_files["empty"], originals / "001.mp4")
    shutil.copy(broken_files["text"], originals / "002.mp4")
    shutil.copy(broken_files["truncated"], originals / "003.mp4")  # index (moov) at the end: cut off
    faststart_copy(originals / "004.mp4", tmp_path / "fast.mp4")
    data = (tmp_path / "fast.mp4").read_bytes()
    (originals / "004.mp4").write_bytes(data[: len(data) * 9 // 10])  # index first: opens, but ends early
    report = check_dataset(tree, ["original"], ["c23"], SMALL_SPLITS)
    broken = {b.name: b for b in folder_report(report, "original").broken}
    assert {n: b.problem for n, b in broken.items()} == {
        "001.mp4": EMPTY, "002.mp4": DOES_NOT_OPEN, "003.mp4": TRUNCATED, "004.mp4": TRUNCATED}
    assert "frames stop at about" in broken["004.mp4"].detail
    assert "'mdat' box" in broken["003.mp4"].detail
    assert folder_report(report, "original").ok == 2 and not report.complete
    assert inspect_video(tmp_path / "fast.mp4") is None  # the same file whole is fine


def test_stray_and_leftover_temporary_files(tree):
    fakes = videos_folder(tree, "Deepfakes", "c23")
    (fakes / "notes.txt").write_text("x")
    (fakes / "tmpab12_x9z").write_bytes(b"partial")  # what the official script leaves when stopped
    (fakes / "001_003.mp4").write_bytes((fakes / "001_002.mp4").read_bytes())  # not an official pair
    report = check_dataset(tree, ["Deepfakes"], ["c23"], SMALL_SPLITS)
    row = folder_report(report, "Deepfakes")
    assert row.stray == ["001_003.mp4", "notes.txt", "tmpab12_x9z"]
    assert row.complete and report.complete  # strays are reported, not counted as missing or broken


def test_deepfakedetection_is_counted_without_a_list(tree, broken_files):
    actors = videos_folder(tree, "DeepFakeDetection_original", "c23")
    actors.mkdir(parents=True)
    shutil.copy(videos_folder(tree, "original", "c23") / "001.mp4", actors / "01__kitchen_pan.mp4")
    shutil.copy(broken_files["empty"], actors / "02__walking.mp4")
    report = check_dataset(tree, compressions=["c23"], splits=SMALL_SPLITS)
    row = folder_report(report, "DeepFakeDetection_original")
    assert (row.listed, row.present, row.ok, row.expected, row.missing) == (False, 2, 1, None, [])
    assert [b.name for b in row.broken] == ["02__walking.mp4"]


def test_cli_table_json_and_exit_codes(tree, tmp_path, capsys):
    splits = write_splits(tmp_path / "splits")
    args = ["dataset", "check", str(tree), "--method", "original,Deepfakes", "--splits", str(splits)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "complete" in out.splitlines()[0] and "6/6" in out
    (videos_folder(tree, "Deepfakes", "c23") / "006_005.mp4").unlink()
    assert main(args + ["--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    row = next(f for f in document["folders"] if f["dataset"] == "Deepfakes")
    assert document["complete"] is False and row["missing"] == ["006_005.mp4"]
    assert row["splits"]["test"] == {"expected": 2, "ok": 1, "missing": 1}
    assert main(args) == 1
    assert "missing in Deepfakes c23 (1): test (1): 006_005" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--method", "Deepfake"], "unknown dataset 'Deepfake'"),
    (["--compression", "c30"], "unknown compression 'c30'"),
    (["--splits", "no-such-folder"], "split file not found"),
])
def test_cli_bad_options_are_one_line_and_exit_2(small_tree, capsys, extra, message):
    assert main(["dataset", "check", str(small_tree), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_root_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for root, message in ((tmp_path / "absent", "not found"), (tmp_path / "file", "is not a folder")):
        assert main(["dataset", "check", str(root)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@needs_shared_data("ffpp-sample")
def test_shared_sample_coverage_names_its_missing_files(capsys):
    root = SHARED_DATA / "ffpp-sample"
    report = check_dataset(root)
    rows = {(f.dataset, f.compression): f for f in report.folders}
    deepfakes = rows["Deepfakes", "c23"]
    assert {"284_263.mp4", "392_339.mp4", "866_878.mp4"} <= set(deepfakes.missing)
    assert (deepfakes.ok, deepfakes.splits["train"].ok, deepfakes.splits["val"].ok) == (31, 31, 0)
    assert rows["original", "c23"].ok == 31 and not rows["NeuralTextures", "c23"].exists
    assert rows["DeepFakeDetection_original", "c40"].present == 10
    assert not any(f.broken for f in report.folders) and not report.complete
    assert report.unchecked == ["raw"]
    assert load_splits(root / "splits") == load_splits()  # the sample carries the official lists
    assert main(["dataset", "check", str(root), "--method", "Deepfakes", "--compression", "c23",
                 "--list-missing"]) == 1
    out = capsys.readouterr().out
    assert all(name in out for name in ("284_263", "392_339", "866_878"))
