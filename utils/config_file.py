"""``--config FILE``: a whole experiment as a TOML or JSON file of flag values, with typed flags winning.

Keys are the flags' names without the dashes (their argparse destinations: ``lr``, ``pruning_ep``).
TOML tables only group keys (``[prusc]`` then ``lr_prune = 0.01``); their names are not read.
A JSON file is either such a flat object or a run record (``run_args.json`` of a finished run, the
``args`` of ``{"tool", "args", ...}``), so a run can be repeated. Each value goes through the flag's
own argparse type and choices, so a file accepts exactly what the command line accepts.

What a run record says about *that* run's place rather than its experiment is not reused:
:data:`RECORD_ONLY` (its folder, the device it resolved, ``--overwrite``). ``overwrite`` and
``config`` are accepted on the command line only: a file never allows replacing a finished result.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Collection, Sequence

from utils.errors import UserError

FLAG = "--config"
COMMAND_LINE_ONLY = ("config", "overwrite")
RECORD_ONLY = ("out_dir", "overwrite", "device")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` flag."""
    parser.add_argument(FLAG, default=None, metavar="FILE",
                        help="a TOML or JSON file of flag values (keys: the flag names without dashes; a finished "
                             "run's run_args.json repeats that run); flags typed here override it (docs/cli.md)")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the flags typed in ``argv``: a second parse into a namespace whose every value is
    a marker (argparse fills in defaults only where a value is missing), so the typed ones replace it."""
    unset = object()
    start = argparse.Namespace(**{dest: unset for dest in _destinations(parser)})
    parsed = parser.parse_args(list(argv), namespace=start)
    return {name for name, value in vars(parsed).items() if value is not unset}


def _destinations(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each flag destination and its action (the first one, where an alias shares the destination)."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest not in ("help", argparse.SUPPRESS):
            found.setdefault(action.dest, action)
    return found


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                      required: Sequence[str] = (), tool: str | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse ``argv`` over the values of its ``--config`` file (defaults < file < typed flags).

    ``required`` are destinations that must be given, on the command line or in the file (argparse's own
    ``required`` would refuse a command line that leaves them to the file). Returns the namespace,
    without ``config`` (the values it set are what a run records), and the destinations set explicitly,
    typed or in the file (a recipe leaves those alone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    path = args.config
    del args.config
    typed = given_flags(parser, argv)
    from_file = read_config(os.path.expanduser(path), parser, tool) if path is not None else {}
    for name, value in from_file.items():
        if name not in typed:
            setattr(args, name, value)
    for name, value in vars(args).items():  # --flag=~/x and file values: the shell expands neither
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    missing = [f"--{name}" for name in required if getattr(args, name) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required, on the command "
                        f"line or in {FLAG}")
    return args, typed | set(from_file)


def read_config(path: str | Path, parser: argparse.ArgumentParser, tool: str | None = None) -> dict[str, Any]:
    """The flag values in ``path``, each checked and converted as the command line would. A run record is
    read only by the ``tool`` that wrote it (default: the parser's program; cluster/clustering.py parses
    as itself but runs, and records, as run.py)."""
    path = Path(path)
    actions = {dest: action for dest, action in _destinations(parser).items() if dest not in COMMAND_LINE_ONLY}
    raw = _load(path, tool or parser.prog, actions)
    values = {}
    for key, value in raw.items():
        if key not in actions:
            raise UserError(_unknown(key, path, actions, parser.prog))
        values[key] = _convert(actions[key], value, path)
    return values


def _load(path: Path, prog: str, flags: Collection[str]) -> dict[str, Any]:
    """The file's keys and values, TOML tables flattened, a run record's own keys left out."""
    if path.suffix not in (".toml", ".json"):
        raise UserError(f"{FLAG} {path}: use a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{FLAG} {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{FLAG} {path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at {exc.start}); "
                        "save it as UTF-8") from None
    try:
        content = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text, object_pairs_hook=_no_twice)
    except ValueError as exc:
        raise UserError(f"{FLAG} {path}: not valid {path.suffix[1:].upper()} ({exc})") from None
    if not isinstance(content, dict):
        raise UserError(f"{FLAG} {path}: the file must hold an object of flag values")
    if isinstance(content.get("args"), dict) and "tool" in content:
        if content["tool"] != prog:
            raise UserError(f"{FLAG} {path}: this run record was written by {content['tool']}; "
                            f"pass it to {content['tool']} --config")
        return {k: v for k, v in content["args"].items() if k not in RECORD_ONLY}
    return _flattened(content, path, flags)


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (json keeps the last of a repeated key silently)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} is given twice")
        seen[key] = value
    return seen


def _flattened(content: dict[str, Any], path: Path, flags: Collection[str]) -> dict[str, Any]:
    """Top-level keys and the keys of each table (one level; a table name only groups). A table named
    after a flag whose keys are nothing like flags is a mistyped value (``epochs = {a = 1}``)."""
    out: dict[str, Any] = {}
    for key, value in content.items():
        if isinstance(value, dict) and key in flags:
            strays = [name for name in value if name not in flags and not difflib.get_close_matches(name, flags)]
            if strays:
                raise UserError(f"{FLAG} {path}: table [{key}] holds {strays[0]!r}, which is no flag, and {key} is "
                                f"itself a flag; to set it, write {key} = <value>")
        inner = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in inner:
            if isinstance(item, dict):
                raise UserError(f"{FLAG} {path}: table [{key}.{name}] nests too deep; tables only group flag values")
            if name in out:
                raise UserError(f"{FLAG} {path}: key {name!r} is given twice")
            out[name] = item
    return out


def _unknown(key: str, path: Path, actions: dict[str, argparse.Action], prog: str) -> str:
    if key in COMMAND_LINE_ONLY:
        return f"{FLAG} {path}: {key!r} is accepted on the command line only (--{key})"
    near = difflib.get_close_matches(key, actions, n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"the keys are {prog}'s flag names without dashes (see --help)"
    return f"{FLAG} {path}: unknown key {key!r}; {hint}"


def _convert(action: argparse.Action, value: Any, path: Path) -> Any:
    """``value`` as the flag's type and choices make it, or one line naming the key and what it takes."""
    where = f"{FLAG} {path}: {action.dest} = {json.dumps(value, default=str)}"
    if value is None:
        if action.default is None:
            return None
        raise UserError(f"{where}: this flag has no empty value; leave the key out for its default")
    if isinstance(value, bool):
        if _switch(action):
            return value
        raise UserError(f"{where}: --{action.dest} takes a value, not true/false")
    if action.nargs == 0:
        raise UserError(f"{where}: --{action.dest} is a switch; write true or false")
    if isinstance(value, dict):
        raise UserError(f"{where}: a table is not a flag value")
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise UserError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: choose from {', '.join(map(str, action.choices))}")
    return converted


def _switch(action: argparse.Action) -> bool:
    """Whether the flag is an on/off switch (``--augment``, ``--per_class/--no-per_class``, plain ``--amp``)."""
    return action.nargs == 0 or isinstance(action.const, bool)
