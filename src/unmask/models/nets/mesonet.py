"""MesoNet (Afchar et al., WIFS 2018): Meso-4 and MesoInception-4, ported exactly from the
authors' Keras ``classifiers.py`` (DariusAf/MesoNet, Apache-2.0) so that their released
Deepfake weights give the same numbers in PyTorch.

Port details that matter for exactness: Keras BatchNormalization uses epsilon 1e-3; every
conv is ReLU'd *before* its batch norm; 'same' max-pooling never pads here because 256 is
divisible all the way down (256 -> 128 -> 64 -> 32 -> 8); Keras flattens NHWC, which the
converter (tools/convert_mesonet_weights.py) folds into the first dense layer's columns, so
this module flattens in the usual NCHW order and stays a plain fine-tunable network.
"""
from __future__ import annotations

from importlib.resources import files

import torch
from safetensors.torch import load
from torch import nn

INPUT_SIZE = 256
INPUT_FORMAT = "(N, 3, 256, 256) float32 RGB face crop scaled to [0, 1]"
OUTPUT_MEANING = "probability the face is real"  # the authors label df = 0, real = 1
LOGIT_OF = "P(real)"  # forward() returns this logit; sigmoid(logit) is the Keras output
BN_EPS = 1e-3  # Keras BatchNormalization default (PyTorch's is 1e-5)
RELEASED = {
    "meso4": "Meso-4 trained by the authors on their Deepfake dataset (Meso4_DF.h5)",
    "mesoinception4": "MesoInception-4 trained by the authors on their Deepfake dataset (MesoInception_DF.h5)",
}
PAPER = "Afchar, Nozick, Yamagishi, Echizen. MesoNet: a Compact Facial Video Forgery Detection Network. WIFS 2018"
SOURCE = "https://github.com/DariusAf/MesoNet (Apache-2.0, see weights/MESONET-NOTICE.txt)"


class _ConvBlock(nn.Sequential):
    """Conv -> ReLU -> BatchNorm -> MaxPool, the order Keras' Conv2D(activation='relu') implies."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, pool: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.pool = nn.MaxPool2d(pool)


class _Inception(nn.Module):
    """MesoInception's block: 1x1 | 1x1->3x3 | 1x1->3x3 dilated 2 | 1x1->3x3 dilated 3, all ReLU,
    concatenated along channels in that order."""

    def __init__(self, in_ch: int, a: int, b: int, c: int, d: int):
        super().__init__()
        self.b1 = nn.Conv2d(in_ch, a, 1)
        self.b2_reduce = nn.Conv2d(in_ch, b, 1)
        self.b2 = nn.Conv2d(b, b, 3, padding=1)
        self.b3_reduce = nn.Conv2d(in_ch, c, 1)
        self.b3 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.b4_reduce = nn.Conv2d(in_ch, d, 1)
        self.b4 = nn.Conv2d(d, d, 3, padding=3, dilation=3)
        self.out_channels = a + b + c + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        return torch.cat([
            relu(self.b1(x)),
            relu(self.b2(relu(self.b2_reduce(x)))),
            relu(self.b3(relu(self.b3_reduce(x)))),
            relu(self.b4(relu(self.b4_reduce(x)))),
        ], dim=1)


class _InceptionBlock(nn.Sequential):
    """Inception -> BatchNorm -> MaxPool 2."""

    def __init__(self, in_ch: int, a: int, b: int, c: int, d: int):
        super().__init__()
        self.inception = _Inception(in_ch, a, b, c, d)
        self.bn = nn.BatchNorm2d(self.inception.out_channels, eps=BN_EPS)
        self.pool = nn.MaxPool2d(2)


class _Head(nn.Sequential):
    """Shared classifier: Dropout, Dense 16, LeakyReLU 0.1, Dropout, Dense 1 (the logit)."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 8 * 8, 16)
        self.act = nn.LeakyReLU(0.1)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 1)


class _MesoNet(nn.Module):
    """Four blocks and the dense head; the two networks differ in their first two blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of P(real), shape (N,), for an (N, 3, 256, 256) batch in [0, 1]."""
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(x).squeeze(1)


class Meso4(_MesoNet):
    """Meso-4: four conv blocks (8, 8, 16, 16 channels) and a small dense head; ~28k parameters."""

    def __init__(self):
        super().__init__()
        self.block1 = _ConvBlock(3, 8, 3, pool=2)
        self.block2 = _ConvBlock(8, 8, 5, pool=2)
        self.block3 = _ConvBlock(8, 16, 5, pool=2)
        self.block4 = _ConvBlock(16, 16, 5, pool=4)
        self.head = _Head()


class MesoInception4(_MesoNet):
    """MesoInception-4: two inception blocks (11, 12 channels), two 5x5 conv blocks, dense head."""

    def __init__(self):
        super().__init__()
        self.block1 = _InceptionBlock(3, 1, 4, 4, 2)
        self.block2 = _InceptionBlock(11, 2, 4, 4, 2)
        self.block3 = _ConvBlock(12, 16, 5, pool=2)
        self.block4 = _ConvBlock(16, 16, 5, pool=4)
        self.head = _Head()


_ARCHITECTURES: dict[str, type[nn.Module]] = {"meso4": Meso4, "mesoinception4": MesoInception4}


def load_released(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """The authors' Deepfake-trained ``name`` ("meso4" or "mesoinception4"), converted weights
    shipped in this package, in eval mode on ``device``."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown MesoNet {name!r}; choose one of: {', '.join(sorted(_ARCHITECTURES))}")
    model = _ARCHITECTURES[name]()
    weights = files("unmask.models") / "weights" / f"{name}_df.safetensors"
    model.load_state_dict(load(weights.read_bytes()))
    return model.to(device).eval()


def _max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k)`` as an elementwise max of the k*k strided views: the same numbers,
    several times faster on channels-last CPU tensors (max_pool2d also computes argmax indices)."""
    height, width = x.shape[2] - x.shape[2] % k, x.shape[3] - x.shape[3] % k
    views = [x[:, :, i:height:k, j:width:k] for i in range(k) for j in range(k)]
    out = torch.maximum(views[0], views[1])
    for view in views[2:]:
        torch.maximum(out, view, out=out)
    return out


class FastMesoNet(nn.Module):
    """MesoNet's eval forward reordered for speed; the same function up to float rounding.

    Each MesoNet block is conv -> ReLU -> BatchNorm -> max-pool. Max-pooling commutes with ReLU
    and, where every BatchNorm scale is positive (checked on each call; otherwise the plain forward
    runs), with BatchNorm, so pooling first does the elementwise work on a quarter (block 4: a
    sixteenth) of the values, and the inception branches are concatenated after pooling.
    Measured on one core: Meso-4 1.6x, MesoInception-4 1.5x the plain forward.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        blocks = (net.block1, net.block2, net.block3, net.block4)
        if net.training or any(bool((block.bn.weight <= 0).any()) for block in blocks):
            return net(x)
        for block in blocks:
            k = block.pool.kernel_size
            if hasattr(block, "inception"):
                inception = block.inception
                branches = (inception.b1(x), inception.b2(torch.relu(inception.b2_reduce(x))),
                            inception.b3(torch.relu(inception.b3_reduce(x))),
                            inception.b4(torch.relu(inception.b4_reduce(x))))
                x = torch.cat([_max_pool(branch, k).relu_() for branch in branches], dim=1)
            else:
                x = _max_pool(block.conv(x), k).relu_()
            bn = block.bn
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            x = torch.addcmul((bn.bias - bn.running_mean * scale).view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        return net.head(x).squeeze(1)
