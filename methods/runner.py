"""Run registered methods on one shared reference model and one set of clusters; one results format.

Every method gets the same treatment: reseed, ``fit``, evaluate on val and test (val on the
held-out part when the method fitted on part of it), save ``<name>.pt``, record density for
masked models and how group labels were used. ``results.json`` has the same top-level keys for
every mode: ``mode, data, arch, seed, args, time_s, splits, methods`` (plus ``primary_method``,
whose ``splits`` and ``density`` are repeated at the top level, and the reference's files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cluster.io import load_clusters
from data import build_splits
from methods import REGISTRY
from methods.base import Context, Fitted, Method, MethodUnavailable
from models.factory import checkpoint_content
from models.masking import density_report, iter_masks
from training.experiment import evaluate_model, results_payload
from utils.checkpoint import save_checkpoint
from utils.distributed import run_on_main
from utils.errors import UserError
from utils.report import format_comparison, format_group_table, write_report
from utils.results import write_results
from utils.run_dir import RunClock, StepState, prepare_out_dir, record_splits, run_clock
from utils.runtime import resolve_device, seed_everything

PRIMARY_ORDER = ("prusc", "prusc_no_con", "retrain_only")  # top-level ``splits``: the first of these that ran
SHARED_STEPS = ("erm", "clusters", "methods")  # resume states that outlive the method that made them


def make_context(args: argparse.Namespace, allow_masked_reference: bool = False) -> tuple[Context, RunClock]:
    """Output folder, device, seed and splits of a run (opened by run.py, so resumable), and the run's clock."""
    clock = run_clock()
    out_dir = prepare_out_dir(args.out_dir, args.overwrite)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    splits = build_splits(args)
    record_splits({name: len(split) for name, split in splits.items()})
    if args.clusters:
        load_clusters(args.clusters, splits["train"])  # a wrong file is refused before the reference model trains
    return Context(args, splits, device, out_dir, allow_masked_reference, resumable=True), clock


def method_result(method: Method, fitted: Fitted, ctx: Context) -> dict[str, Any]:
    """Metrics and facts of one fitted method (its ``methods.<name>`` entry)."""
    splits = dict(ctx.splits)
    if fitted.val is not None:
        splits["val"] = fitted.val
    result: dict[str, Any] = {
        "splits": evaluate_model(fitted.model, splits, ctx.runtime),
        **method.selection_facts(ctx.requested_selector),
        "val_samples": fitted.val_note or "the whole val split",
    }
    if any(True for _ in iter_masks(fitted.model)):
        result["density"] = density_report(fitted.model)
    if fitted.save:
        arch_args = fitted.arch_args if fitted.arch_args is not None else ctx.reference.arch_args
        path = save_checkpoint(ctx.out_dir / f"{method.name}.pt",
                               checkpoint_content(fitted.model, ctx.recorded_args(), arch_args, ctx.train.n_classes))
        result["checkpoint"] = str(path)
    result.update(fitted.info)
    return result


def run_methods(ctx: Context, names: list[str]) -> dict[str, dict[str, Any]]:
    """Fit and evaluate each named method in order; methods that cannot run on this data are skipped
    with a warning (said before anything is trained). In a resumable run each finished method's entry
    is saved at once, and a continued run reuses it instead of fitting the method again."""
    methods = [REGISTRY[name]() for name in names]
    runnable = []
    for method in methods:
        reason = method.unavailable(ctx)
        if reason:
            print(f"warning: skipping method {method.name}: {reason}", file=sys.stderr)
        else:
            runnable.append(method)
    if not runnable:
        raise UserError(f"none of --methods {','.join(names)} can run on data set {ctx.args.data!r}")
    for method in runnable:
        method.check_inputs(ctx)
    finished = ctx.step("methods")
    results = restore_finished(ctx, finished)
    clock = run_clock()
    for method in runnable:
        if method.name in results:
            print(f"== method {method.name}: reusing its finished result ({finished.path})")  # type: ignore[union-attr]
            continue
        print(f"== method {method.name}", flush=True)
        ctx.generator()
        first_step, fit_started = len(ctx.steps), clock.mark(f"method {method.name}")
        try:
            fitted = method.fit(ctx)
        except MethodUnavailable as exc:
            if len(runnable) == 1:
                raise
            print(f"warning: skipping method {method.name}: {exc}", file=sys.stderr)
            continue
        results[method.name] = method_result(method, fitted, ctx)
        results[method.name]["time_s"] = round(clock.now() - fit_started, 1)  # fit, evaluation, shared steps it ran
        if finished is not None:
            finished.save({"results": results, "facts": ctx.facts, "args": ctx.recorded_args()})
            for name in set(ctx.steps[first_step:]) - set(SHARED_STEPS):
                StepState(ctx.out_dir, name).clear()  # the method's entry replaces its steps' states
    return {name: results[name] for name in [m.name for m in runnable] if name in results}


def restore_finished(ctx: Context, finished: StepState | None) -> dict[str, dict[str, Any]]:
    """The entries of the methods an interrupted run finished, with what they had set in the context
    (files of the reference and clusters; arguments settled during the run, e.g. ``--per_class``)."""
    saved = finished.load() if finished is not None else None
    if saved is None:
        return {}
    ctx.facts.update(saved["facts"])
    current = ctx.recorded_args()
    ctx.settle(**{key: value for key, value in saved["args"].items() if current.get(key) != value})
    return dict(saved["results"])


def primary_method(results: dict[str, dict[str, Any]]) -> str:
    """The method whose numbers stand at the top level of results.json."""
    return next((name for name in PRIMARY_ORDER if name in results), list(results)[-1])


def finish(mode: str, ctx: Context, clock: RunClock, results: dict[str, dict[str, Any]],
           report: bool = False, **extra: Any) -> dict[str, Any]:
    """Write results.json (and with ``report`` the comparison picture), print the table, return the payload."""
    main = primary_method(results)
    extra.update(ctx.facts)
    if "density" in results[main]:
        extra["density"] = results[main]["density"]
    args = ctx.recorded_args()
    payload = results_payload(mode, args, clock, results[main]["splits"], primary_method=main,
                              methods=results, **extra)
    picture = run_on_main(write_report, Path(ctx.out_dir) / "report.png", [payload]) if report else None
    path = write_results(ctx.out_dir, payload)  # last: results.json marks the run finished, picture included
    print(format_comparison(results, title=f"{args['data']} ({args['arch']}), seed {args['seed']}: "
                                           "test accuracy (%)"))
    print(format_group_table(results[main]["splits"]["test"], f"test ({main})"))
    if picture is not None:
        print(f"picture: {picture}")
    print(f"results: {path}")
    return payload
