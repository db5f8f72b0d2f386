"""The decision trees of a loaded scikit-learn model, checked before they ever predict.

skops rebuilds a tree's node arrays as the file gives them, and scikit-learn's compiled code
walks them without bounds checks: a child index out of range, or a feature index past the width
of the input, reads outside memory and the process dies; a node that leads back to itself loops
forever. So each tree (``sklearn.tree._tree.Tree`` of the forests, ``TreePredictor`` of
histogram gradient boosting) is checked once, right after loading:

- it has a node, and every split node's children come after it and inside the array (scikit-learn
  numbers a node's children after the node itself, so this also rules out cycles);
- every split's feature is below the input width that scikit-learn checks the data against
  (``n_features_in_`` of each estimator above the tree; one without it cannot be trusted);
- every split's threshold is a finite number;
- no split is categorical (unmask's features are all numbers; categorical splits index
  further bitset arrays).
"""
from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np

from unmask.errors import UnmaskError


def check_trees(model: Any) -> None:
    """Raise ``UnmaskError`` (one line) when a tree anywhere in ``model`` could crash or hang prediction."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.pipeline import Pipeline
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    stack: list[tuple[Any, int | None, bool]] = [(model, None, True)]
    """(object, tightest input width above it, whether every estimator above it records one)."""
    while stack:
        node, width, known = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Tree):
            _check_splits(width if known else None, node.node_count, node.children_left, node.children_right,
                          node.feature, node.threshold, categorical=None, own_width=node.n_features)
            continue
        if isinstance(node, TreePredictor):
            nodes = node.nodes
            if not isinstance(nodes, np.ndarray) or nodes.ndim != 1 or nodes.dtype.names is None:
                raise _refused("a boosted tree's nodes are not a table of nodes")
            split = nodes["is_leaf"] == 0
            left, right = (np.where(split, nodes[side].astype(np.int64), -1) for side in ("left", "right"))
            _check_splits(width if known else None, len(nodes), left, right, nodes["feature_idx"],
                          nodes["num_threshold"], categorical=nodes["is_categorical"])
            continue
        attributes = getattr(node, "__dict__", None)
        if isinstance(attributes, dict):
            categorical = attributes.get("is_categorical_")
            if categorical is not None and np.any(categorical):
                raise _refused("it has categorical features, which unmask's models never have")
            if hasattr(node, "fit") and hasattr(node, "get_params") and not isinstance(node, Pipeline):
                recorded = attributes.get("n_features_in_")
                if isinstance(recorded, Integral) and not isinstance(recorded, bool) and recorded >= 1:
                    width = int(recorded) if width is None else min(width, int(recorded))
                else:
                    known = False
        stack.extend((child, width, known) for child in _children(node, attributes))


def _children(node: Any, attributes: dict | None) -> list:
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, (list, tuple, set, frozenset)):
        return list(node)
    if isinstance(node, np.ndarray):
        return list(node.ravel()) if node.dtype == object else []
    return list(attributes.values()) if isinstance(attributes, dict) else []


def _check_splits(width: int | None, count: int, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                  threshold: np.ndarray, categorical: np.ndarray | None, own_width: int | None = None) -> None:
    """The rules in the module's docstring, for one tree's node arrays (a leaf has both children -1)."""
    if width is None:
        raise _refused("it holds a tree under an estimator that does not record its input width")
    if count < 1:
        raise _refused("a tree has no nodes")
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    split = left != -1
    bad = ~split & (right != -1)
    if bad.any():
        raise _refused(f"a tree's node {int(np.argmax(bad))} has a right child but no left one")
    index = np.arange(count)
    for name, child in (("left", left), ("right", right)):
        bad = split & ((child <= index) | (child >= count))
        if bad.any():
            at = int(np.argmax(bad))
            raise _refused(f"a tree's node {at} has {name} child {int(child[at])}, not a node after it among {count}")
    limit = width if own_width is None else min(width, int(own_width))
    feature = np.asarray(feature, np.int64)
    bad = split & ((feature < 0) | (feature >= limit))
    if bad.any():
        at = int(np.argmax(bad))
        raise _refused(f"a tree's node {at} splits on feature {int(feature[at])} of an input of {limit}")
    bad = split & ~np.isfinite(np.asarray(threshold, np.float64))
    if bad.any():
        raise _refused(f"a tree's node {int(np.argmax(bad))} has threshold {threshold[int(np.argmax(bad))]}")
    if categorical is not None and np.any(categorical):
        raise _refused("a boosted tree has categorical splits, which unmask's models never have")


def _refused(why: str) -> UnmaskError:
    return UnmaskError(f"refused: {why}; a model file must not be able to crash or hang unmask")
