"""Write the two IRM training environments built from representation clusters (the construction is
documented in :mod:`invariant_learning.construction`).

    python3 invariant_learning/environments.py --data digits --clusters OUT/clusters.csv --output_dir ENVS
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data import add_data_args, build_splits, canonical_name
from invariant_learning.construction import (ROLES, WEAK_CONTRAST, add_construction_args, build_environments,
                                             check_output_folder, data_flags, describe, label_attr_agreement,
                                             summarize, write_environments)
from utils.cli import OneLineErrorParser, exit_code, seed_int
from utils.config_file import add_config_arg, parse_with_config
from utils.run_dir import check_folder_path, check_writable


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="environments.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clusters", help="clusters.csv of the training split (cluster/clustering.py; required)")
    parser.add_argument("--output_dir", help="folder that receives minority/ and balanced/ (required)")
    add_config_arg(parser)
    add_construction_args(parser)
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the random draws")
    parser.add_argument("--overwrite", action="store_true", help="replace environments already in --output_dir")
    add_data_args(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags over the values of ``--config`` (docs/cli.md)."""
    return parse_with_config(build_parser(), argv, required=("clusters", "output_dir"))[0]


def run(args: argparse.Namespace) -> None:
    """Build, write and describe the two environments."""
    args.data = canonical_name(args.data)
    check_writable(check_folder_path(args.output_dir, "--output_dir"), "--output_dir")  # before any work
    check_output_folder(args.output_dir)
    train = build_splits(args)["train"]
    tables = build_environments(train, args.clusters, args.balanced_fraction, args.minority_share, args.seed)
    source = {"data": args.data, "data_flags": data_flags(vars(args)), "n_train": len(train),
              "input_shape": list(train.input_shape), "clusters": str(Path(args.clusters).resolve()),
              "construction": {"balanced_fraction": args.balanced_fraction,
                               "minority_share": args.minority_share, "seed": args.seed}}
    summaries = {role: summarize(role, tables[role], train, source) for role in ROLES}
    paths = write_environments(args.output_dir, tables, summaries, args.overwrite)
    overall = label_attr_agreement(train.y, train.a)
    print(f"{args.data} training split: {len(train)} samples"
          + ("" if overall is None else f", label-attribute agreement {100 * overall:.1f}%"))
    for role in ROLES:
        print(f"{describe(summaries[role])} -> {paths[role]}")
    agreements = [summaries[role]["label_attr_agreement"] for role in ROLES]
    if None not in agreements and abs(agreements[0] - agreements[1]) < WEAK_CONTRAST:
        print(f"warning: the environments' label-attribute agreement differs by less than {100 * WEAK_CONTRAST:.0f} "
              "points, too little for IRM; try more clusters or an earlier reference checkpoint", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return exit_code("environments.py", lambda: run(parse_args(argv)))
