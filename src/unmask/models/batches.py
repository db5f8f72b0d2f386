"""Face crops to network batches: cut from the (often memory-mapped) face array one face at a
time, resized, and for training self-blended and augmented, in threads ahead of the network."""
from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from unmask.augment import Augmenter
from unmask.faces.crop import resize_square as _resize
from unmask.synth import self_blend


def prefetched(make: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> Iterator[Any]:
    """``make(job)`` for each job, in order, up to ``2 * workers`` computed ahead in threads.

    OpenCV, PyAV and most numpy work release the GIL, so the next batches are cut, resized
    and augmented while the network runs on the current one. Bounded, so memory stays at a
    few batches however long the epoch.
    """
    if workers == 0:
        yield from map(make, jobs)
        return
    jobs = iter(jobs)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(make, job) for job in itertools.islice(jobs, 2 * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(make, job) for job in itertools.islice(jobs, 1))
            yield result


class FaceBatches:
    """Cuts uint8 batches at the network's size out of the face array (one face at a time,
    never a float copy of the whole array); for training also self-blends and augments.

    Self-blending works on the crop as stored, as a real swap is made at video resolution
    before anyone resizes it; augmentation works on the resized face, where it is 4x cheaper
    than on a 320 px crop and its compression blocks have the scale the network sees.
    All randomness of a training batch comes from ``(seed, epoch, batch)``, so a batch is
    the same whichever thread makes it and whether or not the run was resumed.
    """

    _VALIDATION = 1_000_003  # seeds the fixed self-blends of validation faces, apart from epochs

    def __init__(self, X: np.ndarray, y: np.ndarray | None, keypoints: np.ndarray | None, size: int,
                 augment: bool = False, synth_ratio: float = 0.0, seed: int = 0):
        self.X, self.y, self.keypoints, self.size = X, y, keypoints, size
        self.augment, self.synth_ratio, self.seed = augment, synth_ratio, seed
        self._local = threading.local()

    def _augmenter(self) -> Augmenter:
        """One per thread: an Augmenter caches H.264 encoders and is not thread-safe."""
        if not hasattr(self._local, "augmenter"):
            self._local.augmenter = Augmenter()
        return self._local.augmenter

    def _blend(self, i: int, face: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A self-blended fake of face ``i``, or None where its keypoints do not allow one."""
        try:
            return self_blend(face, self.keypoints[i], rng)[0]
        except ValueError:  # missing or degenerate keypoints: the face stays real
            return None

    def inference(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([_resize(self.X[i], self.size) for i in indices])

    def training(self, job: tuple[np.ndarray, int, int]) -> tuple[np.ndarray, np.ndarray, int]:
        """(faces, labels, how many were turned into fakes) for batch ``number`` of ``epoch``."""
        indices, epoch, number = job
        rng = np.random.default_rng([self.seed, epoch, number])
        faces, labels, blended = [], self.y[indices].astype(np.float32), 0
        for k, i in enumerate(indices):
            face = np.asarray(self.X[i])
            if self.synth_ratio and labels[k] == 0 and rng.random() < self.synth_ratio:
                fake = self._blend(i, face, rng)
                if fake is not None:
                    face, labels[k], blended = fake, 1.0, blended + 1
            face = _resize(face, self.size)
            faces.append(self._augmenter()(face, rng) if self.augment else face)
        return np.stack(faces), labels, blended

    def validation(self, job: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(faces, labels); faces flagged ``as_fake`` are replaced by a fixed self-blend of themselves."""
        indices, as_fake = job
        faces, labels = [], self.y[indices].astype(np.float32)
        for k, (i, fake) in enumerate(zip(indices, as_fake)):
            face = np.asarray(self.X[i])
            blended = self._blend(i, face, np.random.default_rng([self.seed, self._VALIDATION, i])) if fake else None
            if blended is not None:
                face, labels[k] = blended, 1.0
            faces.append(_resize(face, self.size))
        return np.stack(faces), labels


def chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    return [items[start:start + size] for start in range(0, len(items), size)]
