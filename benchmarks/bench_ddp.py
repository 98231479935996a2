"""Speed-up of data-parallel training with N processes (torchrun) against one process.

    python3 benchmarks/bench_ddp.py [--nprocs 1,2] [--task erm|prune] [--arch cnn] [--batch_size 128]
                                    [--image_size 32] [--steps 20] [--device cpu|cuda] [--threads T]

Each process count runs as its own job (one process: plain python; N: ``torchrun --standalone
--nproc_per_node=N``) on the same synthetic images and global batch; the job times ``--steps``
training steps after warm-up (ERM: cross-entropy; prune: PruSC mask learning with the global
contrastive loss) and reports global-batch images per second. On CPU the cores are divided
between the processes (one process gets them all), so the comparison is at equal hardware; with
2 cores the speed-up may well be <= 1 (communication, and two half-machines are not faster than
one whole). On a machine shared with other jobs a multi-threaded single process can be slowed far
more than single-threaded ones; ``--threads 1`` compares at one thread per process. On CUDA each
process takes one GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from data.base import TensorSpuriousDataset  # noqa: E402
from models import build_model  # noqa: E402
from models.masking import attach_masks, mask_parameters, set_mask_mode  # noqa: E402
from training.contrastive import global_cluster_contrastive_loss  # noqa: E402
from training.parallel import data_parallel  # noqa: E402
from training.samplers import training_loader  # noqa: E402
from utils import distributed as dist_utils  # noqa: E402
from utils.runtime import resolve_device, seed_everything, to_device  # noqa: E402

N_IMAGES = 4096


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", default="1,2", help="comma-separated process counts to compare")
    p.add_argument("--task", choices=("erm", "prune"), default="erm")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--batch_size", type=int, default=128, help="global batch")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per process (default: the cores divided by the process count)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def synthetic_data(size: int) -> tuple[TensorSpuriousDataset, torch.Tensor]:
    """Random RGB images, two classes, two clusters per class."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (N_IMAGES,), generator=g)
    clusters = torch.randint(0, 2, (N_IMAGES,), generator=g)
    images = torch.rand(N_IMAGES, 3, size, size, generator=g)
    return TensorSpuriousDataset(images, y, clusters, 2, 2, "train"), clusters


def worker(args: argparse.Namespace) -> None:
    """Time ``args.steps`` steps in this job (one process or one rank of several)."""
    device = dist_utils.init_from_env(resolve_device(args.device))
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // dist_utils.world_size()))
    generator = seed_everything(0)
    data, clusters = synthetic_data(args.image_size)
    model = build_model(args.arch, data.input_shape, 2).to(device)
    if args.task == "prune":
        attach_masks(model, "all")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in mask_parameters(model):
            p.requires_grad_(True)
        set_mask_mode(model, "sample")
        model.eval()
    net = data_parallel(model, device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    cells = data.y * 2 + clusters if args.task == "prune" else None
    loader = training_loader(data, args.batch_size, generator, cells=cells)
    clusters = clusters.to(device)

    def batches():
        while True:
            yield from loader

    def step(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        feats, logits = net(to_device(x, device))
        y = y.to(device)
        loss = dist_utils.global_mean(nn.functional.cross_entropy(logits, y, reduction="none"))
        if args.task == "prune":
            z = nn.functional.normalize(feats.float(), dim=1)
            loss = loss + global_cluster_contrastive_loss(z, y, clusters[idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    stream = batches()
    for _ in range(args.warmup):
        step(*_xyi(next(stream)))
    dist_utils.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(*_xyi(next(stream)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist_utils.barrier()
    elapsed = time.perf_counter() - start
    if dist_utils.is_main():
        print("RESULT " + json.dumps({"processes": dist_utils.world_size(), "threads": torch.get_num_threads(),
                                      "seconds": elapsed, "images_per_s": args.steps * args.batch_size / elapsed,
                                      "device": str(device)}), flush=True)
    dist_utils.shutdown()


def _xyi(batch: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, _a, idx = batch
    return x, y, idx


def launch(n: int, argv: list[str]) -> dict:
    """Run one job with ``n`` processes; return rank 0's RESULT line."""
    script = [str(Path(__file__).resolve()), "--worker", *argv]
    cmd = [sys.executable, *script] if n == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *script]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"job with {n} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("nprocs", "worker")]
    counts = [int(n) for n in args.nprocs.split(",")]
    results = {n: launch(n, argv) for n in counts}
    base = results[counts[0]]["images_per_s"]
    print(f"{args.task} steps, --arch {args.arch}, global batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size} images, {args.steps} timed steps, {os.cpu_count()} CPU cores")
    print(f"{'processes':>9}  {'threads each':>12}  {'device':>8}  {'images/s':>9}  {'speed-up':>8}")
    for n, r in results.items():
        print(f"{n:>9}  {r['threads']:>12}  {r['device']:>8}  {r['images_per_s']:>9.1f}  "
              f"{r['images_per_s'] / base:>8.2f}")


if __name__ == "__main__":
    main()
