"""The MTCNN cascade (Zhang et al. 2016) in numpy, and its nets exported to ONNX and run by OpenCV.

Every step between the three nets follows facenet-pytorch's ``detect_face`` (same weights, same
image pyramid, same crops, same NMS variants), so our boxes match that widely used implementation
(tests/faces). What differs is how the work is done: images of one size go through P-Net
together at each scale, the R-Net and O-Net crops of all images form one batch each, and all
resizing is "area" averaging read off integral images, which is exact (it equals torch's
``F.interpolate(mode="area")``) and costs one pass over each image instead of one per pyramid
level or per crop.

Why ONNX on CPU: importing torch costs more than detecting the faces of a short video. The torch
nets (``unmask.faces.mtcnn``, for GPUs) run in the same cascade, so only the nets' own rounding
differs: detections agree within 1e-4 (tests/faces). tools/export_onnx.py writes the ONNX nets
from the shipped safetensors.
"""
from __future__ import annotations

import importlib.resources
from collections.abc import Sequence

import cv2
import numpy as np

from unmask.errors import UnmaskError
from unmask.faces.detection import Detection
from unmask.onnxnet import OnnxNet

NETS = ("pnet", "rnet", "onet")
OUTPUTS = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "marks", "prob"]}
"""What each exported net returns (see ``unmask.faces.mtcnn``'s PNet, RNet, ONet)."""


def weights_dir():
    return importlib.resources.files("unmask.faces") / "weights"


def check_settings(min_face_size: int, thresholds: Sequence[float], scale_factor: float) -> None:
    if min_face_size < 1:
        raise UnmaskError(f"min_face_size must be a positive number of pixels, got {min_face_size}")
    if not 0.0 < scale_factor < 1.0:
        raise UnmaskError(f"scale_factor must lie strictly between 0 and 1, got {scale_factor}")
    if len(thresholds) != 3:
        raise UnmaskError(f"thresholds must hold three probabilities (P-, R-, O-Net), got {thresholds!r}")


def check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise UnmaskError(f"image {i}: expected an RGB uint8 array of shape (H, W, 3), got "
                              f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")


def pyramid_scales(h: int, w: int, min_face_size: int, scale_factor: float) -> list[float]:
    """Pyramid scales: the smallest face maps to P-Net's 12 px window, down to a 12 px image."""
    scale = 12.0 / min_face_size
    side = min(h, w) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= scale_factor
        side *= scale_factor
    return scales


def detections(count: int, boxes: np.ndarray, points: np.ndarray, prob: np.ndarray,
               ids: np.ndarray) -> list[list[Detection]]:
    """Per image, its faces sorted by confidence, highest first."""
    results: list[list[Detection]] = [[] for _ in range(count)]
    for k in np.argsort(-prob, kind="stable"):
        results[ids[k]].append(Detection(box=tuple(boxes[k].tolist()), confidence=float(prob[k]),
                                         keypoints=points[k].copy()))
    return results


def _overlap(a: np.ndarray, b: np.ndarray, min_mode: bool) -> np.ndarray:
    """``unmask.faces.mtcnn._overlap``: IoU, or with ``min_mode`` intersection over the smaller box
    with inclusive pixel extents."""
    extra = 1.0 if min_mode else 0.0
    area_a = (a[:, 2] - a[:, 0] + extra) * (a[:, 3] - a[:, 1] + extra)
    area_b = (b[:, 2] - b[:, 0] + extra) * (b[:, 3] - b[:, 1] + extra)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + extra
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + extra
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    if min_mode:
        return inter / np.minimum(area_a[:, None], area_b[None, :])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _greedy(boxes: np.ndarray, threshold: float, min_mode: bool, block: int = 512) -> np.ndarray:
    """Keep-mask of greedy NMS over ``boxes`` sorted best first (``unmask.faces.mtcnn._greedy``)."""
    keep = np.ones(len(boxes), dtype=bool)
    for start in range(0, len(boxes), block):
        cur = boxes[start:start + block]
        alive = keep[start:start + block].copy()
        if start:
            alive &= ~(_overlap(boxes[:start][keep[:start]], cur, min_mode) > threshold).any(axis=0)
        suppresses = np.triu(_overlap(cur, cur, min_mode) > threshold, k=1)
        settled = alive
        while True:
            update = alive & ~(suppresses & settled[:, None]).any(axis=0)
            if np.array_equal(update, settled):
                break
            settled = update
        keep[start:start + block] = settled
    return keep


def _nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
         min_mode: bool = False) -> np.ndarray:
    """Greedy NMS within each group (image); indices kept, best first per group."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order], kind="stable")]
    starts = np.flatnonzero(np.diff(groups[order], prepend=-1)) if len(order) else np.zeros(0, int)
    kept = [part[_greedy(boxes[part], threshold, min_mode)] for part in np.split(order, starts[1:])]
    return np.concatenate(kept) if len(order) else order


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Square boxes around their centres (side = longer side)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R-/O-Net box regression (offsets relative to inclusive box size)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], axis=1)


def _window_bounds(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source ranges [lo, hi) that "area" resizing averages for each of ``out`` cells (adaptive pooling's formulas)."""
    i = np.arange(out)
    lo = (i * length[..., None]) // out
    hi = ((i + 1) * length[..., None] + out - 1) // out
    return start[..., None] + lo, start[..., None] + hi


class _Integral:
    """Integral images of same-size images, for exact area resampling of pyramid levels and crops."""

    def __init__(self, images: np.ndarray) -> None:
        """``images``: (n, h, w, 3) uint8."""
        n, self.h, self.w, _ = images.shape
        if self.h * self.w * 255 < 2**31:
            self.table = np.empty((n, self.h + 1, self.w + 1, 3), dtype=np.int32)
            for out, image in zip(self.table, images):
                cv2.integral(image, sum=out, sdepth=cv2.CV_32S)
        else:
            self.table = np.zeros((n, self.h + 1, self.w + 1, 3), dtype=np.int64)
            self.table[:, 1:, 1:] = images.cumsum(axis=1, dtype=np.int64).cumsum(axis=2)

    def _means(self, flat: np.ndarray, base: np.ndarray, ys0: np.ndarray, ys1: np.ndarray,
               xs0: np.ndarray, xs1: np.ndarray) -> np.ndarray:
        """Means of rectangles [ys0, ys1) x [xs0, xs1) of ``flat`` (..., pixels, 3), pixel index offset by ``base``."""
        axis = flat.ndim - 2
        r0 = base + ys0[..., :, None] * (self.w + 1)
        r1 = base + ys1[..., :, None] * (self.w + 1)
        x0, x1 = xs0[..., None, :], xs1[..., None, :]

        def corner(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.take(flat, rows + cols, axis=axis)

        sums = corner(r1, x1) - corner(r1, x0) - corner(r0, x1) + corner(r0, x0)
        count = (ys1 - ys0)[..., :, None] * (xs1 - xs0)[..., None, :]
        return sums.astype(np.float32) / count[..., None].astype(np.float32)

    def pyramid_level(self, out_h: int, out_w: int) -> np.ndarray:
        """All images area-resized to (out_h, out_w); (n, out_h, out_w, 3) float32."""
        zero = np.zeros((), dtype=np.int64)
        ys0, ys1 = _window_bounds(zero, np.full_like(zero, self.h), out_h)
        xs0, xs1 = _window_bounds(zero, np.full_like(zero, self.w), out_w)
        return self._means(self.table.reshape(len(self.table), -1, 3), zero, ys0, ys1, xs0, xs1)

    def crops(self, image: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray,
              size: int) -> np.ndarray:
        """Pixel ranges [x0, x1) x [y0, y1) of ``image`` (batch indices) area-resized to (m, size, size, 3)."""
        ys0, ys1 = _window_bounds(y0, y1 - y0, size)
        xs0, xs1 = _window_bounds(x0, x1 - x0, size)
        base = (image * (self.h + 1) * (self.w + 1))[:, None, None]
        return self._means(self.table.reshape(-1, 3), base, ys0, ys1, xs0, xs1)


def _normalise(x: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) pixel values to the nets' input (n, 3, h, w) in [-1, 1]."""
    return np.ascontiguousarray(((x - 127.5) * 0.0078125).transpose(0, 3, 1, 2))


class Cascade:
    """The MTCNN cascade, every step between the nets in numpy; ``_forward`` runs the nets
    (exported ones here, torch's on a GPU in ``unmask.faces.mtcnn``), so both run one pipeline."""

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709) -> None:
        check_settings(min_face_size, thresholds, scale_factor)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = scale_factor

    def _forward(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        """Net ``name``'s ``OUTPUTS`` for a non-empty (n, 3, h, w) float32 batch."""
        raise NotImplementedError

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        """The net's outputs; an empty batch is answered here, never given to a net."""
        if not len(x):
            shapes = {"reg": (0, 4), "marks": (0, 10), "prob": (0,)}
            return [np.zeros(shapes[o], np.float32) for o in OUTPUTS[name]]
        return self._forward(name, x)

    def _propose(self, integral: _Integral, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 for same-size images: P-Net over the pyramid, NMS 0.5 per scale; rows
        (x1, y1, x2, y2, score, 4 regression offsets) and their image ids."""
        rows = [np.zeros((0, 9), np.float32)]
        ids = [np.zeros(0, np.int64)]
        for scale in pyramid_scales(integral.h, integral.w, self.min_face_size, self.scale_factor):
            level = integral.pyramid_level(int(integral.h * scale + 1), int(integral.w * scale + 1))
            reg, prob = self._run("pnet", _normalise(level))
            mask = prob >= self.thresholds[0]
            cells = np.stack(np.nonzero(mask), axis=1)
            # Cell (y, x) looks at the 12x12 window at (2x, 2y) of the scaled image.
            cell = cells[:, 1:].astype(reg.dtype)[:, ::-1]
            q1 = np.floor((2 * cell + 1) / scale)
            q2 = np.floor((2 * cell + 12) / scale)
            cand = np.concatenate([q1, q2, prob[mask][:, None], reg.transpose(0, 2, 3, 1)[mask]], axis=1)
            cand_ids = image_ids[cells[:, 0]]
            keep = _nms(cand[:, :4], cand[:, 4], cand_ids, 0.5)
            rows.append(cand[keep])
            ids.append(cand_ids[keep])
        return np.concatenate(rows), np.concatenate(ids)

    @staticmethod
    def _crop(integrals: list[_Integral], where: np.ndarray, boxes: np.ndarray, ids: np.ndarray,
              size: int) -> tuple[np.ndarray, np.ndarray]:
        """Net inputs (m, 3, size, size) of the boxes clipped to their images, and the mask of the
        boxes with any pixel inside their image (only those get a crop; the others are dropped)."""
        group, slot, height, width = where[ids].T
        pix = np.trunc(boxes).astype(np.int64)
        x0 = np.maximum(pix[:, 0], 1) - 1
        y0 = np.maximum(pix[:, 1], 1) - 1
        x1 = np.minimum(pix[:, 2], width)
        y1 = np.minimum(pix[:, 3], height)
        valid = (x1 > x0) & (y1 > y0)
        out = np.empty((int(valid.sum()), size, size, 3), np.float32)
        valid_group = group[valid]
        for g, integral in enumerate(integrals):
            sel = valid & (group == g)
            out[valid_group == g] = integral.crops(slot[sel], x0[sel], y0[sel], x1[sel], y1[sel], size)
        return _normalise(out), valid

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """RGB uint8 HxWx3 images (sizes may differ); one list per image, sorted by confidence, highest first."""
        check_images(images)
        if not images:
            return []
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        integrals = []
        where = np.zeros((len(images), 4), np.int64)
        rows, ids = [], []
        for g, ((h, w), indices) in enumerate(by_size.items()):
            where[indices] = [[g, slot, h, w] for slot in range(len(indices))]
            integral = _Integral(np.stack([images[i] for i in indices]))
            integrals.append(integral)
            r, d = self._propose(integral, np.array(indices, np.int64))
            rows.append(r)
            ids.append(d)
        cand, ids = np.concatenate(rows), np.concatenate(ids)

        # Stage 1, across scales: NMS 0.7, regression, squares.
        keep = _nms(cand[:, :4], cand[:, 4], ids, 0.7)
        cand, ids = cand[keep], ids[keep]
        wh = np.tile(cand[:, 2:4] - cand[:, 0:2], (1, 2))
        boxes = _rerec(cand[:, :4] + cand[:, 5:9] * wh)

        # Stage 2: R-Net on 24x24 crops.
        if len(boxes):
            crops, valid = self._crop(integrals, where, boxes, ids, 24)
            boxes, ids = boxes[valid], ids[valid]
            reg, prob = self._run("rnet", crops)
            ok = prob > self.thresholds[1]
            boxes, ids, reg, prob = boxes[ok], ids[ok], reg[ok], prob[ok]
            keep = _nms(boxes, prob, ids, 0.7)
            boxes = _rerec(_bbreg(boxes[keep], reg[keep]))
            ids = ids[keep]

        # Stage 3: O-Net on 48x48 crops; keypoints; final NMS by overlap of the smaller box.
        points = np.zeros((0, 5, 2), np.float32)
        prob = np.zeros(0, np.float32)
        if len(boxes):
            crops, valid = self._crop(integrals, where, boxes, ids, 48)
            boxes, ids = boxes[valid], ids[valid]
            reg, marks, prob = self._run("onet", crops)
            ok = prob > self.thresholds[2]
            boxes, ids, reg, marks, prob = boxes[ok], ids[ok], reg[ok], marks[ok], prob[ok]
            w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = np.stack([w * marks[:, :5] + boxes[:, 0:1] - 1, h * marks[:, 5:] + boxes[:, 1:2] - 1], axis=2)
            boxes = _bbreg(boxes, reg)
            keep = _nms(boxes, prob, ids, 0.7, min_mode=True)
            boxes, ids, points, prob = boxes[keep], ids[keep], points[keep], prob[keep]
        return detections(len(images), boxes.astype(np.float64), points.astype(np.float32),
                          prob.astype(np.float64), ids)


class OnnxMTCNN(Cascade):
    """MTCNN on CPU without torch: the nets exported to ONNX, run by OpenCV."""

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709) -> None:
        super().__init__(min_face_size, thresholds, scale_factor)
        self.nets = {name: OnnxNet(weights_dir() / f"{name}.onnx") for name in NETS}

    def _forward(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        return self.nets[name](OUTPUTS[name], x=x)
