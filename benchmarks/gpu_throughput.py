"""Images per second of each part of the photo training path, and the ratios that say where time goes.

    python3 benchmarks/gpu_throughput.py --folder PHOTOS --work DIR [--device cuda] [--amp] [--channels_last]
        [--arch resnet50] [--image_size 224] [--batch_size 128] [--workers 15] [--steps 20] [--json FILE]

``PHOTOS`` is a Waterbirds-layout folder (``photo_folder.py`` writes one). Prints, for the current
code: the ERM step with the batch already on the device (model only); the same through the
training loop (``train_classifier``, its bookkeeping included); the photo data path alone (loader
+ ``to_device``), from the image cache and decoding JPEGs; ``run.py --mode erm`` end to end
(the time between its epoch-2 and epoch-4 log lines), saving the resume state after every epoch as
usual and, to show what that costs, with ``--resume_every 100`` (only the last epoch's); the PruSC
pruning step against the ERM step, each in channels-last and in NCHW (timed in alternating blocks),
including the pair the library runs with ``--channels_last`` (pruning in NCHW, ERM in
channels-last); and feature extraction (model only, and through the data path). Ends with the goal table.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import run  # noqa: E402
from benchmarks.steps import erm_step, prune_step, seconds_per_step, sync  # noqa: E402
from cluster.features import extract_features  # noqa: E402
from data import TensorSpuriousDataset, build_splits  # noqa: E402
from models import build_model  # noqa: E402
from training.loops import make_optimizer, train_classifier  # noqa: E402
from utils.runtime import Runtime, collate_batch, make_loader, to_device  # noqa: E402

GOALS = {"end-to-end ERM epoch / model-only ERM step": (">=", 0.85),
         "pruning step / ERM step (time, as run.py runs them)": ("<=", 1.25)}
END_TO_END = "run.py --mode erm, one epoch (epochs 2-4 of 4, end to end)"
NO_RESUME = "run.py --mode erm, one epoch, resume state saved only at the end (--resume_every 100)"


def runtime_of(args) -> Runtime:
    """The loops' runtime of this benchmark's flags (bf16 as asked, on any device)."""
    return Runtime(torch.device(args.device), bf16=args.amp, channels_last=args.channels_last)


def timed_rate(n_images: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - start)


def data_path_rate(dataset, args, device: torch.device, max_batches: int | None) -> float:
    """Images per second of loader + ``to_device`` over (a prefix of) one shuffled epoch."""
    loader = make_loader(dataset, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                         num_workers=args.workers)
    next(iter(loader))  # start the workers
    count = 0

    def epoch() -> None:
        nonlocal count
        for x, *_ in itertools.islice(loader, max_batches):
            to_device(x, device, args.channels_last)
            count += len(x)
        sync(device)
    start = time.perf_counter()
    epoch()
    return count / (time.perf_counter() - start)


def loop_rate(model: torch.nn.Module, args, device: torch.device) -> float:
    """Images per second of ``train_classifier`` (one epoch, second of two) on uint8 images kept on the device."""
    b, s, n = args.batch_size, args.image_size, args.batch_size * args.steps
    images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, device=device)
    on_device = TensorSpuriousDataset(images, torch.arange(n) % 2, torch.zeros(n, dtype=torch.long), 2, 2, "train")
    loader = DataLoader(on_device, batch_size=b, shuffle=True, collate_fn=collate_batch)
    model = copy.deepcopy(model)
    optimizer = make_optimizer(model.parameters(), "adam", 1e-4)

    def epoch() -> None:
        train_classifier(model, loader, optimizer, runtime_of(args), 1, "ERM")
        sync(device)
    epoch()
    return timed_rate(n, epoch)


EPOCH_LINE = re.compile(r"^ERM epoch (\d+)/\d+: ")


def run_py_epoch_seconds(args, epochs: int = 4, extra: tuple[str, ...] = ()) -> float:
    """Seconds per epoch of ``run.py --mode erm`` on the photo folder, end to end: the time between
    the log lines of epoch 2 and of the last epoch as they arrive, so everything an epoch costs in the
    real program (data path, loss checks, the end-of-epoch hooks and resume save) is in it, and the
    start-up, the first epoch's warm-up and the final evaluation are not."""
    cmd = [sys.executable, str(ROOT / "run.py"), "--mode", "erm", "--data", "waterbirds", "--train_root_dir",
           str(args.folder), "--cache_dir", str(args.work / "cache"), "--arch", args.arch, "--image_size",
           str(args.image_size), "--batch_size", str(args.batch_size), "--num_workers", str(args.workers),
           "--device", args.device, "--epochs", str(epochs), "--cluster_epoch", "final", "--overwrite",
           "--out_dir", str(args.work / "erm_end_to_end"), *(["--amp"] if args.amp else []),
           *(["--channels_last"] if args.channels_last else []), *extra]
    arrived: dict[int, float] = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            match = EPOCH_LINE.match(line)
            if match:
                arrived[int(match.group(1))] = time.perf_counter()
    if proc.returncode != 0 or not {2, epochs} <= arrived.keys():
        raise SystemExit(f"run.py --mode erm failed (exit {proc.returncode}): {' '.join(cmd)}")
    return (arrived[epochs] - arrived[2]) / (epochs - 2)


def step_formats(base: torch.nn.Module, args, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Model-only ERM and pruning steps, each in channels-last and NCHW, timed in alternating blocks.

    Returns the best seconds per step of each and the ratios of pruning step to ERM step (median over
    the repeats, each ratio within one repeat): per memory format, and as ``run.py`` runs them (ERM in
    ``--channels_last`` when given; pruning in NCHW, the default ``--prune_memory_format``).
    """
    b, s = args.batch_size, args.image_size
    y = torch.arange(b, device=device) % 2
    clusters = (torch.arange(b, device=device) // 2) % 2
    pixels = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8)
    steps = {}
    for fmt, cl in (("channels-last", True), ("NCHW", False)):
        model = copy.deepcopy(base).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = to_device(pixels, device, cl)
        steps[f"ERM step, {fmt}"] = (erm_step(copy.deepcopy(model), device, args.amp), x)
        steps[f"PruSC pruning step, {fmt}"] = (prune_step(copy.deepcopy(model), device, args.amp, clusters), x)
    for step, x in steps.values():
        seconds_per_step(step, x, y, device, 3)  # warm-up (cuDNN picks its kernels)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(5):
        for name, (step, x) in steps.items():
            times[name].append(seconds_per_step(step, x, y, device, max(2, args.steps // 4)))

    def ratio(prune: str, erm: str) -> float:
        return statistics.median(p / e for p, e in zip(times[f"PruSC pruning step, {prune}"], times[f"ERM step, {erm}"]))
    run_erm = "channels-last" if args.channels_last else "NCHW"
    ratios = {"pruning step / ERM step (time), both channels-last": ratio("channels-last", "channels-last"),
              "pruning step / ERM step (time), both NCHW": ratio("NCHW", "NCHW"),
              "pruning step / ERM step (time, as run.py runs them)": ratio("NCHW", run_erm)}
    print(f"run.py runs ERM in {run_erm} and pruning in NCHW with these flags", flush=True)
    return {name: min(t) for name, t in times.items()}, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (image cache, run.py outputs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode_batches", type=int, default=30, help="batches timed on the JPEG-decoding path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    b, s = args.batch_size, args.image_size
    rows: dict[str, float] = {}

    flags = ["--data", "waterbirds", "--train_root_dir", str(args.folder), "--image_size", str(s),
             "--cache_dir", str(args.work / "cache")]
    start = time.perf_counter()
    splits = build_splits(run.parse_args(flags))
    print(f"image cache ready in {time.perf_counter() - start:.1f} s (built now or reused)", flush=True)
    train = splits["train"]

    base = build_model(args.arch, (3, s, s), 2).to(device)
    model = copy.deepcopy(base)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    x = to_device(torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8), device, args.channels_last)
    y = torch.arange(b, device=device) % 2
    step = erm_step(copy.deepcopy(model), device, args.amp)
    seconds_per_step(step, x, y, device, 3)  # warm-up (cuDNN picks its kernels)
    erm_s = seconds_per_step(step, x, y, device, args.steps)
    rows["ERM step, model only (batch on the device)"] = b / erm_s

    rows["ERM through the training loop (bookkeeping included)"] = loop_rate(model, args, device)

    rows["data path: image cache + to_device"] = data_path_rate(train, args, device, None)
    decoded = build_splits(run.parse_args([*flags, "--no_cache"]))["train"]
    rows["data path: decoding JPEGs + to_device"] = data_path_rate(decoded, args, device, args.decode_batches)

    rows[END_TO_END] = len(train) / run_py_epoch_seconds(args)

    rows[NO_RESUME] = len(train) / run_py_epoch_seconds(args, extra=("--resume_every", "100"))

    step_s, step_ratios = step_formats(base, args, device)
    rows.update({f"{name}, model only": b / seconds for name, seconds in step_s.items()})

    feature_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        def features() -> None:
            for _ in range(args.steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
                    feature_model.features(x)
            sync(device)
        features()
        rows["feature extraction, model only"] = timed_rate(b * args.steps, features)
    rows["feature extraction through the data path"] = timed_rate(len(train), lambda: extract_features(
        feature_model, train, runtime_of(args), batch_size=512, num_workers=args.workers))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{name}, torch {torch.__version__}, {args.arch} {s}x{s}, batch {b}, amp {args.amp}, "
          f"channels-last {args.channels_last}, {args.workers} workers, {len(train)} training images")
    print("| what | images/s |\n|---|---|")
    for what, rate in rows.items():
        print(f"| {what} | {rate:,.0f} |")
    model_only = rows["ERM step, model only (batch on the device)"]
    ratios = {
        "ERM through the loop / model-only ERM step": rows["ERM through the training loop (bookkeeping included)"]
        / model_only,
        "data path (cache) / model-only ERM step": rows["data path: image cache + to_device"] / model_only,
        "image cache / decoding JPEGs": rows["data path: image cache + to_device"]
        / rows["data path: decoding JPEGs + to_device"],
        "end-to-end ERM epoch / model-only ERM step": rows[END_TO_END] / model_only,
        "end-to-end ERM epoch without per-epoch resume saves / model-only ERM step": rows[NO_RESUME] / model_only,
        **step_ratios,
    }
    print("\n| ratio | value | goal |\n|---|---|---|")
    for what, value in ratios.items():
        goal = GOALS.get(what)
        verdict = "" if goal is None else f"{goal[0]} {goal[1]} " + (
            "met" if (value >= goal[1] if goal[0] == ">=" else value <= goal[1]) else "MISSED")
        print(f"| {what} | {value:.2f} | {verdict} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "args": {k: str(v) for k, v in vars(args).items()},
                                         "images_per_s": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
