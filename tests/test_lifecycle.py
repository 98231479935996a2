"""The run lifecycle: one writer per folder, recorded arguments, --overwrite without mixing, orphan
clean-up, Ctrl-C and a full disk on one line, and inputs checked before any training."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import run
from cluster.io import load_clusters
from conftest import read_results
from data.digits import make_colored_digits
from data.images import check_images_open, to_rgb
from invariant_learning import irm
from utils import run_dir
from utils.checkpoint import plain_args
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ERM = ("--mode", "erm", "--data", "digits", "--device", "cpu", "--epochs", "1")
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from utils.run_dir import RunKind, open_run
with open_run({folder!r}, {{}}, overwrite=False, kind=RunKind(args_name="held.json")):
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
def test_second_run_on_a_locked_folder_exits_2_naming_the_holder(tmp_path):
    proc = holder(tmp_path / "out")
    try:
        second = cli(*ERM, "--out_dir", tmp_path / "out")
    finally:
        proc.kill()
        proc.wait()
    assert second.returncode == 2 and one_line(second.stderr), second.stderr
    assert "is in use by another run" in second.stderr and f"pid {proc.pid}" in second.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_two_concurrent_runs_only_one_writes(tmp_path):
    first = cli(*ERM[:-1], "200", "--out_dir", tmp_path / "out", wait=False)
    while not (tmp_path / "out" / "run_args.json").exists():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    second = cli(*ERM, "--out_dir", tmp_path / "out")
    first.kill()
    first.wait()
    assert second.returncode == 2 and "is in use by another run" in second.stderr


@pytest.mark.slow
def test_a_killed_run_leaves_no_stuck_lock(tmp_path):
    proc = holder(tmp_path / "out")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cli(*ERM, "--out_dir", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".out.lock").exists()


def unfinished_run(folder: Path, *argv: str) -> None:
    """What a run killed after opening ``folder`` leaves: the folder with its recorded arguments."""
    run_dir.open_run(folder, plain_args(run.parse_args([*argv, "--out_dir", str(folder)])), overwrite=False).close()


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
def test_interrupted_overwrite_leaves_one_run(tmp_path):
    out = tmp_path / "out"
    assert cli(*ERM, "--out_dir", out).returncode == 0
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
    again = cli(*ERM, "--seed", "1", "--out_dir", out)
    assert again.returncode == 2 and "already holds results.json" in again.stderr
    assert (out / "results.json").read_text() == old and not backup.exists()
    # a completed --overwrite replaces it whole
    assert cli(*ERM, "--seed", "1", "--overwrite", "--out_dir", out).returncode == 0
    assert read_results(out)["seed"] == 1 and not backup.exists()
    assert json.loads((out / "run_args.json").read_text())["args"]["seed"] == 1


@pytest.mark.slow
def test_the_same_command_continues_an_interrupted_overwrite(tmp_path):
    out, backup = tmp_path / "out", tmp_path / ".out.replaced"
    unfinished_run(out, *ERM, "--seed", "3")
    backup.mkdir()
    (backup / "results.json").write_text("{}")
    assert cli(*ERM, "--seed", "3", "--out_dir", out).returncode == 0
    assert read_results(out)["seed"] == 3 and not backup.exists()


@pytest.mark.slow
def test_overwrite_refuses_to_delete_its_own_input(erm_dir):
    done = cli("--mode", "evaluate", "--checkpoint", erm_dir / "erm.pt", "--out_dir", erm_dir, "--overwrite")
    assert done.returncode == 2 and one_line(done.stderr) and "lies inside --out_dir" in done.stderr
    assert (erm_dir / "erm.pt").exists()


@pytest.mark.slow
def test_ctrl_c_prints_where_it_stopped_on_one_line(tmp_path):
    proc = cli(*ERM[:-1], "100000", "--out_dir", tmp_path / "out", wait=False)
    try:
        while not (tmp_path / "out" / "run_args.json").exists():
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(1.0)
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
                   str(environments / "balanced"), "--steps", "1", "--n_restarts", "1"])
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


def test_a_background_save_writes_the_state_as_it_was_when_saved(tmp_path):
    weights = torch.arange(1_000_000, dtype=torch.float32)
    state = run_dir.StepState(tmp_path, "erm", background=True)
    state.save({"epoch": 1, "parts": {"model": {"w": weights}}})
    weights.zero_()  # training goes on changing the tensors in place while the thread writes
    assert torch.equal(state.load()["parts"]["model"]["w"], torch.arange(1_000_000, dtype=torch.float32))
