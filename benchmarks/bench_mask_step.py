"""Cost of one PruSC pruning step against one ERM step, model only (the budget on a CPU: 1.3x).

    python3 benchmarks/bench_mask_step.py [--arch resnet18] [--size 64] [--batch 64] [--steps 5] [--threads 2]
        [--device cuda --amp --channels_last] [--profile 5]

Random images already in memory, fresh weights, the same batch for both steps; prints seconds per
step (CPU seconds of the process on the CPU, wall seconds on CUDA) (best of ``--repeats`` blocks of ``--steps`` steps, ERM and pruning blocks alternating) and the
median of the per-block-pair ratios. ``--profile N`` then profiles N steps of each (``torch.profiler``)
and prints the operators that take the most device time (CPU time on the CPU): where the pruning
step's extra cost goes.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.steps import compare_steps, erm_step, prune_step, sync  # noqa: E402
from models import build_model  # noqa: E402

BUDGET = 1.3


def print_profile(step, x: torch.Tensor, y: torch.Tensor, device: torch.device, steps: int, label: str) -> None:
    """The top operators of ``steps`` calls of ``step`` by their own time on the device."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step(x, y)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n{label}, {steps} steps: top operators by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels_last", action="store_true", help="model and batch in channels-last memory format")
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps of each and print the top operators")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.arch, (3, args.size, args.size), 2).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(args.batch, device=device) % 2
    clusters = (torch.arange(args.batch, device=device) // 2) % 2
    erm = erm_step(copy.deepcopy(model), device, args.amp)
    prune = prune_step(copy.deepcopy(model), device, args.amp, clusters)
    erm_s, prune_s, ratio = compare_steps(erm, prune, x, y, device, args.steps, args.repeats)
    print(f"{args.arch} {args.size}x{args.size}, batch {args.batch}, {args.device}, amp {args.amp}, "
          f"channels-last {args.channels_last}, {args.threads} thread(s)")
    print(f"ERM step:     {erm_s * 1000:8.1f} ms")
    print(f"pruning step: {prune_s * 1000:8.1f} ms   ratio {ratio:.2f}x (median of {args.repeats} block pairs; "
          f"budget {BUDGET}x)")
    if args.profile:
        print_profile(erm, x, y, device, args.profile, "ERM step")
        print_profile(prune, x, y, device, args.profile, "pruning step")


if __name__ == "__main__":
    main()
