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
import re
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


TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY = re.compile(r".+\.(?:(\d+)\.tmp|tmp\.(\d+))$")  # atomic_file's, the core's


def _temporary_name(path: Path) -> Path:
    """The temporary file beside path that this process writes it through."""
    return path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def fsync_directory(directory: Path) -> None:
    """Flushes a directory's entries (a rename in it) to the disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write path's bytes to: a temporary file beside path, renamed to path when
    the block ends without an exception (and removed when it raises). fsync: flush the file to the
    disk before the rename and the directory after it, so that a crash leaves the old file or the
    new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
        if fsync:
            fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files that writers killed midway left in directory: those of
    atomic_file (NAME.<pid>.tmp) and of the core's index writer (NAME.tmp.<pid>) whose process is
    gone. Returns what it removed."""
    removed = []
    for path in Path(directory).glob("*.tmp*"):
        match = _TEMPORARY.match(path.name)
        pid = int(match.group(1) or match.group(2)) if match else None
        if pid is not None and pid != os.getpid() and not _pid_alive(pid) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Writes data to path through a temporary file and a rename, flushed to the disk."""
    with atomic_file(path) as file:
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
