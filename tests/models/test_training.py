"""The training loop's balanced draw across sources and its learning-rate schedule."""
import numpy as np
import pytest

from unmask.errors import UnmaskError
from unmask.models.training import balanced_draw, cell_shares, learning_rate_factor


def _cells():
    """A large face-image set, a small video set with four methods, and photos (real only)."""
    y = np.array([0] * 1000 + [1] * 5000 + [0] * 60 + [1] * 40 + [1] * 20 + [1] * 20 + [1] * 6 + [0] * 200)
    cells = np.array(["dfdc/original"] * 1000 + ["dfdc/unknown"] * 5000 + ["ffpp/original"] * 60
                     + ["ffpp/Deepfakes"] * 40 + ["ffpp/Face2Face"] * 20 + ["ffpp/FaceSwap"] * 20
                     + ["ffpp/NeuralTextures"] * 6 + ["photos/original"] * 200)
    return y, cells


def test_shares_balance_class_then_source_then_method():
    y, cells = _cells()
    shares = cell_shares(y, cells, synth_ratio=0.0)
    assert sum(shares.values()) == pytest.approx(1.0)
    for real_source in ("dfdc", "ffpp", "photos"):  # three real sources share the real half
        assert shares[(0, f"{real_source}/original")] == pytest.approx(1 / 6)
    assert shares[(1, "dfdc/unknown")] == pytest.approx(1 / 4)  # two fake sources share the fake half
    for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
        assert shares[(1, f"ffpp/{method}")] == pytest.approx(1 / 16)
    # With self-blends, more real faces are drawn so that after blending the classes are even again.
    blended = cell_shares(y, cells, synth_ratio=0.2)
    real = sum(v for (label, _), v in blended.items() if label == 0)
    assert real * 0.8 == pytest.approx(0.5) and sum(blended.values()) == pytest.approx(1.0)


def test_source_weights_tilt_the_sources_within_each_class():
    """DFDC weighted 2: twice each other source's share of the real draws and of the fake ones; the classes
    and the methods within a source stay balanced; a source that is not there, or a weight of 0, is an error."""
    y, cells = _cells()
    shares = cell_shares(y, cells, synth_ratio=0.0, source_weights={"dfdc": 2.0})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares[(0, "dfdc/original")] == pytest.approx(0.5 * 2 / 4)
    assert shares[(0, "ffpp/original")] == shares[(0, "photos/original")] == pytest.approx(0.5 / 4)
    assert shares[(1, "dfdc/unknown")] == pytest.approx(0.5 * 2 / 3)
    assert shares[(1, "ffpp/NeuralTextures")] == pytest.approx(0.5 / 3 / 4)
    draw = balanced_draw(y, cells, 3000, 0.0, seed=1, epoch=0, source_weights={"dfdc": 2.0})
    assert (cells[draw] == "dfdc/unknown").sum() == 1000 and (cells[draw] == "photos/original").sum() == 375
    for bad in ({"dfcd": 2.0}, {"dfdc": 0.0}):
        with pytest.raises(UnmaskError, match="source_weights"):
            cell_shares(y, cells, synth_ratio=0.0, source_weights=bad)
    from unmask.models.cnn import TorchFaceClassifier

    with pytest.raises(UnmaskError, match="epoch_faces"):  # without a draw there is nothing to tilt
        TorchFaceClassifier(source_weights={"dfdc": 2.0}).fit(np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1] * 2))


def test_draws_follow_the_shares_and_see_every_face_of_a_cell_before_repeating_one():
    y, cells = _cells()
    epochs = [balanced_draw(y, cells, 2400, 0.0, seed=3, epoch=e) for e in range(3)]
    first = epochs[0]
    assert len(first) == 2400
    assert len(balanced_draw(y, cells, 1001, 0.2, seed=3, epoch=0)) == 1001  # shares that do not divide evenly
    assert (cells[first] == "ffpp/NeuralTextures").sum() == 150  # 6 videos drawn 25 times each
    assert (cells[first] == "dfdc/unknown").sum() == 600
    deepfakes_dfdc = np.concatenate([e[cells[e] == "dfdc/unknown"] for e in epochs])
    assert len(np.unique(deepfakes_dfdc)) == len(deepfakes_dfdc)  # 1,800 of 5,000: no face twice yet
    reals = np.concatenate([e[cells[e] == "dfdc/original"] for e in epochs])  # 3 x 400 draws of 1,000 faces
    assert len(np.unique(reals[:800])) == 800  # the first two epochs: no face twice
    assert len(np.unique(reals)) == 1000 and np.bincount(reals).max() == 2  # all 1,000 once before any twice
    # Only (seed, epoch) decide a draw: a resumed run draws the same faces in the same order.
    assert np.array_equal(balanced_draw(y, cells, 2400, 0.0, seed=3, epoch=1), epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    assert learning_rate_factor(57, 100, "constant", 10) == 1.0
    assert learning_rate_factor(0, 100, "cosine", 10) == pytest.approx(0.1)
    assert learning_rate_factor(9, 100, "cosine", 10) == pytest.approx(1.0)
    middle = learning_rate_factor(55, 100, "cosine", 10)
    assert middle == pytest.approx(0.5) and learning_rate_factor(99, 100, "cosine", 10) < 0.01
