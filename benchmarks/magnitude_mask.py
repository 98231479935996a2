"""The ablation "a learned mask or just the largest weights?": the same per-layer densities as a learned
mask, keeping the weights of largest magnitude instead, written as a checkpoint ``run.py --mode retrain``
takes.

    python3 benchmarks/magnitude_mask.py RUN_DIR/prusc_pruned.pt OUT.pt
    python3 run.py --mode retrain --checkpoint OUT.pt ...   # the same retraining as the learned mask's

Prints, per masked layer and overall, the density and how far the two masks agree (intersection over
union of the kept weights). When the agreement is near 1, the learned mask is magnitude pruning and
whatever it earns after retraining is what retraining a magnitude-pruned network earns.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.run_dir import check_folder_path  # noqa: E402


def magnitude_logits(weight: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """Mask logits (+1 keep, -1 drop) keeping as many of ``weight``'s largest-magnitude entries as the learned
    logits keep (ties broken by position, as :func:`torch.topk` does)."""
    kept = int((learned >= 0).sum())
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    keep[torch.topk(weight.abs().flatten(), kept).indices] = True
    return torch.where(keep.view_as(weight), 1.0, -1.0).to(learned.dtype)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1 when both keep nothing)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def run(argv: list[str] | None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("masked", type=Path, help="a pruned checkpoint (<method>_pruned.pt) holding mask logits")
    parser.add_argument("out", type=Path, help="where to write the magnitude-masked checkpoint")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise UserError(f"{args.out} exists; choose a new file (a result is never overwritten)")
    check_folder_path(args.out.parent, "OUT's folder")
    ckpt = load_checkpoint(args.masked, flag="MASKED")
    if not ckpt.get("mask_logits"):
        raise UserError(f"{args.masked} holds no mask logits; pass a <method>_pruned.pt of a masked method")
    logits, state = ckpt["mask_logits"], ckpt["state_dict"]
    print("| layer | density | IoU of the kept weights (learned vs magnitude) |\n|---|---|---|")
    learned_keep, magnitude_keep = [], []
    for name, learned in logits.items():
        logits[name] = magnitude_logits(state[f"{name}.weight"], learned)
        learned_keep.append((learned >= 0).flatten())
        magnitude_keep.append((logits[name] >= 0).flatten())
        print(f"| {name} | {100 * float(learned_keep[-1].float().mean()):.1f}% | "
              f"{overlap(learned_keep[-1], magnitude_keep[-1]):.3f} |")
    every_learned, every_magnitude = torch.cat(learned_keep), torch.cat(magnitude_keep)
    print(f"| all | {100 * float(every_learned.float().mean()):.1f}% | {overlap(every_learned, every_magnitude):.3f} |")
    ckpt["magnitude_mask_of"] = str(args.masked)
    save_checkpoint(args.out, ckpt)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    return exit_code("magnitude_mask.py", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
