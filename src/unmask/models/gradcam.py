"""Grad-CAM (Selvaraju et al. 2017): where in a face crop the network saw what raised its fake score.

Apart from the estimator, as an explanation of any network: it needs the net, the layer to
explain and batches of its inputs, nothing of how the net was trained.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(net: nn.Module, layer: str, batches: Iterable[torch.Tensor], logit_sign: float,
             size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1] at ``size`` (the crops' own), one per input, of the
    submodule ``layer``'s activations weighted by the gradient of the fake logit
    (``logit_sign`` * the net's output). Each map is scaled to its own maximum; a face where
    nothing pushed towards fake is all 0."""
    target = net.get_submodule(layer)
    captured: list[torch.Tensor] = []
    hook = target.register_forward_hook(lambda module, inputs, output: captured.append(output))
    net.eval()
    maps = []
    try:
        for inputs in batches:
            captured.clear()
            logits = logit_sign * net(inputs)
            activation = captured[0]
            gradient, = torch.autograd.grad(logits.sum(), activation)
            cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False).squeeze(1)
            peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            maps.append((cam / peak).clamp_(0.0, 1.0).detach().cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(maps).astype(np.float32)
