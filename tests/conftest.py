"""Shared test helpers: run a CLI in-process and read its results.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import run


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
