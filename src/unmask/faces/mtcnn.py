"""MTCNN's three nets (Zhang et al., 2016) in PyTorch, run in the cascade of ``unmask.faces.mtcnn_onnx``.

The torch nets are the source of the shipped ONNX ones (``export_onnx``) and run where torch is
wanted (a GPU); the cascade around them, shared with the ONNX nets, is numpy.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from unmask.errors import UnmaskError
from unmask.faces.mtcnn_onnx import NETS, OUTPUTS, Cascade

__all__ = ["MTCNN", "PNet", "RNet", "ONet", "export_onnx"]


class PNet(nn.Module):
    """Proposal net: fully convolutional, a 12x12 window per output cell, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return box regression (N, 4, h, w) and face probability (N, h, w)."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return box regression (N, 4) and face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights come from a (W, H, C)-ordered flatten.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: final probability, box regression and five keypoints."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return box regression (N, 4), keypoints (N, 10: five x then five y) and probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


class MTCNN(Cascade):
    """MTCNN with its torch nets, on a GPU (or the CPU), in the numpy cascade of ``mtcnn_onnx``."""

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 device: str = "cpu") -> None:
        super().__init__(min_face_size, thresholds, scale_factor)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UnmaskError(f"device {device!r} asked for, but no CUDA GPU is available")
        self.pnet, self.rnet, self.onet = _load_nets()
        for net in (self.pnet, self.rnet, self.onet):
            # Channels-last makes oneDNN's convolutions 2-3x faster on CPU.
            net.to(self.device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def _forward(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        net = getattr(self, name)
        inputs = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        return [output.float().cpu().numpy() for output in net(inputs)]


def _load_nets() -> tuple[PNet, RNet, ONet]:
    """The three nets with the shipped weights, in eval mode on the CPU."""
    state = load_file(str(importlib.resources.files("unmask.faces") / "weights" / "mtcnn.safetensors"))
    nets = PNet(), RNet(), ONet()
    for name, net in zip(NETS, nets):
        net.load_state_dict({k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")})
        net.eval()
    return nets


def export_onnx(out_dir: Path) -> list[Path]:
    """Write the three nets as ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` for ``unmask.faces.mtcnn_onnx``:
    P-Net takes any batch and image size, R-Net and O-Net any batch of 24 and 48 px crops."""
    from unmask.onnxnet import export

    written = []
    for name, net, shape in zip(NETS, _load_nets(), [(1, 3, 30, 40), (2, 3, 24, 24), (2, 3, 48, 48)]):
        batch = {0: "n", 2: "h", 3: "w"} if name == "pnet" else {0: "n"}
        written.append(export(net, (torch.zeros(shape),), Path(out_dir) / f"{name}.onnx", ["x"], OUTPUTS[name],
                              {"x": batch, **{output: {0: "n"} for output in OUTPUTS[name]}}))
    return written
