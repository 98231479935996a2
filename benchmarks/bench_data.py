"""Photo batches per second: the decode-once image cache against decoding the JPEGs, same workers.

    python3 benchmarks/bench_data.py [--n 512] [--side 320] [--image_size 224] [--batch_size 64] [--workers 2]

Writes a synthetic Waterbirds-layout folder (``photo_folder.py``) into a temporary folder, then
reads its training split with ``--no_cache`` and with the cache (built first, timed apart). Prints
the CPU seconds one batch costs a worker (``__getitems__``; CPU time, which other jobs on a shared
machine disturb far less than the wall clock), then the wall-clock images per second of the loader
with ``--workers`` workers, alone and with ``to_device`` (uint8 -> normalised float), and the
speed-ups (the goal: at least 5x).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import run  # noqa: E402
from benchmarks.photo_folder import write_photo_folder  # noqa: E402
from data import build_splits  # noqa: E402
from utils.runtime import make_loader, to_device  # noqa: E402

GOAL = 5.0


def cpu_seconds_per_batch(dataset, batch_size: int) -> float:
    """Mean CPU seconds of fetching each batch of one shuffled pass in this process."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    start = time.process_time()
    for batch in batches:
        dataset.__getitems__(batch)
    return (time.process_time() - start) / len(batches)


def images_per_second(dataset, batch_size: int, workers: int, epochs: int, convert: bool) -> float:
    """Best epoch rate of a shuffled loader over ``dataset`` (workers started before the clock)."""
    loader = make_loader(dataset, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                         num_workers=workers)
    next(iter(loader))
    best = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for x, *_ in loader:
            if convert:
                to_device(x, torch.device("cpu"))
        best = max(best, len(dataset) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images in the folder (2/3 of them in train)")
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_photo_folder(Path(tmp) / "photos", args.n, args.side)
        flags = ["--data", "waterbirds", "--train_root_dir", str(folder), "--image_size", str(args.image_size),
                 "--cache_dir", str(Path(tmp) / "cache")]
        decoded = build_splits(run.parse_args([*flags, "--no_cache"]))["train"]
        start = time.perf_counter()
        cached = build_splits(run.parse_args(flags))["train"]
        build_s = time.perf_counter() - start
        print(f"{len(cached)} training images {args.side}x{args.side} JPEG -> {args.image_size}x{args.image_size}, "
              f"batch {args.batch_size}, {args.workers} worker(s), {args.threads} thread(s)")
        print(f"cache build (all splits, once): {build_s:.1f} s")
        slow, fast = cpu_seconds_per_batch(decoded, args.batch_size), cpu_seconds_per_batch(cached, args.batch_size)
        print(f"one batch, CPU seconds   decode JPEGs {slow:8.3f} s     cache {fast:8.3f} s     "
              f"{slow / fast:5.1f}x (goal {GOAL:g}x)")
        for convert, label in ((False, "loader"), (True, "loader + to_device")):
            slow = images_per_second(decoded, args.batch_size, args.workers, args.epochs, convert)
            fast = images_per_second(cached, args.batch_size, args.workers, args.epochs, convert)
            print(f"{label:20s} decode JPEGs {slow:8.0f} img/s   cache {fast:8.0f} img/s   "
                  f"{fast / slow:5.1f}x (goal {GOAL:g}x)")


if __name__ == "__main__":
    main()
