"""Photo batches per second: the decode-once image cache against decoding the JPEGs, same workers.

    python3 benchmarks/bench_data.py [--n 512] [--side 320] [--image_size 224] [--batch_size 64] [--workers 2]

Writes a synthetic Waterbirds-layout folder (``photo_folder.py``) into a temporary folder, then
reads its training split through the project's loader twice, with ``--no_cache`` and with the
cache (built first, timed apart), and prints images per second of the loader alone and of the
loader plus ``to_device`` (uint8 -> normalised float), and the speed-up (the goal: at least 5x).
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
        for convert, label in ((False, "loader"), (True, "loader + to_device")):
            slow = images_per_second(decoded, args.batch_size, args.workers, args.epochs, convert)
            fast = images_per_second(cached, args.batch_size, args.workers, args.epochs, convert)
            print(f"{label:20s} decode JPEGs {slow:8.0f} img/s   cache {fast:8.0f} img/s   "
                  f"{fast / slow:5.1f}x (goal {GOAL:g}x)")


if __name__ == "__main__":
    main()
