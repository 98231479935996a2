"""The run lifecycle: one writer per folder, recorded arguments, --overwrite without mixing, orphan
clean-up, Ctrl-C and a full disk on one line, and inputs checked before any training."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import run
from cluster.io import load_clusters
from conftest import read_results
from data import build_splits
from data.digits import make_colored_digits
from data.images import check_images_open, to_rgb
from fixtures import write_custom_csv
from invariant_learning import environments as envs_cli
from invariant_learning import irm
from scripts import multi_seed
from training.loops import LossWatch, check_contrastive, cross_entropy_limit, load_step
from utils.fingerprint import fingerprint
from utils import run_dir
from utils.checkpoint import plain_args
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ERM = ("--mode", "erm", "--data", "digits", "--device", "cpu", "--epochs", "1")
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from utils.run_dir import open_run
with open_run({folder!r}, {{}}, overwrite=False):
    print("locked", flush=True)
    time.sleep(60)
"""


def cli(*argv, wait=True):
    """run.py in a subprocess (the shell's view: exit code, stderr)."""
    cmd = [sys.executable, str(ROOT / "run.py"), *map(str, argv)]
    if not wait:  # Ctrl-C reaches the child even when the tests run in the background (SIGINT ignored there)
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def holder(folder: Path) -> subprocess.Popen:
    """A process that holds ``folder``'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), folder=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def erm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("erm") / "run"
    assert run.main([*ERM, "--out_dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_second_run_on_a_locked_folder_exits_2_naming_the_holder(run_cli, tmp_path):
    proc = holder(tmp_path / "out")
    try:
        rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    finally:
        proc.kill()
        proc.wait()
    assert rc == 2 and one_line(err), err
    assert "is in use by another run" in err and f"pid {proc.pid}" in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_two_concurrent_runs_only_one_writes(run_cli, tmp_path):
    first = cli(*ERM[:-1], "200", "--out_dir", tmp_path / "out", wait=False)
    try:
        while not (tmp_path / "out" / "run_args.json").exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    finally:
        first.kill()
        first.wait()
    assert rc == 2 and "is in use by another run" in err


@pytest.mark.slow
def test_a_killed_run_leaves_no_stuck_lock(run_cli, tmp_path):
    proc = holder(tmp_path / "out")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 0, err
    assert not (tmp_path / ".out.lock").exists()


def unfinished_run(folder: Path, *argv: str) -> run_dir.RunDir:
    """What a run killed after opening ``folder`` leaves: the folder with its recorded arguments and inputs."""
    args = run.parse_args([*map(str, argv), "--out_dir", str(folder)])
    run.check_inputs(args)
    opened = run_dir.open_run(folder, plain_args(args), overwrite=False, inputs=run.run_inputs(args))
    opened.close()
    return opened


def finished_run(folder: Path, *argv: str) -> Path:
    """A folder as a finished run leaves it (its files' contents do not matter to the lifecycle)."""
    unfinished_run(folder, *argv)
    (folder / "results.json").write_text("{}")
    (folder / "erm.pt").write_bytes(b"weights")
    return folder


def test_rerun_with_other_arguments_is_refused_naming_them(run_cli, tmp_path):
    unfinished_run(tmp_path / "out", *ERM)
    (tmp_path / "out" / "erm_epoch1.pt").write_bytes(b"")
    rc, _, err = run_cli(*ERM[:-1], "2", "--lr", "0.01", "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err)
    assert "--epochs 2 (recorded 1)" in err and "--lr 0.01 (recorded 0.001)" in err and "--seed" not in err


def test_a_start_that_wrote_nothing_does_not_block_other_arguments(run_cli, tmp_path):
    unfinished_run(tmp_path / "out", *ERM, "--epochs", "5")
    assert run_cli(*ERM, "--out_dir", tmp_path / "out")[0] == 0


def test_rerun_with_the_same_arguments_runs_in_place(run_cli, tmp_path):
    unfinished_run(tmp_path / "out", *ERM)
    assert run_cli(*ERM, "--num_workers", "0", "--out_dir", tmp_path / "out")[0] == 0


def test_orphan_temporary_files_are_removed(run_cli, tmp_path):
    unfinished_run(tmp_path / "out", *ERM)
    orphan = tmp_path / "out" / ".erm.pt.k2j3h4.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert run_cli(*ERM, "--out_dir", tmp_path / "out")[0] == 0
    assert not orphan.exists()


@pytest.mark.slow
def test_interrupted_overwrite_leaves_one_run(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*ERM, "--out_dir", out)[0] == 0
    old = (out / "results.json").read_text()
    proc = cli(*ERM[:-1], "300", "--overwrite", "--out_dir", out, wait=False)
    backup = tmp_path / ".out.replaced"
    while not (backup.exists() and (out / "run_args.json").exists()):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the folder holds the new, unfinished run only; the old one is whole, aside
    assert not (out / "results.json").exists() and (backup / "results.json").read_text() == old
    # another command puts the old run back (and, it being finished, refuses to touch it)
    rc, _, err = run_cli(*ERM, "--seed", "1", "--out_dir", out)
    assert rc == 2 and "already holds results.json" in err
    assert (out / "results.json").read_text() == old and not backup.exists()
    # a completed --overwrite replaces it whole
    assert run_cli(*ERM, "--seed", "1", "--overwrite", "--out_dir", out)[0] == 0
    assert read_results(out)["seed"] == 1 and not backup.exists()
    assert json.loads((out / "run_args.json").read_text())["args"]["seed"] == 1


def test_the_same_command_continues_an_interrupted_overwrite(run_cli, tmp_path):
    out, backup = tmp_path / "out", tmp_path / ".out.replaced"
    unfinished_run(out, *ERM, "--seed", "3")
    backup.mkdir()
    (backup / "results.json").write_text("{}")
    assert run_cli(*ERM, "--seed", "3", "--out_dir", out)[0] == 0
    assert read_results(out)["seed"] == 3 and not backup.exists()


def test_overwrite_refuses_to_delete_its_own_input(run_cli, erm_dir):
    rc, _, err = run_cli("--mode", "evaluate", "--checkpoint", erm_dir / "erm.pt", "--out_dir", erm_dir, "--overwrite")
    assert rc == 2 and one_line(err) and "lies inside --out_dir" in err
    assert (erm_dir / "erm.pt").exists()


def test_overwrite_refuses_to_delete_a_methods_input(run_cli, erm_dir):
    envs = erm_dir / "envs"  # IRM's environment folders, an input that a method (not run.py) declares
    for name in ("minority", "balanced"):
        (envs / name).mkdir(parents=True, exist_ok=True)
        (envs / name / "indices.csv").write_text("idx\n0\n")
    try:
        rc, _, err = run_cli("--methods", "irm", "--minority_env", envs / "minority", "--balance_env",
                             envs / "balanced", "--out_dir", erm_dir, "--overwrite")
        assert rc == 2 and one_line(err) and f"--minority_env {envs / 'minority'} lies inside --out_dir" in err
        assert (erm_dir / "erm.pt").exists() and (envs / "minority" / "indices.csv").exists()
    finally:
        shutil.rmtree(envs)


@pytest.mark.slow
def test_ctrl_c_prints_where_it_stopped_on_one_line(tmp_path):
    proc = cli(*ERM[:-1], "100000", "--out_dir", tmp_path / "out", wait=False)
    try:
        while not (tmp_path / "out" / "resume" / "erm.pt").exists():  # ERM has finished an epoch
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130 and one_line(err), err
    assert "interrupted during ERM epoch" in err and str(tmp_path / "out") in err and "rerun" in err
    assert not (tmp_path / ".out.lock").exists()


def test_full_disk_is_one_line(run_cli, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "erm.pt")

    monkeypatch.setattr(torch, "save", full)
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "no space left" in err


def test_cryptic_torch_save_failure_on_a_full_disk_is_one_line(run_cli, tmp_path, monkeypatch):
    real_usage = run_dir.shutil.disk_usage

    def cryptic(*_args, **_kwargs):
        monkeypatch.setattr("utils.results.shutil.disk_usage", lambda p: real_usage(p)._replace(free=0))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", cryptic)
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "no space left" in err


def test_too_little_free_space_is_refused_up_front(run_cli, tmp_path, monkeypatch):
    real_usage = run_dir.shutil.disk_usage
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=2**20))
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "1 MiB free" in err


def test_unwritable_out_dir_is_refused_up_front(run_cli, tmp_path, monkeypatch):
    def refuse(*_args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(run_dir, "atomic_write_text", refuse)
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "cannot be written (Permission denied)" in err


def corrupt(ckpt_path: Path, tmp: Path, change) -> Path:
    ckpt = torch.load(ckpt_path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp / "edited.pt")
    return tmp / "edited.pt"


def nan_weight(ckpt: dict) -> None:
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))


@pytest.mark.parametrize("make, extra, needle", [
    (lambda d, t: d, (), "is a folder (it holds erm.pt"),
    (lambda d, t: (t / "junk.pt").write_text("junk") and t / "junk.pt", (), "could not be read as a checkpoint"),
    (lambda d, t: corrupt(d / "erm.pt", t, lambda c: c.update(arch_args={"hidden_dim": 8})), (),
     "no valid arch_args.input_shape"),
    (lambda d, t: corrupt(d / "erm.pt", t, nan_weight), (), "holds NaN or infinite values"),
    (lambda d, t: d / "erm.pt", ("--data_seed", "1"), "trained with --data_seed 0, but this run has --data_seed 1"),
    (lambda d, t: d / "erm.pt", ("--image_size", "32"), "--image_size 224"),
])
def test_bad_checkpoints_are_one_line_before_any_work(run_cli, erm_dir, tmp_path, make, extra, needle):
    ckpt = make(erm_dir, tmp_path)
    rc, _, err = run_cli("--mode", "evaluate", "--device", "cpu", "--checkpoint", ckpt, *extra,
                         "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and needle in err, err
    assert "weights_only" not in err and "does not exist" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--temperature", "--mask_temperature"])
def test_zero_temperature_is_refused_at_parse_time(tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(["--mode", "prune", flag, "0", "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}: 0.0 is too small; it must be > 0" in err
    assert "learning rate" not in err


def test_a_mode_that_loads_its_model_records_the_checkpoints_width(run_cli, erm_dir, tmp_path):
    rc, _, err = run_cli("--mode", "evaluate", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt",
                         "--hidden_dim", "17", "--out_dir", tmp_path / "out")
    assert rc == 0 and "note: --hidden_dim is 256, the width of --checkpoint's model" in err
    assert json.loads((tmp_path / "out" / "run_args.json").read_text())["args"]["hidden_dim"] == 256
    assert read_results(tmp_path / "out")["args"]["hidden_dim"] == 256


@pytest.mark.parametrize("flag, value, words", [("--cluster_epoch", "soon", "auto or final"),
                                                ("--cluster_epoch", "0", "auto or final"),
                                                ("--num_clusters", "two", "auto")])
def test_a_flag_taking_a_number_or_a_word_names_the_words(tmp_path, capsys, flag, value, words):
    with pytest.raises(SystemExit) as exc:
        run.main(["--mode", "prune", flag, value, "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and one_line(err) and f"argument {flag}: " in err
    assert err.rstrip().endswith(f"; pass a number or {words} (see --help)"), err


@pytest.mark.parametrize("path", ["file", "file/below"])
def test_out_dir_at_or_under_a_file_is_one_line(run_cli, tmp_path, path):
    (tmp_path / "file").write_text("")
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / path)
    assert rc == 2 and one_line(err) and "is a file, not a folder" in err


def test_huge_cluster_ids_are_renumbered(tmp_path):
    train = make_colored_digits(0.95, 0.0, 0)["train"]
    pd.DataFrame({"index": range(len(train)), "label": train.y.numpy(),
                  "cluster_assign": train.a.numpy() * 3_000_000 + 7}).to_csv(tmp_path / "c.csv", index=False)
    assign = load_clusters(tmp_path / "c.csv", train)
    assert torch.equal(assign, train.a)


def test_clusters_without_positives_are_warned_about(run_cli, erm_dir, tmp_path):
    train = make_colored_digits(0.95, 0.0, 0)["train"]
    pd.DataFrame({"index": range(len(train)), "label": train.y.numpy(),
                  "cluster_assign": train.y.numpy()}).to_csv(tmp_path / "c.csv", index=False)
    rc, _, err = run_cli("--mode", "prune", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt", "--clusters",
                         tmp_path / "c.csv", "--pruning_ep", "1", "--retrain_ep", "0", "--out_dir", tmp_path / "out")
    assert rc == 0 and "class(es) [0, 1] lie in a single cluster" in err and "stays 0" in err


def test_batch_smaller_than_cells_is_one_line(run_cli, erm_dir, tmp_path):
    rc, _, err = run_cli("--mode", "prune", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt", "--num_clusters",
                         "4", "--per_class", "--batch_size", "4", "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "--batch_size 4 is smaller than the number of cells" in err


@pytest.fixture
def environments(tmp_path, erm_dir, run_cli):
    assert run_cli("--mode", "cluster", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt",
                   "--out_dir", tmp_path / "cl")[0] == 0
    from invariant_learning import environments as envs
    assert envs.main(["--clusters", str(tmp_path / "cl" / "clusters.csv"), "--output_dir", str(tmp_path / "env")]) == 0
    return tmp_path / "env"


@pytest.mark.parametrize("edit, needle", [
    (lambda t: pd.concat([t, t.iloc[:1]]), "more than once"),
    (lambda t: t.assign(index=t["index"] + 0.5), "column 'index'"),
])
def test_bad_environment_indices_are_refused(environments, capsys, edit, needle):
    path = environments / "minority" / "indices.csv"
    edit(pd.read_csv(path)).to_csv(path, index=False)
    capsys.readouterr()
    rc = irm.main(["--minority_env", str(environments / "minority"), "--balance_env",
                   str(environments / "balanced"), "--irm_steps", "1", "--n_restarts", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and needle in err, err


def test_16_bit_images_are_scaled_and_warned_about(tmp_path, capsys):
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        grey = np.asarray(to_rgb(image))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 32  # not clipped to white

    class Split:
        image_dir, filenames = tmp_path, ["deep.png"]

    check_images_open({"train": Split()}, tmp_path / "meta.csv")
    assert "16/32-bit grey scaled to 8 bits (mode I;16)" in capsys.readouterr().err


def test_unreadable_image_is_found_before_training(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")

    class Split:
        image_dir, filenames = tmp_path, ["bad.png"]

    with pytest.raises(UserError, match="bad.png \\(val split\\) cannot be opened.*--skip_image_check"):
        check_images_open({"val": Split()}, tmp_path / "meta.csv")


def test_resume_state_round_trip(tmp_path):
    with run_dir.open_run(tmp_path / "out", {"a": 1}, overwrite=False) as opened:
        state = run_dir.StepState(opened.path, "erm")
        assert state.load() is None
        state.save({"epoch": 3, "rng": torch.get_rng_state()})
        assert state.load()["epoch"] == 3
    assert not (tmp_path / "out" / run_dir.STATE_DIR).exists()  # a finished run keeps no resume state
    assert os.listdir(tmp_path) == ["out"]


def test_a_continued_run_counts_the_earlier_process_up_to_its_last_save(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(run_dir.time, "monotonic", lambda: clock[0])
    first = run_dir.open_run(tmp_path / "out", {"a": 1}, overwrite=False)  # a process that will be killed
    clock[0] = 130.0
    assert first.clock.mark("method erm") == 30.0
    clock[0] = 160.0
    run_dir.StepState(first.path, "erm").save({"epoch": 1})  # the clock is saved with the state: 60 s
    clock[0] = 190.0  # work after the last save is lost with the process, and not counted
    first.close()
    clock[0] = 1000.0
    with run_dir.open_run(tmp_path / "out", {"a": 1}, overwrite=False) as again:
        clock[0] = 1010.0
        assert again.clock.now() == 70.0 and again.clock.mark("method erm") == 30.0
        assert again.clock.mark("method prusc") == 70.0
    (tmp_path / "damaged.json").write_text("{damaged")
    assert run_dir.RunClock(tmp_path / "damaged.json").now() == 0.0  # times only: a damaged clock never stops a run


def test_a_background_save_writes_the_state_as_it_was_when_saved(tmp_path):
    weights = torch.arange(1_000_000, dtype=torch.float32)
    state = run_dir.StepState(tmp_path, "erm", background=True)
    state.save({"epoch": 1, "parts": {"model": {"w": weights}}})
    weights.zero_()  # training goes on changing the tensors in place while the thread writes
    assert torch.equal(state.load()["parts"]["model"]["w"], torch.arange(1_000_000, dtype=torch.float32))


# --- --overwrite replaces one run folder and nothing else (issue 19, items 1, 2, 6, 7, 8) -----------

def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(folder: Path) -> Path:
    """A folder of a user's own files, none of them a run of this toolkit."""
    (folder / "resume").mkdir(parents=True)
    (folder / "thesis.tex").write_text("chapter 1")
    (folder / "resume" / "cv.pdf").write_bytes(b"%PDF cv")
    (folder / ".notes.tmp").write_text("draft")
    (folder / "results.json").write_text('{"mine": true}')
    return folder


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_folder_that_is_not_a_run_is_never_touched(run_cli, tmp_path, overwrite):
    folder = user_folder(tmp_path / "docs")
    before = files_of(tmp_path)
    rc, _, err = run_cli(*ERM, *overwrite, "--out_dir", folder)
    assert rc == 2 and one_line(err) and "not a run of this toolkit" in err and "nothing was changed" in err, err
    assert files_of(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["docs"]


def test_a_clustering_run_in_a_folder_is_neither_joined_nor_deleted_by_another_run(run_cli, tmp_path):
    clusters = {"tool": "clustering.py", "args": {"data": "digits"}, "inputs": {}}
    finished_run(tmp_path / "erm", *ERM)
    (tmp_path / "clusters").mkdir()
    for name in ("clusters", "erm"):  # a clustering run alone, and one beside the ERM model it clustered
        (tmp_path / name / "cluster_args.json").write_text(json.dumps(clusters))
        (tmp_path / name / "clusters.csv").write_text("index,label,cluster_assign\n")
    before = files_of(tmp_path)
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "clusters")
    assert rc == 2 and one_line(err) and "holds a run of another tool (cluster_args.json)" in err, err
    rc, _, err = run_cli(*ERM, "--seed", "1", "--overwrite", "--out_dir", tmp_path / "erm")
    assert rc == 2 and one_line(err) and "also holds the run recorded in cluster_args.json" in err, err
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("cwd, out_dir", [("run", "."), ("run/sub", ".."), ("run/sub", "")])
def test_overwrite_refuses_the_current_folder_and_those_above_it(run_cli, tmp_path, monkeypatch, cwd, out_dir):
    finished_run(tmp_path / "run", *ERM)
    (tmp_path / "run" / "sub").mkdir()
    (tmp_path / "run" / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = files_of(tmp_path)
    monkeypatch.chdir(tmp_path / cwd)
    rc, _, err = run_cli(*ERM, "--seed", "1", "--overwrite", "--out_dir", out_dir)
    assert rc == 2 and one_line(err), err
    assert ("is empty" if out_dir == "" else "is the current folder or holds it") in err
    assert files_of(tmp_path) == before


def test_every_tool_refuses_an_empty_out_dir(run_cli, tmp_path, monkeypatch, capsys):
    from cluster import clustering
    monkeypatch.chdir(tmp_path)
    codes = {
        "run.py": run.main([*ERM, "--out_dir", ""]),
        "clustering.py": clustering.main(["--clusters", "c.csv", "--output_dir", ""]),
        "irm.py": irm.main(["--minority_env", "m", "--balance_env", "b", "--out_dir", ""]),
        "environments.py": envs_cli.main(["--clusters", "c.csv", "--output_dir", ""]),
        "multi_seed.py": multi_seed.main(["--out_dir", "", "--", *ERM]),
    }
    err = capsys.readouterr().err
    assert codes == dict.fromkeys(codes, 2) and err.count("is empty; pass a folder path") == len(codes), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("live", [False, True])
def test_overwrite_refuses_a_folder_holding_other_runs(run_cli, tmp_path, live):
    parent = finished_run(tmp_path / "parent", *ERM)
    child = run_dir.RunDir(parent / "child", {}, run_dir.RESULTS_RUN, False, "")
    if live:  # a running run: its lock is held (a flock taken here conflicts with any other open of the file)
        child.open((), 0)
    else:
        finished_run(parent / "child", *ERM)
    try:
        before = files_of(tmp_path)
        rc, _, err = run_cli(*ERM, "--seed", "1", "--overwrite", "--out_dir", parent)
        assert rc == 2 and one_line(err) and "nothing was changed" in err, err
        assert ("a live run holds" in err or "holds another run" in err) if live else "holds another run" in err
        assert files_of(tmp_path) == before
    finally:
        child.close()


@pytest.mark.parametrize("flag", ["--metadata", "--train_root_dir", "--val_root_dir"])
def test_overwrite_refuses_a_folder_holding_the_data(run_cli, tmp_path, flag):
    out = finished_run(tmp_path / "out", *ERM)
    write_custom_csv(out / "data")
    where = {"--metadata": out / "data" / "labels.csv"}.get(flag, out / "data")
    argv = ("--mode", "erm", "--data", "csv", "--metadata", tmp_path / "elsewhere.csv", "--image_col", "path",
            "--label_col", "target", flag, where, "--device", "cpu", "--epochs", "1", "--overwrite", "--out_dir", out)
    before = files_of(tmp_path)
    for _ in range(2):  # the same command again must not delete anything either
        rc, _, err = run_cli(*argv)
        assert rc == 2 and one_line(err) and f"{flag} {where} lies inside --out_dir" in err, err
        assert files_of(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_the_same_overwrite_command_continues_an_unfinished_run(run_cli, tmp_path):
    out = tmp_path / "out"
    unfinished_run(out, *ERM, "--overwrite")
    (out / "erm_epoch1.pt").write_bytes(b"a finished epoch")
    (out / "marker").write_text("kept while the run is continued")
    rc, _, err = run_cli(*ERM, "--overwrite", "--out_dir", out)
    assert rc == 0 and "holds the unfinished run of this same command; continuing it" in err, err
    assert (out / "marker").exists() and (out / "results.json").exists()
    rc, _, _ = run_cli(*ERM, "--overwrite", "--out_dir", out)  # a finished run is replaced whole
    assert rc == 0 and not (out / "marker").exists() and not (tmp_path / ".out.replaced").exists()


@pytest.mark.slow
def test_an_overwrite_job_killed_and_started_again_resumes(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*ERM, "--out_dir", out)[0] == 0
    argv = (*ERM[:-1], "300", "--overwrite", "--out_dir", out)
    proc = cli(*argv, wait=False)
    while not (out / "resume" / "erm.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *map(str, argv)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:  # stop it once it has said where it resumes (or after 40 lines that do not)
        while len(lines) < 40 and not any(line.startswith("resuming ERM after epoch") for line in lines[-1:]):
            lines.append(again.stdout.readline())
    finally:
        again.kill()
        again.wait()
    assert any(line.startswith("resuming ERM after epoch") for line in lines), lines


def test_a_symlink_shares_the_lock_of_its_folder_and_overwrite_follows_it(run_cli, tmp_path):
    real = tmp_path / ("r" * 250)  # lock and backup names beside it would pass 255 bytes unshortened
    first = run_dir.open_run(real, {}, overwrite=False)  # the first run, still running
    (tmp_path / "link").symlink_to(real)
    try:
        rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "link" / ".." / "link")
    finally:
        first.close()
    assert rc == 2 and one_line(err) and f"{real} is in use by another run (pid {os.getpid()}" in err, err
    finished_run(real, *ERM)
    rc, _, err = run_cli(*ERM, "--seed", "2", "--overwrite", "--out_dir", tmp_path / "link")
    assert rc == 0, err
    assert read_results(tmp_path / "link")["seed"] == 2 and (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["link", real.name]


def no_write_access(monkeypatch, *paths: Path) -> None:
    """``os.access`` says ``paths`` cannot be written (the tests run as root, who may write anywhere)."""
    real_access = os.access
    monkeypatch.setattr(run_dir.os, "access",
                        lambda p, mode: False if Path(p) in paths and mode & os.W_OK else real_access(p, mode))


def test_a_writable_folder_under_a_read_only_parent_works(tmp_path, monkeypatch):
    folder = tmp_path / "scratch"
    folder.mkdir()
    no_write_access(monkeypatch, tmp_path)
    with run_dir.open_run(folder, {"a": 1}, overwrite=False) as opened:
        assert opened.lock.path == folder / run_dir.INSIDE_LOCK
    assert os.listdir(tmp_path) == ["scratch"] and os.listdir(folder) == ["run_args.json"]
    with pytest.raises(UserError, match="is not writable; nothing was changed"):
        run_dir.open_run(folder, {"a": 2}, overwrite=True)


@pytest.mark.parametrize("read_only", ["out", "parent"])
def test_a_read_only_out_dir_is_one_line_and_leaves_nothing(run_cli, tmp_path, monkeypatch, read_only):
    parent = tmp_path / "mount"
    parent.mkdir()
    out = parent / "out"
    if read_only == "out":
        out.mkdir()
    no_write_access(monkeypatch, out if read_only == "out" else parent)
    rc, _, err = run_cli(*ERM, "--out_dir", out)
    assert rc == 2 and one_line(err) and "not writable" in err, err
    assert os.listdir(parent) == (["out"] if read_only == "out" else [])


def test_environments_output_dir_under_a_file_or_read_only_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert envs_cli.main(["--clusters", "c.csv", "--output_dir", str(tmp_path / "file" / "envs")]) == 2
    assert "lies under" in capsys.readouterr().err
    no_write_access(monkeypatch, tmp_path)
    assert envs_cli.main(["--clusters", "c.csv", "--output_dir", str(tmp_path / "envs")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and f"--output_dir {tmp_path / 'envs'} cannot be created: {tmp_path} is not writable" in err
    assert sorted(os.listdir(tmp_path)) == ["file"]


# --- resume states and inputs: never mixed (issue 19, items 3, 4) ----------------------------------

def state_of_run(folder: Path, *argv: str) -> Path:
    """A resume state saved inside a run of ``argv``; returns its path."""
    opened = unfinished_run(folder, *argv)
    run_dir._ACTIVE = opened
    try:
        run_dir.StepState(folder, "methods").save({"results": {}})
    finally:
        run_dir._ACTIVE = None
    return folder / "resume" / "methods.pt"


@pytest.mark.parametrize("other", [("--seed", "3"), ("--hidden_dim", "8"), ("--lr", "0.1")])
def test_a_resume_state_of_another_run_is_refused(run_cli, tmp_path, other):
    stray = state_of_run(tmp_path / "a", *ERM, *other)
    unfinished_run(tmp_path / "b", *ERM)
    (tmp_path / "b" / "resume").mkdir()
    stray.rename(tmp_path / "b" / "resume" / "methods.pt")
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "b")
    assert rc == 2 and one_line(err) and "was written by a run with other arguments" in err, err
    assert f"{other[0]} {dict(seed='0', hidden_dim='256', lr='0.001')[other[0][2:]]} (recorded {other[1]})" in err


def test_states_of_a_torchrun_job_are_refused_at_once_by_a_run_with_another_process_count(run_cli, tmp_path):
    out = tmp_path / "out"
    state = state_of_run(out, *ERM)
    for name in ("erm.pt", "methods.pt"):  # as a 2-process job leaves them: each records its process count
        content = torch.load(state, weights_only=True)
        torch.save({**content, "world_size": 2}, out / "resume" / name)
    before = files_of(tmp_path)
    rc, out_text, err = run_cli(*ERM, "--out_dir", out)
    assert rc == 2 and one_line(err) and "were written by 2 process(es), this run has 1; continue with 2" in err, err
    assert "ERM epoch" not in out_text and files_of(tmp_path) == before  # refused before any training


@pytest.mark.parametrize("record", [None, "{not json", '{"tool": "run.py"}'])
@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_states_without_a_readable_run_record_are_refused(run_cli, tmp_path, record, overwrite):
    out = tmp_path / "out"
    state_of_run(out, *ERM)
    (out / "run_args.json").unlink()
    if record is not None:
        (out / "run_args.json").write_text(record)
    before = files_of(tmp_path)
    rc, _, err = run_cli(*ERM, *overwrite, "--out_dir", out)
    assert rc == 2 and one_line(err) and "resume states (resume/*.pt) but no readable run_args.json" in err, err
    assert files_of(tmp_path) == before


def test_a_state_of_another_shape_is_one_line(tmp_path):
    state = run_dir.StepState(tmp_path, "erm")
    state.save({"epoch": 1, "finished": False, "parts": {"model": torch.nn.Linear(8, 2).state_dict()},
                "rng": {}})
    with pytest.raises(UserError, match="does not fit ERM \\(RuntimeError: .*size mismatch.*delete it"):
        load_step(state, {"model": torch.nn.Linear(4, 2)}, None, "ERM", 3)
    run_dir.StepState(tmp_path, "methods").save({"results": {}})
    with pytest.raises(UserError, match="methods.pt does not fit ERM \\(KeyError: 'parts'\\)"):
        load_step(run_dir.StepState(tmp_path, "methods"), {"model": torch.nn.Linear(4, 2)}, None, "ERM", 3)


def test_a_state_without_an_argument_record_is_refused(run_cli, tmp_path):
    unfinished_run(tmp_path / "out", *ERM)
    run_dir.StepState(tmp_path / "out", "erm").save({"epoch": 1})  # no open run: nothing recorded
    rc, _, err = run_cli(*ERM, "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "holds no record of the arguments that shaped it" in err, err


def test_changed_inputs_are_refused_naming_them(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,target\na.png,0\nb.png,1\n")
    inputs = {"--metadata": labels}
    run_dir.open_run(tmp_path / "out", {"a": 1}, False, inputs=inputs).close()
    (tmp_path / "out" / "erm_epoch1.pt").write_bytes(b"trained on the old labels")
    os.utime(labels, (1, 1))  # a copy with a new date is the same input
    run_dir.open_run(tmp_path / "out", {"a": 1}, False, inputs=inputs).close()
    labels.write_text("path,target\na.png,1\nb.png,1\n")  # one label edited, same size
    with pytest.raises(UserError, match="inputs changed since it started: --metadata .*labels.csv: file.*"
                                        "pass --overwrite or choose a new --out_dir"):
        run_dir.open_run(tmp_path / "out", {"a": 1}, False, inputs=inputs)
    with run_dir.open_run(tmp_path / "out", {"a": 1}, True, inputs=inputs):  # --overwrite starts afresh
        assert not (tmp_path / "out" / "erm_epoch1.pt").exists()


def test_a_replaced_checkpoint_is_refused_on_rerun(run_cli, erm_dir, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes((erm_dir / "erm.pt").read_bytes())
    argv = ("--mode", "evaluate", "--device", "cpu", "--checkpoint", ckpt, "--out_dir", tmp_path / "out")
    unfinished_run(tmp_path / "out", *argv[:-2])
    (tmp_path / "out" / "resume").mkdir()
    ckpt.write_bytes(corrupt(erm_dir / "erm.pt", tmp_path, lambda c: c["state_dict"].popitem()).read_bytes())
    rc, _, err = run_cli(*argv)
    assert rc == 2 and one_line(err) and f"inputs changed since it started: --checkpoint {ckpt}" in err, err


def test_a_folder_fingerprint_notices_an_edited_label_file(tmp_path):
    write_custom_csv(tmp_path / "data")
    before = fingerprint(tmp_path / "data")
    table = pd.read_csv(tmp_path / "data" / "labels.csv")
    table.loc[0, "target"] = (table.loc[0, "target"] + 1) % 3
    table.to_csv(tmp_path / "data" / "labels.csv", index=False)
    assert fingerprint(tmp_path / "data") != before and before.startswith("folder files=")


def test_a_folder_fingerprint_notices_a_replaced_image_of_the_same_size(tmp_path):
    samples = write_custom_csv(tmp_path / "data")
    image = tmp_path / "data" / samples[0].filename
    before = fingerprint(tmp_path / "data")
    stat = image.stat()
    image.write_bytes(bytes(reversed(image.read_bytes())))  # other pixels, same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert image.stat().st_size == stat.st_size and fingerprint(tmp_path / "data") != before


# --- divergence (issue 19, item 5) -------------------------------------------------------------------

def test_a_loss_diverged_from_the_first_epoch_is_stopped():
    watch = LossWatch(limit=cross_entropy_limit(2), flag="--lr")
    with pytest.raises(UserError, match="reached 3e\\+22 in ERM epoch 1, over 69.3 .*diverged; lower --lr$"):
        watch.check(torch.tensor(3e22 * 64), 64, "in ERM epoch 1")
    with pytest.raises(UserError, match="became inf .*lower --lr_main"):
        LossWatch(flag="--lr_main").check(torch.tensor(float("inf")), 64, "in retrain epoch 1")
    assert LossWatch(limit=cross_entropy_limit(10)).check(torch.tensor(2.3 * 64), 64, "") == pytest.approx(2.3)


def test_a_tiny_contrastive_temperature_is_stopped():
    check_contrastive(64, 0.2, "in pruning epoch 1", 14.0)  # the most a temperature of 0.2 allows: fine
    with pytest.raises(UserError, match="contrastive loss reached 8e\\+29 .*raise --temperature \\(now 1e-30\\)"):
        check_contrastive(64, 1e-30, "in pruning epoch 1", 8e29)


def test_an_exploding_learning_rate_exits_2_naming_it(run_cli, tmp_path):
    rc, _, err = run_cli(*ERM, "--lr", "1e6", "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "training diverged; lower --lr" in err, err


def test_a_pruning_that_empties_the_model_exits_2(run_cli, erm_dir, tmp_path):
    rc, _, err = run_cli("--mode", "prune", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt", "--pruning_ep", "1",
                         "--retrain_ep", "0", "--mask_temperature", "1e-30", "--out_dir", tmp_path / "out")
    assert rc == 2 and one_line(err) and "removed every weight (density 0)" in err, err
    assert "--mask_temperature" in err


def test_multi_seed_reports_ctrl_c_as_130(tmp_path, monkeypatch, capsys):
    from scripts import sweep

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_local", interrupted)
    assert multi_seed.main(["--seeds", "0", "--out_dir", str(tmp_path / "m"), "--", *ERM]) == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- mistakes in data and flags, each one line before any training (issue 19, items 9, 11) -----------

def csv_argv(folder: Path, *extra: str) -> list[str]:
    return ["--data", "csv", "--metadata", str(folder / "labels.csv"), "--image_col", "path", "--label_col", "target",
            "--attr_col", "bg", "--split_col", "fold", *extra, "--out_dir", "unused"]


@pytest.mark.parametrize("column, value, needle", [
    ("target", 7, "column 'target' holds ids [0, 1, 2, 7] but never 3, so the ids above it look like typos (line 5)"),
    ("bg", 5, "column 'bg' holds ids [0, 1, 5] but never 2, so the ids above it look like typos (line 5)"),
    ("target", None, "column 'target' holds an empty cell on line 5; expected class ids"),
])
def test_label_and_attribute_typos_are_named_by_line(tmp_path, column, value, needle):
    write_custom_csv(tmp_path)
    table = pd.read_csv(tmp_path / "labels.csv")
    table[column] = table[column].astype(object)
    table.loc[3, column] = value
    table.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(UserError) as exc:
        build_splits(run.parse_args(csv_argv(tmp_path)))
    assert needle in str(exc.value) and "np.float64" not in str(exc.value)


def test_a_header_only_metadata_file_is_named_as_such(tmp_path):
    (tmp_path / "labels.csv").write_text("path,target,bg,fold\n")
    with pytest.raises(UserError, match="has a header but no rows; check --metadata"):
        build_splits(run.parse_args(csv_argv(tmp_path)))


def test_an_explicit_default_data_flag_matches_a_checkpoint_trained_with_the_default(run_cli, erm_dir, tmp_path):
    argv = ("--mode", "evaluate", "--device", "cpu", "--checkpoint", erm_dir / "erm.pt")
    assert run_cli(*argv, "--spurious_ratio", "0.95", "--out_dir", tmp_path / "a")[0] == 0
    rc, _, err = run_cli(*argv, "--spurious_ratio", "0.9", "--out_dir", tmp_path / "b")
    assert rc == 2 and "was trained with --spurious_ratio 0.95, but this run has --spurious_ratio 0.9" in err, err


def test_a_plain_pickle_as_checkpoint_is_one_line_without_a_torch_warning(run_cli, tmp_path):
    import pickle
    (tmp_path / "model.pt").write_bytes(pickle.dumps(object, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc, _, err = run_cli("--mode", "evaluate", "--checkpoint", tmp_path / "model.pt", "--out_dir", tmp_path / "o")
    assert rc == 2 and one_line(err) and "could not be read as a checkpoint" in err, err
    assert not [w for w in seen if "pickle" in str(w.message)]


def test_resume_states_left_beside_a_finished_result_are_dropped(run_cli, tmp_path):
    out = finished_run(tmp_path / "out", *ERM)
    (out / "resume").mkdir()
    (out / "resume" / "erm.pt").write_bytes(b"a state the kill left behind")
    rc, _, err = run_cli(*ERM, "--out_dir", out)
    assert rc == 2 and "already holds results.json" in err and not (out / "resume").exists()


def test_a_damaged_image_with_a_good_header_is_found_before_training_without_a_cache(tmp_path):
    samples = write_custom_csv(tmp_path)
    damaged = tmp_path / samples[3].filename
    damaged.write_bytes(damaged.read_bytes()[:-40])  # the header still reads, the pixels do not
    with pytest.raises(UserError, match=f"image {damaged} \\(.* split\\) cannot be opened"):
        build_splits(run.parse_args(csv_argv(tmp_path, "--no_cache")))


def test_a_continued_run_whose_splits_changed_is_refused(tmp_path):
    opened = run_dir.open_run(tmp_path / "out", {"a": 1}, False)
    run_dir.record_splits({"train": 10, "val": 4, "test": 4})
    (opened.path / "erm_epoch1.pt").write_bytes(b"trained on 10 samples")
    opened.close()  # killed before it finished
    again = run_dir.open_run(tmp_path / "out", {"a": 1}, False)
    try:
        with pytest.raises(UserError, match="changed since it started \\(samples per split: train 10 -> 9\\)"):
            run_dir.record_splits({"train": 9, "val": 4, "test": 4})
        run_dir.record_splits({"train": 10, "val": 4, "test": 4})
    finally:
        again.close()


def test_clustering_into_an_unfinished_erm_folder_leaves_its_states_alone(tmp_path):
    from cluster.fit import RUN_KIND
    state = state_of_run(tmp_path / "erm", *ERM)
    run_dir.open_run(tmp_path / "erm", {"mode": "cluster"}, False, kind=RUN_KIND).close()
    assert state.exists() and (tmp_path / "erm" / "cluster_args.json").exists()


def test_the_results_writer_does_not_import_the_run_folder_owner():
    import ast
    tree = ast.parse((ROOT / "utils" / "results.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "utils.run_dir" not in imported and not hasattr(__import__("utils.results").results, "prepare_out_dir")
