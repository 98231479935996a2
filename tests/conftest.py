"""Shared test helpers: run a CLI in-process, read its results.json, and one tiny reference model
shared by the whole test run."""
from __future__ import annotations

import json
import os
from pathlib import Path

# One thread per process, for this process and every process a test starts (CLI runs, torchrun, sweep
# jobs), unless the caller chose a number: the test models are tiny, and on a shared machine a second
# thread that is not running stalls every parallel region (a --mode all run took 70 s instead of 3).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import run  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True, scope="session")
def image_cache_in_tmp(tmp_path_factory):
    """The photo data sets' image cache goes to a temporary folder, not the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def digits_erm(tmp_path_factory) -> Path:
    """The run's one reference model, trained once instead of once per test module: an MLP after 3 ERM
    epochs on Colored Digits (seed 0, data seed 0), with its epoch-1 snapshot ``erm_epoch1.pt``, which
    has learnt the colour but not yet the digits. Tests read this folder and never write into it."""
    out = tmp_path_factory.mktemp("digits_erm")
    argv = ["--mode", "erm", "--data", "digits", "--device", "cpu", "--epochs", "3", "--out_dir", str(out)]
    assert run.main(argv) == 0
    assert (out / "erm_epoch1.pt").exists()
    return out


@pytest.fixture
def run_cli(capsys):
    """Call ``run.main(argv)``; return (exit code, stdout, stderr)."""

    def call(*argv: str) -> tuple[int, str, str]:
        rc = run.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return call


def read_results(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
