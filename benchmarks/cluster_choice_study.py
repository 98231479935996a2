"""Does the label-free clustering choice (--clusters_auto) find the attribute as well as hindsight would?

    python3 benchmarks/cluster_choice_study.py --regime digits --seeds 0 1 2 --out_root runs/choice_digits \\
        --summary docs/clustering_choice/digits.json -- --data digits
    python3 benchmarks/cluster_choice_study.py --table docs/clustering_choice/*.json   # the Markdown table

For each seed: ERM (``run.py --mode erm --clusters_auto``, which saves the candidate snapshots),
then every candidate of :mod:`cluster.choose` scored on that ERM run, with its within-class NMI and
purity against the attribute (group labels: analysis only). Four clusterings are compared:
(a) today's default (the ``--cluster_epoch auto`` snapshot, 2 per class), (b) 16 global clusters
on the final model, (c) the label-free choice (the default when it is not confident), (d) the
candidate with the best within-class NMI in hindsight (a ceiling that uses group labels). With
``--methods`` the listed methods also run (``run.py --mode all --checkpoint erm.pt
--cluster_checkpoint SNAPSHOT --clusters FILE``) on (a) and on (c), for their test worst-group
accuracy. Flags after ``--`` go to every run.py call (data set, architecture, epochs...).

    python3 benchmarks/cluster_choice_study.py --regime "..." --from_runs SWEEP_DEFAULT SWEEP_AUTO \
        --summary docs/clustering_choice/x.json

builds the same summary, with no new run, from two finished sweeps of ``run.py --mode all`` over the
same seeds (``scripts/sweep.py``, folders ``seed<N>``): one with the default clusters, one with
``--clusters_auto`` (whose ``results.json`` records every candidate with its attribute columns).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from cluster.choose import Candidate, choose_from_checkpoints, snapshot_files  # noqa: E402
from cluster.io import write_clusters  # noqa: E402
from data import build_splits  # noqa: E402
from models.factory import Expect, checked_checkpoint  # noqa: E402
from utils.runtime import resolve_device, runtime_from_args, seed_everything  # noqa: E402

COLUMNS = ("default", "global16_final", "label_free", "hindsight")


def run_quietly(argv: list, log: Path) -> None:
    """``run.py argv``, its printout appended to ``log``; stop on failure."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run.main([str(a) for a in argv])
    with log.open("a") as f:
        f.write(out.getvalue())
    if code != 0:
        sys.exit(f"run.py {' '.join(map(str, argv))} failed ({code}); see {log}")


def describe(record: dict) -> str:
    """A candidate of a results.json record, named by :meth:`cluster.choose.Candidate.describe`."""
    return Candidate(record["snapshot"], record["per_class"], record["k"]).describe()


def from_record(record: dict) -> dict:
    """``quality`` of a candidate from its results.json record (the attribute columns it kept)."""
    per_class = record["attribute_within_class_not_used"]
    return {"candidate": describe(record), "per_class": per_class,
            **{key: statistics.mean(q[key] for q in per_class.values()) for key in ("nmi", "purity", "baseline")}}


def study_seed(seed: int, flags: list[str], root: Path, methods: str | None, log: Path,
               erm_dir_pattern: str | None = None) -> dict:
    erm_dir = Path(erm_dir_pattern.format(seed=seed)) if erm_dir_pattern else root / f"erm_seed{seed}"
    if not (erm_dir / "results.json").is_file():
        run_quietly(["--mode", "erm", *flags, "--seed", seed, "--clusters_auto", "--out_dir", erm_dir], log)
    args = run.parse_args([*flags, "--seed", str(seed), "--checkpoint", str(erm_dir / "erm.pt")])
    seed_everything(seed)
    splits = build_splits(args)
    device = resolve_device(args.device)
    args.arch = args.arch or checked_checkpoint(erm_dir / "erm.pt", Expect())["arch"]
    made = choose_from_checkpoints(snapshot_files(str(erm_dir / "erm.pt")), splits,
                                   Expect(data=args.data, arch=args.arch), runtime_from_args(args, device),
                                   args.num_clusters, args.min_cell_size, args.seed)
    choice = made.choice
    by_key = {(s.candidate.snapshot, s.candidate.per_class, s.candidate.k): s for s in choice.scored}
    default_snapshot = f"erm_epoch{args.cluster_epoch}" if args.cluster_epoch < args.epochs else "erm"
    picked = {"default": by_key[(default_snapshot, True, 2)], "global16_final": by_key[("erm", False, 16)],
              "hindsight": max(choice.scored, key=lambda s: from_record(s.record())["nmi"])}
    picked["label_free"] = choice.chosen or picked["default"]
    erm = json.loads((erm_dir / "results.json").read_text())
    out = {"seed": seed, "confident": choice.chosen is not None, "p_value": choice.p_value,
           "erm_test_worst_group": erm["splits"]["test"]["worst_group_acc"],
           "erm_test_avg": erm["splits"]["test"]["avg_acc"],
           "choice": choice.record(), **{name: from_record(s.record()) for name, s in picked.items()}}
    if methods:
        out["methods"] = {}
        for name in ("default", "label_free"):
            scored = picked[name]
            same = name == "label_free" and scored is picked["default"]
            if same:
                out["methods"][name] = out["methods"]["default"]
                continue
            csv = write_clusters(root / f"clusters_{name}_seed{seed}.csv", splits["train"], scored.fit.assign)
            run_dir = root / f"methods_{name}_seed{seed}"
            if not (run_dir / "results.json").is_file():
                run_quietly(["--mode", "all", *flags, "--seed", seed, "--methods", methods,
                             "--checkpoint", erm_dir / "erm.pt", "--cluster_checkpoint",
                             made.files[scored.candidate.snapshot], "--clusters", csv, "--out_dir", run_dir], log)
            res = json.loads((run_dir / "results.json").read_text())["methods"]
            out["methods"][name] = {m: r["splits"]["test"]["worst_group_acc"] for m, r in res.items()}
    print(f"seed {seed}: " + ", ".join(f"{k} {out[k]['candidate']} NMI {out[k]['nmi']:.3f}" for k in COLUMNS)
          + f"; confident {out['confident']} (p {out['p_value']:.3f})"
          + (f"; methods {out['methods']}" if methods else ""), flush=True)
    return out


def seed_from_runs(default_run: Path, auto_run: Path) -> dict:
    """One seed's summary from a finished default-clusters run and a finished ``--clusters_auto`` run of
    the same ERM: the grid and its attribute columns come from the latter's ``clusters_choice``."""
    default, auto = (json.loads((run_dir / "results.json").read_text()) for run_dir in (default_run, auto_run))
    choice = auto["clusters_choice"]
    grid = {describe(c): from_record(c) for c in choice["candidates"]}
    label_free = choice["default"] if choice["chosen"] is None else describe(choice["chosen"])
    erm = default["methods"]["erm"]["splits"]["test"]
    methods = [m for m in auto["methods"] if m != "erm" and m in default["methods"]]
    return {"seed": auto["seed"], "confident": choice["confident"], "p_value": choice["p_value"],
            "erm_test_worst_group": erm["worst_group_acc"], "erm_test_avg": erm["avg_acc"], "choice": choice,
            "default": grid[choice["default"]], "global16_final": grid["erm, global, k=16"],
            "label_free": grid[label_free], "hindsight": max(grid.values(), key=lambda q: q["nmi"]),
            "methods": {name: {m: run["methods"][m]["splits"]["test"]["worst_group_acc"] for m in methods}
                        for name, run in (("default", default), ("label_free", auto))}}


def mean_std(values: list[float], scale: float = 1.0) -> str:
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.3f}" if scale == 1 else f"{values[0]:.1f}"
    fmt = ".3f" if scale == 1 else ".1f"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def table(paths: list[str]) -> str:
    """The Markdown tables of the docs from the regimes' JSON summaries."""
    lines = ["| regime | seeds | clustering | within-class NMI vs attribute | within-class purity (baseline) "
             "| chosen (per seed) |", "|---|---|---|---|---|---|"]
    wg = ["| regime | seeds | method | worst-group test acc %, default clusters (a) "
          "| with the label-free choice (c) | ERM |", "|---|---|---|---|---|---|"]
    for path in paths:
        summary = json.loads(Path(path).read_text())
        seeds = summary["seeds"]
        for col, label in zip(COLUMNS, ("(a) default", "(b) 16 global, final", "(c) label-free", "(d) hindsight")):
            note = " (no confident choice: default)"
            chosen = "; ".join(s[col]["candidate"] + ("" if col != "label_free" or s["confident"] else note)
                               for s in seeds)
            lines.append(f"| {summary['regime']} | {len(seeds)} | {label} | {mean_std([s[col]['nmi'] for s in seeds])} "
                         f"| {mean_std([s[col]['purity'] for s in seeds])} "
                         f"({mean_std([s[col]['baseline'] for s in seeds])}) | {chosen} |")
        if all("methods" in s for s in seeds):
            erm = mean_std([s["erm_test_worst_group"] for s in seeds], 100)
            for method in seeds[0]["methods"]["default"]:
                wg.append(f"| {summary['regime']} | {len(seeds)} | {method} "
                          f"| {mean_std([s['methods']['default'][method] for s in seeds], 100)} "
                          f"| {mean_std([s['methods']['label_free'][method] for s in seeds], 100)} | {erm} |")
    return "\n".join(lines) + "\n\n" + "\n".join(wg) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", help="name of the regime in the table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out_root", help="folder of the runs (reused: finished runs are not redone)")
    parser.add_argument("--summary", help="JSON summary to write")
    parser.add_argument("--methods", default=None, help="methods to run on (a) and (c), e.g. retrain_only,prusc")
    parser.add_argument("--erm_dir", default=None,
                        help="use the finished ERM run folders of another study, e.g. runs/erm_s{seed} "
                             "(their erm_epoch<E>.pt files are the candidate snapshots)")
    parser.add_argument("--table", nargs="+", help="print the Markdown tables of these JSON summaries and stop")
    parser.add_argument("--from_runs", nargs=2, metavar=("SWEEP_DEFAULT", "SWEEP_AUTO"),
                        help="no new run: summarise the seed<N> folders finished in both sweeps")
    args, flags = parser.parse_known_args()
    flags = [f for f in flags if f != "--"]
    if args.table:
        print(table(args.table))
        return
    if args.from_runs:
        sweeps = [Path(p) for p in args.from_runs]
        finished = sorted(int(d.name[4:]) for d in sweeps[1].glob("seed*")
                          if all((sweep / d.name / "results.json").is_file() for sweep in sweeps))
        seeds = [seed_from_runs(*(sweep / f"seed{s}" for sweep in sweeps)) for s in finished]
    else:
        root = Path(args.out_root)
        root.mkdir(parents=True, exist_ok=True)
        seeds = [study_seed(s, flags, root, args.methods, root / "runs.log", args.erm_dir) for s in args.seeds]
    summary = {"regime": args.regime, "flags": flags, "methods": args.methods,
               "command": " ".join(["python3 benchmarks/cluster_choice_study.py", *sys.argv[1:]]), "seeds": seeds}
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print(table([args.summary]))


if __name__ == "__main__":
    main()
