"""Convert the MesoNet authors' Keras 2 weights (Meso4_DF.h5, MesoInception_DF.h5) to the
safetensors files that ``unmask.models.nets.mesonet.load_released`` ships, without TensorFlow.

Keras names layers by creation order (``conv2d_5`` ...), so each PyTorch module is mapped to
the Keras layer that the same line of the authors' ``classifiers.py`` created. Conversions:
conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), and the first dense layer's
input columns reordered from Keras' NHWC flatten to PyTorch's NCHW flatten.

Usage: python tools/convert_mesonet_weights.py [H5_DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from unmask.models.nets.mesonet import Meso4, MesoInception4

REPO = Path(__file__).resolve().parents[1]
DEFAULT_H5_DIR = REPO.parent / "shared" / "data" / "pretrained" / "mesonet"
DEFAULT_OUT = REPO / "src" / "unmask" / "models" / "weights"

_INCEPTION_BRANCHES = ("b1", "b2_reduce", "b2", "b3_reduce", "b3", "b4_reduce", "b4")  # creation order

# name -> (architecture, h5 file, {torch module prefix: Keras layer name})
MODELS = {
    "meso4": (Meso4, "Meso4_DF.h5", {
        **{f"block{i}.conv": f"conv2d_{i + 4}" for i in range(1, 5)},
        **{f"block{i}.bn": f"batch_normalization_{i + 4}" for i in range(1, 5)},
        "head.fc1": "dense_3",
        "head.fc2": "dense_4",
    }),
    "mesoinception4": (MesoInception4, "MesoInception_DF.h5", {
        **{f"block1.inception.{b}": f"conv2d_{i + 1}" for i, b in enumerate(_INCEPTION_BRANCHES)},
        **{f"block2.inception.{b}": f"conv2d_{i + 8}" for i, b in enumerate(_INCEPTION_BRANCHES)},
        "block3.conv": "conv2d_15",
        "block4.conv": "conv2d_16",
        **{f"block{i}.bn": f"batch_normalization_{i}" for i in range(1, 5)},
        "head.fc1": "dense_1",
        "head.fc2": "dense_2",
    }),
}

_FLAT_CHW = (16, 8, 8)  # shape of the last feature map before Flatten, NCHW


def _keras_weights(h5: h5py.File, layer: str) -> dict[str, np.ndarray]:
    """{'kernel': ..., 'bias': ...} or the four batch-norm arrays of one saved Keras layer."""
    group = h5[layer]
    return {name.decode().split("/")[-1].removesuffix(":0"): np.asarray(group[name.decode()])
            for name in group.attrs["weight_names"]}


def _torch_tensors(prefix: str, keras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One Keras layer's arrays under the PyTorch names and layouts of module ``prefix``."""
    if "moving_mean" in keras:
        return {f"{prefix}.weight": keras["gamma"], f"{prefix}.bias": keras["beta"],
                f"{prefix}.running_mean": keras["moving_mean"], f"{prefix}.running_var": keras["moving_variance"]}
    kernel = keras["kernel"]
    if kernel.ndim == 4:
        kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif prefix == "head.fc1":
        # Keras row (h*W + w)*C + c feeds the same unit as PyTorch column c*H*W + h*W + w.
        c, h, w = _FLAT_CHW
        kernel = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
    else:
        kernel = kernel.T
    return {f"{prefix}.weight": kernel, f"{prefix}.bias": keras["bias"]}


def convert(name: str, h5_dir: Path) -> dict[str, torch.Tensor]:
    """The full state dict of ``name`` with the authors' weights; fails on any missing,
    unused or mis-shaped tensor so a wrong mapping cannot pass silently."""
    architecture, filename, layers = MODELS[name]
    state = architecture().state_dict()
    with h5py.File(h5_dir / filename, "r") as h5:
        saved = {n.decode() for n in h5.attrs["layer_names"] if len(h5[n.decode()].attrs["weight_names"])}
        if saved != set(layers.values()):
            raise ValueError(f"{filename}: layers with weights {sorted(saved)} != mapped {sorted(layers.values())}")
        arrays = {k: v for prefix, layer in layers.items() for k, v in _torch_tensors(prefix, _keras_weights(h5, layer)).items()}
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(arrays) != expected:
        raise ValueError(f"{name}: missing {sorted(expected - set(arrays))}, unexpected {sorted(set(arrays) - expected)}")
    for key, array in arrays.items():
        if tuple(array.shape) != tuple(state[key].shape):
            raise ValueError(f"{name}: {key} has shape {array.shape}, expected {tuple(state[key].shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5_dir", nargs="?", type=Path, default=DEFAULT_H5_DIR,
                        help="folder holding Meso4_DF.h5 and MesoInception_DF.h5 (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (_, filename, _) in MODELS.items():
        path = args.out / f"{name}_df.safetensors"
        # One metadata key: safetensors orders several at random, and the files should be reproducible.
        source = f"{filename} from DariusAf/MesoNet (Apache-2.0) in PyTorch layout; the model outputs the logit of P(real)"
        save_file(convert(name, args.h5_dir), path, metadata={"source": source})
        path.chmod(0o644)  # safetensors creates files 0600; installed package data must be readable by all
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
