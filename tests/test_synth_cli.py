"""`unmask synth`: real photos and videos in, a labelled store of real faces and their fakes out."""
import json

import cv2
import numpy as np

from unmask.cli import main
from unmask.sample import astronaut
from unmask.splits import identity_groups
from unmask.store import FaceStore
from unmask.video import write_video

from conftest import face_frames


def test_synth_from_photos_and_a_video(tmp_path, capsys):
    source = tmp_path / "people"
    source.mkdir()
    portrait = astronaut()
    for i, (dx, tint) in enumerate(((0, 0), (20, 25), (-20, -20))):
        shifted = np.clip(np.roll(portrait, dx, axis=1).astype(int) + tint, 0, 255).astype(np.uint8)
        cv2.imwrite(str(source / f"person_{i}.jpg"), cv2.cvtColor(shifted[20:260, 120:360], cv2.COLOR_RGB2BGR))
    write_video(source / "clip.mp4", face_frames(40))
    (source / "readme.txt").write_text("not an image")
    code = main(["synth", str(source), "--out", str(tmp_path / "out"), "--size", "64", "--workers", "1", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    store = FaceStore(tmp_path / "out" / "train")
    real, fake = store.table[store.table["label"] == 0], store.table[store.table["label"] == 1]
    assert len(real) == 3 + 2 and len(fake) == len(real)  # 3 photos + 2 frames, one fake each
    assert summary["per_method"]["original"] == 5 and set(fake["method"]) <= {"sbi", "swap"}
    # photo names with '_' stay one identity each; a swap links its target and source
    groups = identity_groups(store.table["ids"])
    assert len(set(groups[real.index])) <= 4
    for row in fake.itertuples():
        target = real[real["video"] == row.video.removeprefix("synth/")]
        assert groups[row.Index] == groups[target.index[0]]
    # a fake differs from its real face only inside the face
    first = fake.iloc[0]
    original = real[(real["video"] == first["video"].removeprefix("synth/")) & (real["frame"] == first["frame"])]
    difference = np.abs(store.faces[int(first["row"])].astype(int) - store.faces[int(original["row"].iloc[0])])
    assert difference.max() > 20 and difference[:3, :3].max() <= 3
    assert (tmp_path / "out" / "train" / "contact_sheet.png").exists()


def test_synth_bad_input(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["synth", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no videos or photos" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--kinds", "morph"]) == 2
    assert "unknown kind 'morph'" in capsys.readouterr().err
