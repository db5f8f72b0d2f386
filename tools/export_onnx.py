"""Export torch models to ONNX, so that `unmask check` on a CPU runs without importing torch.

MODEL_DIR: writes ``model.onnx`` beside the folder's safetensors and names it in its card
(``unmask.models.io.export_onnx``; ``unmask train`` does this itself whenever it saves a network that
exports). ``--mtcnn``: writes the MTCNN P-, R- and O-Nets from ``mtcnn.safetensors`` to
``src/unmask/faces/weights/{pnet,rnet,onet}.onnx``. With neither: the packaged default model
and MTCNN, which is what to run after rebuilding the default model.

Needs the ``onnx`` package: pip install -e ".[export]".

Usage: python tools/export_onnx.py [MODEL_DIR ...] [--mtcnn]
"""

import argparse
from pathlib import Path

from unmask.errors import UnmaskError
from unmask.faces.mtcnn import export_onnx as export_mtcnn
from unmask.faces.mtcnn_onnx import weights_dir
from unmask.models.io import default_model_dir, export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="*", metavar="MODEL_DIR", help="model folders to export")
    parser.add_argument("--mtcnn", action="store_true", help="export the MTCNN nets into the package")
    args = parser.parse_args()
    models = args.models or ([] if args.mtcnn else [default_model_dir()])
    try:
        if args.mtcnn or not args.models:
            for path in export_mtcnn(Path(str(weights_dir()))):
                print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
        for folder in models:
            path = export_onnx(folder)
            print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
    except UnmaskError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
