"""Command-line entry point: ERM, clustering, PruSC pruning, retraining, evaluation and method comparisons.

    python3 run.py                      # every method on the embedded Colored Digits
    python3 run.py --mode erm --data digits --epochs 30
    python3 run.py --mode all --methods erm,retrain_only,prusc,jtt
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import fit as cluster_fit  # noqa: E402
from cluster.io import warn_single_cluster_classes  # noqa: E402
from data import add_data_args, canonical_name, data_settings, default_arch  # noqa: E402
from methods import add_method_args, method_input_flags, method_names, modes, parse_methods  # noqa: E402
from methods.prusc import RECIPES, apply_recipe  # noqa: E402
from models.factory import Expect, ModelConfig, checked_checkpoint  # noqa: E402
from training.erm import TrainConfig  # noqa: E402
from training.retrain import RetrainConfig  # noqa: E402
from training.selection import SelectionConfig  # noqa: E402
from utils.checkpoint import plain_args  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code, number_or_words, positive_int, seed_int  # noqa: E402
from utils.config_file import add_config_arg, parse_with_config  # noqa: E402
from utils.options import add_options  # noqa: E402
from utils.distributed import (fail_together, init_from_env, is_distributed, is_main, main_print,  # noqa: E402
                               quiet_unless_main, run_on_main, shutdown)
from utils.errors import UserError  # noqa: E402
from utils.run_dir import RESULTS_RUN, open_run  # noqa: E402
from utils.runtime import add_runtime_args, resolve_device, runtime_from_args  # noqa: E402

MODES = {
    "erm": modes.run_erm,
    "cluster": cluster_fit.run,
    "prune": modes.run_prune,
    "retrain": modes.run_retrain,
    "evaluate": modes.run_evaluate,
    "all": modes.run_all,
}
DEFAULT_MODE = "all"
# the flags naming a run's inputs (with each method's Method.input_flags): fingerprinted with the run, never
# inside a folder --overwrite replaces
INPUT_FLAGS = ("metadata", "train_root_dir", "val_root_dir", "checkpoint", "cluster_checkpoint", "clusters",
               "pretrained_path")


cluster_epoch = number_or_words(positive_int, "auto", "final")  # --cluster_epoch: a positive epoch, auto or final


def build_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    """``prog`` names the program in messages (cluster/clustering.py is this parser under its own name)."""
    parser = OneLineErrorParser(prog=prog, description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default=DEFAULT_MODE, help="what to run")
    parser.add_argument("--out_dir", default=None,
                        help="where checkpoints and results.json go "
                             "(default: runs/<mode>_<data>_<arch>_seed<seed>_<time>)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing a finished result in --out_dir")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of model initialisation and batch order")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--recipe", choices=["none", *sorted(RECIPES)], default="none",
                        help="a named set of hyperparameters (original: the PruSC authors' code; docs/recipe.md); "
                             "flags given on the command line or in --config override its values")
    add_config_arg(parser)
    add_runtime_args(parser)
    add_data_args(parser)
    cluster_fit.add_cluster_args(parser)

    model = parser.add_argument_group("model")
    add_options(model, ModelConfig)
    model.add_argument("--checkpoint", default=None, help="a .pt written by an earlier mode")

    train = parser.add_argument_group("ERM training")
    add_options(train, TrainConfig)
    train.add_argument("--eval_batch_size", type=positive_int, default=512, help="batch size of inference")

    prusc = parser.add_argument_group("reference clusters, retraining and model selection")
    prusc.add_argument("--clusters", default=None, help="clusters.csv of the training split (computed when absent)")
    prusc.add_argument("--cluster_epoch", type=cluster_epoch, default="auto",
                       help="when ERM is trained here, cluster its snapshot after this epoch (saved as "
                            "erm_epoch<E>.pt): a number, auto (a tenth of --epochs, at least 1) or final")
    prusc.add_argument("--cluster_checkpoint", default=None,
                       help="cluster this checkpoint's features instead of --checkpoint's")
    add_options(prusc, RetrainConfig)
    add_options(prusc, SelectionConfig)
    parser.add_argument("--methods", default=",".join(method_names()),
                        help="--mode all: comma-separated methods to compare, in this order (or all)")
    add_method_args(parser)
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "run.py") -> argparse.Namespace:
    """The flags over the values of ``--config`` (utils/config_file.py), every derived default settled."""
    args, explicit = parse_with_config(build_parser(prog), argv, tool="run.py")
    return resolve(args, explicit)


def resolve(args: argparse.Namespace, explicit: set[str]) -> argparse.Namespace:
    """Settle the derived defaults once, in order: the canonical data set name; the ``--recipe`` values on
    every flag not in ``explicit`` (typed or in the config file); the ``--methods`` list; the default
    ``--arch`` of the data set (with ``--checkpoint``, :func:`check_inputs` adopts the file's); ``--cluster_epoch
    auto|final`` as a number; the time-stamped ``--out_dir``."""
    args.data = canonical_name(args.data)
    apply_recipe(args, explicit)
    args.methods = parse_methods(args.methods)
    if args.arch is None and not args.checkpoint:
        args.arch = default_arch(args.data)
    if (args.imagenet or args.pretrained_path) and args.arch in ("mlp", "cnn"):
        raise UserError(f"--imagenet/--pretrained_path load ResNet weights, but --arch is {args.arch}; "
                        "pass --arch resnet18 or resnet50")
    if args.cluster_epoch == "auto":
        args.cluster_epoch = max(1, args.epochs // 10)
    elif args.cluster_epoch == "final":
        args.cluster_epoch = args.epochs
    if args.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out_dir = str(Path("runs") / f"{args.mode}_{args.data}_{args.arch or 'ckpt'}_seed{args.seed}_{stamp}")
    return args


def requested_args(argv: list[str]) -> dict:
    """The arguments a run of ``argv`` records in its folder, which a rerun there is compared with."""
    args = parse_args(argv)
    args.device = str(resolve_device(args.device))
    check_inputs(args)
    return plain_args(args)


def check_inputs(args: argparse.Namespace) -> None:
    """Before any work: each given checkpoint is readable and was trained on the data the flags build
    (without ``--arch``, ``--checkpoint``'s architecture is adopted, so every method builds the same
    backbone); a given clusters file leaves PruSC's contrastive loss positives."""
    for flag in ("--checkpoint", "--cluster_checkpoint"):
        path = getattr(args, flag[2:])
        if path:
            ckpt = checked_checkpoint(path, Expect(data=args.data, arch=args.arch,
                                                   data_settings=data_settings(vars(args)), flag=flag))
            if flag == "--checkpoint" and args.arch is None:
                args.arch = ckpt["arch"]
            if flag == "--checkpoint" and args.mode != "all":
                adopt_widths(args, ckpt["arch_args"])
    if args.clusters and args.mode in ("prune", "all") and args.lambda_con_prune > 0:
        warn_single_cluster_classes(args.clusters)


def adopt_widths(args: argparse.Namespace, arch_args: dict) -> None:
    """A mode that builds no new model records the loaded model's width, not the flag's (``--mode all`` keeps
    the flag: JTT and IRM build new models with it)."""
    for flag, key in (("hidden_dim", "hidden_dim"), ("cnn_width", "width")):
        if key in arch_args and getattr(args, flag) != arch_args[key]:
            print(f"note: --{flag} is {arch_args[key]}, the width of --checkpoint's model", file=sys.stderr)
            setattr(args, flag, arch_args[key])


def run_inputs(args: argparse.Namespace) -> dict[str, str | None]:
    """The files and folders a run reads, by flag (:func:`utils.run_dir.open_run` fingerprints them)."""
    return {f"--{name}": getattr(args, name, None) for name in INPUT_FLAGS + method_input_flags()}


def run(argv: list[str] | None = None, prog: str = "run.py") -> None:
    """Parse, join the ``torchrun`` process group when launched by it, run the mode, leave the group.

    A caller that already holds a process group (a test driver, a notebook under ``torchrun``) keeps it:
    destroying it here would make the caller start a second default group in the same job, whose
    ranks can read the first one's stale addresses from torchrun's store and time out connecting.
    """
    args = parse_args(argv, prog)
    joined_here = not is_distributed()
    args.device = str(init_from_env(resolve_device(args.device)))
    try:
        args.out_dir = run_on_main(lambda: args.out_dir)  # the time-stamped default differs between ranks
        check_inputs(args)
        main_print(runtime_from_args(args).describe(), flush=True)
        kind = cluster_fit.run_kind(args.clusters) if args.mode == "cluster" else RESULTS_RUN
        inputs = run_inputs(args)
        with fail_together("while opening --out_dir"):  # rank 0 holds the folder's lock and writes
            folder = (open_run(args.out_dir, plain_args(args), args.overwrite, kind, inputs, tool="run.py")
                      if is_main() else contextlib.nullcontext())
        with quiet_unless_main(), folder:
            MODES[args.mode](args)
    finally:
        if joined_here:
            shutdown()


def main(argv: list[str] | None = None, prog: str = "run.py") -> int:
    return exit_code(prog, lambda: run(argv, prog))


if __name__ == "__main__":
    sys.exit(main())
