"""Run one command over several seeds and report mean ± std of every method (any mode, IRM included).

    python3 scripts/multi_seed.py --seeds 0 1 2 3 4 --out_dir runs/digits_5seeds -- --data digits
    python3 scripts/multi_seed.py --tool irm --seeds 0 1 2 --out_dir runs/irm -- --minority_env E/minority --balance_env E/balanced

Everything after ``--`` is passed on unchanged. ``--tool run`` (default) runs ``run.py --mode all``
(or the ``--mode`` given after ``--``) with ``--seed s --data_seed s`` (model initialisation, batch
order *and* the data split/colouring vary); ``--tool irm`` runs ``invariant_learning/irm.py`` with
``--seed s``. Each seed goes to ``<out_dir>/seed<s>``. A seed folder that holds a finished run is
reused only when the arguments recorded there equal the requested ones; otherwise the command is
refused, naming the differing flags, unless ``--overwrite`` asks to rerun those seeds. An
unfinished seed folder is continued (the tools resume it). The summary (mean ± sample std over
seeds) is printed as Markdown and saved as ``<out_dir>/summary.json``, with the per-group picture
``<out_dir>/report.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from invariant_learning import irm  # noqa: E402
from utils.cli import exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.report import collect, markdown_table, write_report  # noqa: E402
from utils.results import RESULTS_NAME, atomic_write_text  # noqa: E402
from utils.run_dir import ARGS_NAME, INTERRUPTED_EXIT, check_folder_path, differing_args, read_args  # noqa: E402


class Tool(NamedTuple):
    """A command-line tool that multi_seed can drive: its entry point, the arguments it would record
    for an argv, and the flags that set a seed."""

    main: Callable[[list[str]], int]
    requested: Callable[[list[str]], dict[str, Any]]
    seed_flags: Callable[[int], list[str]]


TOOLS = {
    "run": Tool(run.main, run.requested_args, lambda s: ["--seed", str(s), "--data_seed", str(s)]),
    "irm": Tool(irm.main, irm.requested_args, lambda s: ["--seed", str(s)]),
}


def reuse_or_run(tool: Tool, argv: list[str], seed_dir: Path, overwrite: bool) -> None:
    """Make sure ``seed_dir`` holds the finished run of ``argv``: reuse it when its recorded arguments
    are the requested ones, else rerun it (``overwrite``) or refuse, naming the differing flags."""
    if (seed_dir / RESULTS_NAME).exists():
        recorded = read_args(seed_dir / ARGS_NAME)
        differ = ["(no readable run_args.json)"] if recorded is None else differing_args(recorded, tool.requested(argv))
        if not differ:
            print(f"{seed_dir}: reusing its finished run (same arguments)")
            return
        if not overwrite:
            raise UserError(f"{seed_dir} holds a finished run with other arguments: {'; '.join(differ[:6])}; "
                            "choose another --out_dir, or pass --overwrite to rerun those seeds")
        print(f"{seed_dir}: rerunning, its finished run had other arguments: {'; '.join(differ[:6])}")
        argv = [*argv, "--overwrite"]
    code = tool.main(argv)
    if code == INTERRUPTED_EXIT:  # Ctrl-C: its own line is printed; multi_seed stops the same way
        raise KeyboardInterrupt
    if code != 0:
        raise UserError(f"the run in {seed_dir} failed (its message is above)")


def multi_seed(argv: list[str]) -> None:
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--tool", choices=sorted(TOOLS), default="run", help="run.py or invariant_learning/irm.py")
    parser.add_argument("--overwrite", action="store_true",
                        help="rerun the seeds whose finished runs had other arguments (else they are refused)")
    opts = parser.parse_args(own)
    check_folder_path(opts.out_dir)
    tool = TOOLS[opts.tool]
    if opts.tool == "run" and "--mode" not in passthrough:
        passthrough = ["--mode", "all", *passthrough]
    results = []
    for seed in opts.seeds:
        seed_dir = Path(opts.out_dir) / f"seed{seed}"
        reuse_or_run(tool, [*passthrough, *tool.seed_flags(seed), "--out_dir", str(seed_dir)], seed_dir,
                     opts.overwrite)
        results.append(json.loads((seed_dir / RESULTS_NAME).read_text()))
    table = collect(results)
    summary = {"tool": opts.tool, "seeds": opts.seeds, "run_args": passthrough, "std": "sample (n - 1)",
               "test_percent": table}
    atomic_write_text(Path(opts.out_dir) / "summary.json", json.dumps(summary, indent=2))
    print(markdown_table(results))
    print(f"picture: {write_report(Path(opts.out_dir) / 'report.png', results)}")


def main(argv: list[str] | None = None) -> int:
    return exit_code("multi_seed.py", lambda: multi_seed(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
