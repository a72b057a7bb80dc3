"""Nothing a user or a file can do runs code, corrupts memory or answers with garbage (issue 23,
docs/RELIABILITY.md): concurrent adds and searches, huge k, flipped bytes, FIFOs, files truncated
under a mapping, bad ids, tampered database files, bad arguments refused before loading."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from support import read_index_file
from test_db_support import reference_db

import retro
from retro.cli import main
from retro.db import DatabaseError, open_db
from retro.files import remove_stale_temporaries


@pytest.fixture
def small_index(small_data):
    index = retro.IvfPqIndex(16, 16, 4, seed=0)
    index.train(small_data.base)
    index.add(small_data.base[:1000])
    return index


def test_adds_during_searches_from_several_threads(small_index, small_data):
    """An add in one thread while three search the index aborted ("free(): invalid size")."""
    queries, stop, errors, added = small_data.queries[:20], threading.Event(), [], 1000

    def search() -> None:
        while not stop.is_set():
            try:
                _, ids = small_index.search(queries, 10, nprobe=16)
                assert ids.max() < 2000 and (ids >= 0).all()
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)
                return

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for start in range(1000, 2000, 40):  # 25 adds, each reallocating the lists
            small_index.add(small_data.base[start:start + 40])
            added += 40
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == [] and small_index.ntotal == added == 2000


def test_huge_k_and_factors_are_bounded(small_index, small_data):
    queries = small_data.queries[:2]
    # k * k_factor candidates beyond the index used to allocate a reservoir of that size inside an
    # OpenMP region: std::bad_alloc there aborts (SIGABRT)
    distances, ids = small_index.search(queries, 1500, nprobe=16, rerank=small_data.base,
                                        k_factor=10**9)
    assert (ids[:, :1000] >= 0).all() and (ids[:, 1000:] == -1).all()
    assert np.isinf(distances[:, 1000:]).all()
    with pytest.raises(MemoryError, match=r"a search of 2 queries with k=1099511627776 needs"):
        small_index.search(queries, 2**40, rerank=small_data.base)
    with pytest.raises(MemoryError, match="k=1099511627776"):
        retro.FlatIndex(16).search(queries, 2**40)
    for call in (lambda: small_index.search(queries, 2**63),
                 lambda: retro.FlatIndex(16).search(queries, 2**63)):
        with pytest.raises(ValueError, match=r"^k must be at most \d+, got 9223372036854775808$"):
            call()
    _, wide = small_index.search(queries, 5, nprobe=2**40)  # above nlist: every list
    assert np.array_equal(wide, small_index.search(queries, 5, nprobe=16)[1])
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got float 2.5$"):
        small_index.search(queries, 2.5)


def test_a_flipped_id_byte_is_refused_by_the_default_load(small_index, small_data, tmp_path):
    path = tmp_path / "index"
    small_index.save(path)
    offset, _ = read_index_file(path).section(4)
    raw = bytearray(path.read_bytes())
    raw[offset + 7] ^= 0x40  # the high byte of the first id: ~4.6e18
    path.write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="checksum mismatch in section 'ids'"):
        retro.IvfPqIndex.load(path)  # mmap=True, verify=True
    unverified = retro.IvfPqIndex.load(path, verify=False)  # the explicit opt-out
    assert unverified.search(small_data.queries, 1000, nprobe=16)[1].max() > 2**62


def test_loading_a_fifo_fails_at_once(tmp_path):
    fifo = tmp_path / "index"
    os.mkfifo(fifo)
    outcome = []

    def load() -> None:
        try:
            retro.IvfPqIndex.load(fifo)
        except RuntimeError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=load, daemon=True)  # open() used to wait for a writer
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and "is not a regular file" in outcome[0]


def test_a_file_truncated_while_mapped_is_an_error_not_sigbus(small_index, small_data, tmp_path):
    path = tmp_path / "index"
    small_index.save(path)
    mapped = retro.IvfPqIndex.load(path)
    size = path.stat().st_size
    os.truncate(path, size // 2)
    for call in (lambda: mapped.search(small_data.queries, 5), lambda: mapped.save(tmp_path / "b")):
        with pytest.raises(RuntimeError, match=rf"truncated while memory-mapped: {size // 2} "
                                               rf"bytes, {size} when loaded"):
            call()


def test_ids_must_be_distinct_and_not_negative(small_data):
    index = retro.IvfPqIndex(16, 16, 4, seed=0)
    index.train(small_data.base)
    x = small_data.base[:4]
    with pytest.raises(ValueError, match=r"ids must be >= 0 \(-1 means no result\), got -1"):
        index.add(x, np.array([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="id 1 is given twice"):
        index.add(x, np.array([0, 1, 1, 2]))
    index.add(x, np.array([10, 11, 12, 13]))
    with pytest.raises(ValueError, match="id 12 is already in the index"):
        index.add(x, np.array([12, 20, 21, 22]))
    index.add(x)  # sequential ids 4 .. 7: free
    with pytest.raises(ValueError, match="id 1[0-3] is already in the index"):
        index.add(small_data.base[:8])  # sequential ids 8 .. 15 meet 10
    flat = retro.FlatIndex(16)
    flat.add(x, np.array([3, 2, 1, 0]))
    with pytest.raises(ValueError, match="id 3 is already in the index"):
        flat.add(x, np.array([9, 8, 7, 3]))
    assert index.ntotal == 8 and flat.ntotal == 4


def test_stale_temporary_files_are_removed(tmp_path):
    dead, alive = tmp_path / "ckpt.safetensors.999999999.tmp", tmp_path / f"x.{os.getpid()}.tmp"
    core = tmp_path / "index.ivfpq.tmp.999999999"
    for path in (dead, alive, core):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, core])
    assert alive.exists()


def test_a_resumed_database_build_removes_stale_temporary_files(db_copy):
    from test_db_support import CONFIG, corpus_dir

    from retro.db import build_db

    root = db_copy()
    stale = root / "chunks" / "tokens.npy.999999999.tmp"
    stale.write_bytes(b"partial")
    lines = []
    build_db(root, CONFIG, corpus=(str(corpus_dir(root.parent)),), progress=False,
             log=lines.append)
    assert not stale.exists() and any(str(stale) in line for line in lines)


@pytest.fixture(scope="module")
def db_copy(tmp_path_factory):
    """A fresh copy of the reference database per call (tests tamper with it)."""
    reference = reference_db(tmp_path_factory.getbasetemp())
    copies = iter(range(1000))

    def copy():
        out = tmp_path_factory.getbasetemp() / f"tampered-{next(copies)}"
        shutil.copytree(reference, out)
        return out
    return copy


def test_tampered_database_files_are_named_with_the_expected_value(db_copy):
    root = db_copy()
    ids_file = root / "neighbours/train/ids.npy"
    manifest = open_db(root).manifest
    ids = np.load(ids_file, mmap_mode="r+")
    ids[0, 0] = 10**9  # a tampered neighbour id
    ids.flush()
    del ids
    with pytest.raises(DatabaseError, match=rf"{ids_file} has sha256 [0-9a-f]{{64}}, the "
                                            rf"manifest expects {manifest.files['neighbours/train/ids.npy']['sha256']}"):
        open_db(root)
    with pytest.raises(DatabaseError, match=rf"{ids_file} is corrupt: neighbour id 1000000000 "
                                            r"is outside \[-1, \d+\)"):
        db = open_db(root, verify=False)
        db.split("train").sample_neighbours([0], db.chunks)
    embeddings = root / "embeddings.npy"
    expected = manifest.files["embeddings.npy"]["bytes"]
    os.truncate(embeddings, expected - 100)
    with pytest.raises(DatabaseError, match=rf"{embeddings} has {expected - 100} bytes, the "
                                            rf"manifest expects {expected}"):
        open_db(root, verify=False)


def test_retrieve_refuses_bad_tokens_and_k(db_copy):
    db = open_db(db_copy())
    tokens = np.zeros((1, db.chunk_size), dtype=np.int64)
    for bad in (70000, -5):
        tokens[0, 3] = bad
        with pytest.raises(ValueError, match=rf"token {bad} is not in the tokenizer's vocabulary"):
            db.retrieve(tokens)
    queries = np.zeros((1, db.dim), dtype=np.float32)
    with pytest.raises(ValueError, match="k must be positive, got 0"):
        db.retrieve_embedded(queries, k=0)


@pytest.mark.parametrize("command, message", [
    (["generate", "RUN", "--prompt", "x", "--temperature", "nan"], "must be a finite number"),
    (["generate", "RUN", "--prompt", "x", "--top-p", "2"], "0 < top_p <= 1"),
    (["generate", "RUN", "--prompt", "x", "--top-k", "0"], "must be >= 1, got 0"),
    (["eval", "RUN", "--max-samples", "0"], "must be >= 1, got 0"),
    (["eval", "RUN", "--batch-size", "0"], "must be >= 1, got 0"),
])
def test_arguments_are_refused_before_anything_loads(command, message, tmp_path, capsys):
    command = [str(tmp_path / "no-run") if part == "RUN" else part for part in command]
    try:
        status = main(command)
    except SystemExit as exit_info:  # argparse's own refusal
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "no checkpoint" not in err


def test_an_add_that_runs_out_of_memory_names_the_request(tmp_path):
    # The address space is capped just above what the process holds once the vectors exist, so
    # that the add's own buffers (codes, residuals) cannot be had: a MemoryError naming the add,
    # not an abort.
    script = tmp_path / "oom.py"
    script.write_text(textwrap.dedent("""
        import resource, numpy as np, retro
        rng = np.random.default_rng(0)
        index = retro.IvfPqIndex(d=64, nlist=16, pq_m=8)
        index.train(rng.standard_normal((4000, 64), dtype=np.float32))
        x = rng.standard_normal((2_000_000, 64), dtype=np.float32)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (8 << 20), resource.RLIM_INFINITY))
        try:
            index.add(x)
        except MemoryError as error:
            print("MemoryError:", error)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MemoryError: out of memory adding 2000000 vectors of dimension 64 to an IvfPqIndex" \
        in result.stdout
