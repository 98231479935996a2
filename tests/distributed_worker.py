"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

    python3 -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py SCENARIO OUT_DIR

``cli_and_checks OUT_DIR RUN_FLAGS...`` first runs ``run.py RUN_FLAGS --out_dir OUT_DIR/cli`` (which joins
the process group itself, as under a plain ``torchrun run.py``) and reports on stderr every file each
rank opened for writing (or renamed) there; then, in the same process group, it records what the
sharded pieces produce in ``OUT_DIR/checks`` (rank 0 writes ``checks.pt``), which the test compares
with one process. The worker joins the group before ``run.py`` does, so ``run.py`` leaves it standing:
a second default group in one job can read the first one's stale addresses from torchrun's store. One job for both saves a torchrun start (three processes importing torch).
``fail_guarded`` / ``fail_unguarded`` make rank 1 fail, inside or outside a shared failure point; the
test checks that every rank stops with the message printed once.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster.features import extract_features  # noqa: E402
from distributed_data import BAD_INDEX, BadImageDataset, global_step_losses, masked_model, toy_data  # noqa: E402
from training.parallel import data_parallel  # noqa: E402
from training.samplers import training_loader  # noqa: E402
from utils import distributed as D  # noqa: E402
from utils.cli import exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402


def global_batches(loader, epochs: int) -> tuple[list[list[int]], list[int]]:
    """The global batches (all ranks' shares gathered in rank order) and this rank's share sizes."""
    batches, sizes = [], []
    for _ in range(epochs):
        for _x, _y, _a, idx in D.together(loader, "while drawing a test batch"):
            batches.append(D.all_gather_cat(idx).tolist())
            sizes.append(len(idx))
    return batches, sizes


def shared_failure(action) -> list[str]:
    """Every rank's message from a failure that ``action`` provokes on one rank."""
    try:
        action()
        mine = "no failure"
    except D.RankFailed as exc:
        mine = f"RankFailed rank={exc.rank}: {exc}"
    messages: list[str | None] = [None] * D.world_size()
    torch.distributed.all_gather_object(messages, mine)
    return messages  # type: ignore[return-value]


def fail_on_rank(r: int, what: str) -> None:
    if D.rank() == r:
        raise UserError(what)


def checks(out: Path) -> None:
    data, clusters = toy_data()
    cells = data.y * 2 + clusters
    torch.manual_seed(0)
    shuffled = global_batches(training_loader(data, 5, torch.Generator().manual_seed(3)), epochs=2)
    balanced = global_batches(training_loader(data, 8, torch.Generator().manual_seed(4), cells=cells), epochs=2)
    model, _ = masked_model()
    features = extract_features(model, data, torch.device("cpu"), batch_size=4, normalize=False)
    steps = global_step_losses(lambda m: data_parallel(m, torch.device("cpu")), D.rank(), D.world_size())
    D.main_print("printed by rank 0 only")
    written = D.run_on_main(lambda: (out / f"written_by_rank{D.rank()}.txt").write_text("x") and D.rank())
    loader_failure = shared_failure(lambda: list(D.together(
        _failing_items() if D.rank() == 1 else iter([1, 2, 3]), "while loading a training batch")))
    main_failure = shared_failure(lambda: D.run_on_main(fail_on_rank, 0, "disk full: free space in --out_dir",
                                                        where="while writing results"))
    block_failure = shared_failure(lambda: _in_block())
    result = {"shuffled": shuffled, "balanced": balanced, "features": features, "steps": steps,
              "written_result": written, "loader_failure": loader_failure, "main_failure": main_failure,
              "block_failure": block_failure, "world": D.world_size()}
    sizes = [None] * D.world_size()
    torch.distributed.all_gather_object(sizes, (shuffled[1], balanced[1]))
    result["share_sizes"] = sizes
    D.run_on_main(torch.save, result, out / "checks.pt")


def _failing_items():
    yield 1
    raise UserError("cannot read image broken.png: truncated file; remove it from --train_root_dir")


def _in_block() -> None:
    with D.fail_together("while opening the data set"):
        fail_on_rank(1, "missing metadata.csv on this machine; copy it to every node")


def fail_guarded(out: Path) -> None:
    """Rank 1's share holds an unreadable image; rank 0 is mid-way through its own share."""
    data = BadImageDataset()
    assert D.shard_bounds(len(data))[0] <= BAD_INDEX < D.shard_bounds(len(data))[1] or D.rank() == 0
    extract_features(masked_model()[0], data, torch.device("cpu"), batch_size=2)


def fail_unguarded(out: Path) -> None:
    """Rank 1 fails where no failure point is shared; rank 0 waits in a collective."""
    fail_on_rank(1, "unguarded failure on rank 1")
    D.barrier()


def cli(out: Path, flags: list[str]) -> int:
    """``run.main(flags)``, auditing this rank's writes under ``out``."""
    import run

    writes: list[str] = []
    root = str(out.resolve())

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and args[1] and set(str(args[1])) & set("wax+"):
            paths = [args[0]]
        elif event == "os.rename":
            paths = [str(args[1])]
        else:
            return
        writes.extend(str(Path(p).resolve()) for p in paths if str(Path(p).resolve()).startswith(root))

    sys.addaudithook(audit)
    rc = run.main([*flags, "--out_dir", str(out)])
    print(f"WRITES rank={os.environ.get('RANK')} {json.dumps(sorted(set(writes)))}", file=sys.stderr, flush=True)
    return rc


def main() -> int:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    D.init_from_env(torch.device("cpu"), timeout_s=600)  # a hang must show, not be rescued
    try:
        if scenario == "cli_and_checks":  # one process group for both: run.py keeps a group it did not join
            (out / "checks").mkdir(parents=True, exist_ok=True)
            if cli(out / "cli", sys.argv[3:]) != 0:
                return 1
            scenario, out = "checks", out / "checks"
        return exit_code("worker", lambda: {"checks": checks, "fail_guarded": fail_guarded,
                                            "fail_unguarded": fail_unguarded}[scenario](out))
    finally:
        D.shutdown()


if __name__ == "__main__":
    sys.exit(main())
