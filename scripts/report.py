"""Compare methods across finished runs: a Markdown table (mean ± std) and a picture of per-group accuracy.

    python3 scripts/report.py runs/digits_5seeds                  # a multi_seed.py folder (seed*/results.json)
    python3 scripts/report.py runs/a/results.json runs/b --png comparison.png

Each argument is a results.json, a run folder holding one, or a folder of such run folders.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.report import markdown_table, write_report  # noqa: E402
from utils.results import RESULTS_NAME  # noqa: E402


def results_files(target: Path) -> list[Path]:
    """The results.json files a command-line argument stands for."""
    if target.is_file():
        return [target]
    if (target / RESULTS_NAME).is_file():
        return [target / RESULTS_NAME]
    found = sorted(target.glob(f"*/{RESULTS_NAME}")) if target.is_dir() else []
    if not found:
        raise UserError(f"{target} is neither a results.json, a run folder holding one, nor a folder of run folders")
    return found


def load(path: Path) -> dict:
    """One results.json, checked to have the per-method results this report needs."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as JSON ({exc})") from exc
    if not isinstance(payload, dict) or "methods" not in payload:
        raise UserError(f"{path} has no 'methods' entry; it was not written by run.py or irm.py of this toolkit")
    return payload


def run(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="report.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results.json files, run folders or folders of run folders")
    parser.add_argument("--png", default=None, help="picture path (default: report.png beside the first run)")
    args = parser.parse_args(argv)
    files = [f for target in args.runs for f in results_files(Path(target))]
    payloads = [load(f) for f in files]
    print(markdown_table(payloads))
    first = Path(args.runs[0])
    png = Path(args.png) if args.png else (first if first.is_dir() else first.parent) / "report.png"
    print(f"picture: {write_report(png, payloads)}")


def main(argv: list[str] | None = None) -> int:
    return exit_code("report.py", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
