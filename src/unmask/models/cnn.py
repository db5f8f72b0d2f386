"""Convolutional face classifiers behind the scikit-learn interface.

``TorchFaceClassifier`` takes the same uint8 face crops as the classical pipelines, so the
CLI, cross-validation and the model card treat every model alike. It trains on CUDA when
present (mixed precision) and on all CPU cores otherwise, streams the face array batch by
batch (it is often a memmap larger than memory), can turn real faces into self-blended
fakes on the fly, stops early on an identity-grouped validation split, and resumes from
per-epoch checkpoints. Inside a ``torch.distributed`` group (``torchrun``) it trains with
DistributedDataParallel: each process takes its share of every epoch and gradients are averaged.

Networks live in ``unmask.models.architectures``: the MesoNet ports (``unmask.models.nets.mesonet``; the
authors' weights with ``init="released"``) and ``resnet-small``, a compact residual net that
trains from scratch in minutes on two CPU cores. Whatever the network's own convention,
the estimator works with the logit of P(fake).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from unmask.config import resolve_device
from unmask.util import torch_world
from unmask.errors import UnmaskError
from unmask.models import MODELS
from unmask.models.batches import FaceBatches, chunks, prefetched
from unmask.models.gradcam import grad_cam
from unmask.models.architectures import ARCHITECTURES, Architecture
from unmask.models.training import TrainingLoop, amp_dtype, cpu_state
from unmask.splits import _group_split
from unmask.store import FaceArray


def _check_faces(X: Any) -> np.ndarray | FaceArray:
    """Face crops as given: an array, or a ``FaceArray`` view of stores (read a face at a time, never gathered)."""
    if not isinstance(X, (np.ndarray, FaceArray)) or X.ndim != 4 or X.shape[-1] != 3 or X.dtype != np.uint8:
        raise UnmaskError("CNN models expect uint8 RGB face crops of shape (N, H, W, 3), got "
                          f"{type(X).__name__} {getattr(X, 'dtype', '')} {getattr(X, 'shape', '')}".rstrip())
    if len(X) == 0:
        raise UnmaskError("there are no faces")
    return X


class LogitClassifierMixin(ClassifierMixin):
    """``predict_proba`` and ``predict`` of a detector whose ``decision_function`` is the logit of P(fake).
    Per-face inputs beside the crops (``motion=...``) are handed on to ``decision_function``."""

    def predict_proba(self, X: np.ndarray, **per_face: Any) -> np.ndarray:
        """(N, 2) float64: columns P(real), P(fake)."""
        fake = expit(self.decision_function(X, **per_face).astype(np.float64))
        return np.column_stack([1.0 - fake, fake])

    def predict(self, X: np.ndarray, **per_face: Any) -> np.ndarray:
        """1 (fake) where P(fake) > 0.5, else 0."""
        return (self.decision_function(X, **per_face) > 0).astype(np.int64)


class TorchFaceClassifier(TrainingLoop, LogitClassifierMixin, BaseEstimator):
    """A CNN deepfake detector with the scikit-learn interface; ``classes_`` are [0 real, 1 fake].

    Parameters
    ----------
    arch : name in ``ARCHITECTURES`` ("meso4", "mesoinception4", "resnet-small").
    init : "scratch" (random), "released" (the authors' weights; MesoNet only) or "imagenet"
        (ImageNet-pretrained features with a fresh head; EfficientNet-Lite0).
    trainable_blocks : fine-tune only the network's last this many blocks and its head (None: all);
        for networks with a ``freeze`` method (EfficientNet-Lite). Frozen early blocks also cost no backward pass.
    input_size : side of the network input in pixels; None: the architecture's.
    epochs : most epochs to train; 0 with ``init="released"``: the released network as is.
    batch_size : faces per training step (and per inference batch on GPU).
    lr : AdamW learning rate, constant; None: 1e-3 from scratch, 1e-4 to fine-tune released weights.
        Constant so that a run extended with more epochs follows the same path as a longer one.
    weight_decay : AdamW's decoupled weight decay.
    augment : apply ``unmask.augment.Augmenter`` (compression, rescaling, blur, noise, colour, flip).
    synth_ratio : fraction of each batch's real faces replaced, on the fly, by self-blended fakes of
        themselves (labelled fake); needs ``keypoints`` in ``fit``.
    val_fraction : share of identity groups held out to pick the best epoch by validation AUC
        (needs ``groups`` in ``fit``); 0: train all ``epochs`` on everything.
    patience : stop after this many epochs without a better validation AUC.
    device : "auto" (CUDA when present), "cpu" or "cuda[:N]".
    seed : seeds initialisation, shuffling, augmentation, synthesis, dropout and the split.
    checkpoint_dir : if set, the state after each epoch is saved there and a later ``fit`` with the
        same settings and data resumes from it (and may train on to a larger ``epochs``).
    progress : show a progress bar on stderr with the loss and the validation AUC.
    num_workers : threads preparing batches ahead; None: 1 on CPU (the cores run the network),
        up to 8 on GPU (augmentation is then the bottleneck).
    epoch_faces : None: an epoch is every training face once, the loss weighted to balance the classes and
        methods. A number: an epoch is that many faces drawn so that class, source and method are balanced
        (``unmask.models.training.balanced_draw``; ``methods`` "source/method" name the cells), for data
        whose sources differ in size by orders of magnitude (a face-image set of thousands of people beside
        a few hundred videos).
    schedule : "constant" learning rate, or "cosine": a linear warm-up over ``warmup`` of all steps, then a
        cosine decay to zero at the last epoch.
    warmup : fraction of all steps spent warming up (cosine only).
    val_max_faces : score at most this many of the held-out faces after each epoch (a fixed random draw;
        None: all); the rest stay out of training all the same.
    checkpoint_minutes : with ``checkpoint_dir``, also save in the middle of an epoch this often, so that
        an epoch of hours loses at most this much when stopped (0: at the end of epochs only; under
        torchrun too, where the processes' partial sums would have to be gathered first).
    head_warmup : fraction of all steps, at the start, in which only the head learns (the 1x1 head
        convolution and the classifier; every block frozen with its ImageNet batch-norm statistics), so
        that a fresh head's first large gradients do not wash through the pretrained blocks; then the
        blocks ``trainable_blocks`` names train too. For networks with a ``freeze`` method; one process.
    source_weights : with ``epoch_faces``, how often each source's faces are drawn against the others'
        within a class (source name -> weight; a source not named weighs 1; None: all equal), to give a
        large source more of the draws than the equal share.

    Fitted attributes: ``net_`` (the torch module, eval mode), ``classes_``, ``history_`` (one dict per
    epoch: loss, val_auc, faces, synth, processes, seconds; faces and loss over all processes),
    ``best_epoch_`` and ``val_auc_`` (None without validation), ``validation_rows_`` (positions in ``X``
    of the faces held out for validation; empty without).
    """

    def __init__(self, arch: str = "resnet-small", init: str = "scratch", input_size: int | None = None,
                 epochs: int = 20, batch_size: int = 32, lr: float | None = None, weight_decay: float = 0.01,
                 augment: bool = True, synth_ratio: float = 0.0, val_fraction: float = 0.2, patience: int = 5,
                 device: str = "auto", seed: int = 42, checkpoint_dir: str | os.PathLike | None = None,
                 progress: bool = False, num_workers: int | None = None, trainable_blocks: int | None = None,
                 epoch_faces: int | None = None, schedule: str = "constant", warmup: float = 0.02,
                 val_max_faces: int | None = None, checkpoint_minutes: float = 10.0, head_warmup: float = 0.0,
                 source_weights: dict[str, float] | None = None):
        self.arch = arch
        self.init = init
        self.input_size = input_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = augment
        self.synth_ratio = synth_ratio
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = device
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.num_workers = num_workers
        self.trainable_blocks = trainable_blocks
        self.epoch_faces = epoch_faces
        self.schedule = schedule
        self.warmup = warmup
        self.val_max_faces = val_max_faces
        self.checkpoint_minutes = checkpoint_minutes
        self.head_warmup = head_warmup
        self.source_weights = source_weights

    # ----- description -----

    def _architecture(self) -> Architecture:
        arch = ARCHITECTURES.create(self.arch)
        if self.init not in ("scratch", "released", "imagenet"):
            raise UnmaskError(f"init must be 'scratch', 'released' or 'imagenet', not {self.init!r}")
        if self.init == "imagenet" and arch.pretrained is None:
            raise UnmaskError(f"{self.arch} has no ImageNet weights; use init='scratch'")
        if self.trainable_blocks is not None and not arch.freezes:
            raise UnmaskError(f"{self.arch} cannot freeze blocks; leave trainable_blocks unset")
        if not 0.0 <= self.head_warmup <= 1.0:
            raise UnmaskError(f"head_warmup is a fraction of the steps, in [0, 1], not {self.head_warmup}")
        if self.head_warmup and not arch.freezes:
            raise UnmaskError(f"{self.arch} cannot freeze its blocks; leave head_warmup at 0")
        if self.source_weights and not self.epoch_faces:
            raise UnmaskError("source_weights tilts the balanced draw: set epoch_faces too")
        if self.schedule not in ("constant", "cosine"):
            raise UnmaskError(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if self.init == "released" and arch.released is None:
            raise UnmaskError(f"{self.arch} has no released weights; use init='scratch'")
        if self.input_size is not None and arch.fixed_size and self.input_size != arch.input_size:
            raise UnmaskError(f"{self.arch} only takes {arch.input_size} px inputs, not {self.input_size}")
        return arch

    def _size(self, arch: Architecture) -> int:
        return arch.input_size if self.input_size is None else int(self.input_size)

    def preprocessing(self) -> dict[str, Any]:
        """How faces must be cut and fed, for the model card and for ``unmask check``."""
        arch = self._architecture()
        size = self._size(arch)
        return {
            "input_size": size,
            "resize": f"crop resized to {size}x{size} with cv2.INTER_AREA",
            "colour": "RGB",
            "scale": "[0,1]",
            "normalisation": None if arch.mean is None else {"mean": list(arch.mean), "std": list(arch.std)},
            "crop_margin": arch.crop_margin,
            "output": "predict_proba columns [P(real), P(fake)]; decision_function is the logit of P(fake)",
        }

    # ----- training -----

    def fit(self, X: np.ndarray, y: np.ndarray, groups: Iterable[Any] | None = None,
            keypoints: np.ndarray | None = None, methods: Iterable[str] | None = None) -> TorchFaceClassifier:
        """Train on uint8 crops ``X`` (N, H, W, 3) RGB with labels ``y`` (1 fake, 0 real).

        ``groups``: one identity label per face (e.g. ``unmask.splits.identity_groups(ids)``);
        the validation split never cuts a group. ``keypoints``: (N, 5, 2) MTCNN keypoints in crop
        pixels, needed by ``synth_ratio``. ``methods``: the manipulation method per face (the store's
        ``method`` column): each class's weight in the loss is then shared equally by its methods, the
        self-blends counting as one more fake method, so 6 videos of one method weigh as much as 37 of another.
        """
        X = _check_faces(X)
        y = np.asarray(y).astype(np.int64).ravel()
        if y.shape != (len(X),) or not np.isin(y, (0, 1)).all():
            raise UnmaskError("labels must be one 0 (real) or 1 (fake) per face")
        arch = self._architecture()
        device = torch.device(resolve_device(self.device))
        if self.epochs == 0:
            if self.init != "released":
                raise UnmaskError("epochs=0 keeps the network untrained; it only makes sense with init='released'")
            return self._adopt(arch.released().to(device, memory_format=torch.channels_last), [], None, None)
        if not 0.0 <= self.synth_ratio < 1.0:
            raise UnmaskError("synth_ratio must be in [0, 1): some real faces must stay real")
        synth_ratio = self.synth_ratio
        if synth_ratio and keypoints is None:
            warnings.warn(f"synth_ratio={synth_ratio} ignored: self-blending needs each face's keypoints "
                          "(pass fit(..., keypoints=...), e.g. FaceStore.keypoints())", stacklevel=2)
            synth_ratio = 0.0
        if keypoints is not None:
            keypoints = np.asarray(keypoints, dtype=np.float32)
            if keypoints.shape != (len(X), 5, 2):
                raise UnmaskError(f"keypoints must be (N, 5, 2) = ({len(X)}, 5, 2), got {keypoints.shape}")
        if not (y == 1).any() and not (synth_ratio and (y == 0).any()):
            raise UnmaskError("training needs fake faces, or real faces and synth_ratio > 0 with keypoints")
        if not (y == 0).any():
            raise UnmaskError("training needs real faces")
        cells = None if methods is None else np.asarray(list(methods), dtype=str)
        if cells is not None and cells.shape != y.shape:
            raise UnmaskError("methods must name one method per face")
        train, validation = self._split(y, groups, synth_ratio > 0, cells)
        self.validation_rows_ = np.empty(0, dtype=np.int64) if validation is None else validation[0][~validation[1]]
        validation = self._scored(validation)
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(self.seed)
            net = {"released": arch.released, "imagenet": arch.pretrained}.get(self.init, arch.build)()
            if self.trainable_blocks is not None:
                net.freeze(self.trainable_blocks)
            rank = torch_world()[0]
            if rank:  # replicas start from rank 0's weights (DDP copies them); their dropout differs
                torch.manual_seed(int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0]))
            return self._train(arch, net.to(device, memory_format=torch.channels_last), X, y, keypoints,
                               synth_ratio, train, validation, cells)

    def _scored(self, validation: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The held-out faces scored after each epoch: all, or a fixed draw of ``val_max_faces``."""
        if validation is None or not self.val_max_faces or len(validation[0]) <= self.val_max_faces:
            return validation
        keep = np.sort(np.random.default_rng([self.seed, 1]).choice(len(validation[0]), self.val_max_faces,
                                                                     replace=False))
        return validation[0][keep], validation[1][keep]

    def _split(self, y: np.ndarray, groups: Iterable[Any] | None, synth: bool,
               cells: np.ndarray | None = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Training positions, and validation (positions, which to self-blend) or None.

        With cells named "source/method", each source holds out ``val_fraction`` of its own identity
        groups: a few hundred videos keep their share beside a face-image set of thousands of people."""
        everything = np.arange(len(y))
        if not self.val_fraction:
            return everything, None
        if not 0.0 < self.val_fraction < 1.0:
            raise UnmaskError("val_fraction must be in [0, 1)")
        if groups is None:
            warnings.warn("no validation split: it needs identity groups (fit(..., groups=...)); a split over "
                          "frames would put one person on both sides and flatter the model", stacklevel=3)
            return everything, None
        codes = np.unique(np.asarray(list(groups), dtype=str), return_inverse=True)[1].ravel()
        if codes.shape != y.shape:
            raise UnmaskError("groups must name one identity per face")
        source_of = (np.zeros(len(y), dtype=int) if cells is None
                     else np.unique(np.char.rpartition(cells, "/")[:, 0], return_inverse=True)[1].ravel())
        train, held_out = [], []
        for source in np.unique(source_of):
            where = np.flatnonzero(source_of == source)
            rng = np.random.default_rng(self.seed if source_of.max() == 0 else [self.seed, source])
            kept, out = _group_split(y[where], np.unique(codes[where], return_inverse=True)[1].ravel(),
                                     self.val_fraction, rng)
            train.append(where[kept])
            held_out.append(where[out])
        train, held_out = np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))
        has_fakes = (y[held_out] == 1).any()
        trainable = (y[train] == 0).any() and ((y[train] == 1).any() or synth)
        if not trainable or not (y[held_out] == 0).any() or not (has_fakes or synth):
            warnings.warn("no validation split: the identity groups cannot give both sides both classes; "
                          "training on all faces for every epoch", stacklevel=3)
            return everything, None
        if has_fakes:
            return train, (held_out, np.zeros(len(held_out), dtype=bool))
        # Only real faces held out (training on self-blends alone): judge on fixed self-blends of them.
        reals = held_out[y[held_out] == 0]
        return train, (np.concatenate([held_out, reals]),
                       np.concatenate([np.zeros(len(held_out), bool), np.ones(len(reals), bool)]))

    def _workers(self, device: torch.device) -> int:
        if self.num_workers is not None:
            return int(self.num_workers)
        return min(8, os.cpu_count() or 1) if device.type == "cuda" else 1

    def _adopt(self, net: nn.Module, history: list[dict], best_epoch: int | None,
               val_auc: float | None) -> TorchFaceClassifier:
        if not hasattr(self, "validation_rows_") or not history:  # released or loaded: it held nothing out
            self.validation_rows_ = np.empty(0, dtype=np.int64)
        self.net_ = net.eval()
        self.classes_ = np.array([0, 1])
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.val_auc_ = val_auc
        return self

    # ----- inference -----

    @staticmethod
    def _tensor(faces: np.ndarray, arch: Architecture, device: torch.device) -> torch.Tensor:
        """uint8 NHWC batch -> float NCHW in channels-last memory (the NHWC bytes as they are)."""
        x = torch.from_numpy(faces).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if arch.mean is not None:
            x = (x - torch.tensor(arch.mean, device=device).view(1, 3, 1, 1)) \
                / torch.tensor(arch.std, device=device).view(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)

    def _logits(self, net: nn.Module, arch: Architecture, faces: np.ndarray, device: torch.device) -> np.ndarray:
        """Logits of P(fake) of an eval-mode network."""
        inputs = self._tensor(faces, arch, device)
        if arch.inference is not None:
            net = arch.inference(net)
        precision = amp_dtype(device)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            return (arch.logit_sign * net(inputs).float()).cpu().numpy()

    def _inference_batch(self, device: torch.device) -> int:
        # Measured on CPU: 8-16 faces a batch is fastest, 64 is 15-50% slower (the activations
        # fall out of cache); a GPU wants large batches.
        return self.batch_size if device.type == "cuda" else min(self.batch_size, 16)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The logit of P(fake) per face, (N,) float32."""
        check_is_fitted(self, "net_")
        X = _check_faces(X)
        arch = self._architecture()
        device = next(self.net_.parameters()).device
        batches = FaceBatches(X, None, None, self._size(arch))
        self.net_.eval()
        out = []
        with torch.inference_mode():
            for faces in prefetched(batches.inference, chunks(np.arange(len(X)), self._inference_batch(device)),
                                     self._workers(device)):
                out.append(self._logits(self.net_, arch, faces, device))
        return np.concatenate(out).astype(np.float32)

    def gradcam(self, X: np.ndarray, layer: str | None = None) -> np.ndarray:
        """Grad-CAM heatmaps of what raised the fake score: (N, H, W) float32 in [0, 1] at the
        crops' own size (``unmask.models.gradcam``). ``layer``: a submodule name of ``net_``
        (default: the architecture's last conv block)."""
        check_is_fitted(self, "net_")
        X = _check_faces(X)
        arch = self._architecture()
        device = next(self.net_.parameters()).device
        batches = FaceBatches(X, None, None, self._size(arch))
        inputs = (self._tensor(batches.inference(indices), arch, device)
                  for indices in chunks(np.arange(len(X)), self._inference_batch(device)))
        return grad_cam(self.net_, layer or arch.cam_layer, inputs, arch.logit_sign, X.shape[1:3])

    # ----- weights -----

    def weights(self) -> dict[str, torch.Tensor]:
        """The network's state (parameters and batch-norm statistics) as contiguous CPU tensors,
        ready for ``safetensors.torch.save_file``."""
        check_is_fitted(self, "net_")
        return cpu_state(self.net_)

    def load_weights(self, state: dict[str, torch.Tensor]) -> TorchFaceClassifier:
        """Make this estimator the network in ``state`` (from ``weights()``), ready to predict
        without ``fit``; ``arch`` and ``input_size`` must be those it was trained with."""
        arch = self._architecture()
        net = arch.build()
        try:
            net.load_state_dict(state)
        except RuntimeError as error:
            raise UnmaskError(f"these weights are not a {self.arch} network: {error}") from None
        device = torch.device(resolve_device(self.device))
        return self._adopt(net.to(device, memory_format=torch.channels_last), [], None, None)


def images_only(features: Any) -> None:
    """CNN builders take ``features`` like every model builder; only the images themselves will do."""
    if features not in (None, "image"):
        raise UnmaskError("CNN models take face images, not --features")


def _model_builder(arch: str) -> Callable[..., TorchFaceClassifier]:
    def build(features: Any = None, random_state: int = 42, **params: Any) -> TorchFaceClassifier:
        images_only(features)
        return TorchFaceClassifier(arch=arch, seed=random_state, **params)

    return build


for _name, _help in ARCHITECTURES.describe().items():
    MODELS.register(_name, help=_help)(_model_builder(_name))
