"""IRMv1 (Arjovsky, Bottou, Gulrajani, Lopez-Paz, 2019) on annotation-free environments built from the
representation clusters (Le, Seifert, Schlötterer, UniReps 2024, arXiv 2504.15686).

This module is all of IRM: the ``irm`` method of run.py, and the training and environments that the
``irm.py`` command (cli/irm.py) runs for each of its variants. ``--irm_envs`` says where the two
training environments come from:

- ``clusters``: built from the reference model's clusters with the construction of
  :mod:`invariant_learning.construction`. It needs clusters that mix labels (a sample conflicts with
  its cluster's majority label), so per-class clusters are replaced by a global k-means on the same
  features (``--num_clusters`` clusters);
- ``files``: the folders ``environments.py`` writes (``--minority_env``, ``--balance_env``), the
  default when they are given;
- ``random``: the samples of those cluster environments (from the files when given) partitioned at
  random into two environments of the same sizes, the control that shows the clusters carry the signal;
- ``true``: the data set's own environments (cmnist's ``env``): uses group labels.

Training: ``--irm_steps`` Adam steps; each step takes ``--irm_batch_size`` samples per
environment, drawn with replacement (or every environment whole when it is 0 — the IRM paper's
full batch; not given: run.py's ``--batch_size``), any data set and any ``--arch``. Loss: mean
environment risk + ``--l2_regularizer_weight`` * squared weights + ``w`` * mean IRMv1 penalty,
``w = 1`` for ``--penalty_anneal_iters`` steps then ``--penalty_weight``, the whole divided by ``w``
when ``w > 1``. The last step's model is reported (no model selection), as in the IRM paper.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from cluster.fit import ClusterConfig, cluster_features
from data import SpuriousDataset
from invariant_learning.construction import (add_construction_args, check_against, check_pair, conflicting_mask,
                                             describe, label_attr_agreement, load_environment, split_environments)
from invariant_learning.penalty import irm_penalty, penalty_weight_at
from methods.base import Context, Fitted, Method, MethodUnavailable
from methods.registry import register
from training.loops import LossWatch, Objective, Step, Steps, predict, run_training
from utils.cli import non_negative, positive_int
from utils.errors import UserError
from utils.run_dir import StepState
from utils.options import add_options, option
from utils.runtime import Runtime, as_runtime, make_loader, progress, to_device

FULL_BATCH_CHUNK = 4096
SAVE_EVERY = 100  # IRM steps per epoch of the training loop (loss checks, resume states)
ENV_KINDS = ("clusters", "files", "random", "true")


@dataclass(frozen=True)
class IrmConfig:
    """IRM's objective and optimisation settings, the same flags in run.py and irm.py."""

    penalty_weight: float = option(1e4, "IRM: IRMv1 penalty weight after annealing", type=non_negative(float))
    penalty_anneal_iters: int = option(100, "IRM: steps with penalty weight 1 before --penalty_weight applies",
                                       type=non_negative(int))
    l2_regularizer_weight: float = option(1e-3, "IRM: L2 penalty on the weights", type=non_negative(float))
    irm_lr: float = option(1e-3, "IRM: Adam learning rate", type=non_negative(float))
    irm_steps: int = option(501, "IRM: optimisation steps", type=positive_int)
    irm_batch_size: int | None = option(None, "IRM: samples per environment per step, 0: every environment whole "
                                              "(run.py's default: its --batch_size; irm.py's: 0)",
                                        type=non_negative(int))


def add_training_args(group: argparse._ArgumentGroup) -> None:
    """IRM's objective and optimisation flags (:class:`IrmConfig`), the same in run.py and irm.py."""
    add_options(group, IrmConfig)


def whole(dataset: SpuriousDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of ``dataset`` on ``device`` (full-batch training)."""
    loader = make_loader(dataset, FULL_BATCH_CHUNK)
    x = torch.cat([xb for xb, *_ in progress(loader, desc="load environment")])
    return to_device(x, device), dataset.y.to(device)


def environment_batch(env: SpuriousDataset, batch_size: int, generator: torch.Generator,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` samples of ``env`` drawn with replacement."""
    idx = torch.randint(len(env), (batch_size,), generator=generator)
    x, y, _a, _i = env.__getitems__(idx.tolist())
    return to_device(x, device), y.to(device)


def irm_objective(irm: IrmConfig, runtime: Runtime, weights: list[nn.Parameter]) -> Objective:
    """IRMv1's loss of one step's environment batches (the module docstring); a batch is ``(step, batches)``."""

    def objective(net: nn.Module, batch: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]) -> Step:
        step, batches = batch
        weight = penalty_weight_at(step, irm.penalty_weight, irm.penalty_anneal_iters)
        with runtime.autocast():
            logits = [net(runtime.batch(x)).float() for x, _ in batches]
        loss = torch.stack([nn.functional.cross_entropy(z, y) for z, (_, y) in zip(logits, batches)]).mean()
        loss = loss + irm.l2_regularizer_weight * sum(w.pow(2).sum() for w in weights)
        if weight:
            loss = loss + weight * torch.stack([irm_penalty(z, y) for z, (_, y) in zip(logits, batches)]).mean()
        if weight > 1:
            loss = loss / weight
        return Step(loss, 1)

    return objective


def train_irm(model: nn.Module, envs: list[SpuriousDataset], irm: IrmConfig, batch_size: int,
              runtime: Runtime | torch.device, generator: torch.Generator, desc: str,
              resume: StepState | None = None) -> None:
    """IRMv1 training of ``model`` in place (objective in the module docstring), ``batch_size`` samples per
    environment per step (0: whole): :func:`training.loops.run_training` over :class:`~training.loops.Steps`
    in epochs of :data:`SAVE_EVERY` steps, at whose ends the loss is checked and, with ``resume``, saved
    (every ``runtime.resume_every`` of them) and continued. Every rank trains the whole model (no DDP)."""
    runtime = as_runtime(runtime)
    device = runtime.device
    model.to(device).train()
    full = [whole(env, device) for env in envs] if batch_size == 0 else None

    def draw(_step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return full or [environment_batch(env, batch_size, generator, device) for env in envs]

    optimizer = torch.optim.Adam(model.parameters(), lr=irm.irm_lr)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    run_training(model, irm_objective(irm, runtime, weights), Steps(draw, irm.irm_steps, SAVE_EVERY, desc),
                 optimizer, runtime, LossWatch(flag="--irm_lr"), resume=resume, generator=generator,
                 parallel=False)


def fit_irm(ctx: Context, irm: IrmConfig, envs: list[SpuriousDataset], offset: int = 0, desc: str = "IRM",
            build: Callable[[Context], tuple[nn.Module, dict]] = Context.new_model,
            step: str = "irm") -> tuple[nn.Module, dict]:
    """A model from ``build`` (the run's model by default) trained by :func:`train_irm` with seed ``--seed +
    offset`` (initialisation and batches), and its rebuild arguments; ``step`` names its resume state."""
    generator = ctx.generator(offset)
    model, arch_args = build(ctx)
    batch_size = ctx.args.batch_size if irm.irm_batch_size is None else irm.irm_batch_size  # not given: --batch_size
    train_irm(model, envs, irm, batch_size, ctx.runtime, generator, desc, resume=ctx.step(step))
    return model, arch_args


def accuracy_on(model: nn.Module, dataset: SpuriousDataset, runtime: Runtime | torch.device) -> float:
    """Plain accuracy of ``model`` on ``dataset`` (e.g. the pooled training environments)."""
    preds = predict(model, dataset, runtime, desc="train accuracy").argmax(1)
    return float((preds == dataset.y).double().mean())


def env_kind(ctx: Context) -> str:
    """``--irm_envs``; not given: ``files`` when environment folders are, else ``clusters``."""
    args = ctx.args
    if args.irm_envs is not None:
        return args.irm_envs
    return "files" if args.minority_env or args.balance_env else "clusters"


def file_environments(minority_env: str | None, balance_env: str | None,
                      train: SpuriousDataset) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Training indices of the ``--minority_env`` and ``--balance_env`` folders, checked against ``train``."""
    if not (minority_env and balance_env):
        raise UserError("--minority_env and --balance_env go together: pass both folders of one environments.py "
                        "run (with --irm_envs files or random), or neither to build the environments from the clusters")
    minority = load_environment(minority_env, "--minority_env")
    balanced = load_environment(balance_env, "--balance_env")
    check_pair(minority, balanced)
    check_against(minority, train, "--minority_env")
    check_against(balanced, train, "--balance_env")
    return [minority.indices, balanced.indices], {"source": "files", "minority": minority.summary,
                                                  "balanced": balanced.summary}


def uses_folders(minority_env: str | None, balance_env: str | None, kind: str) -> bool:
    """Whether ``--irm_envs kind`` reads the ``--minority_env``/``--balance_env`` folders (refused when they
    are given to a kind that ignores them)."""
    folders = bool(minority_env or balance_env)
    if kind == "clusters" and folders:
        raise UserError("--irm_envs clusters builds the environments from the clusters; drop --minority_env/"
                        "--balance_env, or pass --irm_envs files (or random) to use the folders")
    return kind == "files" or (kind == "random" and folders)


def cluster_environments(ctx: Context) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Training indices of the minority and balanced environments built from the reference model's clusters."""
    args, train = ctx.args, ctx.train
    assign = ctx.clusters.train
    if bool((conflicting_mask(train.y, assign) == 0).all()):  # label-pure (e.g. per-class) clusters
        fit, _ = cluster_features(ctx.clusters.train_features, train,
                                  dataclasses.replace(ctx.part(ClusterConfig), per_class=False), args.seed)
        assign = fit.assign
    conflicting = conflicting_mask(train.y, assign)
    if not bool(conflicting.any()):
        raise MethodUnavailable("IRM: no training sample conflicts with its cluster's majority label, so no minority "
                                "environment can be built; raise --num_clusters or cluster an earlier ERM snapshot "
                                "(--cluster_epoch)")
    members = split_environments(conflicting, args.balanced_fraction, args.minority_share, args.seed)
    summary: dict[str, Any] = {"source": "clusters"}
    for role, idx in members.items():
        summary[role] = {"role": role, "size": len(idx), "n_conflicting": int(conflicting[idx].sum()),
                         "conflicting_share": float(conflicting[idx].double().mean()),
                         "label_attr_agreement": label_attr_agreement(train.y[idx], train.a[idx])}
    return [members["minority"], members["balanced"]], summary


def random_partition(envs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The samples of ``envs`` shuffled (seeded) into environments of the same sizes."""
    pooled = torch.cat(envs)
    shuffled = pooled[torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))]
    return list(shuffled.split([len(e) for e in envs]))


def true_environments(train: SpuriousDataset) -> list[torch.Tensor] | None:
    """Training indices of each of the data set's own environments (None when it has fewer than two)."""
    env = getattr(train, "env", None)
    if env is None or len(torch.unique(env)) < 2:
        return None
    return [torch.nonzero(env == e).flatten() for e in torch.unique(env)]


def no_true_environments(data: str) -> str:
    """Why ``--irm_envs true`` cannot run on ``data`` (said up front by ``check_inputs`` and by ``fit``)."""
    return (f"IRM: --irm_envs true needs a data set with its own training environments (cmnist has them), and "
            f"{data!r} has none; pass --irm_envs clusters, files or random")


def irm_environments(ctx: Context, kind: str) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Training indices of each environment of ``--irm_envs kind``, and a description of them."""
    if kind == "true":
        envs = true_environments(ctx.train)
        if envs is None:
            raise MethodUnavailable(no_true_environments(ctx.args.data))
        return envs, {"source": "true", "sizes": [len(e) for e in envs]}
    if uses_folders(ctx.args.minority_env, ctx.args.balance_env, kind):
        envs, summary = file_environments(ctx.args.minority_env, ctx.args.balance_env, ctx.train)
    else:
        envs, summary = cluster_environments(ctx)
    if kind != "random":
        return envs, summary
    envs = random_partition(envs, ctx.args.seed)
    return envs, {"source": "random", "partitioned": summary, "sizes": [len(e) for e in envs]}


@register
class IRM(Method):
    """IRMv1 on two environments (``--irm_envs``), ``--arch`` trained from scratch."""

    name = "irm"
    selection = "last step (--irm_steps), as in the IRM paper"
    input_flags = ("minority_env", "balance_env")

    @staticmethod
    def add_args(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--irm_envs", choices=ENV_KINDS, default=None,
                           help="IRM: environments built from the clusters, read from --minority_env/--balance_env "
                                "(files), those samples split at random, or the data set's own (true: uses group "
                                "labels); default: files when the folders are given, else clusters")
        group.add_argument("--minority_env", default=None, help="IRM: minority/ folder of environments.py")
        group.add_argument("--balance_env", default=None, help="IRM: balanced/ folder of environments.py")
        add_construction_args(group)
        add_training_args(group)

    def check_inputs(self, ctx: Context) -> None:
        args = ctx.args
        kind = env_kind(ctx)
        if kind == "true" and true_environments(ctx.train) is None:
            raise UserError(no_true_environments(args.data))  # a flag mistake, not a data set IRM cannot use
        if uses_folders(args.minority_env, args.balance_env, kind):
            file_environments(args.minority_env, args.balance_env, ctx.train)

    def fit(self, ctx: Context) -> Fitted:
        kind = env_kind(ctx)
        indices, summary = irm_environments(ctx, kind)
        roles = [role for role in ("minority", "balanced") if role in summary]
        for role in roles:
            print(describe(summary[role]))
        if not roles:
            print(f"IRM {summary['source']} environments: {', '.join(str(len(i)) for i in indices)} samples")
        model, arch_args = fit_irm(ctx, ctx.part(IrmConfig), [ctx.train.subset(i) for i in indices])
        info: dict[str, Any] = {"environments": summary, "env_sizes": [len(i) for i in indices]}
        if kind == "true":  # the environments are the data set's own groups of samples
            info.update(uses_group_labels=True, group_labels="training (the true environments)")
        return Fitted(model, arch_args=arch_args, info=info)
