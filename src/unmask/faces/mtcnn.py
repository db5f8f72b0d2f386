"""MTCNN face detector (Zhang et al., 2016) in plain PyTorch, batched over images.

The three cascaded nets and every step between them follow facenet-pytorch's ``detect_face``
(same weights, same image pyramid, same crops, same NMS variants), so our boxes match that
widely used implementation; see tests/faces. What differs is how the work is done: images of one
size go through P-Net together at each scale, the R-Net and O-Net crops of all images form one
batch each, and all resizing is "area" averaging read off integral images, which is exact (it
equals ``F.interpolate(mode="area")``) and costs one pass over each image instead of one per
pyramid level or per crop.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from unmask.errors import UnmaskError
from unmask.faces.detectors import Detection
from unmask.faces.mtcnn_onnx import NETS, OUTPUTS, check_images, check_settings, detections, pyramid_scales

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


def _overlap(a: torch.Tensor, b: torch.Tensor, min_mode: bool) -> torch.Tensor:
    """(len(a), len(b)) overlap of boxes: IoU of continuous boxes (torchvision's measure), or with
    ``min_mode`` intersection over the smaller box with inclusive pixel extents (the original
    MATLAB code's "Min"), as facenet-pytorch uses them."""
    extra = 1.0 if min_mode else 0.0
    area_a = (a[:, 2] - a[:, 0] + extra) * (a[:, 3] - a[:, 1] + extra)
    area_b = (b[:, 2] - b[:, 0] + extra) * (b[:, 3] - b[:, 1] + extra)
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0]) + extra
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1]) + extra
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
    if min_mode:
        return inter.div_(torch.minimum(area_a[:, None], area_b[None, :]))
    return inter.div_(area_a[:, None] + area_b[None, :] - inter)


def _greedy(boxes: torch.Tensor, threshold: float, min_mode: bool, block: int = 512) -> torch.Tensor:
    """Keep-mask of greedy NMS over ``boxes`` sorted best first, without a Python loop per box.

    Greedy NMS keeps a box unless a better kept box overlaps it by more than ``threshold``. Blocks
    of boxes are settled in order: first against the boxes already kept, then among themselves by
    iterating that rule on the block's overlap matrix until it stops changing, which is exactly
    the greedy result because a box's fate depends only on better boxes.
    """
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for start in range(0, len(boxes), block):
        cur = boxes[start:start + block]
        alive = keep[start:start + block]
        if start:
            alive &= ~(_overlap(boxes[:start][keep[:start]], cur, min_mode) > threshold).any(dim=0)
        suppresses = (_overlap(cur, cur, min_mode) > threshold).triu_(diagonal=1)
        settled = alive
        while True:
            update = alive & ~(suppresses & settled[:, None]).any(dim=0)
            if torch.equal(update, settled):
                break
            settled = update
        keep[start:start + block] = settled
    return keep


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
         min_mode: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression within each group (image); indices kept, best first per group."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sizes = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    kept = [part[_greedy(boxes[part], threshold, min_mode)] for part in order.split(sizes)]
    return torch.cat(kept) if kept else order


def _rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Square boxes around their centres (side = longer side)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-/O-Net box regression (offsets relative to inclusive box size)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _window_bounds(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ranges [lo, hi) that "area" resizing averages for each of ``out`` cells.

    Same integer formulas as ``F.adaptive_avg_pool2d`` (what ``F.interpolate(mode="area")`` runs),
    vectorised over windows: ``start`` and ``length`` are (...,) int64, the result (..., out).
    """
    i = torch.arange(out, device=start.device)
    lo = (i * length[..., None]) // out
    hi = ((i + 1) * length[..., None] + out - 1) // out
    return start[..., None] + lo, start[..., None] + hi


def _integral_cv2(images: np.ndarray) -> torch.Tensor:
    """(n, h+1, w+1, 3) int32 integral images; OpenCV's is ~20x faster than torch.cumsum on CPU."""
    n, h, w, _ = images.shape
    table = torch.empty((n, h + 1, w + 1, 3), dtype=torch.int32)
    for out, image in zip(table.numpy(), images):
        cv2.integral(image, sum=out, sdepth=cv2.CV_32S)
    return table


def _integral_torch(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, h+1, w+1, 3) integral images of (n, h, w, 3) uint8 on any device."""
    n, h, w, _ = images.shape
    table = torch.zeros((n, h + 1, w + 1, 3), dtype=dtype, device=images.device)
    table[:, 1:, 1:] = images.cumsum(dim=1, dtype=dtype).cumsum(dim=2)
    return table


class _Integral:
    """Integral images of one batch of same-size images, for exact area-resampling anywhere.

    Each output pixel of "area" resizing is the mean of a rectangle of source pixels, i.e. four
    look-ups in the integral image, so one pass over the image serves every pyramid level and
    crop. The sums are exact integers (int32 while the image stays under ~8.4 megapixels).
    """

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        """``images``: (n, h, w, 3) uint8."""
        _, self.h, self.w, _ = images.shape
        small = self.h * self.w * 255 < 2**31
        if device.type == "cpu" and small:
            self.table = _integral_cv2(images)
        else:
            self.table = _integral_torch(torch.from_numpy(images).to(device), torch.int32 if small else torch.int64)

    def _means(self, flat: torch.Tensor, base: torch.Tensor, ys0: torch.Tensor, ys1: torch.Tensor,
               xs0: torch.Tensor, xs1: torch.Tensor) -> torch.Tensor:
        """Means of rectangles [ys0, ys1) x [xs0, xs1) of the table viewed as ``flat`` (..., pixels, 3),
        with ``base`` added to the pixel index; (..., rows, cols, 3) float32."""
        dim = flat.dim() - 2
        r0 = base + ys0[..., :, None] * (self.w + 1)
        r1 = base + ys1[..., :, None] * (self.w + 1)
        x0, x1 = xs0[..., None, :], xs1[..., None, :]

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            index = rows + cols
            return flat.index_select(dim, index.flatten()).unflatten(dim, index.shape)

        sums = corner(r1, x1) - corner(r1, x0) - corner(r0, x1) + corner(r0, x0)
        count = (ys1 - ys0)[..., :, None] * (xs1 - xs0)[..., None, :]
        return sums.float().div_(count[..., None])

    def pyramid_level(self, out_h: int, out_w: int) -> torch.Tensor:
        """All images resized to (out_h, out_w) by area averaging; (n, out_h, out_w, 3) float32."""
        zero = torch.zeros((), dtype=torch.int64, device=self.table.device)
        ys0, ys1 = _window_bounds(zero, torch.full_like(zero, self.h), out_h)
        xs0, xs1 = _window_bounds(zero, torch.full_like(zero, self.w), out_w)
        return self._means(self.table.flatten(1, 2), zero, ys0, ys1, xs0, xs1)

    def crops(self, image: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor,
              size: int) -> torch.Tensor:
        """Pixel ranges [x0, x1) x [y0, y1) of ``image`` (batch indices) area-resized to (m, size, size, 3)."""
        ys0, ys1 = _window_bounds(y0, y1 - y0, size)
        xs0, xs1 = _window_bounds(x0, x1 - x0, size)
        base = (image * (self.h + 1) * (self.w + 1))[:, None, None]
        return self._means(self.table.view(-1, 3), base, ys0, ys1, xs0, xs1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(n, h, w, 3) pixel values to the nets' input (n, 3, h, w) in [-1, 1], channels-last in memory."""
    return x.sub_(127.5).mul_(0.0078125).permute(0, 3, 1, 2)


class MTCNN:
    """Detect faces with the three-stage MTCNN cascade (weights shipped with the package)."""

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 device: str = "cpu") -> None:
        check_settings(min_face_size, thresholds, scale_factor)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UnmaskError(f"device {device!r} asked for, but no CUDA GPU is available")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = scale_factor
        self.pnet, self.rnet, self.onet = _load_nets()
        for net in (self.pnet, self.rnet, self.onet):
            # Channels-last makes oneDNN's convolutions 2-3x faster on CPU.
            net.to(self.device, memory_format=torch.channels_last)

    def _scales(self, h: int, w: int) -> list[float]:
        return pyramid_scales(h, w, self.min_face_size, self.scale_factor)

    def _propose(self, integral: _Integral, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1 for a batch of same-size images: P-Net over the pyramid, NMS 0.5 per scale.

        Returns candidate rows (x1, y1, x2, y2, score, 4 regression offsets) and their image ids.
        """
        rows = [torch.zeros((0, 9), device=self.device)]
        ids = [torch.zeros(0, dtype=torch.int64, device=self.device)]
        for scale in self._scales(integral.h, integral.w):
            level = integral.pyramid_level(int(integral.h * scale + 1), int(integral.w * scale + 1))
            reg, prob = self.pnet(_normalise(level))
            mask = prob >= self.thresholds[0]
            cells = mask.nonzero()
            # Cell (y, x) looks at the 12x12 window at (2x, 2y) of the scaled image.
            cell = cells[:, 1:].to(reg.dtype).flip(1)
            q1 = ((2 * cell + 1) / scale).floor()
            q2 = ((2 * cell + 12) / scale).floor()
            cand = torch.cat([q1, q2, prob[mask][:, None], reg.permute(0, 2, 3, 1)[mask]], dim=1)
            cand_ids = image_ids[cells[:, 0]]
            keep = _nms(cand[:, :4], cand[:, 4], cand_ids, 0.5)
            rows.append(cand[keep])
            ids.append(cand_ids[keep])
        return torch.cat(rows), torch.cat(ids)

    def _crop(self, integrals: list[_Integral], where: torch.Tensor, boxes: torch.Tensor, ids: torch.Tensor,
              size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Net inputs (m, 3, size, size): boxes clipped to their images, as facenet-pytorch crops them.

        ``where`` maps each image id to (batch index in ``integrals``, index in that batch, height,
        width). Returns the inputs and the mask of the boxes that have any pixel inside their image:
        only those get a crop, and the others are dropped (facenet-pytorch skips their crops but keeps
        the boxes, which shifts later boxes onto the wrong crops).
        """
        group, slot, height, width = where[ids].unbind(dim=1)
        pix = boxes.trunc().long()
        x0 = pix[:, 0].clamp(min=1) - 1
        y0 = pix[:, 1].clamp(min=1) - 1
        x1 = torch.minimum(pix[:, 2], width)
        y1 = torch.minimum(pix[:, 3], height)
        valid = (x1 > x0) & (y1 > y0)
        out = torch.empty((int(valid.sum()), size, size, 3), device=boxes.device)
        valid_group = group[valid]
        for g, integral in enumerate(integrals):
            sel = valid & (group == g)
            out[valid_group == g] = integral.crops(slot[sel], x0[sel], y0[sel], x1[sel], y1[sel], size)
        return _normalise(out), valid

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """RGB uint8 HxWx3 images (sizes may differ); one list per image, sorted by confidence, highest first."""
        check_images(images)
        if not images:
            return []
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        integrals = []
        where = torch.zeros((len(images), 4), dtype=torch.int64)
        rows, ids = [], []
        for g, ((h, w), indices) in enumerate(by_size.items()):
            where[indices] = torch.tensor([[g, slot, h, w] for slot in range(len(indices))])
            integral = _Integral(np.stack([images[i] for i in indices]), self.device)
            integrals.append(integral)
            r, d = self._propose(integral, torch.tensor(indices, device=self.device))
            rows.append(r)
            ids.append(d)
        where = where.to(self.device)
        cand, ids = torch.cat(rows), torch.cat(ids)

        # Stage 1, across scales: NMS 0.7, regression, squares.
        keep = _nms(cand[:, :4], cand[:, 4], ids, 0.7)
        cand, ids = cand[keep], ids[keep]
        wh = (cand[:, 2:4] - cand[:, 0:2]).repeat(1, 2)
        boxes = _rerec(cand[:, :4] + cand[:, 5:9] * wh)

        # Stage 2: R-Net on 24x24 crops.
        if len(boxes):
            crops, valid = self._crop(integrals, where, boxes, ids, 24)
            boxes, ids = boxes[valid], ids[valid]
            reg, prob = self.rnet(crops)
            ok = prob > self.thresholds[1]
            boxes, ids, reg, prob = boxes[ok], ids[ok], reg[ok], prob[ok]
            keep = _nms(boxes, prob, ids, 0.7)
            boxes = _rerec(_bbreg(boxes[keep], reg[keep]))
            ids = ids[keep]

        # Stage 3: O-Net on 48x48 crops; keypoints; final NMS by overlap of the smaller box.
        points = torch.zeros((0, 5, 2), device=self.device)
        prob = torch.zeros(0, device=self.device)
        if len(boxes):
            crops, valid = self._crop(integrals, where, boxes, ids, 48)
            boxes, ids = boxes[valid], ids[valid]
            reg, marks, prob = self.onet(crops)
            ok = prob > self.thresholds[2]
            boxes, ids, reg, marks, prob = boxes[ok], ids[ok], reg[ok], marks[ok], prob[ok]
            w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = torch.stack([w * marks[:, :5] + boxes[:, 0:1] - 1,
                                  h * marks[:, 5:] + boxes[:, 1:2] - 1], dim=2)
            boxes = _bbreg(boxes, reg)
            keep = _nms(boxes, prob, ids, 0.7, min_mode=True)
            boxes, ids, points, prob = boxes[keep], ids[keep], points[keep], prob[keep]

        return detections(len(images), boxes.cpu().numpy().astype(np.float64),
                          points.cpu().numpy().astype(np.float32), prob.cpu().numpy().astype(np.float64),
                          ids.cpu().numpy())


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
