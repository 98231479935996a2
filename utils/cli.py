"""argparse pieces shared by every command-line tool: one-line errors and checked number types."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from utils.distributed import RankFailed, is_main
from utils.errors import UserError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def at_least(kind: type, minimum: float) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` (int or float) that is >= ``minimum``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be >= {minimum}")
        return value
    return parse


def non_negative(kind: type) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` that is >= 0 (a negative lambda or rate is a mistake)."""
    return at_least(kind, 0)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    return at_least(int, minimum)


positive_int = int_at_least(1)


def exit_code(prog: str, action: Callable[[], Any]) -> int:
    """Run a CLI's ``action``: 0 when it finishes, 2 and one line on stderr for a :class:`UserError`.

    A failure every rank of a ``torchrun`` job shares (:class:`RankFailed`) is printed by rank 0 only.
    """
    try:
        action()
    except UserError as exc:
        if isinstance(exc, RankFailed) and not is_main():
            return 2
        message = str(exc)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original line
            message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
