"""What a method is: a class with a name, a few facts for the results table, its flags and ``fit``.

A method receives a :class:`Context` (flags, splits, device, output folder and, on demand, the
shared reference ERM model with its representation clusters) and returns a :class:`Fitted`
model. Everything else (seeding, evaluation, the checkpoint, the results entry) is done once for
all methods by :mod:`methods.runner`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from cluster.fit import ClusterConfig
from data import SpuriousDataset
from models.factory import ModelConfig, model_from_args
from training.erm import TrainConfig, train_erm
from training.loops import Stateful
from training.reference import (Clusters, ReferenceModel, ReferenceSource, load_or_train_reference,
                                reference_clusters)
from training.selection import BestEpoch, SelectionConfig, Selector, cells_of, requested_selector, selection_facts
from utils.checkpoint import plain_args
from utils.errors import UserError
from utils.run_dir import StepState
from utils.options import add_options, from_args
from utils.runtime import Runtime, runtime_from_args, seed_everything

T = TypeVar("T")


class MethodUnavailable(UserError):
    """Raised by ``fit`` when the data (e.g. its clusters) turn out not to allow the method; ``--mode all``
    then skips the method with a warning instead of failing the whole comparison."""


@dataclass
class Context:
    """Everything a method may use. The reference model and its clusters are computed on first use
    and shared by every method of a run, so ``--mode all`` trains one ERM model and clusters it once.

    ``args`` are the resolved flags and stay as resolved; what the run settles later (the reference's
    ``arch``, the clusters' ``per_class`` and ``num_clusters``) goes to ``settled``, which :meth:`part` and
    :meth:`recorded_args` (results.json, checkpoints, resume states) read over the flags."""

    args: argparse.Namespace
    splits: dict[str, SpuriousDataset]
    device: torch.device
    out_dir: Path
    allow_masked_reference: bool = False
    resumable: bool = False  # the run's folder is locked by an open run: long steps save state and resume
    facts: dict[str, Any] = field(default_factory=dict)  # files of the reference and clusters, for results.json
    steps: list[str] = field(default_factory=list)  # the resume states asked for so far, in order
    settled: dict[str, Any] = field(default_factory=dict)  # flag values settled after resolve(), by name
    _reference: ReferenceModel | None = field(default=None, repr=False)
    _clusters: Clusters | None = field(default=None, repr=False)

    @property
    def train(self) -> SpuriousDataset:
        return self.splits["train"]

    @property
    def reference(self) -> ReferenceModel:
        """The ERM model: ``--checkpoint``, or trained here (``erm.pt``) with the seed of the run."""
        if self._reference is None:
            self._reference = load_or_train_reference(self.source, self.part(ModelConfig), self.part(TrainConfig),
                                                      self.part(ClusterConfig).clusters_auto, self.runtime,
                                                      self.train, self.generator(), self.out_dir,
                                                      self.recorded_args(), allow_masked=self.allow_masked_reference,
                                                      resume=self.step("erm"))
            self.settle(arch=self._reference.arch)
            self.facts.update(reference_checkpoint=self._reference.checkpoint,
                              cluster_checkpoint=self._reference.cluster_checkpoint)
        return self._reference

    @property
    def clusters(self) -> Clusters:
        """Representation clusters of the reference (``--clusters`` or k-means), train and val."""
        if self._clusters is None:
            self._clusters = reference_clusters(self.source, self.part(ClusterConfig),
                                                self.part(SelectionConfig).min_cell_size, self.args.seed,
                                                self.splits, self.reference, self.runtime, self.out_dir,
                                                resume=self.step("clusters"))
            made_with = self._clusters.settings
            self.settle(per_class=made_with.per_class, num_clusters=made_with.num_clusters)
            self.facts.update(clusters=self._clusters.file, cluster_checkpoint=self._clusters.cluster_checkpoint)
            if self._clusters.choice is not None:
                self.facts["clusters_choice"] = self._clusters.choice
        return self._clusters

    @property
    def source(self) -> ReferenceSource:
        """Where the reference model and its clusters come from (run.py's own flags)."""
        args = self.args
        return ReferenceSource(args.data, args.checkpoint, args.cluster_checkpoint, args.cluster_epoch, args.clusters)

    def settle(self, **values: Any) -> None:
        """Record flag values the run settled (read over the flags from now on; the flags stay as resolved)."""
        self.settled.update(values)

    def recorded_args(self) -> dict[str, Any]:
        """The run's arguments as results.json, checkpoints and resume states record them: the resolved
        flags with the settled values in their place."""
        return plain_args({**vars(self.args), **self.settled})

    def step(self, name: str) -> StepState | None:
        """Where the long step ``name`` keeps its resume state (None outside an open run)."""
        if not self.resumable:
            return None
        self.steps.append(name)
        return StepState(self.out_dir, name, background=self.device.type == "cuda")

    @property
    def runtime(self) -> Runtime:
        """How models run in this run (device, precision, memory format, workers, eval batch size)."""
        return runtime_from_args(self.args, self.device)

    def new_model(self) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh model of the run's model flags for the training split, and its rebuild arguments."""
        return model_from_args(self.part(ModelConfig), self.train)

    def part(self, cls: type[T]) -> T:
        """The settings of ``cls`` (a frozen dataclass of flags, :mod:`utils.options`) in this run, with the
        values settled so far."""
        names = {f.name for f in fields(cls)}
        return replace(from_args(cls, self.args), **{k: v for k, v in self.settled.items() if k in names})

    @property
    def requested_selector(self) -> Selector:
        """The selector ``--selection`` (and ``--min_cell_size``) ask for."""
        return requested_selector(self.args.selection, self.args.min_cell_size)

    def generator(self, offset: int = 0) -> torch.Generator:
        """Reseed everything with ``--seed + offset``: each method starts from the same random state
        whatever ran before it, so a method's result does not depend on the ``--methods`` list."""
        return seed_everything(self.args.seed + offset)


@dataclass
class Fitted:
    """A method's trained model and what it wants recorded beside its metrics.

    ``val`` replaces the validation split for reporting when the method fitted or selected on part of
    it (``val_note`` says which part), so the val metrics are never in-sample.
    """

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    val: SpuriousDataset | None = None
    val_note: str | None = None
    save: bool = True  # False when the model is already saved elsewhere (the reference ERM model)
    arch_args: dict[str, Any] | None = None  # rebuild arguments of a model made here (None: the reference's)


class Method:
    """Base class of every method. Subclasses set the class attributes and implement :meth:`fit`.

    - ``name``: the ``--methods`` word and the results key;
    - ``uses_group_labels``: True when true group (attribute) labels are used anywhere (training,
      model selection or hyperparameters); such methods are references, not competitors;
    - ``group_labels``: where they are used (``"none"`` otherwise);
    - ``selection``: how the reported model is chosen, in words; with a :meth:`selector`, a sentence
      whose ``{score}`` the selector's words fill (results.json then says what was really used);
    - ``needs_attributes``: the method cannot run on data without attribute labels;
    - ``config``: the frozen dataclass of its own flags (one field per flag, :mod:`utils.options`);
    - ``input_flags``: its flags that name files or folders it reads, fingerprinted with the run and never
      inside a folder ``--overwrite`` replaces.
    """

    name: ClassVar[str]
    uses_group_labels: ClassVar[bool] = False
    group_labels: ClassVar[str] = "none"
    selection: ClassVar[str] = "last epoch"
    needs_attributes: ClassVar[bool] = False
    config: ClassVar[type | None] = None  # the frozen dataclass of its own settings (utils/options.py), if any
    input_flags: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        """Add the method's own flags (published defaults) to run.py's parser: those of its ``config``
        (``fit`` reads them as ``ctx.part(self.config)``)."""
        if cls.config is not None:
            add_options(group, cls.config)

    def selector(self, requested: Selector) -> Selector | None:
        """The rule that picks the reported model (training/selection.py), given the one ``--selection``
        asks for; None when nothing is picked."""
        return None

    def selection_facts(self, requested: Selector) -> dict[str, Any]:
        """The ``selection``, ``uses_group_labels`` and ``group_labels`` entries of the method's results."""
        return selection_facts(self.selection, self.selector(requested), self.uses_group_labels, self.group_labels)

    def unavailable(self, ctx: Context) -> str | None:
        """Why the method cannot run on this data (None when it can); checked before any training."""
        if self.needs_attributes and bool((ctx.train.a < 0).any()):
            return f"it needs attribute labels, which data set {ctx.args.data!r} does not have"
        return None

    def check_inputs(self, ctx: Context) -> None:
        """Refuse (UserError) what is wrong with the method's own flags and files, before any method of the
        run trains; the default has nothing to check."""

    def fit(self, ctx: Context) -> Fitted:
        raise NotImplementedError


def train_and_select(ctx: Context, step: str, model: nn.Module, train_set: SpuriousDataset, selector: Selector,
                     seed_offset: int = 0, stateful: dict[str, Stateful] | None = None,
                     **train_kwargs: Any) -> BestEpoch:
    """ERM's loop (:func:`training.erm.train_erm`, ``train_kwargs`` passed on) with the epoch chosen by
    ``selector`` on the whole val split (over the (label, cluster) cells of val when it scores cells),
    then restored. Training starts from seed ``--seed + seed_offset``, set after the clusters exist
    (making them may train the reference model). ``step`` names its resume state; ``stateful`` is what
    else it must restore (e.g. a loss's memory)."""
    val = ctx.splits["val"]
    cells = cells_of(val.y, ctx.clusters.val) if selector.needs_cells else None
    generator = ctx.generator(seed_offset)
    best = BestEpoch(model)

    def select(epoch: int) -> None:
        best.record(selector.score_model(model, val, cells, ctx.runtime), epoch + 1)

    train_erm(model, train_set, ctx.part(TrainConfig), ctx.runtime, generator, on_epoch_end=select,
              resume=ctx.step(step), stateful={"best": best, **(stateful or {})}, **train_kwargs)
    best.restore()
    return best
