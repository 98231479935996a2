"""The documentation: result tables equal what their summaries give, links resolve, the README stays a
front page, and the README commands marked runnable run as written."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import build_results  # noqa: E402  (docs/ is not a package: the build script is run by path)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_table_in_the_docs_equals_what_its_summary_produces():
    assert build_results.stale_tables() == [], "run python3 docs/build_results.py"


def test_a_table_that_drifts_from_its_summary_is_found(tmp_path):
    page = ROOT / "docs" / "results" / "scenes.md"
    text = page.read_text()
    assert "| **80.2 ± 3.7** |" in text
    edited = tmp_path / "scenes.md"
    edited.write_text(text.replace("| **80.2 ± 3.7** |", "| **80.3 ± 3.7** |"))
    assert build_results.stale_tables([edited]) == [f"{edited}: scenes_r18"]


def test_a_generated_page_edited_by_hand_is_found(tmp_path, monkeypatch):
    page = tmp_path / "pretrained.md"
    page.write_text("| prusc | 0 | 88.6 (1 seed) |\n")  # typed over what the summary gives
    monkeypatch.setattr(build_results, "whole_pages", lambda: {page: lambda: "| prusc | 0 | 88.5 (1 seed) |\n"})
    assert f"{page}: whole page" in build_results.stale_tables()


def test_rounding_halves_up_as_a_reader_does():
    assert build_results.fixed(60.15) == "60.2" and build_results.fixed(60.149) == "60.1"
    assert build_results.mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"


def test_the_readme_is_a_front_page_and_every_result_page_has_generated_tables():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in ("digits", "cmnist", "scenes"):
        assert "<!-- table:" in (ROOT / "docs" / "results" / f"{page}.md").read_text(), page
        assert f"docs/results/{page}.md" in readme


def slug(heading: str) -> str:
    """The anchor a code host gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.relative_to(ROOT)} links to missing anchor {target}"


def runnable_blocks(long: bool = True) -> list[str]:
    """The fenced bash blocks of the README marked ``<!-- runnable -->`` (quick: the slow test runs them) and,
    with ``long``, ``<!-- runnable: long -->`` (minutes of training: only their flags are checked)."""
    marker = r"<!-- runnable(?:: long)? -->" if long else r"<!-- runnable -->"
    return re.findall(marker + r"\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_runnable_readme_commands_name_existing_scripts_and_valid_run_py_flags():
    commands = [line for block in runnable_blocks() for line in block.strip().splitlines()]
    assert "python3 run.py" in commands and len(runnable_blocks(long=False)) >= 1
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "python3" and (ROOT / argv[1]).is_file(), command
        if argv[1] == "run.py":
            run.parse_args(argv[2:])  # an unknown flag or a bad value exits here


@pytest.mark.slow
def test_runnable_readme_commands_run_as_written(tmp_path):
    """Each marked block, line by line, in a folder that mirrors the repository (so runs/ is written there)."""
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name != "runs":
            (tmp_path / entry.name).symlink_to(entry)
    for block in runnable_blocks(long=False):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{block}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "quick" / "prune" / "results.json").exists()
    assert (tmp_path / "runs" / "quick" / "irm" / "results.json").exists()
