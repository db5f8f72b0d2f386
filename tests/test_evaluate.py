import json

import numpy as np
import pandas as pd
import pytest

from unmask.errors import UnmaskError
from unmask.evaluate import (
    bootstrap_auc,
    choose_threshold,
    compute_metrics,
    evaluate_scores,
    per_method_metrics,
    save_plots,
    video_scores,
    write_report,
)
from unmask.splits import LEAKY_SPLITS
from unmask.usage import measure_usage

# Five scores worked out by hand: predictions at 0.5 are [0, 1, 0, 1, 1].
Y = [0, 0, 1, 1, 1]
P = [0.1, 0.6, 0.4, 0.8, 0.9]


def test_metrics_equal_hand_computed_values():
    m = compute_metrics(Y, P)
    assert m["confusion_matrix"]["matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["classes"]["fake"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["classes"]["real"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert m["counts"] == {"real": 2, "fake": 3} and m["predicted_counts"] == {"real": 2, "fake": 3}
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (real, fake) pairs are ordered right
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert m["eer"] == pytest.approx(1 / 3)  # between ROC points (0, 2/3) and (1/2, 2/3)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.04 + 0.01) / 5)
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.6 + 0.2 + 0.1) / 5)  # one score per bin
    assert [b["count"] for b in m["reliability"]["bins"]] == [1, 1, 1, 1, 1]
    json.dumps(m, allow_nan=False)


def test_bootstrap_interval_holds_the_auc_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 2000):
        y = np.repeat([0, 1], n)
        p = np.r_[rng.normal(0, 1, n), rng.normal(1, 1, n)]  # true AUC: Phi(1 / sqrt 2) = 0.760
        low, high = bootstrap_auc(y, p, rounds=300)
        assert low < 0.760 < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # about sqrt(20) narrower
    assert bootstrap_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], rounds=50) == (1.0, 1.0)
    with pytest.raises(UnmaskError, match="both real and fake"):
        bootstrap_auc([1, 1], [0.2, 0.3])


def test_threshold_is_strict_like_predict():
    assert compute_metrics([0, 1], [0.5, 0.7])["accuracy"] == 1.0
    assert compute_metrics([0, 1], [0.5, 0.7], threshold=0.7)["confusion_matrix"]["matrix"] == [[1, 0], [1, 0]]


def test_perfect_and_inverted_scorers():
    perfect = compute_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["eer"] == 0 and perfect["roc_auc"] == 1 and perfect["accuracy"] == 1
    inverted = compute_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert inverted["eer"] == 1 and inverted["roc_auc"] == 0


def test_one_class_has_no_threshold_free_scores_but_stays_valid_json():
    m = compute_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert m["roc_auc"] is m["eer"] is m["average_precision"] is m["roc_curve"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)


def test_long_roc_curves_are_thinned_but_keep_their_ends():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    m = compute_metrics(y, np.clip(y * 0.2 + rng.random(5000) * 0.8, 0, 1))
    curve = m["roc_curve"]
    assert len(curve["fpr"]) <= 200
    assert (curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]) == (0, 0, 1, 1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        compute_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [0.1])


def test_video_scores_aggregate_frames():
    videos = ["b", "b", "b", "a", "a", "a", "a", "a"]
    p = [0.2, 0.4, 0.9, 0.0, 0.1, 0.2, 0.3, 1.0]
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    keys, scores, video_labels = video_scores(p, videos, labels)
    assert keys.tolist() == ["a", "b"] and video_labels.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [0.32, 0.5])
    np.testing.assert_allclose(video_scores(p, videos, labels, "max")[1], [1.0, 0.9])
    np.testing.assert_allclose(video_scores(p, videos, labels, "median")[1], [0.2, 0.4])
    with pytest.raises(UnmaskError, match="mixed|both real and fake"):
        video_scores([0.1, 0.2], ["a", "a"], [0, 1])
    with pytest.raises(UnmaskError, match="trimmed-mean"):
        video_scores(p, videos, labels, "mode")


def test_evaluate_scores_reports_both_levels():
    table = pd.DataFrame({"video": ["a", "a", "b", "b", "c", "c"], "label": [0, 0, 1, 1, 1, 1]})
    result = evaluate_scores(table, [0.1, 0.6, 0.2, 0.7, 0.9, 0.8])
    assert result["frame"]["n"] == 6 and result["frame"]["accuracy"] == pytest.approx(4 / 6)
    assert result["video"]["n"] == 3 and result["video"]["accuracy"] == pytest.approx(2 / 3)
    assert result["video"]["aggregate"] == "mean"


def test_chosen_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
    threshold = choose_threshold(y, p)
    assert 0.2 < threshold < 0.3
    assert compute_metrics(y, p, threshold)["accuracy"] == 1
    with pytest.raises(UnmaskError):
        choose_threshold([1, 1], [0.2, 0.3])


@pytest.fixture(scope="module")
def levels():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"video": np.repeat(np.arange(30), 5).astype(str), "label": np.repeat(np.arange(30) % 2, 5)})
    p = np.clip(table["label"] * 0.4 + rng.random(len(table)) * 0.6, 0, 1)
    return evaluate_scores(table, p)


@pytest.fixture(scope="module")
def plots(tmp_path_factory, levels):
    return save_plots(levels, tmp_path_factory.mktemp("run") / "report")


def test_plots_are_png_files(plots):
    assert set(plots) == {"confusion", "roc", "reliability"}
    for path in plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {p.name for p in plots["roc"].parent.iterdir()}
    assert {"confusion.png", "reliability.png", "roc.png"} <= names
    assert not [name for name in names if name.endswith(".tmp")]


def test_report_warns_about_the_leaky_split(tmp_path, levels, plots):
    with measure_usage() as usage:
        pass
    out = plots["roc"].parent
    paths = write_report(out, levels, {"fit": usage}, {"model": "rf", "split": "frames"}, plots)
    report = paths["markdown"].read_text()
    assert "WARNING" in report and LEAKY_SPLITS["frames"][1:] in report
    assert "![roc](roc.png)" in report and "| fit |" in report and "| fake |" in report
    document = json.loads(paths["json"].read_text())
    assert document["leak_warning"] == LEAKY_SPLITS["frames"]
    assert document["metrics"]["video"]["n"] == 30 and document["usage"]["fit"]["wall_s"] >= 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    honest = write_report(tmp_path, levels, None, {"model": "rf", "split": "videos"})
    assert "WARNING" not in honest["markdown"].read_text()
    assert json.loads(honest["json"].read_text())["leak_warning"] is None


def test_per_method_metrics_judge_each_method_against_the_originals_of_its_compression():
    """A detector that catches one method and misses another must show both, never their average."""
    rows = []
    for compression in ("c23", "c40"):
        for number in range(4):
            rows.append(("original", compression, 0, 0.3 + 0.1 * number))  # 0.3-0.6
            rows.append(("Deepfakes", compression, 1, 0.9))                # above every original
            rows.append(("Face2Face", compression, 1, 0.1))                # below every original
    rows.append(("NeuralTextures", "c40", 1, 0.5))
    table = pd.DataFrame(rows, columns=["method", "compression", "label", "p"])
    table["video"] = [f"v{i}" for i in range(len(table))]
    p_fake = table["p"].to_numpy().copy()
    p_fake[-2] = np.nan  # an unscored face is left out, not counted as a miss
    out = per_method_metrics(table, p_fake)
    assert sorted(out) == ["Deepfakes c23", "Deepfakes c40", "Face2Face c23", "Face2Face c40", "NeuralTextures c40"]
    assert out["Deepfakes c23"]["video"]["roc_auc"] == 1.0 and out["Face2Face c40"]["frame"]["roc_auc"] == 0.0
    assert out["Face2Face c40"]["frame"]["n"] == 7  # 4 originals of c40, 3 scored fakes
    assert out["NeuralTextures c40"]["frame"]["roc_auc"] == pytest.approx(2.5 / 4)  # 0.5: above 0.3, 0.4, tied 0.5
