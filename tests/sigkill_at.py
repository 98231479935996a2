"""Run a CLI and SIGKILL it at the N-th call of a function: a real kill -9 at a chosen point.

    python tests/sigkill_at.py torch.optim:Adam.step 25 run.py --mode erm ...

The process kills itself with SIGKILL (no handler, no clean-up runs), exactly as ``kill -9``
or a preempted job would, but at a step that does not depend on the machine's speed.
"""
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    target, count, script, *argv = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, counted)
    sys.argv = [str(ROOT / script), *argv]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
