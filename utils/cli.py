"""argparse pieces shared by every command-line tool: one-line errors and checked number types."""
from __future__ import annotations

import argparse
import errno
import math
import sys
from typing import Any, Callable

from utils.distributed import RankFailed
from utils.errors import UserError
from utils.run_dir import INTERRUPTED_EXIT, RunInterrupted
from utils.runtime import current_task


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def at_least(kind: type, minimum: float, strict: bool = False) -> Callable[[str], Any]:
    """argparse type: a finite number of ``kind`` (int or float) that is >= ``minimum`` (> with ``strict``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{value} is not a finite number")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be {'>' if strict else '>='} {minimum}")
        return value
    return parse


def non_negative(kind: type) -> Callable[[str], Any]:
    """argparse type: a number of ``kind`` that is >= 0 (a negative lambda or rate is a mistake)."""
    return at_least(kind, 0)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    return at_least(int, minimum)


def seed_int(text: str) -> int:
    """argparse type: a seed, 0 <= seed < 2**31 (numpy refuses negative ones, and a method adds small
    offsets to the run's seed)."""
    value = at_least(int, 0)(text)
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"{value} is too large for a seed; use 0 to {2**31 - 1}")
    return value


def number_or_words(number: Callable[[str], Any], *words: str) -> Callable[[str], Any]:
    """argparse type: one of ``words`` as typed, else what ``number`` parses; a mistake's message lists the words."""
    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            return number(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}; pass a number or {' or '.join(words)}") from None
    return parse


positive_int = int_at_least(1)
positive_float = at_least(float, 0, strict=True)  # e.g. a temperature, which divides


def exit_code(prog: str, action: Callable[[], Any]) -> int:
    """Run a CLI's ``action``: 0 when it finishes; one line on stderr and no traceback for a
    :class:`UserError` (2), a full disk (2) and Ctrl-C (130).

    A failure every rank of a ``torchrun`` job shares (:class:`RankFailed`) is printed by rank 0 only.
    """
    try:
        action()
    except RunInterrupted as exc:
        return _fail(prog, str(exc), INTERRUPTED_EXIT)
    except UserError as exc:
        if isinstance(exc, RankFailed) and not exc.on_main:
            return 2
        message = str(exc)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original line
            message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
        return _fail(prog, f"error: {message}", 2)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted" + (f" during {current_task()}" if current_task() else ""), INTERRUPTED_EXIT)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return _fail(prog, f"error: no space left on the device while writing {exc.filename or 'a file'}; "
                           "free some space or choose another --out_dir", 2)
    return 0


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code
