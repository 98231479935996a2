"""``python3 invariant_learning/irm.py``: the IRM command (IRM variants with restarts).

Kept at this path for the commands in the README; the program is :mod:`cli.irm`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.irm import main, requested_args  # noqa: E402,F401  (requested_args: scripts/multi_seed.py)

if __name__ == "__main__":
    sys.exit(main())
