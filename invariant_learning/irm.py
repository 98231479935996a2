"""IRMv1 on annotation-free environments, beside ERM, random-partition IRM and true-environment IRM.

    cd invariant_learning && python3 irm.py --minority_env=ENVS/minority --balance_env=ENVS/balanced
    python3 invariant_learning/irm.py --minority_env=ENVS/minority --balance_env=ENVS/balanced --random_irm

The data set is rebuilt from the flags recorded in the environments. Every variant trains the
same MLP for ``--steps`` Adam steps, restart ``r`` starting from seed ``--seed + r``:

- ``erm``: cross-entropy on the whole training split (penalty weight 0);
- ``irm_clusters``: IRMv1 on the two cluster environments;
- ``irm_random`` (``--random_irm``): IRMv1 on a random partition of the same samples into two
  environments of the same sizes, the control that shows the clusters carry the signal;
- ``irm_true``: IRMv1 on the data set's own environments, where the training split has them
  (cmnist's ``env`` tensor).

Each environment is used whole at every step (full batch) unless ``--batch_size`` is given;
then every step draws that many samples per environment, with replacement, and only the
mini-batches travel to ``--device``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from data import SpuriousDataset, build_splits  # noqa: E402
from invariant_learning.environments import (Environment, check_against, check_pair, describe,  # noqa: E402
                                             load_environment, rebuild_data_args)
from invariant_learning.penalty import irm_penalty, penalty_weight_at  # noqa: E402
from models import build_model  # noqa: E402
from training.loops import check_finite  # noqa: E402
from utils.checkpoint import plain_args  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code, non_negative, positive_int  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.metrics import compute_metrics, group_counts  # noqa: E402
from utils.results import prepare_out_dir, write_results  # noqa: E402
from utils.runtime import make_loader, progress, resolve_device, seed_everything  # noqa: E402

LABELS = {"erm": "ERM (pooled)", "irm_clusters": "IRM cluster envs", "irm_random": "IRM random envs",
          "irm_true": "IRM true envs"}
EVAL_CHUNK = 4096

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ChannelSum(nn.Module):
    """Sum the colour channels: the ``--grayscale_model`` input, blind to colour by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def build_irm_model(input_shape: tuple[int, ...], n_classes: int, hidden_dim: int, grayscale: bool) -> nn.Module:
    """The IRM paper's model shape: a two-hidden-layer MLP, optionally on the channel sum."""
    if not grayscale:
        return build_model("mlp", input_shape, n_classes, hidden_dim=hidden_dim)
    return nn.Sequential(ChannelSum(), build_model("mlp", (1, *input_shape[1:]), n_classes, hidden_dim=hidden_dim))


def as_tensors(dataset: SpuriousDataset) -> Tensors:
    """Images, labels and attributes of a whole split, in dataset order."""
    images = torch.cat([x for x, *_ in progress(make_loader(dataset, EVAL_CHUNK), desc=f"load {dataset.split}")])
    return images, dataset.y, dataset.a


def environment_batches(envs: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int | None,
                        generator: torch.Generator, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One step's data per environment: all of it, or ``batch_size`` samples drawn with replacement."""
    if batch_size is None:
        return envs
    out = []
    for x, y in envs:
        idx = torch.randint(len(y), (batch_size,), generator=generator)
        out.append((x[idx].to(device), y[idx].to(device)))
    return out


def train_irm(model: nn.Module, envs: list[tuple[torch.Tensor, torch.Tensor]], args: argparse.Namespace,
              penalty_weight: float, device: torch.device, generator: torch.Generator, desc: str) -> None:
    """IRMv1: mean environment risk + L2 + annealed penalty; the loss is divided by weights above 1."""
    model.to(device).train()
    if args.batch_size is None:
        envs = [(x.to(device), y.to(device)) for x, y in envs]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    for step in progress(range(args.steps), desc=desc):
        batches = environment_batches(envs, args.batch_size, generator, device)
        weight = penalty_weight_at(step, penalty_weight, args.penalty_anneal_iters)
        logits = [model(x) for x, _ in batches]
        loss = torch.stack([nn.functional.cross_entropy(z, y) for z, (_, y) in zip(logits, batches)]).mean()
        loss = loss + args.l2_regularizer_weight * sum(w.pow(2).sum() for w in weights)
        if weight:
            loss = loss + weight * torch.stack([irm_penalty(z, y) for z, (_, y) in zip(logits, batches)]).mean()
        if weight > 1:
            loss = loss / weight
        check_finite(loss, f"in {desc} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Predicted labels, in chunks so the evaluation fits on any device."""
    model.eval()
    return torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in images.split(EVAL_CHUNK)])


def variant_environments(train: SpuriousDataset, minority: Environment, balanced: Environment,
                         random_irm: bool, seed: int) -> dict[str, list[torch.Tensor]]:
    """Training-split indices of each environment of each variant."""
    variants = {"erm": [torch.arange(len(train))], "irm_clusters": [minority.indices, balanced.indices]}
    if random_irm:
        pooled = torch.cat([minority.indices, balanced.indices])
        shuffled = pooled[torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))]
        variants["irm_random"] = list(shuffled.split([len(minority.indices), len(balanced.indices)]))
    env = getattr(train, "env", None)
    if env is not None and len(torch.unique(env)) > 1:
        variants["irm_true"] = [torch.nonzero(env == e).flatten() for e in torch.unique(env)]
    return variants


def stats(values: list[float]) -> dict[str, Any]:
    """Mean and (population) standard deviation over restarts, with the values themselves."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def mean_metrics(runs: list[dict]) -> dict:
    """Every number of several ``compute_metrics`` results averaged (group sizes are equal across runs)."""
    first = runs[0]
    out = {k: float(np.mean([r[k] for r in runs])) for k in first if k != "groups"}
    out["groups"] = {g: {"acc": float(np.mean([r["groups"][g]["acc"] for r in runs])), "n": v["n"]}
                     for g, v in first["groups"].items()}
    return out


def run_variant(name: str, env_indices: list[torch.Tensor], data: dict[str, Tensors], train: SpuriousDataset,
                args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--n_restarts`` trainings of one variant; train/test accuracy and per-restart split metrics."""
    images, y, _ = data["train"]
    envs = [(images[idx], y[idx]) for idx in env_indices]
    pooled = torch.cat(env_indices)
    train_counts = group_counts(train.y, train.a)
    penalty_weight = 0.0 if name == "erm" else args.penalty_weight
    restarts = []
    for restart in range(args.n_restarts):
        seed = args.seed + restart
        generator = seed_everything(seed)
        model = build_irm_model(tuple(images.shape[1:]), train.n_classes, args.hidden_dim, args.grayscale_model)
        train_irm(model, envs, args, penalty_weight, device, generator, f"{LABELS[name]} restart {restart + 1}")
        train_acc = float((predict(model, images[pooled], device) == y[pooled]).double().mean())
        splits = {split: compute_metrics(predict(model, x, device), ys, a, train_counts)
                  for split, (x, ys, a) in data.items() if split != "train"}
        restarts.append({"seed": seed, "train_acc": train_acc, "splits": splits})
        print(f"  {LABELS[name]:<18} restart {restart + 1}/{args.n_restarts}: train {100 * train_acc:.2f}  "
              f"test {100 * splits['test']['avg_acc']:.2f}", flush=True)
    return {
        "label": LABELS[name],
        "env_sizes": [len(idx) for idx in env_indices],
        "penalty_weight": penalty_weight,
        "train_acc": stats([r["train_acc"] for r in restarts]),
        "test_acc": stats([r["splits"]["test"]["avg_acc"] for r in restarts]),
        "test_worst_group_acc": stats([r["splits"]["test"]["worst_group_acc"] for r in restarts]),
        "restarts": restarts,
    }


def format_table(variants: dict[str, dict], title: str) -> str:
    """One row per variant: environment sizes, train / test / test worst-group accuracy (mean ± std)."""

    def cell(s: dict) -> str:
        return f"{100 * s['mean']:6.2f} ± {100 * s['std']:5.2f}"

    header = f"{'variant':<18}{'env sizes':<16}{'train acc':>16}{'test acc':>16}{'test worst-grp':>17}"
    lines = [title, header, "-" * len(header)]
    for v in variants.values():
        sizes = "/".join(str(n) for n in v["env_sizes"])
        lines.append(f"{v['label']:<18}{sizes:<16}{cell(v['train_acc']):>16}{cell(v['test_acc']):>16}"
                     f"{cell(v['test_worst_group_acc']):>17}")
    return "\n".join(lines)


def load_data(minority: Environment, balanced: Environment) -> tuple[SpuriousDataset, dict[str, Tensors]]:
    """Rebuild the environments' data set, check both environments fit it, and load every split."""
    check_pair(minority, balanced)
    splits = build_splits(rebuild_data_args(minority.summary["data_flags"]))
    check_against(minority, splits["train"], "--minority_env")
    check_against(balanced, splits["train"], "--balance_env")
    return splits["train"], {name: as_tensors(ds) for name, ds in splits.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every variant, print the table, write ``results.json``."""
    started = time.time()
    minority = load_environment(args.minority_env, "--minority_env")
    balanced = load_environment(args.balance_env, "--balance_env")
    device = resolve_device(args.device)
    out_dir = prepare_out_dir(args.out_dir or default_out_dir(minority.summary["data"], args.seed), args.overwrite)
    train, data = load_data(minority, balanced)
    print(describe(minority.summary))
    print(describe(balanced.summary))
    variants = {name: run_variant(name, indices, data, train, args, device)
                for name, indices in variant_environments(train, minority, balanced, args.random_irm,
                                                          args.seed).items()}
    payload = {
        "mode": "irm",
        "data": minority.summary["data"],
        "arch": "mlp",
        "seed": args.seed,
        "args": plain_args(args),
        "time_s": round(time.time() - started, 3),
        "environments": {"minority": minority.summary, "balanced": balanced.summary},
        "splits": {split: mean_metrics([r["splits"][split] for r in variants["irm_clusters"]["restarts"]])
                   for split in ("val", "test")},
        "variants": variants,
    }
    path = write_results(out_dir, payload)
    print(format_table(variants, f"{payload['data']}: accuracy in %, mean ± std over {args.n_restarts} restart(s)"))
    print(f"results: {path}")
    return payload


def default_out_dir(data: str, seed: int) -> str:
    return str(Path("runs") / f"irm_{data}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}")


def build_parser() -> argparse.ArgumentParser:

    parser = OneLineErrorParser(prog="irm.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minority_env", required=True, help="minority/ folder written by environments.py")
    parser.add_argument("--balance_env", required=True, help="balanced/ folder written by environments.py")
    parser.add_argument("--penalty_weight", type=non_negative(float), default=1e4, help="IRMv1 penalty weight")
    parser.add_argument("--penalty_anneal_iters", type=non_negative(int), default=100,
                        help="steps with penalty weight 1 before --penalty_weight applies")
    parser.add_argument("--l2_regularizer_weight", type=non_negative(float), default=1e-3, help="L2 on the weights")
    parser.add_argument("--lr", type=non_negative(float), default=1e-3, help="Adam learning rate")
    parser.add_argument("--steps", type=positive_int, default=501, help="optimisation steps per restart")
    parser.add_argument("--n_restarts", type=positive_int, default=3, help="trainings per variant (seeds seed..)")
    parser.add_argument("--hidden_dim", type=positive_int, default=256, help="MLP width")
    parser.add_argument("--grayscale_model", action="store_true", help="feed the MLP the sum of the colour channels")
    parser.add_argument("--random_irm", action="store_true", help="add IRM on a random partition of the same samples")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="samples per environment per step (default: each environment whole)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of restart 1 (restart r uses seed + r - 1)")
    parser.add_argument("--out_dir", default=None, help="where results.json goes (default: runs/irm_<data>_...)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing a finished result in --out_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    return exit_code("irm.py", lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
