"""argparse pieces shared by every command-line tool: one-line errors and checked number types."""
from __future__ import annotations

import argparse
from typing import Any, Callable


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def non_negative(kind: type) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` that is >= 0."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is negative; it must be >= 0")
        return value
    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = non_negative(int)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed; it must be >= 1")
    return value
