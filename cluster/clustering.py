"""``python3 cluster/clustering.py``: the clustering command (run.py --mode cluster).

Kept at this path for the commands in the README; the program is :mod:`cli.cluster`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.cluster import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
