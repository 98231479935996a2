"""scripts/sweep.py: the grid and its folders, the checks made before any job, the executors (local
and submitit's local executor give the same results), a failing job among good ones, and a killed
sweep that a rerun finishes without redoing finished jobs."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import sweep
from scripts.sweep_exec import Job, execute, make_executor, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--epochs", "1", "--hidden_dim", "8", "--device", "cpu"]
TINY_ALL = [*TINY, "--methods", "erm,retrain_only,prusc", "--retrain_ep", "1"]
GRID = ["--grid", "pruning_ep=1,2", "--seeds", "0"]
FOLDERS = [f"lambda_sparse={lam},pruning_ep={ep}/seed{s}" for lam in ("1e-8", "5e-8") for ep in (1, 2) for s in (0, 1)]


def test_a_grid_from_the_command_line_or_a_file_names_one_folder_per_point_and_seed(tmp_path):
    grid = sweep.parse_grid(["lambda_sparse=1e-8,5e-8", "--pruning_ep=1,2"])
    jobs = sweep.make_jobs("run", ["--mode", "all"], grid, [0, 1], tmp_path, threads=1, nproc=1)
    assert [j.name for j in jobs] == FOLDERS
    assert jobs[1].argv == ("--mode", "all", "--lambda_sparse", "1e-8", "--pruning_ep", "1", "--seed", "1",
                            "--data_seed", "1", "--out_dir", str(tmp_path / FOLDERS[1]))
    (tmp_path / "grid.toml").write_text("[grid]\nlambda_sparse = [1e-8, 5e-8]\namp = [true, false]\n")
    (tmp_path / "grid.json").write_text('{"lambda_sparse": [1e-08, 5e-08], "amp": [true, false]}')
    from_toml, from_json = (sweep.parse_grid([str(tmp_path / f"grid.{kind}")]) for kind in ("toml", "json"))
    assert from_toml == from_json == [("lambda_sparse", [1e-8, 5e-8]), ("amp", [True, False])]
    jobs = sweep.make_jobs("irm", [], from_toml, [3], tmp_path, threads=None, nproc=1)
    assert [j.name for j in jobs] == ["lambda_sparse=1e-08,amp=true/seed3", "lambda_sparse=1e-08,amp=false/seed3",
                                      "lambda_sparse=5e-08,amp=true/seed3", "lambda_sparse=5e-08,amp=false/seed3"]
    assert jobs[0].argv[:4] == ("--lambda_sparse", "1e-08", "--amp", "--seed") and "--amp" not in jobs[1].argv
    jobs = sweep.make_jobs("run", ["--checkpoint", "runs/cmp/seed{seed}/erm.pt"], [], [4], tmp_path, threads=1, nproc=1)
    assert jobs[0].argv[:2] == ("--checkpoint", "runs/cmp/seed4/erm.pt")
    odd = sweep.point_name((("metadata", "data/my set.csv"),))
    assert odd.startswith("metadata=data_my_set.csv-") and odd != sweep.point_name((("metadata", "data/my_set.csv"),))


@pytest.mark.parametrize("argv, message", [
    (["--grid", "lambda_sparce=1,2"], "--grid lambda_sparce: run.py has no flag --lambda_sparce"),
    (["--grid", "seed=1,2"], "--seed is set by the sweep for each job"),
    (["--grid", "epochs=1,2", "--", "--epochs", "3"], "--epochs is both in --grid and after --"),
    (["--", "--overwrite"], "--overwrite is set by the sweep"),
    (["--grid", "epochs"], "--grid epochs: write FLAG=VALUE1,VALUE2"),
    (["--grid", "epochs=1", "epochs=2"], "--grid epochs: given twice"),
    (["--grid", "epochs=1,one"], "job epochs=one/seed0: argument --epochs: 'one' is not an int; nothing was started"),
    (["--grid", "lr=0.1,-1"], "job lr=-1/seed0: argument --lr: -1.0 is too small; it must be >= 0; nothing was started"),
])
def test_mistakes_are_refused_before_any_job(tmp_path, capsys, argv, message):
    assert sweep.main(["--out_dir", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_a_run_folder_is_not_a_sweep_folder(tmp_path, capsys):
    (tmp_path / "run_args.json").write_text("{}")
    assert sweep.main(["--out_dir", str(tmp_path), "--", *TINY]) == 2
    assert "is a run folder; a sweep needs a folder of its own" in capsys.readouterr().err


def test_local_slots_share_the_gpus_or_the_cpus(monkeypatch):
    monkeypatch.setattr(sweep, "visible_gpus", lambda: ["0", "1", "2", "3"])
    assert sweep.local_slots(None, 2, 1) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert sweep.local_slots(None, None, 1) == [{"CUDA_VISIBLE_DEVICES": d} for d in "0123"]
    assert sweep.local_slots(3, 0, 1) == [{"CUDA_VISIBLE_DEVICES": ""}] * 3  # CPU jobs see no GPU
    monkeypatch.setattr(sweep, "visible_gpus", lambda: [])
    assert sweep.local_slots(2, None, 1) == [{}, {}]
    job = Job("p/seed0", "run", ("--seed", "0"), "f", "l", ".", threads=4, nproc=2)
    assert torchrun_command(job)[2:6] == ["torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                          str(ROOT / "run.py")]


def test_the_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch, capsys):
    opts = sweep.build_parser().parse_args(["--out_dir", str(tmp_path / "s"), "--executor", "slurm", "--partition",
                                            "gpu", "--time", "90", "--cpus_per_job", "8", "--nproc_per_node", "2",
                                            "--array_parallelism", "4", "--slurm", "account=lab", "qos=high"])
    parameters = sweep.submitit_parameters(opts, tmp_path / "s")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # restored after the test
    monkeypatch.setenv("PATH", "")  # no srun: one line
    assert sweep.main(["--out_dir", str(tmp_path / "s"), "--executor", "slurm", "--", *TINY]) == 2
    assert "Submit from a node of the cluster" in capsys.readouterr().err
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    executor = make_executor(tmp_path / "submitit", "slurm", parameters)
    script = executor._executor._make_submission_file_text("COMMAND", "0")  # submitit's sbatch text
    for line in ("--partition=gpu", "--time=90", "--cpus-per-task=8", "--gpus-per-node=2", "--account=lab",
                 "--qos=high", f"export PYTHONPATH={ROOT}:"):
        assert line in script
    assert executor._executor.parameters["array_parallelism"] == 4


def test_a_job_with_a_bad_flag_fails_with_its_one_line(tmp_path):
    job = Job("x", "run", ("--lr", "-1", "--out_dir", str(tmp_path / "x")), str(tmp_path / "x"),
              str(tmp_path / "x.log"), str(tmp_path))
    outcome = execute(job)
    assert outcome.status == "failed" and "argument --lr: -1.0 is too small" in outcome.error
    assert "=== exit 2:" in (tmp_path / "x.log").read_text()


def comparable(folder: Path, root: Path) -> dict:
    """A results.json without what differs between two identical runs in other folders: paths and times."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "time_s"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(root), "ROOT") if isinstance(value, str) else value
    return strip(json.loads((folder / "results.json").read_text()))


@pytest.mark.slow
def test_a_failing_job_is_listed_and_the_others_finish(tmp_path, capsys):
    argv = ["--out_dir", str(tmp_path), "--grid", "cluster_epoch=1,5", "--seeds", "0", "--workers", "2", "--",
            "--mode", "erm", *TINY]  # the parser takes 5; the run refuses it (after the last epoch)
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert f"failed: {tmp_path / 'cluster_epoch=5/seed0'}: run.py: error: --cluster_epoch 5 is after the last" in err
    assert "1 of 2 job(s) failed" in err
    assert (tmp_path / "cluster_epoch=1" / "seed0" / "results.json").exists()


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory) -> dict:
    """A local sweep of two points, killed (the sweep, its fork server and the running job) once the first job
    had finished, then run again to the end: its folder, what the rerun printed, and the finished results
    before the kill with their times. The submitit comparison reuses the finished folder."""
    root = tmp_path_factory.mktemp("killed_sweep")
    argv = ["--out_dir", str(root), *GRID, "--workers", "1", "--", *TINY_ALL]
    sweeper = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), *argv], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done = sorted(root.glob("*/seed*/results.json"))
    while not done and sweeper.poll() is None:
        time.sleep(0.1)
        done = sorted(root.glob("*/seed*/results.json"))
    os.killpg(sweeper.pid, signal.SIGKILL)
    sweeper.wait()
    assert sweeper.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    done = sorted(root.glob("*/seed*/results.json"))
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in done}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = sweep.main(argv)
    return {"root": root, "rc": rc, "out": printed.getvalue(), "before": before}


@pytest.mark.slow
def test_a_killed_sweep_reruns_only_the_missing_jobs(killed_sweep):
    root, before = killed_sweep["root"], killed_sweep["before"]
    assert killed_sweep["rc"] == 0
    assert killed_sweep["out"].count("reusing its finished run (same arguments)") == len(before)
    assert f"running {2 - len(before)} job(s)" in killed_sweep["out"]
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in before} == before
    assert len(list(root.glob("*/seed*/results.json"))) == 2
    assert {"report.md", "report.csv", "worst_group.png", "density.png"} <= {p.name for p in root.iterdir()}


@pytest.mark.slow
def test_local_and_submitit_local_executors_give_the_same_results(killed_sweep, tmp_path, capsys):
    """One job of the killed local sweep again through submitit's local executor (a submitit job is a
    process importing torch: one only)."""
    local, submitted = killed_sweep["root"], tmp_path / "submitit"
    assert sweep.main(["--out_dir", str(submitted), "--grid", "pruning_ep=2", "--seeds", "0", "--executor",
                       "submitit_local", "--cpus_per_job", "1", "--time", "20", "--", *TINY_ALL]) == 0
    assert "| prusc | 1 |" in capsys.readouterr().out  # the report over the one seed
    name = "pruning_ep=2/seed0"
    assert comparable(local / name, local) == comparable(submitted / name, submitted)


