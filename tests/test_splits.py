import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from unmask.errors import UnmaskError
from unmask.splits import LEAKY_SPLITS, SPLITS, grouped_kfold, identity_groups, split_indices


def ff_table(n_pairs=15, frames=4, with_split=True):
    """A FaceForensics++-like table: ids 2k and 2k+1 swap faces both ways, every
    original and every fake has ``frames`` faces."""
    videos = []
    for k in range(n_pairs):
        a, b = f"{2 * k:03d}", f"{2 * k + 1:03d}"
        split = ("train", "val", "test")[k % 3] if with_split else ""
        kinds = ((a, 0, "original"), (b, 0, "original"), (f"{a}_{b}", 1, "Deepfakes"), (f"{b}_{a}", 1, "Deepfakes"))
        for ids, label, method in kinds:
            videos.append({"video": f"{method}/{ids}", "ids": ids, "label": label, "method": method, "split": split})
    rows = [dict(video, frame=30 * i) for video in videos for i in range(frames)]
    table = pd.DataFrame(rows)
    table["row"] = np.arange(len(table))
    return table


def identities(ids):
    return {token for key in ids for token in key.split("_")}


def test_fakes_link_target_and_source_into_one_group():
    groups = identity_groups(["1", "2", "1_2", "3", "4", "3_5", "5", "6_7", "7_8"])
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] == groups[5] == groups[6]
    assert groups[7] == groups[8]  # 6-7-8 chained through 7
    assert len({groups[0], groups[3], groups[4], groups[7]}) == 4
    assert groups.tolist()[:5] == [0, 0, 0, 1, 2]  # numbered in order of first appearance


def test_missing_ids_are_a_user_error():
    with pytest.raises(UnmaskError, match="ids"):
        identity_groups(["1", "", "2"])
    with pytest.raises(UnmaskError, match="ids"):
        identity_groups(["1", None])


def test_video_split_never_puts_an_identity_on_both_sides():
    table = ff_table()
    for seed in range(5):
        train, test = split_indices(table, "videos", test_size=0.2, random_state=seed)
        assert not identities(table["ids"].iloc[train]) & identities(table["ids"].iloc[test])
        assert sorted(np.r_[train, test]) == list(range(len(table)))
        assert set(table["label"].iloc[train]) == set(table["label"].iloc[test]) == {0, 1}
        assert 0.1 <= len(test) / len(table) <= 0.3


def test_video_split_keeps_both_classes_on_both_sides_when_groups_are_one_class():
    table = pd.DataFrame({"ids": ["1", "2", "3", "4", "5_6", "7_8"], "label": [0, 0, 0, 0, 1, 1]})
    train, test = split_indices(table, "videos", test_size=0.2, random_state=0)
    assert set(table["label"].iloc[test]) == set(table["label"].iloc[train]) == {0, 1}


def test_video_split_needs_two_groups():
    table = pd.DataFrame({"ids": ["1", "1_2", "2"], "label": [0, 1, 0], "video": list("abc")})
    with pytest.raises(UnmaskError, match="identity group"):
        split_indices(table, "videos")


def test_frame_split_is_the_studys_and_leaks():
    table = ff_table()
    train, test = split_indices(table, "frames")
    expected_train, expected_test = train_test_split(np.arange(len(table)), test_size=0.2, random_state=42)
    np.testing.assert_array_equal(train, np.sort(expected_train))
    np.testing.assert_array_equal(test, np.sort(expected_test))
    assert set(table["video"].iloc[train]) & set(table["video"].iloc[test])
    assert identities(table["ids"].iloc[train]) & identities(table["ids"].iloc[test])
    assert "frames" in LEAKY_SPLITS and "inflated" in LEAKY_SPLITS["frames"]
    assert set(LEAKY_SPLITS) == {"frames"} and set(SPLITS) == {"frames", "videos", "official"}


@pytest.mark.parametrize("val, n_train, n_test", [("train", 160, 80), ("test", 80, 160), ("drop", 80, 80)])
def test_official_split_follows_the_split_column(val, n_train, n_test):
    table = ff_table()
    train, test = split_indices(table, "official", val=val)
    assert (len(train), len(test)) == (n_train, n_test)
    assert set(table["split"].iloc[test]) == ({"test", "val"} if val == "test" else {"test"})


def test_official_split_without_split_information_is_a_user_error():
    with pytest.raises(UnmaskError, match="no official split"):
        split_indices(ff_table(with_split=False), "official")
    with pytest.raises(UnmaskError, match="official"):
        split_indices(ff_table().drop(columns="split"), "official")
    with pytest.raises(UnmaskError, match="frames, videos, official"):
        split_indices(ff_table(), "random")


def test_grouped_kfold_covers_every_row_once_without_straddling():
    table = ff_table()
    seen = []
    for train, test in grouped_kfold(table, n_splits=5, random_state=0):
        assert not identities(table["ids"].iloc[train]) & identities(table["ids"].iloc[test])
        assert set(table["label"].iloc[test]) == {0, 1}
        seen.extend(test)
    assert sorted(seen) == list(range(len(table)))
    with pytest.raises(UnmaskError, match="folds"):
        list(grouped_kfold(ff_table(n_pairs=3), n_splits=5))
