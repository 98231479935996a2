"""IRMv1 on annotation-free environments, beside ERM, random-partition IRM and true-environment IRM.

    cd invariant_learning && python3 irm.py --minority_env=ENVS/minority --balance_env=ENVS/balanced
    python3 invariant_learning/irm.py --minority_env=ENVS/minority --balance_env=ENVS/balanced --random_irm

A front end over the registry's IRM method (methods/irm.py): the same flags (``--irm_lr``,
``--irm_steps``, ``--irm_batch_size``, the penalty flags), the same training and the same
environments (``--irm_envs`` files, random and true). The former names ``--lr``, ``--steps`` and
``--batch_size`` still work, with a one-line note. The data set is rebuilt from the flags recorded
in the environments. Every variant trains the same MLP for ``--irm_steps`` Adam steps, restart
``r`` (counted from 0) starting from seed ``--seed + r``:

- ``erm``: cross-entropy on the whole training split (penalty weight 0);
- ``irm_clusters``: IRMv1 on the two cluster environments;
- ``irm_random`` (``--random_irm``): IRMv1 on a random partition of the same samples into two
  environments of the same sizes, the control that shows the clusters carry the signal;
- ``irm_true``: IRMv1 on the data set's own environments, where the training split has them
  (cmnist's ``env`` tensor).

Each environment is used whole at every step (full batch, ``--irm_batch_size 0``, the default
here) unless ``--irm_batch_size`` is given; then every step draws that many samples per
environment, with replacement, and only the mini-batches travel to ``--device``. ``results.json`` has the toolkit's one format: each variant
under ``methods.<name>`` with ``splits`` averaged over restarts, plus ``train_acc``, ``test_acc``
and ``test_worst_group_acc`` as mean and sample std over restarts.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from data import build_splits
from invariant_learning.construction import describe, load_environment, rebuild_data_args
from methods.base import Context
from methods.irm import IRM, IrmConfig, accuracy_on, add_training_args, fit_irm, irm_environments, true_environments
from models import build_model
from training.experiment import evaluate_model, results_payload
from utils.cli import OneLineErrorParser, exit_code, positive_int, seed_int
from utils.config_file import add_config_arg, parse_with_config
from utils.report import format_comparison
from utils.checkpoint import plain_args
from utils.results import write_results
from utils.run_dir import StepState, open_run, run_clock
from utils.runtime import resolve_device

LABELS = {"erm": "ERM (pooled)", "irm_clusters": "IRM cluster envs", "irm_random": "IRM random envs",
          "irm_true": "IRM true envs"}
EVAL_BATCH = 4096


class ChannelSum(nn.Module):
    """Sum the colour channels: the ``--grayscale_model`` input, blind to colour by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


def build_irm_model(ctx: Context) -> tuple[nn.Module, dict]:
    """The IRM paper's model shape: a two-hidden-layer MLP, optionally on the channel sum."""
    args, train = ctx.args, ctx.train
    shape = tuple(train.input_shape)
    if not args.grayscale_model:
        return build_model("mlp", shape, train.n_classes, hidden_dim=args.hidden_dim), {}
    mlp = build_model("mlp", (1, *shape[1:]), train.n_classes, hidden_dim=args.hidden_dim)
    return nn.Sequential(ChannelSum(), mlp), {}


VARIANT_ENVS = {"irm_clusters": "files", "irm_random": "random", "irm_true": "true"}  # variant -> --irm_envs


def variant_environments(ctx: Context) -> tuple[dict[str, list[torch.Tensor]], dict[str, Any]]:
    """Training-split indices of each environment of each variant (the method's ``--irm_envs`` kinds), and
    the description of the environment files."""
    names = ["irm_clusters"]
    if ctx.args.random_irm:
        names.append("irm_random")
    if true_environments(ctx.train) is not None:
        names.append("irm_true")
    variants, described = {"erm": [torch.arange(len(ctx.train))]}, {}
    for name in names:
        variants[name], described[name] = irm_environments(ctx, VARIANT_ENVS[name])
    return variants, described["irm_clusters"]


def stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over restarts (0 for one restart), with the values themselves."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "values": values}


def mean_metrics(runs: list[dict]) -> dict:
    """Every number of several ``compute_metrics`` results averaged (group sizes are equal across runs)."""
    first = runs[0]
    out = {k: statistics.mean(r[k] for r in runs) for k in first if k != "groups"}
    out["groups"] = {g: {"acc": statistics.mean(r["groups"][g]["acc"] for r in runs), "n": v["n"]}
                     for g, v in first["groups"].items()}
    return out


def run_variant(name: str, env_indices: list[torch.Tensor], ctx: Context) -> dict[str, Any]:
    """``--n_restarts`` trainings of one variant; its results entry (metrics averaged over restarts)."""
    args, train = ctx.args, ctx.train
    envs = [train.subset(idx) for idx in env_indices]
    pooled = train.subset(torch.cat(env_indices))
    irm = ctx.part(IrmConfig)
    if name == "erm":  # pooled ERM: the same training without the penalty
        irm = dataclasses.replace(irm, penalty_weight=0.0)
    restarts = []
    for restart in range(args.n_restarts):
        finished, training = StepState(ctx.out_dir, f"{name}_restart{restart}"), f"{name}_restart{restart}_training"
        entry = finished.load()
        if entry is None:
            model, _ = fit_irm(ctx, irm, envs, offset=restart,
                               desc=f"{LABELS[name]} restart {restart + 1}", build=build_irm_model, step=training)
            entry = {"seed": args.seed + restart, "train_acc": accuracy_on(model, pooled, ctx.runtime),
                     "splits": evaluate_model(model, ctx.splits, ctx.runtime)}
            finished.save(entry)
            StepState(ctx.out_dir, training).clear()
        else:
            print(f"  reusing the finished restart {restart + 1} of {LABELS[name]}")
        restarts.append(entry)
        print(f"  {LABELS[name]:<18} restart {restart + 1}/{args.n_restarts}: train "
              f"{100 * entry['train_acc']:.2f}  test {100 * entry['splits']['test']['avg_acc']:.2f}", flush=True)
    return {
        "label": LABELS[name],
        "splits": {split: mean_metrics([r["splits"][split] for r in restarts]) for split in ("val", "test")},
        "uses_group_labels": name == "irm_true",
        "group_labels": "training (the true environments)" if name == "irm_true" else "none",
        "selection": IRM.selection,
        "val_samples": "the whole val split",
        "env_sizes": [len(idx) for idx in env_indices],
        "penalty_weight": irm.penalty_weight,
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every variant, print the table, write ``results.json``."""
    clock = run_clock()
    data_args = rebuild_data_args(load_environment(args.minority_env, "--minority_env").summary["data_flags"])
    args = argparse.Namespace(**{**vars(data_args), **vars(args), "arch": "mlp", "eval_batch_size": EVAL_BATCH,
                                 "amp": False, "channels_last": False})
    ctx = Context(args, build_splits(data_args), resolve_device(args.device), Path(args.out_dir), resumable=True)
    environments, files = variant_environments(ctx)
    print(describe(files["minority"]))
    print(describe(files["balanced"]))
    variants = {name: run_variant(name, indices, ctx) for name, indices in environments.items()}
    payload = results_payload("irm", plain_args(args), clock, variants["irm_clusters"]["splits"],
                              primary_method="irm_clusters", methods=variants,
                              environments={"minority": files["minority"], "balanced": files["balanced"]})
    path = write_results(ctx.out_dir, payload)
    print(format_table(variants, f"{args.data}: accuracy in %, mean ± std over {args.n_restarts} restart(s)"))
    print(format_comparison(variants, title="mean over restarts"))
    print(f"results: {path}")
    return payload


def default_out_dir(data: str, seed: int) -> str:
    return str(Path("runs") / f"irm_{data}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}")


RENAMED = {"--lr": "--irm_lr", "--steps": "--irm_steps", "--batch_size": "--irm_batch_size"}


def renamed_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with the former flag names (``--steps 5``, ``--steps=5``) spelled as the method's, each
    noted once on stderr."""
    out = []
    for arg in argv:
        old, eq, value = arg.partition("=")
        if old in RENAMED:
            print(f"note: irm.py {old} is now {RENAMED[old]} (the name of run.py's irm method); "
                  "the old name still works", file=sys.stderr)
            arg = RENAMED[old] + eq + value
        out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="irm.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minority_env", help="minority/ folder written by environments.py (required)")
    parser.add_argument("--balance_env", help="balanced/ folder written by environments.py (required)")
    add_config_arg(parser)
    add_training_args(parser)
    parser.set_defaults(irm_batch_size=0)  # the IRM paper's full batch
    parser.add_argument("--n_restarts", type=positive_int, default=3, help="trainings per variant (seeds seed..)")
    parser.add_argument("--hidden_dim", type=positive_int, default=256, help="MLP width")
    parser.add_argument("--grayscale_model", action="store_true", help="feed the MLP the sum of the colour channels")
    parser.add_argument("--random_irm", action="store_true",
                        help="add IRM on a random partition of the same samples (--irm_envs random)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of restart 1 (restart r uses seed + r - 1)")
    parser.add_argument("--out_dir", default=None, help="where results.json goes (default: runs/irm_<data>_...)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing a finished result in --out_dir")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (over ``--config``'s values), with the default ``--out_dir`` filled in from the environments'
    data set."""
    args, _ = parse_with_config(build_parser(), renamed_flags(sys.argv[1:] if argv is None else argv),
                                required=("minority_env", "balance_env"))
    if args.out_dir is None:
        data = load_environment(args.minority_env, "--minority_env").summary["data"]
        args.out_dir = default_out_dir(data, args.seed)
    return args


def requested_args(argv: list[str]) -> dict[str, Any]:
    """The arguments a run of ``argv`` records in its folder, which a rerun there is compared with."""
    return plain_args(parse_args(argv))


def open_and_run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, open ``--out_dir`` as a run (lock, recorded arguments, resume of finished restarts), run."""
    args = parse_args(argv)
    with open_run(args.out_dir, plain_args(args), args.overwrite, inputs=(args.minority_env, args.balance_env),
                  tool="irm.py"):
        return run(args)


def main(argv: list[str] | None = None) -> int:
    return exit_code("irm.py", lambda: open_and_run(argv))
