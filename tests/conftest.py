"""Shared test helpers: run a CLI in-process and read its results.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import run


@pytest.fixture(autouse=True, scope="session")
def image_cache_in_tmp(tmp_path_factory):
    """The photo data sets' image cache goes to a temporary folder, not the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    yield
    patch.undo()


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
