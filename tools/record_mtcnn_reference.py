"""Record what an established MTCNN (facenet-pytorch 2.6.0) finds on a few generated images.

Writes tests/faces/fixtures/mtcnn_reference.json, which tests/faces/test_mtcnn.py compares our
detector against. Run it in a throwaway virtualenv, never as a project dependency:

    python -m venv --system-site-packages /tmp/venv-ref      # reuses this machine's torch (CPU)
    /tmp/venv-ref/bin/pip install --no-deps facenet-pytorch==2.6.0
    /tmp/venv-ref/bin/python tools/record_mtcnn_reference.py

facenet-pytorch imports torchvision for two things only: ``batched_nms`` and ``to_tensor`` (the
latter for face extraction, which this script does not use). torchvision's PyPI wheels are built
against CUDA builds of torch and do not load next to a CPU-only torch, so when torchvision cannot
be imported, a stand-in module is installed whose ``batched_nms`` is a plain, sequential
re-implementation of torchvision's documented semantics (greedy, by descending score, IoU of
continuous boxes, drop when IoU > threshold, per index). The JSON records which one was used.

The images are made in code from scikit-image's public-domain samples; each case stores its
recipe and the SHA-256 of the pixels so the test can prove it rebuilds exactly the same image.
"""

import hashlib
import importlib.metadata
import json
import sys
import types
from pathlib import Path

import numpy as np
import skimage.data
import torch

OUT = Path(__file__).resolve().parents[1] / "tests/faces/fixtures/mtcnn_reference.json"


def _reference_batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms semantics, written out one box at a time in NumPy."""
    b = boxes.detach().cpu().double().numpy()
    s = scores.detach().cpu().double().numpy()
    g = idxs.detach().cpu().numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = []
    for i in np.argsort(-s, kind="stable"):
        suppressed = False
        for j in keep:
            if g[j] != g[i]:
                continue
            iw = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            ih = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = iw * ih
            if inter / (area[i] + area[j] - inter) > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(int(i))
    return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)


def _import_facenet() -> str:
    """Import facenet_pytorch; return how NMS was provided."""
    try:
        import torchvision  # noqa: F401

        how = f"torchvision {importlib.metadata.version('torchvision')}"
    except Exception:
        tv = types.ModuleType("torchvision")
        ops, boxes = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.boxes")
        transforms, functional = types.ModuleType("torchvision.transforms"), types.ModuleType(
            "torchvision.transforms.functional")
        boxes.batched_nms = ops.batched_nms = _reference_batched_nms
        tv.ops, ops.boxes, tv.transforms, transforms.functional = ops, boxes, transforms, functional
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                            "torchvision.transforms": transforms, "torchvision.transforms.functional": functional})
        how = "stand-in torchvision.ops.batched_nms (sequential NumPy, torchvision semantics)"
    import facenet_pytorch  # noqa: F401

    return how


def _downscale(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].reshape(h // k, k, w // k, k, 3).astype(np.float64)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _frame_720p() -> np.ndarray:
    frame = np.full((720, 1280, 3), 96, dtype=np.uint8)
    frame[100:612, 400:912] = skimage.data.astronaut()
    return frame


def _gradient() -> np.ndarray:
    ramp = np.linspace(0, 255, 640).round().astype(np.uint8)
    return np.repeat(np.repeat(ramp[None, :, None], 480, axis=0), 3, axis=2)


IMAGES = {
    "astronaut": ("skimage.data.astronaut()", skimage.data.astronaut),
    "astronaut_flipped": ("skimage.data.astronaut()[:, ::-1]", lambda: skimage.data.astronaut()[:, ::-1]),
    "astronaut_half": ("mean of 2x2 blocks of astronaut, np.round, uint8 (256x256)",
                       lambda: _downscale(skimage.data.astronaut(), 2)),
    "astronaut_third": ("mean of 3x3 blocks of astronaut[:510, :510], np.round, uint8 (170x170)",
                        lambda: _downscale(skimage.data.astronaut(), 3)),
    "two_astronauts": ("np.concatenate([astronaut, astronaut[:, ::-1]], axis=1) (512x1024)",
                       lambda: np.concatenate([skimage.data.astronaut(), skimage.data.astronaut()[:, ::-1]], axis=1)),
    "frame_720p": ("720x1280 filled with 96, astronaut at rows 100:612, cols 400:912", _frame_720p),
    "coffee": ("skimage.data.coffee() (no face)", skimage.data.coffee),
    "gradient": ("480x640, every row np.linspace(0, 255, 640).round() as uint8, grey (no face)", _gradient),
}

# (image, min_face_size) pairs recorded with the default thresholds and scale factor.
CASES = [
    ("astronaut", 20), ("astronaut_flipped", 20), ("astronaut_half", 20), ("astronaut_third", 20),
    ("astronaut_third", 40), ("astronaut_third", 80), ("two_astronauts", 20), ("frame_720p", 40), ("frame_720p", 20),
    ("coffee", 20), ("gradient", 20),
]


def main() -> None:
    nms = _import_facenet()
    from facenet_pytorch import MTCNN

    thresholds, factor = [0.6, 0.7, 0.7], 0.709
    cases = []
    for name, min_face_size in CASES:
        recipe, make = IMAGES[name]
        img = np.ascontiguousarray(make())
        detector = MTCNN(min_face_size=min_face_size, thresholds=thresholds, factor=factor,
                         select_largest=False, keep_all=True, device="cpu")
        boxes, probs, points = detector.detect(img, landmarks=True)
        faces = []
        if boxes is not None:
            for box, prob, pts in zip(boxes, probs, points):
                faces.append({"box": [round(float(v), 3) for v in box], "confidence": round(float(prob), 6),
                              "keypoints": [[round(float(x), 3), round(float(y), 3)] for x, y in pts]})
        cases.append({"image": name, "recipe": recipe, "shape": list(img.shape),
                      "sha256": hashlib.sha256(img.tobytes()).hexdigest(), "min_face_size": min_face_size,
                      "faces": faces})
    record = {
        "recorded_with": {
            "package": f"facenet-pytorch {importlib.metadata.version('facenet-pytorch')}",
            "call": "MTCNN(min_face_size, thresholds, factor, select_largest=False, keep_all=True)"
                    ".detect(img, landmarks=True)",
            "torch": torch.__version__, "numpy": np.__version__,
            "scikit-image": importlib.metadata.version("scikit-image"), "nms": nms,
        },
        "thresholds": thresholds, "scale_factor": factor,
        "box": "x1, y1, x2, y2 in pixels; keypoints (x, y): left eye, right eye, nose, mouth left, mouth right",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
