"""bf16 autocast and channels-last on the CPU: training step, pruning step and ``run.py --mode all``, fp32 against bf16.

    python3 benchmarks/bench_amp_cpu.py [--batch 64] [--size 64] [--steps 2] [--repeats 2]
        [--scenes 256] [--scenes_size 64] [--threads 1] [--variants fp32,bf16,...] [--skip_run] [-- run.py flags]

Prints the CPU (torch's capability and the native bf16 feature found, if any), then, in alternating
blocks inside one process so that load from other jobs falls on every variant alike:

- a ResNet-18 training step (ERM: Adam on every weight) and a PruSC pruning step (masks sampled,
  CE + sparsity + cluster-contrastive loss, Adam on the mask logits) on a ``--batch`` of
  ``--size`` x ``--size`` images, each in fp32 / fp32 channels-last / bf16 / bf16 channels-last;
  CPU seconds per step (the process's CPU time, less disturbed by other jobs than the wall clock)
  and each variant's median ratio to fp32 NCHW within the same repeat;
- ``run.py --mode all`` end to end on a small Fashion-scenes set (``--scenes`` training images),
  without and with ``--amp force`` (bf16 whatever the CPU, so the path is measured everywhere), each
  once per repeat, alternating; CPU seconds of the run and the ratio.

On a CPU without native bf16 (no avx512_bf16/amx_bf16/arm bf16) bf16 runs on emulated kernels: the
ratios then show the cost of forcing it, which is why ``--amp`` falls back to fp32 there.
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.steps import erm_step, prune_step, seconds_per_step  # noqa: E402
from models import build_model  # noqa: E402
from utils.runtime import cpu_bf16_support  # noqa: E402

CPU = torch.device("cpu")
VARIANTS = {"fp32": (False, False), "fp32 channels-last": (False, True), "bf16": (True, False),
            "bf16 channels-last": (True, True)}


def step_blocks(kind: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per step of each variant of ``kind`` (``erm`` or ``prune``), one block per variant per repeat."""
    torch.manual_seed(0)
    base = build_model("resnet18", (3, args.size, args.size), 2)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.arange(args.batch) % 2
    clusters = (torch.arange(args.batch) // 2) % 2
    steps, inputs = {}, {}
    for name in args.variants:
        bf16, cl = VARIANTS[name]
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = copy.deepcopy(base).to(memory_format=fmt)
        steps[name] = erm_step(model, CPU, bf16) if kind == "erm" else prune_step(model, CPU, bf16, clusters)
        inputs[name] = x.contiguous(memory_format=fmt)
        steps[name](inputs[name], y)  # warm-up (oneDNN picks and builds its kernels)
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    for repeat in range(args.repeats):
        for name in args.variants:
            times[name].append(seconds_per_step(steps[name], inputs[name], y, CPU, args.steps))
        print(f"  {kind} repeat {repeat + 1}: " + "  ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    return times


def ratio_table(title: str, times: dict[str, list[float]]) -> None:
    print(f"\n| {title} | CPU s/step (best) | speed-up over fp32 (median of repeats) |\n|---|---|---|")
    for name, values in times.items():
        speed = statistics.median(f / v for f, v in zip(times["fp32"], values))
        print(f"| {name} | {min(values):.2f} | {speed:.2f}x |")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mode_all(args: argparse.Namespace, extra: list[str]) -> None:
    """``run.py --mode all`` on a small Fashion-scenes set, fp32 and ``--amp force`` alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        scenes = Path(tmp) / "scenes"
        n = args.scenes
        subprocess.run([sys.executable, str(ROOT / "scripts/make_fashion_scenes.py"), str(scenes), "--size",
                        str(args.scenes_size), "--n_train", str(n), "--n_val", str(max(n // 2, 8)), "--n_test",
                        str(max(n // 2, 8)), "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
        command = ["--mode", "all", "--data", "waterbirds", "--train_root_dir", str(scenes), "--image_size",
                   str(args.scenes_size), "--arch", "resnet18", "--epochs", "2", "--pruning_ep", "1", "--retrain_ep",
                   "1", "--batch_size", "32", "--irm_steps", "20", "--dfr_num_retrains", "2", "--device", "cpu",
                   "--cache_dir", str(Path(tmp) / "cache"), "--overwrite", *extra]
        print(f"\nrun.py {' '.join(command)}", flush=True)
        cpu: dict[str, list[float]] = {"fp32": [], "--amp force": []}
        for repeat in range(args.repeats):
            for name, flags in (("fp32", []), ("--amp force", ["--amp", "force"])):
                before, wall = children_cpu(), time.perf_counter()
                subprocess.run([sys.executable, str(ROOT / "run.py"), *command, *flags, "--out_dir",
                                str(Path(tmp) / "run")], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                cpu[name].append(children_cpu() - before)
                print(f"  repeat {repeat + 1}: {name} {cpu[name][-1]:.1f} CPU s ({time.perf_counter() - wall:.0f} s wall)",
                      flush=True)
        speed = statistics.median(f / b for f, b in zip(cpu["fp32"], cpu["--amp force"]))
        print(f"\n| run.py --mode all ({n} training scenes {args.scenes_size}x{args.scenes_size}) | CPU s (best) |"
              f"\n|---|---|\n| fp32 | {min(cpu['fp32']):.1f} |\n| --amp force (bf16) | {min(cpu['--amp force']):.1f} |"
              f"\n| speed-up of bf16 over fp32 (median of repeats) | {speed:.2f}x |")


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=2, help="blocks per variant (alternating)")
    parser.add_argument("--scenes", type=int, default=256, help="training images of the --mode all run")
    parser.add_argument("--scenes_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS),
                        help=f"comma-separated step variants (fp32 first): {', '.join(VARIANTS)}")
    parser.add_argument("--skip_run", action="store_true", help="only the model steps, not run.py")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.variants[0] != "fp32" or not set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: start with fp32, choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    native = cpu_bf16_support()
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, native bf16: "
          f"{native or 'none (bf16 is emulated: --amp falls back to fp32 here)'}; torch {torch.__version__}, "
          f"{args.threads} thread(s); ResNet-18 {args.size}x{args.size}, batch {args.batch}, "
          f"{args.steps} step(s) per block, {args.repeats} repeat(s)", flush=True)
    ratio_table("ERM training step", step_blocks("erm", args))
    ratio_table("PruSC pruning step", step_blocks("prune", args))
    if not args.skip_run:
        mode_all(args, extra)


if __name__ == "__main__":
    main()
