"""Train/test splits over the face table, honest or (for the study) leaky.

The study split its frames at random, so frames of one video, and the face of one
person, sat on both sides: the model could recognise people instead of fakes. Honest
splits keep every identity on one side. In FaceForensics++ a fake "183_253" puts the
face of 253 into a video of 183, so it links both people: they, their originals and
every fake involving either form one identity group, and groups are never cut.

All functions return positions into the table (``table.iloc``), not values of its
``row`` column; the faces of a split are ``faces[table["row"].to_numpy()[idx]]``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from unmask.errors import UnmaskError

SPLITS: dict[str, str] = {
    "frames": "random 80/20 over frames, as the study did (leaks identities)",
    "videos": "random over identity groups: no person on both sides",
    "official": "FaceForensics++'s own train/val/test lists (the table's split column)",
}

LEAKY_SPLITS: dict[str, str] = {
    "frames": (
        "frame split: frames of one video and one identity appear in both train and test, "
        "so these numbers are inflated"
    ),
}
"""Splits whose scores must not be trusted, with the sentence to print next to them."""


def identity_groups(ids: Sequence[str]) -> np.ndarray:
    """Group number per row, equal for rows that share an identity, directly or via fakes.

    Connected components (union-find) of the graph whose nodes are identity ids and
    whose edges are the fakes: "183_253" joins 183 and 253. Groups are numbered 0, 1, ...
    in order of first appearance.
    """
    ids = pd.Series(ids, dtype=object)
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise UnmaskError("some faces have no identity ids; a grouped split needs the ids column filled")
    codes, keys = pd.factorize(ids.astype(str))
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        root = node
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    for key in keys:
        first, *others = key.split("_")
        for other in others:
            parent[find(other)] = find(first)
    key_groups, _ = pd.factorize(np.array([find(key.split("_")[0]) for key in keys], dtype=object))
    return key_groups[codes].astype(np.int64)


def split_indices(
    table: pd.DataFrame,
    how: str,
    test_size: float = 0.2,
    random_state: int = 42,
    val: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions, sorted.

    ``how``: "frames" (the study: ``train_test_split`` over rows, leaky), "videos"
    (whole identity groups, both classes on both sides when the groups allow it) or
    "official" (the ``split`` column; ``val`` rows go to "train", "test" or are "drop"ped).
    """
    if how not in SPLITS:
        raise UnmaskError(f"unknown split {how!r}; choose one of: {', '.join(SPLITS)}")
    if how != "official" and not 0 < test_size < 1:
        raise UnmaskError(f"test size must be between 0 and 1, got {test_size}")
    if len(table) < 2:
        raise UnmaskError("at least two faces are needed to make a train/test split")
    if how == "frames":
        train, test = train_test_split(np.arange(len(table)), test_size=test_size, random_state=random_state)
    elif how == "videos":
        train, test = _group_split(
            table["label"].to_numpy(), identity_groups(table["ids"]), test_size, np.random.default_rng(random_state)
        )
    else:
        train, test = _official_split(table, val)
    return np.sort(train), np.sort(test)


def _group_split(labels: np.ndarray, groups: np.ndarray, test_size: float, rng: np.random.Generator):
    """Whole groups to the test side, in random order, while that brings the test counts of
    each class nearer ``test_size`` of its total; then, if a class is missing from a side
    and another group has it, the smallest such group crosses over."""
    n_groups = groups.max() + 1
    if n_groups < 2:
        raise UnmaskError("all faces share one identity group, so no split can keep identities apart")
    classes, label_codes = np.unique(labels, return_inverse=True)
    counts = np.zeros((n_groups, classes.size), dtype=np.int64)
    np.add.at(counts, (groups, label_codes), 1)
    target = test_size * counts.sum(axis=0)
    in_test = np.zeros(n_groups, dtype=bool)
    taken = np.zeros(classes.size)
    for group in rng.permutation(n_groups):
        after = taken + counts[group]
        if np.abs(after - target).sum() < np.abs(taken - target).sum():
            in_test[group] = True
            taken = after
    for c in range(classes.size):
        for side in (True, False):
            if counts[in_test == side, c].sum() == 0:
                donors = np.flatnonzero((in_test != side) & (counts[:, c] > 0))
                if donors.size > 1:
                    in_test[donors[np.argmin(counts[donors].sum(axis=1))]] = side
    row_in_test = in_test[groups]
    return np.flatnonzero(~row_in_test), np.flatnonzero(row_in_test)


def _official_split(table: pd.DataFrame, val: str):
    if val not in ("train", "test", "drop"):
        raise UnmaskError(f"val rows can go to 'train', 'test' or 'drop', not {val!r}")
    split = table["split"].fillna("").astype(str) if "split" in table else pd.Series("", index=table.index)
    unknown = int((split == "").sum())
    if unknown == len(table):
        raise UnmaskError("these faces have no official split information; use the videos split instead")
    if unknown:
        raise UnmaskError(f"{unknown} faces have no official split; use the videos split, or prepare them again")
    split = split.replace({"val": val}).to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    if train.size == 0 or test.size == 0:
        raise UnmaskError("the official split leaves the train or the test side empty")
    return train, test


def grouped_kfold(
    table: pd.DataFrame, n_splits: int = 5, random_state: int = 42
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positions for each fold; identity groups never straddle a fold,
    class balance is kept as far as groups allow (StratifiedGroupKFold)."""
    groups = identity_groups(table["ids"])
    if groups.max() + 1 < n_splits:
        raise UnmaskError(f"{groups.max() + 1} identity groups cannot make {n_splits} folds")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    yield from folds.split(np.zeros(len(table)), table["label"].to_numpy(), groups)
