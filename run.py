"""Command-line entry point: ERM, clustering, PruSC pruning, retraining and evaluation.

    python3 run.py                      # the whole pipeline on the embedded Colored Digits
    python3 run.py --mode erm --data digits --epochs 30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import add_data_args, canonical_name  # noqa: E402
from models import ARCHS  # noqa: E402
from training import erm  # noqa: E402
from utils.errors import UserError  # noqa: E402

MODES = {
    "erm": erm.run,
}
DEFAULT_MODE = "erm"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def non_negative(kind: type) -> callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is negative; it must be >= 0")
        return value
    return parse


def positive_int(text: str) -> int:
    value = non_negative(int)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed; it must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="run.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default=DEFAULT_MODE, help="what to run")
    parser.add_argument("--out_dir", default=None,
                        help="where checkpoints and results.json go (default: runs/<mode>_<data>_<arch>_seed<seed>_<time>)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing a finished result in --out_dir")
    parser.add_argument("--seed", type=int, default=0, help="seed of model initialisation and batch order")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--amp", action="store_true", help="bf16 mixed precision on CUDA")
    parser.add_argument("--channels_last", action="store_true", help="channels-last memory format on CUDA")
    add_data_args(parser)

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHS), default="mlp", help="backbone")
    model.add_argument("--hidden_dim", type=positive_int, default=256, help="MLP width")
    model.add_argument("--cnn_width", type=positive_int, default=32, help="small CNN base width")
    model.add_argument("--imagenet", action="store_true", help="start ResNets from torchvision's ImageNet weights")
    model.add_argument("--pretrained_path", default=None, help="local torchvision-format ResNet weights (offline)")
    model.add_argument("--checkpoint", default=None, help="a .pt written by an earlier mode")

    train = parser.add_argument_group("ERM training")
    train.add_argument("--epochs", type=positive_int, default=30, help="ERM epochs")
    train.add_argument("--lr", type=non_negative(float), default=1e-3, help="ERM learning rate")
    train.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    train.add_argument("--weight_decay", type=non_negative(float), default=1e-4)
    train.add_argument("--batch_size", type=positive_int, default=64)
    train.add_argument("--eval_batch_size", type=positive_int, default=512)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.data = canonical_name(args.data)
    if args.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out_dir = str(Path("runs") / f"{args.mode}_{args.data}_{args.arch}_seed{args.seed}_{stamp}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        MODES[args.mode](args)
    except UserError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
