"""Fingerprints of a run's inputs, so that a rerun notices files that changed since the run started.

A file's fingerprint is its size and a SHA-1 of its content (of its first and last MiB, plus its
modification time, when it is larger than :data:`FULL_HASH_BYTES`). A folder's fingerprint (an image
root, an environment folder) is a SHA-1 over its file list: each file's relative path and size, the
content of its small text files (metadata and label tables, environment indices) and the modification
time of the others, so an edited label or a replaced image is noticed while no image is read. A
copied file (new modification time, same content) keeps its fingerprint; a copied image folder keeps
it only when the copy keeps the times (``cp -p``, ``rsync -t``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

FULL_HASH_BYTES = 256 * 2**20
EDGE_BYTES = 2**20
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".json")
MISSING = "absent"

Inputs = Mapping[str, "str | os.PathLike | None"] | Iterable["str | os.PathLike | None"]


def named_inputs(inputs: Inputs) -> dict[str, str]:
    """``inputs`` as ``{name: path}`` (a plain list is named by its paths); empty entries dropped."""
    items = inputs.items() if isinstance(inputs, Mapping) else ((str(p), p) for p in inputs)
    return {name: str(path) for name, path in items if path}


def _hash_file(path: Path, digest: "hashlib._Hash", size: int) -> None:
    with path.open("rb") as handle:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(EDGE_BYTES), b""):
                digest.update(block)
            return
        digest.update(handle.read(EDGE_BYTES))
        handle.seek(size - EDGE_BYTES)
        digest.update(handle.read(EDGE_BYTES))


def file_fingerprint(path: Path) -> str:
    """``file size=N sha1=H`` (with ``mtime=`` when only the edges of a large file are hashed)."""
    stat = path.stat()
    digest = hashlib.sha1()
    _hash_file(path, digest, stat.st_size)
    partial = f" mtime={stat.st_mtime_ns}" if stat.st_size > FULL_HASH_BYTES else ""
    return f"file size={stat.st_size}{partial} sha1={digest.hexdigest()[:16]}"


def folder_fingerprint(path: Path) -> str:
    """``folder files=N bytes=B sha1=H`` over the file list (and the content of small text files)."""
    digest, count, total = hashlib.sha1(), 0, 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            try:
                stat = file.stat()
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:  # a dangling link: its name is still part of the list
                size, mtime = -1, 0
            text = size >= 0 and file.suffix.lower() in TEXT_SUFFIXES
            digest.update(f"{file.relative_to(path)}\0{size}\0{'' if text else mtime}\n".encode())
            if text:
                _hash_file(file, digest, size)
            count, total = count + 1, total + max(size, 0)
    return f"folder files={count} bytes={total} sha1={digest.hexdigest()[:16]}"


def fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of a file or folder, or ``absent``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return folder_fingerprint(path)
    if path.is_file():
        return file_fingerprint(path)
    return MISSING


def fingerprint_inputs(inputs: Inputs) -> dict[str, str]:
    """``{name: "path: fingerprint"}`` for each input of a run."""
    return {name: f"{Path(path).expanduser().resolve()}: {fingerprint(path)}"
            for name, path in named_inputs(inputs).items()}


def changed_inputs(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The names of inputs whose fingerprint differs; an input absent when the run started (a data set
    downloaded by the run itself) is not counted."""
    changed = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if old is None or old.endswith(f": {MISSING}"):
            continue
        if old != new:
            changed.append(name)
    return changed
