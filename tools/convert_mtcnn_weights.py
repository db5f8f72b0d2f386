"""Convert the MTCNN weights shipped in the facenet-pytorch 2.6.0 wheel into one safetensors file.

The wheel carries P-Net, R-Net and O-Net as three pickled state dicts; we ship them as a single
safetensors file (keys prefixed ``pnet.``/``rnet.``/``onet.``) so that loading needs neither
pickle nor a download.

Usage: python tools/convert_mtcnn_weights.py PATH/TO/facenet_pytorch-2.6.0-py3-none-any.whl
(get the wheel with ``pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/fp``).
"""

import argparse
import io
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

NETS = ("pnet", "rnet", "onet")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/unmask/faces/weights/mtcnn.safetensors"


def convert(wheel: Path, out: Path) -> None:
    """Read the three state dicts from the wheel and write them, prefixed, to ``out``."""
    tensors = {}
    with zipfile.ZipFile(wheel) as zf:
        for net in NETS:
            raw = zf.read(f"facenet_pytorch/data/{net}.pt")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            tensors.update({f"{net}.{k}": v.float().contiguous() for k, v in state.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"source": wheel.name, "licence": "MIT, see MTCNN-LICENSE.txt"})
    out.chmod(0o644)  # safetensors creates the file private (0600); it is package data.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="facenet_pytorch-2.6.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .safetensors file")
    args = parser.parse_args()
    convert(args.wheel, args.out)


if __name__ == "__main__":
    main()
