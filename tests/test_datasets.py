import json

import pytest

from conftest import make_ffpp_tree, needs_shared_data, SHARED_DATA
from unmask.datasets import FAKE, REAL, open_dataset, read_ffpp
from unmask.errors import UnmaskError


def test_ffpp_layout_labels_ids_and_official_splits(tmp_path):
    root = make_ffpp_tree(tmp_path / "ff")
    scan = open_dataset(root)
    assert scan.layout == "ffpp"
    by_key = {v.key: v for v in scan.videos}
    assert len(by_key) == 8
    original = by_key["original_sequences/youtube/c23/videos/001.mp4"]
    assert (original.label, original.method, original.ids, original.split) == (REAL, "original", "001", "train")
    fake = by_key["manipulated_sequences/Deepfakes/c23/videos/004_003.mp4"]
    assert (fake.label, fake.method, fake.ids, fake.split, fake.compression) == (FAKE, "Deepfakes", "004_003", "test", "c23")


def test_without_split_files_the_split_is_unknown(tmp_path):
    scan = open_dataset(make_ffpp_tree(tmp_path / "ff", with_splits=False))
    assert {v.split for v in scan.videos} == {""}


def test_partial_download_is_reported_not_fatal(tmp_path):
    root = make_ffpp_tree(tmp_path / "ff")
    (root / "original_sequences/youtube/c23/videos/003.mp4").unlink()
    scan = read_ffpp(root, methods=["Deepfakes", "FaceSwap"], compressions=["c23"])
    assert len(scan.videos) == 7
    assert any("FaceSwap" in p for p in scan.problems)
    assert any("003_004" in p for p in scan.problems)


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["DeepFake"]}, "unknown method 'DeepFake'"),
    ({"compressions": ["c99"]}, "unknown compression 'c99'"),
])
def test_unknown_method_or_compression_is_a_clear_error(tmp_path, kwargs, message):
    with pytest.raises(UnmaskError, match=message):
        read_ffpp(make_ffpp_tree(tmp_path / "ff"), **kwargs)


def test_missing_folder_and_non_dataset(tmp_path):
    with pytest.raises(UnmaskError, match="not found"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    with pytest.raises(UnmaskError, match="not a dataset"):
        open_dataset(tmp_path / "junk")


def test_real_fake_folders(tmp_path, face_video):
    for name in ("real", "fake/sub"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "a.mp4").write_bytes(face_video.read_bytes())
    scan = open_dataset(tmp_path)
    assert scan.layout == "folders"
    assert sorted((v.key, v.label) for v in scan.videos) == [("fake/sub/a.mp4", FAKE), ("real/a.mp4", REAL)]


def test_csv_manifest_with_groups_and_bad_rows(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,group,split\nv/a.mp4,real,p1,train\nv/b.mp4,fake,p1,test\nv/c.mp4,maybe,p2,\n"
                        "v/gone.mp4,fake,p3,\n")
    (tmp_path / "v").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "v" / f"{name}.mp4").write_bytes(b"")
    scan = open_dataset(manifest)
    assert [(v.key, v.label, v.ids, v.split) for v in scan.videos] == [
        ("v/a.mp4", REAL, "p1", "train"), ("v/b.mp4", FAKE, "p1", "test")]
    assert scan.videos[0].path == tmp_path / "v" / "a.mp4"
    assert len(scan.problems) == 2 and "line 4" in scan.problems[0]
    assert scan.problems[1].startswith("line 5: no such file 'v/gone.mp4'")
    (tmp_path / "bad.csv").write_text("name,kind\nx,y\n")
    with pytest.raises(UnmaskError, match="a file column"):
        open_dataset(tmp_path / "bad.csv")


@needs_shared_data("ffpp-sample")
def test_real_ffpp_sample_layout():
    root = SHARED_DATA / "ffpp-sample"
    scan = open_dataset(root, methods=["Deepfakes"], compressions=["c23", "c40"])
    fakes = [v for v in scan.videos if v.label == FAKE]
    reals = [v for v in scan.videos if v.label == REAL]
    assert len(fakes) == 37 and len(reals) == 37
    train = {tuple(map(str, p)) for p in json.loads((root / "splits/train.json").read_text())}
    assert all(v.split == "train" for v in scan.videos)
    assert all(tuple(v.ids.split("_")) in train or tuple(v.ids.split("_"))[::-1] in train for v in fakes)


def test_face_image_set_reads_as_it_is_laid_out(tmp_path):
    """DFDC's faces: parts.csv names each crop by its video (no suffix), the crops sit in faces_224/."""
    (tmp_path / "faces_224").mkdir()
    for name in ("aaa", "bbb", "ccc", "ddd"):
        (tmp_path / "faces_224" / f"{name}.jpg").write_bytes(b"")
    (tmp_path / "parts.csv").write_text("video,label,group,part\naaa,REAL,aaa,train\nbbb,FAKE,aaa,train\n"
                                        "ccc,FAKE,x_y,test\nzzz,FAKE,aaa,val\nddd,REAL,ddd,holdout\n")
    scan = open_dataset(tmp_path / "parts.csv")
    assert [(v.key, v.label, v.ids, v.split, v.method) for v in scan.videos] == [
        ("aaa", REAL, "aaa", "train", "original"), ("bbb", FAKE, "aaa", "train", "unknown"),
        ("ccc", FAKE, "x-y", "test", "unknown")]  # the group is one identity token, whatever it holds
    assert scan.videos[1].path == tmp_path / "faces_224" / "bbb.jpg"
    assert scan.problems == [f"line 5: no such file 'zzz' under {tmp_path}",
                             "line 6: part 'holdout' is not train/val/test"]
