"""Atomic file writing and checksums for the files retro writes from Python: the database's,
shard manifests, checkpoints, the run log (an index file has its writer in the core,
cpp/src/index_file.cpp).

Every file appears under its final name only when complete (written to a temporary name beside it,
then renamed), so a reader never sees a partial file and a crash leaves either the old file or
none. Arrays are ``.npy`` files, memory-mappable with ``np.load(path, mmap_mode="r")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

HASH_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write path's bytes to: a temporary file beside path, renamed to path when
    the block ends without an exception (and removed when it raises). fsync: flush to the disk
    before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Writes data to path through a temporary file and a rename, flushed to the disk."""
    with atomic_file(path, fsync=True) as file:
        file.write(data)


def write_json_atomically(path: Path, value: dict) -> None:
    """Writes value as indented, key-sorted JSON (the same value always gives the same bytes)."""
    write_bytes_atomically(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """Writes an .npy file through a temporary file and a rename."""
    with atomic_file(path) as file:
        np.save(file, np.ascontiguousarray(array))


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """An .npy file, memory-mapped read-only by default."""
    return np.load(path, mmap_mode="r" if mmap else None)
