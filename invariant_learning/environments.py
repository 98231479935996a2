"""``python3 invariant_learning/environments.py``: the IRM environments command.

Kept at this path for the commands in the README; the program is :mod:`cli.environments`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.environments import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
