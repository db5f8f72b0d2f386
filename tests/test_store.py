import json

import numpy as np
import pytest

from unmask.errors import UnmaskError
from unmask.store import FaceStore, Shard, StoreWriter, commit, shard_id
from unmask.util import atomic_path


def shard(key, n, label=0, size=8):
    faces = np.full((n, size, size, 3), len(key) + n, np.uint8)
    faces[:, 0, 0, 0] = np.arange(n)
    rows = [{"video": key, "label": label, "frame": 30 * i, "confidence": 0.99} for i in range(n)]
    video = {"video": key, "label": label, "status": "ok" if n else "no-face", "faces": n, "frames_read": 7}
    return Shard(video, rows, faces)


def test_commit_orders_by_video_and_rows_index_faces(tmp_path):
    writer = StoreWriter(tmp_path / "s", {"faces": {"size": 8}})
    for key, n in (("b.mp4", 2), ("a.mp4", 3), ("c.mp4", 0)):
        writer.write(shard(key, n))
    store = writer.commit()
    assert len(store) == 5 and store.faces.dtype == np.uint8 and store.faces.shape == (5, 8, 8, 3)
    assert isinstance(store.faces, np.memmap)
    assert store.table["video"].tolist() == ["a.mp4"] * 3 + ["b.mp4"] * 2
    for row in store.table.itertuples():
        expected = shard(row.video, 3 if row.video == "a.mp4" else 2).faces[row.frame // 30]
        assert np.array_equal(store.faces[row.row], expected)
    assert store.videos["status"].tolist() == ["ok", "ok", "no-face"]
    assert writer.done() == {"a.mp4", "b.mp4", "c.mp4"}


def test_half_written_shard_is_not_done_and_commit_ignores_it(tmp_path):
    writer = StoreWriter(tmp_path / "s", {"faces": {"size": 8}})
    writer.write(shard("a.mp4", 1))
    # a worker killed after saving faces but before the record: only the .npy exists
    np.save(writer.shards / f"{shard_id('z.mp4')}.npy", np.zeros((1, 8, 8, 3), np.uint8))
    assert writer.done() == {"a.mp4"}
    assert commit(tmp_path / "s").table["video"].tolist() == ["a.mp4"]


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_settings_mismatch_and_foreign_folder_are_refused(tmp_path):
    StoreWriter(tmp_path / "s", {"faces": {"size": 8}})
    with pytest.raises(UnmaskError, match="other settings"):
        StoreWriter(tmp_path / "s", {"faces": {"size": 16}})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.pdf").write_text("x")
    with pytest.raises(UnmaskError, match="not a face store"):
        StoreWriter(tmp_path / "other", {})


def test_a_store_made_before_crops_could_be_given_resumes_as_detected(tmp_path):
    from dataclasses import asdict

    from unmask.config import FaceDetection

    today = asdict(FaceDetection(size=64))
    today.pop("device")
    older = {k: v for k, v in today.items() if k != "crop"}
    StoreWriter(tmp_path / "s", {"faces": older})
    StoreWriter(tmp_path / "s", {"faces": today})  # the same settings: resumes
    with pytest.raises(UnmaskError, match=r"other settings \(faces.crop: detected -> given\)"):
        StoreWriter(tmp_path / "s", {"faces": {**today, "crop": "given"}})


def test_unfinished_store_says_how_to_finish(tmp_path):
    StoreWriter(tmp_path / "s", {"faces": {"size": 8}})
    with pytest.raises(UnmaskError, match="run `unmask prepare` again"):
        FaceStore(tmp_path / "s")


def test_shard_ids_are_file_safe_and_distinct():
    a, b = shard_id("x/y z?.mp4"), shard_id("x/y_z?.mp4")
    assert a != b and all(c.isalnum() or c in "-_" for c in a)
    assert json.dumps(a)


def _store_of(root, videos, size=8, margin=0.0):
    writer = StoreWriter(root, {"faces": {"size": size, "margin": margin, "min_confidence": 0.9}})
    for key, n, label in videos:
        writer.write(shard(key, n, label, size))
    return writer.commit()


def test_stores_combine_into_one_view_without_copying_faces(tmp_path):
    from unmask.store import CombinedStore, FaceArray, faces_at, open_stores

    videos = _store_of(tmp_path / "videos", [("a.mp4", 2, 0), ("b.mp4", 3, 1)])
    images = _store_of(tmp_path / "images", [("x", 1, 1), ("y", 1, 0)])
    both = open_stores([videos.root, images.root])
    assert isinstance(both, CombinedStore) and len(both) == 7
    assert both.table["dataset"].tolist() == ["videos"] * 5 + ["images"] * 2
    assert both.table["row"].tolist() == list(range(7))
    # Table row k and face k agree, whichever store the face lives in; a view is read face by face.
    view = faces_at(both, np.array([6, 0, 3]))
    assert isinstance(view, FaceArray) and view.shape == (3, 8, 8, 3) and len(view) == 3
    expected = [images.faces[1], videos.faces[0], videos.faces[3]]
    for got, want in zip(view, expected):
        assert np.array_equal(got, want)
    assert np.array_equal(np.asarray(view), np.stack(expected))
    assert np.array_equal(np.asarray(view[1:]), np.stack(expected[1:]))
    with pytest.raises(UnmaskError, match="none of .* has motion features"):
        both.motion()
    # A subset of one store is a view too: the DFDC store is gigabytes, never gathered.
    assert isinstance(faces_at(videos, np.array([1, 2])), FaceArray)
    assert faces_at(videos, np.arange(5)) is videos.faces


def test_stores_cut_otherwise_do_not_combine(tmp_path):
    from unmask.store import open_stores

    small = _store_of(tmp_path / "small", [("a.mp4", 1, 0)])
    large = _store_of(tmp_path / "large", [("b.mp4", 1, 1)], size=16)
    wide = _store_of(tmp_path / "wide", [("c.mp4", 1, 1)], margin=0.3)
    with pytest.raises(UnmaskError, match="size: 16 against 8"):
        open_stores([small.root, large.root])
    with pytest.raises(UnmaskError, match="margin: 0.3 against 0.0"):
        open_stores([small.root, wide.root])
    twin = _store_of(tmp_path / "other" / "small", [("d.mp4", 1, 1)])
    with pytest.raises(UnmaskError, match="share a folder name"):
        open_stores([small.root, twin.root])
