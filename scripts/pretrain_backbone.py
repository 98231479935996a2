"""Pretrain a ResNet offline as a stand-in for ImageNet weights: Fashion items on many background families.

    python3 scripts/pretrain_backbone.py /work/artifacts/recipe/pretrained_r18_32.pt --size 32
    python3 run.py --data waterbirds --train_root_dir SCENES --image_size 32 --arch resnet18 --pretrained_path FILE

ImageNet features know both birds and places; these know both Fashion-MNIST items (10 classes) and
backgrounds (12 procedural families, land and water among them), because the network is trained
with two heads: the item's class and the background's family, drawn independently of each other.
The items are Fashion-MNIST training-file images that the Fashion-scenes benchmark
(scripts/make_fashion_scenes.py with --scenes_seed and its default sizes) does not draw; the test
file is never used. The backgrounds come from their own random streams. The output is a
torchvision-format state dict (``fc`` = the item head), which ``--pretrained_path`` loads;
``<out>.json`` records the flags, the CPU and wall time and the held-out accuracies of both heads.
Same flags -> the same file (single-threaded CPU; ``--workers`` only spreads the corpus's drawing).
On a GPU (``--device cuda --amp``) the corpus is cropped and normalised on the CPU and trained on the
device under bf16 autocast (benchmarks/pretrained_gpu.sh makes the ResNet-50 224-px stand-in so).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.cmnist import load_idx_pair  # noqa: E402
from data.fashion_scenes import (SceneStyle, _blend, _hsv, _octaves, _smooth_noise, land, paste_item, plan,  # noqa: E402
                                 water)
from data.transforms import resize_side  # noqa: E402
from scripts import make_fashion_scenes  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code, int_at_least, positive_float, seed_int  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.results import atomic_write_text  # noqa: E402
from utils.run_dir import check_folder_path  # noqa: E402
from training.loops import Callback, Epochs, LossWatch, Objective, Step, run_training  # noqa: E402
from utils.runtime import IMAGENET_MEAN, IMAGENET_STD, Runtime, amp_flag, runtime_from_args  # noqa: E402

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
HELD_OUT = 0.1  # share of the corpus kept aside to report the heads' accuracy


def _colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95))


def sky(rng: np.random.Generator, size: int) -> np.ndarray:
    """Vertical blue-to-pale gradient with soft clouds."""
    ys = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    image = _blend(ys, _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.4, 0.8), rng.uniform(0.6, 0.9)),
                   _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.0, 0.3), rng.uniform(0.85, 1.0)))
    clouds = np.clip((_octaves(rng, size, int(rng.integers(2, 5))) - rng.uniform(0.4, 0.7)) * 3, 0, 1)
    return image + clouds[..., None] * (1 - image)


def sand(rng: np.random.Generator, size: int) -> np.ndarray:
    """Warm yellow dunes: a bent stripe pattern with fine grain."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bend = _octaves(rng, size, 3, 2)
    t = (np.sin(2 * np.pi * (rng.uniform(1, 4) * (ys + 0.3 * xs) + bend)) + 1) / 2
    image = _blend(t, _hsv(rng.uniform(0.08, 0.13), rng.uniform(0.4, 0.7), rng.uniform(0.5, 0.7)),
                   _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.2, 0.5), rng.uniform(0.75, 0.95)))
    return image * (1 + 0.15 * (rng.random((size, size, 1), dtype=np.float32) - 0.5))


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Hard stripes of two random colours at a random angle and period."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    t = (np.sin(2 * np.pi * rng.uniform(2, 8) * (xs * np.cos(angle) + ys * np.sin(angle))) > 0).astype(np.float32)
    return _blend(t, _colour(rng), _colour(rng))


def checker(rng: np.random.Generator, size: int) -> np.ndarray:
    """A checkerboard of two random colours, random cell size."""
    cell = int(rng.integers(max(size // 10, 2), max(size // 3, 3)))
    ys, xs = np.mgrid[0:size, 0:size]
    return _blend(((ys // cell + xs // cell) % 2).astype(np.float32), _colour(rng), _colour(rng))


def dots(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random discs of one colour on another."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(4, 14))):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 20, size / 7)
        t = np.maximum(t, ((ys - cy) ** 2 + (xs - cx) ** 2 <= r * r).astype(np.float32))
    return _blend(t, _colour(rng), _colour(rng))


def rock(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey stone: high-contrast multi-octave noise, nearly colourless."""
    t = _octaves(rng, size, int(rng.integers(4, 9)), 4)
    return _blend(t, _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.1, 0.35)),
                  _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.55, 0.85)))


def snow(rng: np.random.Generator, size: int) -> np.ndarray:
    """Near-white with faint bluish shading."""
    t = _octaves(rng, size, int(rng.integers(2, 6)))
    return _blend(t, _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.05, 0.2), rng.uniform(0.75, 0.88)),
                  np.ones(3, np.float32))


def brick(rng: np.random.Generator, size: int) -> np.ndarray:
    """Offset rows of reddish bricks with light mortar."""
    h = int(rng.integers(max(size // 10, 3), max(size // 5, 4)))
    w = 2 * h
    ys, xs = np.mgrid[0:size, 0:size]
    row = ys // h
    mortar = ((ys % h) == 0) | (((xs + (row % 2) * (w // 2)) % w) == 0)
    base = _blend(_smooth_noise(rng, size, max(size // 4, 2)), _hsv(rng.uniform(0.0, 0.06), 0.6, 0.45),
                  _hsv(rng.uniform(0.0, 0.08), 0.5, 0.7))
    return np.where(mortar[..., None], _hsv(0.1, 0.1, rng.uniform(0.7, 0.9)), base)


def foliage(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dense dark-green leaves: fine high-contrast noise."""
    t = _octaves(rng, size, max(size // 3, 4), 2)
    return _blend(t, _hsv(rng.uniform(0.22, 0.4), rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.2)),
                  _hsv(rng.uniform(0.2, 0.35), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7)))


def sunset(rng: np.random.Generator, size: int) -> np.ndarray:
    """Vertical orange-to-purple gradient."""
    ys = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    return _blend(ys ** rng.uniform(0.5, 2), _hsv(rng.uniform(0.72, 0.85), 0.6, rng.uniform(0.3, 0.6)),
                  _hsv(rng.uniform(0.02, 0.12), 0.8, rng.uniform(0.8, 1.0)))


def plain(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random colour with a faint smooth shading."""
    return _colour(rng) * (0.85 + 0.3 * _smooth_noise(rng, size, 2)[..., None])


FAMILIES = {"land": land, "water": water, "sky": sky, "sand": sand, "stripes": stripes, "checker": checker,
            "dots": dots, "rock": rock, "snow": snow, "brick": brick, "foliage": foliage, "sunset": sunset}


def unused_items(labels: np.ndarray, scenes_seeds: list[int]) -> np.ndarray:
    """Positions in the Fashion-MNIST training file that no scenes data set of ``scenes_seeds`` (default
    sizes, ratio 0.95 or 0.5) draws for its train or val split."""
    defaults = make_fashion_scenes.build_parser().parse_args(["unused"])
    sizes = {"train": defaults.n_train, "val": defaults.n_val, "test": 0}
    used = set()
    for seed in scenes_seeds:
        for ratio in (0.95, 0.5):
            table = plan({"train": labels}, {k: v for k, v in sizes.items() if v}, ratio, seed)
            used |= set(table.source.tolist())
    return np.array(sorted(set(range(len(labels))) - used))


def _corpus_scene(job: tuple[np.ndarray, int, list[int], int]) -> np.ndarray:
    """One corpus scene from its own random stream (so the corpus does not depend on how it is spread)."""
    item, family, stream, side = job
    rng = np.random.default_rng(stream)
    background = list(FAMILIES.values())[family](rng, side).astype(np.float32)
    return paste_item(background, item, rng, side, SceneStyle())


def build_corpus(fashion_dir: Path, n: int, size: int, seed: int, scenes_seeds: list[int], workers: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` scenes (uint8, N x side x side x 3, side = the evaluation resize of ``size``) with their item
    class and background family; item and family drawn independently, classes balanced; drawn by
    ``workers`` processes (the same corpus for any number)."""
    images, labels = load_idx_pair(fashion_dir, "fashion", "train", "--fashion_dir")
    free = unused_items(labels, scenes_seeds)
    if n > len(free):
        raise UserError(f"--n_images {n}: only {len(free)} Fashion-MNIST training items are unused by the scenes")
    rng = np.random.default_rng([seed, 11])
    per_class = [rng.permutation(free[labels[free] == k]) for k in range(10)]
    picks = np.concatenate([c[: n // 10 + (k < n % 10)] for k, c in enumerate(per_class)])
    picks = picks[rng.permutation(len(picks))]
    families = rng.integers(0, len(FAMILIES), len(picks))
    side = resize_side(size)
    jobs = [(images[item], int(family), [seed, 13, i], side) for i, (item, family) in enumerate(zip(picks, families))]
    out = np.empty((len(picks), side, side, 3), np.uint8)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, scene in enumerate(pool.imap(_corpus_scene, jobs, chunksize=32)):
                out[i] = scene
    else:
        for i, job in enumerate(jobs):
            out[i] = _corpus_scene(job)
    return torch.from_numpy(out), torch.from_numpy(labels[picks].astype(np.int64)), torch.from_numpy(families)


class TwoHeads(nn.Module):
    """A torchvision ResNet whose ``fc`` is the item head, plus a background-family head on the same features."""

    def __init__(self, arch: str, n_families: int) -> None:
        super().__init__()
        self.net = ARCHS[arch](num_classes=10)
        self.item = self.net.fc
        self.net.fc = nn.Identity()
        self.family = nn.Linear(self.item.in_features, n_families)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net(x)
        return self.item(feats), self.family(feats)

    def torchvision_state(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        state |= {f"fc.{k}": v.detach().clone() for k, v in self.item.state_dict().items()}
        return state


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW with ImageNet mean/std, as run.py feeds the scenes."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std


def crop(batch: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random (``generator``) or central ``size`` crop of a NHWC batch, with random flips when random."""
    side = batch.shape[1]
    if generator is None:
        top = left = (side - size) // 2
        return batch[:, top:top + size, left:left + size]
    top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=generator))
    out = batch[:, top:top + size, left:left + size]
    flip = torch.rand(len(out), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(2), out)


def accuracy(model: TwoHeads, x: torch.Tensor, item: torch.Tensor, family: torch.Tensor, size: int,
             runtime: Runtime) -> tuple[float, float]:
    """Both heads' accuracy on central crops of ``x``."""
    model.eval()
    hits = torch.zeros(2)
    with torch.no_grad():
        for start in range(0, len(x), 512):
            with runtime.autocast():
                a, b = model(normalise(crop(x[start:start + 512], size, None)).to(runtime.device))
            hits += torch.tensor([(a.argmax(1).cpu() == item[start:start + 512]).sum(),
                                  (b.argmax(1).cpu() == family[start:start + 512]).sum()], dtype=torch.float)
    model.train()
    return tuple((hits / max(len(x), 1)).tolist())


class Corpus:
    """The training batches of one pass: a fresh seeded order of the fitting images, each batch randomly
    cropped and flipped (all draws from ``generator``), normalised, with its item and family labels."""

    def __init__(self, x: torch.Tensor, item: torch.Tensor, family: torch.Tensor, n_held: int, batch_size: int,
                 size: int, generator: torch.Generator) -> None:
        self.x, self.item, self.family, self.n_held = x, item, family, n_held
        self.batch_size, self.size, self.generator = batch_size, size, generator

    def __len__(self) -> int:
        return math.ceil((len(self.x) - self.n_held) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x) - self.n_held, generator=self.generator) + self.n_held
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield normalise(crop(self.x[idx], self.size, self.generator)), self.item[idx], self.family[idx]


def two_heads_objective(runtime: Runtime) -> Objective:
    """Cross-entropy of the item head plus that of the family head (forwards under the runtime's autocast,
    losses in fp32); each step counts once in the mean."""
    def objective(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Step:
        x, item, family = (t.to(runtime.device, non_blocking=True) for t in batch)
        with runtime.autocast():
            a, b = net(x)
        return Step(nn.functional.cross_entropy(a.float(), item) + nn.functional.cross_entropy(b.float(), family), 1)
    return objective


class Schedule(Callback):
    """Steps the learning-rate schedule after every optimizer step, stops after ``max_steps`` (0: never) and
    prints each epoch's mean loss with the time since ``started``."""

    def __init__(self, schedule: torch.optim.lr_scheduler.LRScheduler, max_steps: int, epochs: int,
                 started: float) -> None:
        self.schedule, self.max_steps, self.epochs, self.started = schedule, max_steps, epochs, started
        self.steps = 0

    def on_batch(self, step: int, out: Step) -> None:
        self.schedule.step()
        self.steps = step

    def after_batch(self, step: int) -> bool:
        return bool(self.max_steps) and step >= self.max_steps

    def after_epoch(self, epoch: int, mean: float, seconds: float) -> None:
        print(f"epoch {epoch + 1}/{self.epochs}: loss {mean:.4f} ({time.time() - self.started:.0f} s)", flush=True)


def pretrain(args: argparse.Namespace) -> dict:
    """Build the corpus, train both heads (the toolkit's training loop), write the state dict and its summary;
    return the summary."""
    torch.manual_seed(args.seed)
    runtime = runtime_from_args(args)
    print(runtime.describe(), flush=True)
    started, cpu0 = time.time(), time.process_time()
    x, item, family = build_corpus(Path(args.fashion_dir), args.n_images, args.size, args.seed, args.scenes_seeds,
                                   args.workers)
    corpus_s = time.time() - started
    n_held = max(int(len(x) * HELD_OUT), 1)
    model = TwoHeads(args.arch, len(FAMILIES)).to(runtime.device)
    steps_per_epoch = math.ceil((len(x) - n_held) / args.batch_size)
    total = args.epochs * steps_per_epoch
    optimizer = (torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
                 if args.optimizer == "adam" else
                 torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                 weight_decay=args.weight_decay))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(total, 1))))
    generator = torch.Generator().manual_seed(args.seed)
    corpus = Corpus(x, item, family, n_held, args.batch_size, args.size, generator)
    steps = Schedule(schedule, args.max_steps, args.epochs, started)
    run_training(model, two_heads_objective(runtime), Epochs(corpus, args.epochs, "pretraining", "pretrain"),
                 optimizer, runtime, LossWatch(), [steps], parallel=False)
    step = steps.steps
    item_acc, family_acc = accuracy(model, x[:n_held], item[:n_held], family[:n_held], args.size, runtime)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(model.torchvision_state(), tmp)
    tmp.replace(out)
    summary = {"out": str(out), "args": {k: v for k, v in vars(args).items() if k != "out"},
               "families": list(FAMILIES), "n_fit": len(x) - n_held, "n_held_out": n_held, "steps": step,
               "held_out_item_acc": item_acc, "held_out_family_acc": family_acc, "corpus_s": round(corpus_s, 1),
               "wall_s": round(time.time() - started, 1), "cpu_s": round(time.process_time() - cpu0, 1),
               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": str(runtime.device),
               "bf16": runtime.bf16}
    atomic_write_text(Path(str(out) + ".json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="pretrain_backbone.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", help="the state dict to write (.pt); its summary goes to OUT.json")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet18")
    parser.add_argument("--size", type=int_at_least(8), default=32, help="image side the scenes are used at")
    parser.add_argument("--n_images", type=int_at_least(20), default=12000, help="corpus size (10%% held out)")
    parser.add_argument("--epochs", type=int_at_least(1), default=4)
    parser.add_argument("--max_steps", type=int_at_least(0), default=0, help="stop after this many steps (0: no limit)")
    parser.add_argument("--batch_size", type=int_at_least(1), default=128)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                        help="adam, or sgd with Nesterov momentum 0.9; cosine decay either way")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--scenes_seeds", type=int, nargs="+", default=[0],
                        help="--seed values of the scenes data sets whose items are kept out of the corpus")
    parser.add_argument("--fashion_dir", default=make_fashion_scenes.DEFAULT_FASHION_DIR)
    parser.add_argument("--workers", type=int_at_least(1), default=1,
                        help="processes that draw the corpus (the same corpus for any number)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--amp", nargs="?", const=True, default=False, type=amp_flag,
                        help="bf16 autocast where run.py's --amp uses it (CUDA; CPUs with native bf16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        args = build_parser().parse_args(argv)
        out = Path(args.out)
        for path in (out, Path(f"{out}.json")):
            if path.exists() and not args.overwrite:
                raise UserError(f"{path} exists; pass --overwrite or choose another OUT")
        check_folder_path(out.parent, "OUT's folder")
        pretrain(args)

    return exit_code("pretrain_backbone.py", work)


if __name__ == "__main__":
    sys.exit(main())
