"""Make "Fashion scenes", a Waterbirds-like photo benchmark, from the Fashion-MNIST IDX files (offline).

    python3 scripts/make_fashion_scenes.py data/fashion_scenes64
    python3 run.py --mode erm --data waterbirds --train_root_dir data/fashion_scenes64 --image_size 64 --arch resnet18 --epochs 5

The default item style and that ERM recipe are the calibrated ones (docs/results/scenes.md, "Calibration"): at
ratio 0.95 ERM's test worst-group accuracy is about 30 points below its average, at 0.5 about 6.

Label y: 1 = trouser, sandal, sneaker, bag, ankle boot; 0 = T-shirt/top, pullover, dress, coat, shirt.
Spurious attribute (place): 1 = water background, 0 = land background. In train the background
agrees with the label with probability --spurious_ratio; val and test are balanced over
backgrounds within each class. Same --seed (and flags) -> byte-identical metadata.csv and images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import probability  # noqa: E402
from data.fashion_scenes import SceneStyle, make_scenes, split_groups  # noqa: E402
from utils.cli import OneLineErrorParser, exit_code, int_at_least, non_negative, seed_int  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.run_dir import check_folder_path  # noqa: E402

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MAX_SIZE = 224


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="make_fashion_scenes.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", help="output folder (gets metadata.csv and one image folder per Fashion class)")
    parser.add_argument("--fashion_dir", default=DEFAULT_FASHION_DIR, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--size", type=int_at_least(8), default=64, help=f"image side in pixels (8..{MAX_SIZE})")
    parser.add_argument("--n_train", type=int_at_least(4), default=4795)
    parser.add_argument("--n_val", type=int_at_least(4), default=1199)
    parser.add_argument("--n_test", type=int_at_least(4), default=5794)
    parser.add_argument("--spurious_ratio", type=probability, default=0.95,
                        help="P(background agrees with the label) in train")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--workers", type=int_at_least(1), default=os.cpu_count() or 1, help="worker processes")
    style = SceneStyle()
    parser.add_argument("--item_scale", type=non_negative(float), nargs=2, default=style.item_scale,
                        metavar=("MIN", "MAX"), help="item side as a share of the image side")
    parser.add_argument("--item_opacity", type=non_negative(float), nargs=2, default=style.item_opacity,
                        metavar=("MIN", "MAX"), help="opacity of the item's brightest pixels (contrast)")
    parser.add_argument("--overwrite", action="store_true", help="write into an OUT that already has metadata.csv")
    return parser


def check(args: argparse.Namespace) -> None:
    if args.size > MAX_SIZE:
        raise UserError(f"--size {args.size} is too large; use at most {MAX_SIZE}")
    for flag, (low, high), top in (("--item_scale", args.item_scale, 1.0), ("--item_opacity", args.item_opacity, 1.0)):
        if not 0 < low <= high <= top:
            raise UserError(f"{flag} {low} {high}: need 0 < MIN <= MAX <= {top}")
    check_folder_path(args.out, "OUT")
    if (Path(args.out) / "metadata.csv").exists() and not args.overwrite:
        raise UserError(f"{args.out}/metadata.csv exists; pass --overwrite or choose another OUT")


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        args = build_parser().parse_args(argv)
        check(args)
        started = time.time()
        sizes = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
        style = SceneStyle(tuple(args.item_scale), tuple(args.item_opacity))
        make_scenes(Path(args.out), Path(args.fashion_dir), sizes, args.spurious_ratio, args.seed, args.size, style,
                    args.workers)
        groups = split_groups(args.n_train, args.spurious_ratio)
        print(f"wrote {sum(sizes.values())} scenes ({args.size}x{args.size}) to {args.out} in "
              f"{time.time() - started:.1f} s; train groups (y, place): {groups}")

    return exit_code("make_fashion_scenes.py", work)


if __name__ == "__main__":
    sys.exit(main())
