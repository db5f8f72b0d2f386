"""The CNN training loop: epochs of balanced, self-blended, augmented batches, identity-grouped
early stopping, per-epoch checkpoints to resume from, and DistributedDataParallel under torchrun.

Kept apart from the estimator (``unmask.models.cnn``), as timm keeps its train script apart from
its architectures: ``TrainingLoop`` is the part of ``TorchFaceClassifier`` that learns.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from unmask.errors import UnmaskError
from unmask.models.batches import FaceBatches, chunks, prefetched
from unmask.models.checkpoint import join_optimizer_state, load_checkpoint, save_checkpoint, split_optimizer_state
from unmask.util import torch_world

if TYPE_CHECKING:
    from unmask.models.architectures import Architecture


def balanced_weights(y: np.ndarray, methods: np.ndarray | None, synth_ratio: float) -> tuple[np.ndarray, float]:
    """Loss weights: (per face, as labelled; for a real face turned into a self-blend).

    Each class weighs half of the total; within a class each method (the ``methods`` of its faces,
    plus the self-blends as one more fake method when ``methods`` is given) weighs the same,
    counting the expected number of self-blends; within a method each face weighs the same.
    Without ``methods`` that is plain class balance, self-blends counted as fakes.
    """
    methods = np.full(len(y), "", dtype=object) if methods is None else np.asarray(methods, dtype=object)
    blended = "self-blended" if (methods != "").any() else ""
    cells = {(label, method): float(((y == label) & (methods == method)).sum()) * (1.0 - synth_ratio if label == 0
                                                                                  else 1.0)
             for label in (0, 1) for method in np.unique(methods[y == label])}
    if synth_ratio:
        cells[(1, blended)] = cells.get((1, blended), 0.0) + float((y == 0).sum()) * synth_ratio
    per_class = {label: sum(1 for cell in cells if cell[0] == label) for label in (0, 1)}

    def share(cell: tuple[int, str]) -> float:
        return len(y) / (2.0 * per_class[cell[0]] * cells[cell])

    weights = np.zeros(len(y))
    for (label, method) in cells:
        weights[(y == label) & (methods == method)] = share((label, method))
    return weights, share((1, blended)) if synth_ratio else 0.0


def _source_and_method(cell: str) -> tuple[str, str]:
    """A cell name is "method", or "source/method" when faces come from several datasets."""
    source, _, method = cell.rpartition("/")
    return source, method


def cell_shares(y: np.ndarray, cells: np.ndarray, synth_ratio: float,
                source_weights: dict[str, float] | None = None) -> dict[tuple[int, str], float]:
    """The share of an epoch's draws that each (label, cell) gets: the classes weigh the same once
    self-blends are counted as fakes; within a class each source weighs the same, and within a
    source each method. So 2,000 photos weigh as much as 13,000 DFDC faces, and 6 NeuralTextures
    videos as much as 37 Deepfakes videos: "balanced by source x method x class". ``source_weights``
    (source -> weight, 1 for a source it does not name) tilts the sources within each class: {"dfdc": 2}
    draws DFDC's faces twice as often as each other source's, the classes still even."""
    weights = source_weights or {}
    known = {_source_and_method(c)[0] for c in np.unique(cells)}
    if set(weights) - known or not all(w > 0 for w in weights.values()):
        raise UnmaskError(f"source_weights must give positive weights to sources among {sorted(known)}, "
                          f"not {weights}")
    real_share = 0.5 / (1.0 - synth_ratio)  # a drawn real face is self-blended with synth_ratio
    shares = {}
    for label, class_share in ((0, real_share), (1, 1.0 - real_share)):
        names = np.unique(cells[y == label])
        sources = sorted({_source_and_method(c)[0] for c in names})  # a fixed order: the same sum, the same draw
        total = sum(weights.get(source, 1.0) for source in sources)
        for cell in names:
            source = _source_and_method(cell)[0]
            in_source = sum(1 for c in names if _source_and_method(c)[0] == source)
            shares[(label, str(cell))] = class_share * weights.get(source, 1.0) / total / in_source
    if not any(label == 1 for label, _ in shares):  # no fakes: self-blends are the whole fake class
        shares = {cell: share / real_share for cell, share in shares.items()}
    return shares


def balanced_draw(y: np.ndarray, cells: np.ndarray, count: int, synth_ratio: float, seed: int,
                  epoch: int, source_weights: dict[str, float] | None = None) -> np.ndarray:
    """Positions (into ``y``) of epoch ``epoch``'s ``count`` faces, shared out as ``cell_shares`` says,
    in random order. Each cell is read as an endless stream of fresh permutations of its faces, epoch
    after epoch, so every face of a large cell is seen once before any is seen twice, and a small cell
    comes round again and again. Only ``(seed, epoch)`` decides the draw: a resumed run draws the same."""
    shares = sorted(cell_shares(y, cells, synth_ratio, source_weights).items())
    exact = np.array([share * count for _, share in shares])
    takes = np.floor(exact).astype(int)  # the largest remainders take what rounding down left: count in all
    takes[np.argsort(takes - exact)[:count - takes.sum()]] += 1
    picked = []
    for number, (((label, cell), _), take) in enumerate(zip(shares, takes)):
        members = np.flatnonzero((y == label) & (cells == cell))
        start = epoch * take
        blocks = range(start // len(members), (start + take - 1) // len(members) + 1) if take else range(0)
        stream = np.concatenate([np.random.default_rng([seed, number, block]).permutation(members)
                                 for block in blocks]) if take else np.empty(0, np.int64)
        offset = start - blocks[0] * len(members) if take else 0
        picked.append(stream[offset:offset + take])
    return np.random.default_rng([seed, epoch]).permutation(np.concatenate(picked))


def learning_rate_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """The learning rate at ``step`` of ``total``, as a fraction of its peak: constant, or a linear warm-up
    over ``warmup`` steps then a cosine down to zero (long runs: fast early, settled at the end)."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class TrainingLoop:
    """Training of ``TorchFaceClassifier`` (its parameters are the estimator's)."""

    def _fingerprint(self, X: np.ndarray, y: np.ndarray, synth_ratio: float) -> str:
        """What a checkpoint must agree on to be resumed: every setting that changes the path of
        training and the shape of the data; not ``epochs`` under a constant learning rate, where a run
        may be extended (a cosine schedule is shaped by the number of epochs)."""
        unchanged = {"patience", "device", "checkpoint_dir", "checkpoint_minutes", "progress", "num_workers"}
        if self.schedule == "constant":  # a cosine schedule's shape depends on how many epochs there are
            unchanged.add("epochs")
        params = {k: v for k, v in self.get_params().items() if k not in unchanged}
        for later in ("head_warmup", "source_weights"):  # added later: at their defaults, older checkpoints resume
            if not params[later]:
                params.pop(later)
        params.update(synth_ratio=synth_ratio, faces=list(X.shape), fakes=int(y.sum()), processes=torch_world()[1])
        return json.dumps(params, sort_keys=True, default=str)

    def _train(self, arch: Architecture, net: nn.Module, X: np.ndarray, y: np.ndarray,
               keypoints: np.ndarray | None, synth_ratio: float, train: np.ndarray,
               validation: tuple[np.ndarray, np.ndarray] | None,
               methods: Iterable[str] | None = None) -> TrainingLoop:
        device = next(net.parameters()).device
        rank, processes = torch_world()
        # Under torchrun: one replica per process, gradients averaged across processes at each step.
        model = net if processes == 1 else DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
        lr = self.lr if self.lr is not None else (1e-3 if self.init == "scratch" else 1e-4)
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=self.weight_decay)
        if self.head_warmup and processes > 1:
            raise UnmaskError("head_warmup trains in one process (torchrun's replicas cannot change which "
                              "weights learn as they go)")
        precision = amp_dtype(device)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        cells = None if methods is None else np.asarray(list(methods), dtype=str)
        face_weight = np.zeros(len(y))
        if self.epoch_faces:  # the draw balances the cells; every drawn face weighs the same
            face_weight[train], blend_weight = 1.0, 1.0
        else:
            face_weight[train], blend_weight = balanced_weights(
                y[train], None if cells is None else cells[train], synth_ratio)
        batches = FaceBatches(X, y, keypoints, self._size(arch), self.augment, synth_ratio, self.seed)
        workers = self._workers(device)
        state = {"epoch": 0, "step": 0, "partial": [0.0, 0, 0, 0.0], "history": [], "best_state": None,
                 "best_auc": None, "best_epoch": None, "bad_epochs": 0}
        fingerprint = self._fingerprint(X, y, synth_ratio)
        checkpoint = None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / "checkpoint.safetensors"
        if checkpoint is not None and checkpoint.exists():
            state = self._resume(checkpoint, fingerprint, net, optimizer, scaler)
        epoch_size = self.epoch_faces or len(train)
        steps = -(-len(DistributedSampler(range(epoch_size), num_replicas=processes, rank=rank, shuffle=False))
                  // self.batch_size)
        total_steps, warmup = self.epochs * steps, int(self.warmup * self.epochs * steps)
        head_steps = round(self.head_warmup * total_steps)  # frozen blocks leave no gradient: AdamW skips them
        bar = tqdm(total=max(0, self.epochs * steps - state["epoch"] * steps - state["step"]),
                   disable=not self.progress or rank != 0, file=sys.stderr, unit="batch", desc=self.arch,
                   dynamic_ncols=True)
        saved_at = time.monotonic()
        with bar:
            for epoch in range(state["epoch"], self.epochs):
                if validation is not None and state["bad_epochs"] >= self.patience:
                    break
                total_loss, seen, blended, before = state["partial"]  # a resumed epoch goes on from there
                started = time.perf_counter() - before
                order = (train[balanced_draw(y[train], cells[train] if cells is not None else np.full(len(train), ""),
                                             epoch_size, synth_ratio, self.seed, epoch, self.source_weights)]
                         if self.epoch_faces else np.random.default_rng([self.seed, epoch]).permutation(train))
                # This process's share of the epoch (DistributedSampler pads it so every process
                # takes as many steps); batch k of all processes together is order[k*B*P:(k+1)*B*P].
                mine = order[list(DistributedSampler(order, num_replicas=processes, rank=rank, shuffle=False))]
                jobs = [(chunk, epoch, number * processes + rank)
                        for number, chunk in enumerate(chunks(mine, self.batch_size))][state["step"]:]
                model.train()
                for (chunk, _, _), (faces, labels, n_blended) in zip(jobs, prefetched(batches.training, jobs,
                                                                                        workers)):
                    if head_steps:
                        heads_only = epoch * steps + state["step"] < head_steps
                        if heads_only != (getattr(net, "trainable_blocks", None) == 0):
                            net.freeze(0 if heads_only else self.trainable_blocks)
                            net.train()
                    for group in optimizer.param_groups:
                        group["lr"] = lr * learning_rate_factor(epoch * steps + state["step"], total_steps,
                                                                self.schedule, warmup)
                    inputs = self._tensor(faces, arch, device)
                    targets = torch.from_numpy(labels).to(device)
                    with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                        logits = arch.logit_sign * model(inputs).float()
                    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
                    weight = np.where((labels == 1) & (y[chunk] == 0), blend_weight, face_weight[chunk])
                    loss = (losses * torch.from_numpy(weight.astype(np.float32)).to(device)).mean()
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    total_loss += loss.item() * len(labels)
                    seen += len(labels)
                    blended += n_blended
                    state["step"] += 1
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.4f}", refresh=False)
                    if (checkpoint is not None and self.checkpoint_minutes and processes == 1
                            and time.monotonic() - saved_at > 60 * self.checkpoint_minutes):
                        state["partial"] = [total_loss, seen, blended, time.perf_counter() - started]
                        self._save(checkpoint, fingerprint, net, optimizer, scaler, state)
                        saved_at = time.monotonic()
                if processes > 1:
                    total_loss, seen, blended = _sum_over_processes((total_loss, seen, blended), device)
                    for buffer in net.buffers():  # batch-norm statistics: rank 0's everywhere
                        dist.broadcast(buffer, 0)
                val_auc = None if validation is None else self._validate(net, arch, batches, validation, workers)
                state.update(epoch=epoch + 1, step=0, partial=[0.0, 0, 0, 0.0])
                state["history"].append({"epoch": epoch + 1, "loss": total_loss / seen, "val_auc": val_auc,
                                         "faces": int(seen), "synth": int(blended), "processes": processes,
                                         "seconds": round(time.perf_counter() - started, 3)})
                if val_auc is not None:
                    if state["best_auc"] is None or val_auc > state["best_auc"]:
                        state.update(best_auc=val_auc, best_epoch=epoch + 1, bad_epochs=0,
                                     best_state=cpu_state(net))
                    else:
                        state["bad_epochs"] += 1
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.4f}", val_auc=f"{val_auc:.4f}")
                if checkpoint is not None and rank == 0:
                    self._save(checkpoint, fingerprint, net, optimizer, scaler, state)
                    saved_at = time.monotonic()
        if state["best_state"] is not None:
            net.load_state_dict(state["best_state"])
        return self._adopt(net, state["history"], state["best_epoch"], state["best_auc"])

    def _validate(self, net: nn.Module, arch: Architecture, batches: FaceBatches,
                  validation: tuple[np.ndarray, np.ndarray], workers: int) -> float:
        rank, processes = torch_world()
        indices, as_fake = validation
        size = self.batch_size
        # Each process scores its share; all then judge the same gathered scores, so all stop alike.
        jobs = zip(chunks(indices[rank::processes], size), chunks(as_fake[rank::processes], size))
        scores, labels = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
        net.eval()
        device = next(net.parameters()).device
        with torch.inference_mode():
            for faces, batch_labels in prefetched(batches.validation, jobs, workers):
                scores.append(self._logits(net, arch, faces, device))
                labels.append(batch_labels)
        shares = [(np.concatenate(scores), np.concatenate(labels))]
        if processes > 1:
            mine, shares = shares[0], [None] * processes
            dist.all_gather_object(shares, mine)
        scores, labels = zip(*shares)
        return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))

    def _save(self, path: Path, fingerprint: str, net: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
        """Atomically: a crash mid-write leaves the previous epoch's checkpoint intact."""
        moments, optimizer_rest = split_optimizer_state(optimizer.state_dict())
        tensors = {"model": cpu_state(net), "optimizer": moments, "rng": {"torch": torch.get_rng_state()}}
        if torch.cuda.is_available():
            tensors["rng"].update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        if state["best_state"] is not None:
            tensors["best"] = state["best_state"]
        rest = {k: v for k, v in state.items() if k != "best_state"}
        save_checkpoint(path, tensors, {**rest, "fingerprint": fingerprint, "optimizer": optimizer_rest,
                                        "scaler": scaler.state_dict()})

    def _resume(self, path: Path, fingerprint: str, net: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> dict[str, Any]:
        tensors, saved = load_checkpoint(path)
        if saved.get("fingerprint") != fingerprint:
            raise UnmaskError(f"{path} was written by a run with other settings or data; "
                              "use another checkpoint directory or delete it to start over")
        net.load_state_dict(tensors["model"])
        optimizer.load_state_dict(join_optimizer_state(tensors.get("optimizer", {}), saved["optimizer"]))
        scaler.load_state_dict(saved["scaler"])
        rng = tensors["rng"]
        torch.set_rng_state(rng["torch"])
        cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        state = {k: saved[k] for k in ("epoch", "history", "best_auc", "best_epoch", "bad_epochs")}
        state.update(step=saved.get("step", 0), partial=saved.get("partial", [0.0, 0, 0, 0.0]))
        return {**state, "best_state": tensors.get("best")}


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only (bf16 where the GPU has it). On this CPU bf16 ran MesoInception-4
    1.6x faster but moved its logits by up to 0.4: too far from the released model."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _sum_over_processes(values: tuple[float, ...], device: torch.device) -> tuple[float, ...]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return tuple(totals.tolist())


def cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Independent contiguous CPU copies: later training must not change a saved state."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in net.state_dict().items()}
