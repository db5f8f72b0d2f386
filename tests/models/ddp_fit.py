"""Fit a small CNN, alone or as one process of ``torchrun``, and save each process's result.

Run by ``test_cnn_distributed.py``: ``python ddp_fit.py OUT BATCH [EPOCHS [CHECKPOINT_DIR]]`` or
``torchrun --nproc-per-node=P ddp_fit.py OUT BATCH/P ...``. The network has no batch norm and no
dropout and nothing is augmented, so one process with batches of B faces and P processes with
B/P each take the same optimisation steps: their weights must agree to float rounding.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import save_file
from torch import nn

from unmask.distributed import torch_process_group
from unmask.models.architectures import ARCHITECTURES, Architecture
from unmask.models.cnn import TorchFaceClassifier


class Plain(nn.Module):
    """Two strided convs and a linear head: every layer is per-sample, so steps split exactly."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


ARCHITECTURES.register("plain")(lambda: Architecture(
    build=Plain, input_size=24, fixed_size=False, logit_sign=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    crop_margin=0.3, cam_layer="features"))


def faces(count: int = 128, size: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise faces; every other one has a darkened square. Groups of 4 faces, so splits keep even counts."""
    rng = np.random.default_rng(0)
    X = rng.integers(60, 200, (count, size, size, 3)).astype(np.uint8)
    y = np.arange(count) % 2
    X[y == 1, 6:18, 6:18] //= 2
    return X, y, np.arange(count) // 4


def main() -> None:
    out, batch_size = Path(sys.argv[1]), int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    checkpoint_dir = sys.argv[4] if len(sys.argv) > 4 else None
    X, y, groups = faces()
    with torch_process_group() as (rank, processes):
        model = TorchFaceClassifier(arch="plain", epochs=epochs, batch_size=batch_size, lr=1e-2, augment=False,
                                    val_fraction=0.25, device="cpu", seed=0, checkpoint_dir=checkpoint_dir,
                                    patience=epochs).fit(X, y, groups=groups)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.weights(), str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"processes": processes, "history": model.history_}))


if __name__ == "__main__":
    main()
