"""results.json: refuse to clobber a finished run, write atomically, print the same numbers."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


RESULTS_NAME = "results.json"
FULL_DISK_BYTES = 2**20


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder; see :func:`utils.run_dir.prepare_out_dir`."""
    from utils.run_dir import prepare_out_dir as prepare  # here: utils.run_dir writes through this module

    return prepare(out_dir, overwrite)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees half a file and a crash leaves the previous version intact. The file gets
    the usual permissions for new files (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
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


def format_split_table(rows: dict[str, dict[str, dict]], title: str = "") -> str:
    """A table with one row per (model, split): avg / worst-group / mean-group / weighted acc.

    ``rows`` maps a model name to its ``splits`` dict (``{"val": M, "test": M}``).
    """
    header = f"{'model':<18}{'split':<7}{'avg':>8}{'worst-grp':>11}{'mean-grp':>10}{'weighted':>10}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for name, splits in rows.items():
        for split, m in splits.items():
            lines.append(
                f"{name:<18}{split:<7}{100 * m['avg_acc']:>8.2f}{100 * m['worst_group_acc']:>11.2f}"
                f"{100 * m['mean_group_acc']:>10.2f}{100 * m['weighted_avg_acc']:>10.2f}"
            )
    return "\n".join(lines)


def format_group_table(metrics: dict, split: str) -> str:
    """Per-group accuracy and count for one split."""
    lines = [f"groups on {split}:"]
    for key, g in metrics["groups"].items():
        lines.append(f"  {key:<12} acc {100 * g['acc']:6.2f}  n={g['n']}")
    return "\n".join(lines)


def format_comparison(methods: dict[str, dict], title: str = "") -> str:
    """Methods side by side on test (avg / worst-group / mean-group), val worst-group, and density."""
    header = f"{'method':<24}{'avg':>8}{'worst-grp':>11}{'mean-grp':>10}{'val worst':>11}{'density':>9}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for name, result in methods.items():
        test, val = result["splits"]["test"], result["splits"]["val"]
        density = result.get("sparsity", {}).get("overall", 1.0)
        lines.append(f"{name:<24}{100 * test['avg_acc']:>8.2f}{100 * test['worst_group_acc']:>11.2f}"
                     f"{100 * test['mean_group_acc']:>10.2f}{100 * val['worst_group_acc']:>11.2f}"
                     f"{100 * density:>8.1f}%")
    return "\n".join(lines)
