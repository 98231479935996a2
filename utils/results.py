"""Writing files: results.json and any other file, atomically (the run folder itself is :mod:`utils.run_dir`'s)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from utils.distributed import is_main

RESULTS_NAME = "results.json"
FULL_DISK_BYTES = 2**20


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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OSError) and shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc  # torch.save's own error is cryptic
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
