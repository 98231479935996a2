"""Data-parallel pieces under ``torchrun --nproc_per_node=2`` (gloo, CPU) against one process.

Four jobs are launched at once (tests/distributed_worker.py): ``cli_and_checks`` runs ``run.py --mode all``
(ERM, feature extraction and k-means, every method with its retraining, evaluation), compared with one
process, then records sampler shards, gathered features, one ERM and one mask-learning step and shared
failures; two others make rank 1 fail, inside and outside a shared failure point; ``mistake`` gives
``run.py`` a bad ``--out_dir``, a user's mistake found on every rank (its own job: a second process
group in one job can meet the first one's leftover addresses). Tolerances: the
distributed runs do the same float32 arithmetic on the same rows as one process except that DDP sums
two ranks' gradients (one extra rounding per element, relative error ~1e-7); 1e-6 is ten times that,
far below any real difference (e.g. using only one rank's share changes the contrastive loss by ~50%).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from cluster.features import extract_features
from distributed_data import STEP_BATCH, global_step_losses, masked_model, toy_data
from training.parallel import data_parallel
from training.samplers import ShardedBatches, training_loader
from utils.checkpoint import load_checkpoint
from utils.distributed import gather_in_order, shard_bounds

WORKER = Path(__file__).with_name("distributed_worker.py")
JOB_LIMIT_S = 480  # torchrun start-up is slow on a loaded 2-core machine (CI once took 5x the usual time)
TOL = 1e-6


MODE_ALL = ("--mode", "all", "--data", "digits", "--device", "cpu", "--arch", "mlp", "--batch_size", "50",
            "--epochs", "2", "--pruning_ep", "1", "--retrain_ep", "1", "--per_class", "--irm_steps", "20")


def launch(scenario: str, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    if scenario == "mistake":  # the user's file under which run.py is given its --out_dir
        (out / "a_file").write_text("mine\n")
        program = [str(WORKER.parent.parent / "run.py"), "--mode", "erm", "--data", "digits", "--device", "cpu",
                   "--epochs", "1", "--out_dir", str(out / "a_file" / "run")]
    else:
        program = [str(WORKER), scenario, str(out), *(MODE_ALL if scenario == "cli_and_checks" else ())]
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *program],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """{scenario: (exit code, combined output, seconds, out dir)} of the four torchrun jobs; ``cli`` and
    ``checks`` are the two parts of the job ``cli_and_checks``, with their own out dirs."""
    root = tmp_path_factory.mktemp("ddp")
    started = {s: (launch(s, root / s), time.monotonic()) for s in ("cli_and_checks", "fail_guarded", "fail_unguarded",
                                                                        "mistake")}
    done = {}
    for scenario, (proc, t0) in started.items():
        try:
            output, _ = proc.communicate(timeout=max(1.0, JOB_LIMIT_S - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0]
            pytest.fail(f"torchrun job {scenario} hung for {JOB_LIMIT_S} s:\n{output[-3000:]}")
        done[scenario] = (proc.returncode, output, time.monotonic() - t0, root / scenario)
    both = done.pop("cli_and_checks")
    return {**done, "cli": (*both[:3], both[3] / "cli"), "checks": (*both[:3], both[3] / "checks")}


@pytest.fixture(scope="module")
def checks(jobs):
    rc, output, _, out = jobs["checks"]
    assert rc == 0, output[-3000:]
    return torch.load(out / "checks.pt", weights_only=False)


def single_process_batches(seed_shuffle: int, seed_balanced: int) -> tuple[list, list]:
    """The batches one process draws, in the worker's order of random draws."""
    data, clusters = toy_data()
    torch.manual_seed(0)
    shuffled = training_loader(data, 5, torch.Generator().manual_seed(seed_shuffle))
    first = [b[3].tolist() for _ in range(2) for b in shuffled]
    balanced = training_loader(data, 8, torch.Generator().manual_seed(seed_balanced), cells=data.y * 2 + clusters)
    return first, [b[3].tolist() for _ in range(2) for b in balanced]


@pytest.mark.slow
def test_shards_of_two_ranks_reassemble_into_the_single_process_batches(checks):
    shuffled, balanced = single_process_batches(3, 4)
    assert checks["shuffled"][0] == shuffled
    assert checks["balanced"][0] == balanced
    (rank0_shuffled, rank0_balanced), (rank1_shuffled, rank1_balanced) = checks["share_sizes"]
    assert [a + b for a, b in zip(rank0_shuffled, rank1_shuffled)] == [len(b) for b in shuffled]
    assert min(rank1_shuffled) >= 1 and rank0_balanced == rank1_balanced == [4] * len(balanced)


def test_sharded_batches_split_each_global_batch_and_skip_a_tail_smaller_than_the_ranks():
    batches = BatchSampler(SequentialSampler(range(21)), 5, drop_last=False)  # last global batch: [20]
    shares = [list(ShardedBatches(batches, r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*shares)] == list(batches)[:-1]
    assert shares[0][0] == [0, 1, 2] and shares[1][0] == [3, 4]
    assert len(ShardedBatches(batches, 0, 2)) == 4 and len(ShardedBatches(batches, 0, 1)) == 5
    with pytest.raises(ValueError, match="outside a world"):
        ShardedBatches(batches, 2, 2)


def test_shard_bounds_cover_the_data_once():
    bounds = [shard_bounds(23, r, 3) for r in range(3)]
    assert bounds == [(0, 8), (8, 16), (16, 23)]
    assert shard_bounds(1, 1, 2) == (1, 1)  # an empty share when there are more ranks than samples


@pytest.mark.slow
def test_gathered_features_come_back_in_dataset_order(checks):
    data, _ = toy_data()
    expected = extract_features(masked_model()[0], data, torch.device("cpu"), batch_size=4, normalize=False)
    torch.testing.assert_close(checks["features"], expected, rtol=TOL, atol=TOL)


def test_gather_in_order_places_rows_by_index_and_refuses_gaps():
    rows = torch.tensor([[2.0], [0.0], [1.0]])
    assert gather_in_order(torch.tensor([2, 0, 1]), rows, 3).flatten().tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(RuntimeError, match="1 of 4 samples"):
        gather_in_order(torch.tensor([2, 0, 1]), rows, 4)


@pytest.mark.slow
def test_global_contrastive_loss_and_synchronised_gradients_equal_one_process(checks):
    one = global_step_losses(lambda m: data_parallel(m, torch.device("cpu")), 0, 1)
    two = checks["steps"]
    assert two["prune"]["con"] == pytest.approx(one["prune"]["con"], rel=TOL)
    assert abs(two["prune"]["local_con"] - one["prune"]["con"]) > 0.1  # one rank's share alone differs
    for got, want in zip(two["prune"]["grads"], one["prune"]["grads"]):  # mask logits, through DDP
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    assert two["erm"]["loss"] == pytest.approx(one["erm"]["loss"], rel=TOL)
    for name, want in one["erm"]["grads"].items():  # shares of 6 and 5 samples: global mean, not mean of means
        torch.testing.assert_close(two["erm"]["grads"][name], want, rtol=TOL, atol=TOL)
    assert len(STEP_BATCH) % 2 == 1


@pytest.mark.slow
def test_only_rank_0_writes_and_prints(jobs, checks):
    _, output, _, out = jobs["checks"]
    assert sorted(p.name for p in out.iterdir()) == ["checks.pt", "written_by_rank0.txt"]
    assert checks["written_result"] == 0  # rank 0's return value reached every rank
    assert output.count("printed by rank 0 only") == 1


@pytest.mark.slow
def test_a_failure_on_one_rank_raises_on_every_rank_with_its_message(checks):
    for key, rank, text in (("loader_failure", 1, "cannot read image broken.png"),
                            ("main_failure", 0, "disk full"),
                            ("block_failure", 1, "missing metadata.csv")):
        messages = checks[key]
        assert len(set(messages)) == 1, messages  # the same message on both ranks
        assert messages[0].startswith(f"RankFailed rank={rank}: {text}") and f"(rank {rank} of 2, " in messages[0]


@pytest.mark.slow
def test_a_bad_image_on_one_shard_stops_all_ranks_with_one_message(jobs):
    rc, output, seconds, _ = jobs["fail_guarded"]
    assert rc != 0
    assert output.count("cannot read image 17.png") == 1, output[-3000:]
    assert "(rank 1 of 2, while extracting features)" in output
    assert seconds < JOB_LIMIT_S


@pytest.mark.slow
def test_a_failure_outside_shared_points_still_ends_the_job(jobs):
    rc, output, seconds, _ = jobs["fail_unguarded"]
    assert rc != 0
    assert output.count("unguarded failure on rank 1") == 1, output[-3000:]
    assert seconds < JOB_LIMIT_S


@pytest.mark.slow
def test_a_user_mistake_under_torchrun_is_one_line_from_rank_0(jobs):
    _, output, _, out = jobs["mistake"]
    errors = [line for line in output.splitlines() if line.startswith("run.py: error")]
    assert len(errors) == 1 and "which is a file, not a folder" in errors[0], output[-3000:]
    assert sorted(os.listdir(out)) == ["a_file"] and (out / "a_file").read_text() == "mine\n"


def close_numbers(one, two, path: str = "") -> list[str]:
    """Where two results.json trees differ: numbers beyond ``TOL`` (relative), other values at all;
    run times, paths and the device name may differ."""
    if isinstance(one, dict):
        return [d for k in one for d in close_numbers(one[k], two.get(k), f"{path}/{k}")]
    if isinstance(one, list) and isinstance(two, list) and len(one) == len(two):
        return [d for i, (a, b) in enumerate(zip(one, two)) for d in close_numbers(a, b, f"{path}[{i}]")]
    if any(skip in path for skip in ("time_s", "out_dir", "checkpoint", "_file", "/clusters")):
        return []
    if isinstance(one, float) and isinstance(two, float):
        return [] if two == pytest.approx(one, rel=TOL, abs=TOL) else [f"{path}: {one} vs {two}"]
    return [] if one == two else [f"{path}: {one!r} vs {two!r}"]


@pytest.fixture(scope="module")
def one_process_mode_all(tmp_path_factory, jobs):
    out = tmp_path_factory.mktemp("one")
    import run
    assert run.main([*MODE_ALL, "--out_dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_torchrun_mode_all_gives_the_metrics_and_clusters_of_one_process(jobs, one_process_mode_all, capsys):
    rc, output, _, two = jobs["cli"]
    assert rc == 0, output[-3000:]
    one = one_process_mode_all
    assert (two / "clusters.csv").read_bytes() == (one / "clusters.csv").read_bytes()
    results_one, results_two = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert close_numbers(results_one, results_two) == []
    for name in ("erm.pt", "prusc.pt"):  # ERM weights; PruSC's learned mask and retrained weights
        a, b = load_checkpoint(one / name), load_checkpoint(two / name)
        for key, value in a["state_dict"].items():  # ~36 SGD steps of float32 re-association: 1e-5
            torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-5)
        for key, value in a.get("mask_logits", {}).items():  # Adam divides by sqrt(second moment): where a
            # gradient is ~0 its last-bit differences move the step more; the mask itself is the sign
            assert torch.equal(b["mask_logits"][key] >= 0, value >= 0)
            assert float((b["mask_logits"][key] - value).abs().mean()) < 1e-5
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert output.count("prusc_no_con ") == 1  # the comparison table is printed once


@pytest.mark.slow
def test_in_a_torchrun_run_only_rank_0_writes_files(jobs):
    _, output, _, _ = jobs["cli"]
    writes = {int(r): json.loads(w) for r, w in re.findall(r"WRITES rank=(\d) (\[[^\]]*\])", output)}
    assert writes[1] == []
    assert any(w.endswith("results.json") for w in writes[0])
