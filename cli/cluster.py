"""Cluster the representation space of a trained model (the script form of ``run.py --mode cluster``).

    python3 cluster/clustering.py --data digits --checkpoint runs/erm/erm.pt --num_clusters 2 --output_dir runs/clusters

One parser, the same flags as run.py; the work is done by :mod:`cluster.fit`.
"""
from __future__ import annotations

import sys

import run


def main(argv: list[str] | None = None) -> int:
    """``cluster/clustering.py FLAGS`` runs ``run.py FLAGS --mode cluster``."""
    return run.main([*(sys.argv[1:] if argv is None else argv), "--mode", "cluster"], prog="clustering.py")
