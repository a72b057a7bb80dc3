"""Arrays of the database filled block by block, with resume, on one process or on the ranks of
a world together (:class:`BlockWriter`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retro.files import write_json_atomically
from retro.world import World, barrier, rank_range


class BlockWriter:
    """Fills .npy arrays of equal row count, block_rows rows at a time, and resumes after a crash,
    on one process or on the ranks of a world (retro.world) together.

    Rows [b * block_rows, (b + 1) * block_rows) of every array form block b. The arrays live in
    ``<name>.partial`` files until :meth:`finish` renames them. ``<first name>.progress.json``
    records a key (the checksums of what the blocks are computed from), the block size and the
    shapes; each rank r records the blocks it completed in ``<first name>.done-<r>.json``. A writer
    opened with the same key, shapes and block size skips every block any earlier writer
    completed, whatever the world size then; anything else starts over.

    With W ranks the blocks are cut into W contiguous ranges and rank r writes range r (its
    :meth:`pending` blocks) into the shared .partial files. The constructor and :meth:`finish`
    are collective: every rank calls them.
    """

    def __init__(
        self,
        arrays: dict[Path, tuple[tuple[int, ...], np.dtype]],
        block_rows: int,
        key: str,
        world: World = World(),
    ) -> None:
        self.arrays = arrays
        self.block_rows = block_rows
        self.world = world
        self.n_rows = next(iter(arrays.values()))[0][0]
        self.n_blocks = -(-self.n_rows // block_rows)
        first = next(iter(arrays))
        self._progress_path = first.with_name(first.name + ".progress.json")
        self._done_glob = first.name + ".done-*.json"
        self._done_path = first.with_name(f"{first.name}.done-{world.rank}.json")
        self._state = {
            "key": key,
            "block_rows": block_rows,
            "arrays": {str(p): [list(s), np.dtype(d).str] for p, (s, d) in arrays.items()},
        }
        if world.is_main and not self._resumable():
            self._start_over()
        barrier(world)
        self.done = self._read_done()
        self._mine = self._read_done(own=True)
        self._partials = {
            path: np.lib.format.open_memmap(self._partial(path), mode="r+")
            for path in arrays
        }

    @staticmethod
    def _partial(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(path.name + ".partial")

    def _resumable(self) -> bool:
        try:
            progress = json.loads(self._progress_path.read_text())
        except (OSError, ValueError):
            return False
        return progress == self._state and all(self._partial(p).exists() for p in self.arrays)

    def _start_over(self) -> None:
        """New .partial files, no completed blocks (rank 0, before the others open them)."""
        for path in self._progress_path.parent.glob(self._done_glob):
            path.unlink()
        for path, (shape, dtype) in self.arrays.items():
            np.lib.format.open_memmap(self._partial(path), mode="w+", dtype=dtype,
                                      shape=shape).flush()
        write_json_atomically(self._progress_path, self._state)

    def _read_done(self, own: bool = False) -> set[int]:
        """The completed blocks recorded by every rank (or by this rank's file only)."""
        paths = [self._done_path] if own else self._progress_path.parent.glob(self._done_glob)
        done: set[int] = set()
        for path in paths:
            try:
                ranges = json.loads(Path(path).read_text())["blocks"]
            except (OSError, ValueError, KeyError):
                continue
            for lo, hi in ranges:
                done.update(range(lo, hi))
        return done

    @property
    def my_blocks(self) -> range:
        """This rank's contiguous range of blocks."""
        return rank_range(self.n_blocks, self.world)

    def is_mine(self, block: int) -> bool:
        """Whether block is in this rank's range (the rank that writes it)."""
        return block in self.my_blocks

    def rows_of(self, blocks: range | set[int]) -> int:
        """Rows in the given blocks (the last block may be short)."""
        return sum(min(self.n_rows, (b + 1) * self.block_rows) - b * self.block_rows
                   for b in blocks)

    @property
    def rows_done(self) -> int:
        """Rows of this rank's range already written (by any earlier writer)."""
        return self.rows_of(set(self.my_blocks) & self.done)

    def pending(self, every_rank: bool = False) -> Iterator[tuple[int, int, int]]:
        """(block, first row, end row) of every block of this rank's range still to write; with
        every_rank, of every rank's range (the same blocks on all ranks: for work the ranks do
        together, each block then written by the rank whose range holds it)."""
        for block in range(self.n_blocks) if every_rank else self.my_blocks:
            if block not in self.done:
                yield block, block * self.block_rows, min(self.n_rows, (block + 1) * self.block_rows)

    def write(self, block: int, values: dict[Path, np.ndarray]) -> None:
        """Stores block's rows of every array and records the block as complete."""
        if block not in self.my_blocks:
            raise ValueError(f"block {block} is not this rank's ({self.my_blocks})")
        start = block * self.block_rows
        for path, rows in values.items():
            self._partials[path][start : start + len(rows)] = rows
        for partial in self._partials.values():
            partial.flush()
        self.done.add(block)
        self._mine.add(block)
        write_json_atomically(self._done_path, {"blocks": _ranges(self._mine)})

    def finish(self) -> list[Path]:
        """Once every rank has written its blocks: renames the complete arrays to their final
        names (rank 0) and returns those names."""
        self._partials.clear()  # flushed by write; drop the maps before the files are renamed
        barrier(self.world)
        missing = self.n_blocks - len(self._read_done())
        if missing:  # on every rank: none waits for the others forever
            raise ValueError(f"{missing} of {self.n_blocks} blocks not written")
        barrier(self.world)  # every rank has read the records before rank 0 removes them
        if self.world.is_main:
            for path in self.arrays:
                os.replace(self._partial(path), path)
            self._progress_path.unlink(missing_ok=True)
            for path in self._progress_path.parent.glob(self._done_glob):
                path.unlink()
        barrier(self.world)
        return list(self.arrays)


def _ranges(blocks: set[int]) -> list[list[int]]:
    """Sorted blocks as [lo, hi) runs: {0, 1, 2, 5} -> [[0, 3], [5, 6]]."""
    runs: list[list[int]] = []
    for b in sorted(blocks):
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    return runs
