"""Cluster the representation space of a trained model (the script form of ``run.py --mode cluster``).

    python3 cluster/clustering.py --data digits --checkpoint runs/erm/erm.pt --num_clusters 2 --output_dir runs/clusters

One parser, the same flags as run.py; the work is done by :mod:`cluster.fit`.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """``python3 cluster/clustering.py FLAGS`` runs ``python3 run.py FLAGS --mode cluster``."""
    return run.main([*(sys.argv[1:] if argv is None else argv), "--mode", "cluster"])


if __name__ == "__main__":
    sys.exit(main())
