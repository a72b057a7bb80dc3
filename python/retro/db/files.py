"""Files of the database: atomic writes, checksums, and arrays filled block by block with resume.

Every file appears under its final name only when complete (written to a temporary name beside it,
then renamed), so a reader never sees a partial file and a crash leaves either the old file or
none. Arrays are ``.npy`` files, memory-mappable with ``np.load(path, mmap_mode="r")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HASH_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Writes data to path through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_json_atomically(path: Path, value: dict) -> None:
    """Writes value as indented, key-sorted JSON (the same value always gives the same bytes)."""
    write_bytes_atomically(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """Writes an .npy file through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    with open(temporary, "wb") as file:
        np.save(file, np.ascontiguousarray(array))
    os.replace(temporary, path)


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """An .npy file, memory-mapped read-only by default."""
    return np.load(path, mmap_mode="r" if mmap else None)


class BlockWriter:
    """Fills .npy arrays of equal row count, block_rows rows at a time, and resumes after a crash.

    Rows [b * block_rows, (b + 1) * block_rows) of every array form block b. The arrays live in
    ``<name>.partial`` files until :meth:`finish` renames them; ``<first name>.progress.json``
    records how many blocks are complete and a key (the checksums of what the blocks are computed
    from). A writer opened with the same key, shapes and block size continues after the last
    complete block; anything else starts over. Blocks must be written in order.
    """

    def __init__(
        self, arrays: dict[Path, tuple[tuple[int, ...], np.dtype]], block_rows: int, key: str
    ) -> None:
        self.arrays = arrays
        self.block_rows = block_rows
        self.n_rows = next(iter(arrays.values()))[0][0]
        self.n_blocks = -(-self.n_rows // block_rows)
        self._progress_path = next(iter(arrays)).with_name(next(iter(arrays)).name + ".progress.json")
        self._state = {
            "key": key,
            "block_rows": block_rows,
            "arrays": {str(p): [list(s), np.dtype(d).str] for p, (s, d) in arrays.items()},
        }
        self.blocks_done = self._resume_point()
        mode = "r+" if self.blocks_done else "w+"
        self._partials = {
            path: np.lib.format.open_memmap(self._partial(path), mode=mode, dtype=dtype, shape=shape)
            for path, (shape, dtype) in arrays.items()
        }

    @staticmethod
    def _partial(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(path.name + ".partial")

    def _resume_point(self) -> int:
        try:
            progress = json.loads(self._progress_path.read_text())
        except (OSError, ValueError):
            return 0
        if {k: progress.get(k) for k in self._state} != self._state:
            return 0
        if not all(self._partial(path).exists() for path in self.arrays):
            return 0
        return int(progress["blocks_done"])

    def pending(self) -> Iterator[tuple[int, int, int]]:
        """(block, first row, end row) of every block still to write, in order."""
        for block in range(self.blocks_done, self.n_blocks):
            yield block, block * self.block_rows, min(self.n_rows, (block + 1) * self.block_rows)

    def write(self, block: int, values: dict[Path, np.ndarray]) -> None:
        """Stores block's rows of every array and records the block as complete."""
        if block != self.blocks_done:
            raise ValueError(f"block {block} written out of order (next is {self.blocks_done})")
        start = block * self.block_rows
        for path, rows in values.items():
            self._partials[path][start : start + len(rows)] = rows
        for partial in self._partials.values():
            partial.flush()
        self.blocks_done = block + 1
        write_json_atomically(self._progress_path, {**self._state, "blocks_done": self.blocks_done})

    def finish(self) -> list[Path]:
        """Renames the complete arrays to their final names; returns those names."""
        if self.blocks_done != self.n_blocks:
            raise ValueError(f"{self.blocks_done} of {self.n_blocks} blocks written")
        for partial in self._partials.values():
            partial.flush()
        self._partials.clear()  # drop the maps before renaming their files
        for path in self.arrays:
            os.replace(self._partial(path), path)
        self._progress_path.unlink(missing_ok=True)
        return list(self.arrays)
