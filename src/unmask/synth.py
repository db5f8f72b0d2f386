"""Make training fakes from real faces: self-blended images and cross-identity swaps.

Self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022) blend a face with a slightly
altered copy of itself, so the only evidence of forgery is the blending boundary and the
colour/frequency mismatch that every face-swap pipeline leaves: a detector trained on them
generalises to unseen generators. Cross-identity swaps imitate FaceForensics++'s FaceSwap
(align another person's face by its landmarks, transfer colour, feather-blend).

Both work from the 5 MTCNN keypoints only (left eye, right eye, nose, mouth left, mouth
right, in crop pixels), from which the face outline is extrapolated.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from unmask.augment import adjust_colors, jpeg_roundtrip

if TYPE_CHECKING:  # the store module is imported where a store is made, not with synth
    from unmask.store import FaceStore

KINDS = ("sbi", "swap")

#: SBI's blend ratios: mostly a full blend, sometimes a partial one.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)

#: Face outline in a frame fixed to the keypoints: origin at the eye midpoint, x in units of
#: the left-to-right eye vector, y in units of the eye-midpoint-to-mouth-midpoint vector.
#: There the eyes are at (+-0.5, 0) and the mouth corners near (+-0.4, 1). The points run
#: just over the brows (y < 0), the cheekbones, the cheeks and the jaw to the
#: chin (y ~ 1.65), from average frontal-face proportions. A non-orthogonal frame is fine:
#: it shears the outline with in-plane rotation and moderate yaw.
FACE_OUTLINE = np.array([
    [-0.9, -0.35], [-0.45, -0.55], [0.0, -0.6], [0.45, -0.55], [0.9, -0.35],
    [-1.0, 0.3], [1.0, 0.3],
    [-0.9, 1.0], [0.9, 1.0],
    [-0.65, 1.45], [0.0, 1.65], [0.65, 1.45],
])

#: Masks are drawn with the face (larger of eye distance and eye-to-mouth distance) at most
#: this many pixels, then upscaled by an integer factor: same shape, a fraction of the cost.
MASK_FACE_SIZE = 48

#: Candidate sources looked at per swap; the one whose keypoint layout best fits the target's
#: (pose, expression) is used, as badly aligned swaps are trivially easy negatives.
SWAP_CANDIDATES = 8


def _check_face(face: np.ndarray) -> None:
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) face, got {face.dtype} {face.shape}")


def _check_keypoints(keypoints: np.ndarray) -> np.ndarray:
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (5, 2) or not np.isfinite(keypoints).all():
        raise ValueError(f"expected finite (5, 2) keypoints, got shape {keypoints.shape}")
    return keypoints


def _face_frame(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Origin, x vector, y vector of the outline frame, and the face's size in pixels."""
    eyes = (keypoints[0] + keypoints[1]) / 2.0
    across = keypoints[1] - keypoints[0]
    down = (keypoints[3] + keypoints[4]) / 2.0 - eyes
    unit = float(max(np.linalg.norm(across), np.linalg.norm(down)))
    if unit < 2.0:
        raise ValueError("keypoints are degenerate (eyes and mouth on top of each other)")
    return eyes, across, down, unit


def face_mask(shape: tuple[int, ...], keypoints: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """A soft face-shaped float32 (H, W) mask in [0, 1], 1 over brows, eyes, nose, mouth and chin.

    The convex hull of ``FACE_OUTLINE`` placed by the keypoints. With ``rng`` it is varied as
    SBI varies its masks, so a detector cannot learn one boundary shape: the outline is
    rescaled and jittered, elastically warped (smooth random displacement field), eroded or
    dilated (blur, then threshold at a random level) and feathered by a random Gaussian.
    Without ``rng``: the plain hull with a fixed feather. Exactly 0 where it is under 1/255
    (it could not move a pixel by a grey level there), so fakes differ only near the face.
    """
    height, width = shape[:2]
    keypoints = _check_keypoints(keypoints)
    # The mask is smooth: draw it with the face about MASK_FACE_SIZE pixels big, then upscale.
    factor = max(1, math.ceil(_face_frame(keypoints)[3] / MASK_FACE_SIZE))
    small = _draw_mask((-(-height // factor), -(-width // factor)), (keypoints + 0.5) / factor - 0.5, rng)
    if factor > 1:
        small = cv2.resize(small, (small.shape[1] * factor, small.shape[0] * factor),
                           interpolation=cv2.INTER_LINEAR)
    mask = np.ascontiguousarray(small[:height, :width])
    mask[mask < 1.0 / 255.0] = 0.0
    return mask


def _draw_mask(shape: tuple[int, int], keypoints: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    height, width = shape
    eyes, across, down, unit = _face_frame(keypoints)
    outline = FACE_OUTLINE
    if rng is not None:
        outline = outline * rng.uniform(0.9, 1.1, 2) + rng.normal(0.0, 0.04, outline.shape)
    points = eyes + outline[:, :1] * across + outline[:, 1:] * down
    mask = np.zeros((height, width), dtype=np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1.0)
    if rng is None:
        return cv2.GaussianBlur(mask, (0, 0), 0.06 * unit)
    displacement = [cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
                    for grid in rng.normal(0.0, 0.04 * unit, (2, 4, 4)).astype(np.float32)]
    rows, cols = np.indices((height, width), dtype=np.float32)
    mask = cv2.remap(mask, cols + displacement[0], rows + displacement[1], cv2.INTER_LINEAR)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.02, 0.1) * unit)
    mask = (mask > rng.uniform(0.3, 0.7)).astype(np.float32)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.02, 0.15) * unit)
    return np.clip(mask / max(float(mask.max()), 1e-6), 0.0, 1.0)


def _blend(target: np.ndarray, source: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha * source + (1 - alpha) * target``, rounded; exactly ``target`` where alpha is 0."""
    return cv2.blendLinear(source, target, alpha, 1.0 - alpha)


def _sbi_source(face: np.ndarray, center: np.ndarray, unit: float, rng: np.random.Generator) -> np.ndarray:
    """SBI's pseudo-source: the face with a colour shift, a sharpen or a blur, maybe JPEG,
    and a small scale/shift, so blending it back leaves the statistical traces of a swap."""
    source = adjust_colors(face, brightness=rng.uniform(0.9, 1.1), contrast=rng.uniform(0.9, 1.1),
                           saturation=rng.uniform(0.9, 1.1), hue=rng.uniform(-0.01, 0.01),
                           shift=tuple(rng.uniform(-20.0, 20.0, 3)))
    if rng.random() < 0.5:
        amount = rng.uniform(0.2, 1.0)
        soft = cv2.GaussianBlur(source, (0, 0), rng.uniform(0.01, 0.02) * unit)
        source = cv2.addWeighted(source, 1.0 + amount, soft, -amount, 0.0)
    else:
        height, width = face.shape[:2]
        scale = rng.uniform(0.5, 0.95)
        small = cv2.resize(source, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        source = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        source = jpeg_roundtrip(source, int(rng.integers(40, 101)))
    height, width = face.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-1.0, 1.0, 2) * (0.03 * width, 0.015 * height)
    warp = np.array([[scale, 0.0, (1.0 - scale) * center[0] + shift[0]],
                     [0.0, scale, (1.0 - scale) * center[1] + shift[1]]])
    return cv2.warpAffine(source, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def self_blend(face: np.ndarray, keypoints: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of ``face``: (uint8 image, float32 (H, W) blend weight).

    The weight is the random face mask times a blend ratio from ``BLEND_RATIOS``; the
    fake equals ``face`` exactly wherever the weight is 0.
    """
    _check_face(face)
    keypoints = _check_keypoints(keypoints)
    mask = face_mask(face.shape, keypoints, rng)
    source = _sbi_source(face, keypoints.mean(axis=0), _face_frame(keypoints)[3], rng)
    mask *= BLEND_RATIOS[rng.integers(len(BLEND_RATIOS))]
    return _blend(face, source, mask), mask


def align_keypoints(source_kps: np.ndarray, target_kps: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) mapping source keypoints onto target
    keypoints in the least-squares sense.

    RANSAC's threshold is one face size, so every keypoint of a sane pair is an inlier
    and OpenCV's refinement then fits all five.
    """
    source_kps, target_kps = _check_keypoints(source_kps), _check_keypoints(target_kps)
    threshold = _face_frame(target_kps)[3]
    matrix, _ = cv2.estimateAffinePartial2D(source_kps, target_kps, method=cv2.RANSAC,
                                            ransacReprojThreshold=threshold)
    if matrix is None:
        raise ValueError("could not align the keypoints")
    return matrix


def _alignment_error(source_kps: np.ndarray, target_kps: np.ndarray) -> float:
    """Mean keypoint distance after alignment, in target face sizes: how different pose and
    expression are."""
    matrix = align_keypoints(source_kps, target_kps)
    moved = source_kps @ matrix[:, :2].T + matrix[:, 2]
    return float(np.linalg.norm(moved - target_kps, axis=1).mean()) / _face_frame(target_kps)[3]


def _match_colors(source: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Give ``source`` the per-channel mean and standard deviation (in CIELAB) that ``target``
    has inside ``region`` (uint8 mask), as FaceSwap's colour transfer does.

    OpenCV's 8-bit LAB is an affine rescaling of true LAB, so matching there is the same
    per-channel map; it costs a grey level of rounding and runs ~5 times faster than float.
    """
    source_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB)
    source_mean, source_std = (v.ravel() for v in cv2.meanStdDev(source_lab, mask=region))
    target_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB)
    target_mean, target_std = (v.ravel() for v in cv2.meanStdDev(target_lab, mask=region))
    # A flat source region would blow its texture up; cap the contrast change.
    gain = np.clip(target_std / np.maximum(source_std, 1e-3), 0.5, 2.0)
    affine = np.hstack([np.diag(gain), (target_mean - gain * source_mean)[:, None]]).astype(np.float32)
    return cv2.cvtColor(cv2.transform(source_lab, affine), cv2.COLOR_LAB2RGB)


def face_swap(target: np.ndarray, target_kps: np.ndarray, source: np.ndarray, source_kps: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Put ``source``'s face onto ``target``: (uint8 image, float32 (H, W) blend weight).

    The source is warped by the keypoint similarity, colour-matched to the target inside
    the face, and feather-blended through a random face mask (weight 0 where the warped
    source has no pixels). The fake equals ``target`` wherever the weight is 0.
    ``cv2.seamlessClone`` is not used: it costs ~50 ms for a 320x320 face and changes
    pixels far outside its mask.
    """
    _check_face(target)
    _check_face(source)
    height, width = target.shape[:2]
    matrix = align_keypoints(source_kps, target_kps)
    warped = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    inside_source = cv2.warpAffine(np.ones(source.shape[:2], dtype=np.float32), matrix, (width, height),
                                   flags=cv2.INTER_LINEAR, borderValue=0.0)
    mask = face_mask(target.shape, target_kps, rng) * inside_source
    warped = _match_colors(warped, target, (mask > 0.5).astype(np.uint8))
    return _blend(target, warped, mask), mask


def synthesize_fakes(faces: np.ndarray, keypoints: np.ndarray, groups: Sequence[str], rng: np.random.Generator,
                     kinds: Sequence[str] = KINDS, per_face: int = 1) -> tuple[np.ndarray, list[dict]]:
    """``per_face`` fakes of each real face, of kinds drawn uniformly from ``kinds``.

    ``groups`` names each face's identity (e.g. its source video); a swap's source always
    comes from another group, picked among ``SWAP_CANDIDATES`` random ones as the closest in
    keypoint layout. Returns the (N * per_face, H, W, 3) uint8 fakes, face by face, and one
    record per fake: ``{"kind", "target", "source"}`` (indices into ``faces``; source None
    for SBI). A swap drawn when there is only one group is made as an SBI instead (and
    recorded so); asking for swaps only from one group is an error.
    """
    faces, keypoints = np.asarray(faces), np.asarray(keypoints, dtype=np.float64)
    count = len(faces)
    if faces.ndim != 4 or keypoints.shape != (count, 5, 2) or len(groups) != count:
        raise ValueError("faces (N, H, W, 3), keypoints (N, 5, 2) and groups (N) must agree")
    unknown = set(kinds) - set(KINDS)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
    if per_face < 1:
        raise ValueError("per_face must be at least 1")
    groups = np.asarray(groups, dtype=object)
    can_swap = len(set(groups)) > 1
    if set(kinds) == {"swap"} and not can_swap:
        raise ValueError("swaps need faces from at least two groups")
    fakes = np.empty((count * per_face, *faces.shape[1:]), dtype=np.uint8)
    records = []
    for target in range(count):
        others = np.flatnonzero(groups != groups[target])
        for _ in range(per_face):
            kind = kinds[rng.integers(len(kinds))]
            if kind == "swap" and can_swap:
                candidates = rng.choice(others, size=min(SWAP_CANDIDATES, len(others)), replace=False)
                source = int(min(candidates, key=lambda i: _alignment_error(keypoints[i], keypoints[target])))
                fake, _ = face_swap(faces[target], keypoints[target], faces[source], keypoints[source], rng)
                records.append({"kind": "swap", "target": target, "source": source})
            else:
                fake, _ = self_blend(faces[target], keypoints[target], rng)
                records.append({"kind": "sbi", "target": target, "source": None})
            fakes[len(records) - 1] = fake
    return fakes, records


def synthesize_store(real: FaceStore, out: Path, kinds: Sequence[str] = KINDS, per_face: int = 1,
                     seed: int = 0) -> FaceStore:
    """A labelled training store: the real faces of ``real`` plus fakes made from them.

    A fake keeps its target's identity (a swap links target and source, like FF++'s
    ``TTT_SSS``), so identity-grouped splits keep each person and their fakes together.
    Resumable like ``prepare``: each source video's real and fake shards are written atomically.
    """
    from unmask.store import Shard, StoreWriter

    table = real.table
    writer = StoreWriter(out, {**real.settings, "synth": {"kinds": list(kinds), "per_face": per_face, "seed": seed}})
    done = writer.done()
    rng = np.random.default_rng(seed)
    fakes, records = synthesize_fakes(np.asarray(real.faces), real.keypoints(), table["ids"].tolist(), rng,
                                      kinds, per_face)
    by_target: dict[int, list[int]] = {}
    for number, record in enumerate(records):
        by_target.setdefault(record["target"], []).append(number)
    for video, rows in table.groupby("video", sort=True):
        fake_key = f"synth/{video}"
        if video in done and fake_key in done:
            continue
        positions = rows.index.to_numpy()
        base = real.videos.set_index("video").loc[video].to_dict()
        writer.write(Shard({**base, "video": video}, [r.to_dict() for _, r in rows.iterrows()],
                           real.faces[rows["row"].to_numpy()]))
        fake_rows, fake_faces = [], []
        for position in positions:
            for number in by_target.get(int(position), []):
                record = records[number]
                source = record["source"]
                ids = rows.loc[position, "ids"]
                if source is not None:
                    ids = f"{ids}_{table.loc[source, 'ids']}"
                fake_rows.append({**rows.loc[position].to_dict(), "video": fake_key, "label": 1,
                                  "method": record["kind"], "ids": ids})
                fake_faces.append(fakes[number])
        writer.write(Shard({**base, "video": fake_key, "label": 1, "method": ",".join(kinds), "faces": len(fake_rows)},
                           fake_rows, np.stack(fake_faces) if fake_faces else fakes[:0]))
    return writer.commit()
