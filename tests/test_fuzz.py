"""Mutated index and database files (flipped bits, overwritten bytes, truncations, extensions) are
refused with an error naming the file, or read as what was written: never a crash, a hang or a
silent wrong answer. RETRO_FUZZ_CASES sets the cases per file kind (CI: 300 index files and 150
databases in well under a minute; `make fuzz`: many more)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_db_support import reference_db

import retro
from retro.db import DatabaseError, open_db

CASES = int(os.environ.get("RETRO_FUZZ_CASES", "300"))


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One random corruption of raw: bit flips, a run of random bytes, a truncation or an
    extension."""
    data = bytearray(raw)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        start = rng.randrange(len(data))
        data[start:start + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
    elif kind == 2:
        del data[rng.randrange(len(data)):]
    else:
        data += rng.randbytes(rng.randint(1, 256))
    return bytes(data)


@pytest.mark.parametrize("kind", ["pq8", "pq4"])
def test_mutated_index_files(kind, small_data, tmp_path):
    bits = 8 if kind == "pq8" else 4
    index = retro.IvfPqIndex(16, 16, 4, pq_bits=bits, seed=0)
    index.train(small_data.base)
    index.add(small_data.base)
    good = tmp_path / "good"
    index.save(good)
    raw, expected = good.read_bytes(), index.search(small_data.queries, 10)
    rng = random.Random(bits)
    path = tmp_path / "mutated"
    refused = 0
    for case in range(CASES):
        mutated = mutate(raw, rng)
        path.write_bytes(mutated)
        try:
            loaded = retro.IvfPqIndex.load(path, mmap=case % 2 == 0)
        except RuntimeError as error:
            assert str(path) in str(error), str(error)
            refused += 1
            continue
        # accepted: the mutation missed every checked byte (padding, bytes past the end)
        found = loaded.search(small_data.queries, 10)
        assert all(np.array_equal(a, b) for a, b in zip(found, expected)), case
    assert refused >= CASES // 2  # observed: ~85% hit a checked byte


@pytest.fixture(scope="module")
def db_root(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fuzzed_db"
    shutil.copytree(reference_db(tmp_path_factory.getbasetemp()), out)
    return out


def test_mutated_database_files(db_root):
    manifest = open_db(db_root).manifest
    files = sorted(manifest.files)
    rng = random.Random(1)
    for _ in range(CASES // 2):
        relative = rng.choice(files)
        path = db_root / relative
        raw = path.read_bytes()
        mutated = mutate(raw, rng)
        if mutated == raw:
            continue
        path.write_bytes(mutated)
        try:
            with pytest.raises(DatabaseError, match=str(Path(relative))):
                open_db(db_root)
        finally:
            path.write_bytes(raw)
    open_db(db_root)  # every file restored
