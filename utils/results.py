"""results.json: refuse to clobber a finished run, write files atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from utils.distributed import is_main, run_on_main
from utils.errors import UserError

RESULTS_NAME = "results.json"


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse one that holds a finished result unless ``overwrite`` (rank 0 decides)."""
    return run_on_main(_prepare_out_dir, out_dir, overwrite, where="while preparing --out_dir")


def _prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out_dir {path} is a file, not a directory; pass a directory path")
    if (path / RESULTS_NAME).exists() and not overwrite:
        raise UserError(
            f"--out_dir {path} already holds a finished result ({RESULTS_NAME}); "
            "choose another --out_dir or pass --overwrite"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees half a file and a crash leaves the previous version intact. The file gets
    the usual permissions for new files (0666 less the umask), not mkstemp's private 0600.
    Under ``torchrun`` only rank 0 writes; the other ranks return the path at once.
    """
    path = Path(path)
    if not is_main():
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_results(out_dir: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``<out_dir>/results.json`` atomically and return the path."""
    path = Path(out_dir) / RESULTS_NAME
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path
