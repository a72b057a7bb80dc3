"""IvfPqIndex.save / IvfPqIndex.load: bit-identical round trips, atomic saves, and refusal of
missing, truncated, foreign and corrupted files (the format is in cpp/src/index_file.h)."""

import numpy as np
import pytest
from support import (
    HEADER_DTYPE,
    K,
    NUM_SECTIONS,
    SECTION_NAMES,
    VERSION_OFFSET,
    read_index_file,
)

import retro

NPROBE = 8


def assert_same_results(a, b, queries, nprobe=NPROBE):
    d_a, i_a = a.search(queries, K, nprobe=nprobe)
    d_b, i_b = b.search(queries, K, nprobe=nprobe)
    assert np.array_equal(i_a, i_b) and np.array_equal(d_a, d_b)


def leftover_temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp." in p.name)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_round_trip_is_bit_identical(built, data, tmp_path, metric, mmap):
    index = built[metric].index
    index.save(tmp_path / "index")
    loaded = retro.IvfPqIndex.load(tmp_path / "index", mmap=mmap)
    assert loaded.is_mmapped == mmap and loaded.is_trained
    for name in ("d", "nlist", "pq_m", "pq_bits", "metric", "ntotal", "coarse_objective"):
        assert getattr(loaded, name) == getattr(index, name), name
    assert np.array_equal(loaded.list_sizes(), index.list_sizes())
    assert np.array_equal(loaded.coarse_centroids(), index.coarse_centroids())
    for nprobe in (1, NPROBE):
        assert_same_results(loaded, index, data.queries, nprobe)
    assert leftover_temp_files(tmp_path) == []


@pytest.mark.parametrize("n_added", [0, 5, 16, 100])
@pytest.mark.parametrize("nlist", [8, 10])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_round_trip_of_every_size(small_data, tmp_path, metric, nlist, n_added):
    """Sizes whose sections do not end on a 64-byte boundary (nlist=10: 80 bytes of list sizes;
    inner product: no terms section after ntotal * 8 bytes of ids) must load too."""
    index = retro.IvfPqIndex(16, nlist, 4, metric=metric, seed=2)
    index.niter = 5
    index.train(small_data.base)
    index.add(small_data.base[:n_added])
    index.save(tmp_path / "index")
    for mmap in (False, True):
        loaded = retro.IvfPqIndex.load(tmp_path / "index", mmap=mmap, verify=True)
        assert loaded.ntotal == n_added
        assert_same_results(loaded, index, small_data.queries, nprobe=nlist)


def test_round_trip_of_an_untrained_index(tmp_path):
    retro.IvfPqIndex(16, 16, 4).save(tmp_path / "index")
    loaded = retro.IvfPqIndex.load(tmp_path / "index", mmap=False)
    assert not loaded.is_trained and loaded.ntotal == 0 and loaded.nlist == 16


def test_loaded_index_keeps_growing_like_the_original(make_small, small_data, tmp_path):
    original = make_small("l2")
    original.add(small_data.base[:1000])
    original.save(tmp_path / "index")
    loaded = retro.IvfPqIndex.load(tmp_path / "index", mmap=False)
    original.add(small_data.base[1000:])
    loaded.add(small_data.base[1000:])
    assert_same_results(loaded, original, small_data.queries)


def test_mmapped_index_is_read_only(built, tmp_path):
    built["l2"].index.save(tmp_path / "index")
    loaded = retro.IvfPqIndex.load(tmp_path / "index", mmap=True)
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.add(np.zeros((1, loaded.d), np.float32))


def test_default_load_verifies_the_codes_and_verify_false_skips_them(built, tmp_path):
    path = tmp_path / "index"
    built["l2"].index.save(path)
    offset, _ = read_index_file(path).section(3)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    for mmap in (True, False):  # verify defaults to True, mapped or not
        with pytest.raises(RuntimeError, match="checksum mismatch in section 'codes'"):
            retro.IvfPqIndex.load(path, mmap=mmap)
    assert retro.IvfPqIndex.load(path, verify=False).is_mmapped  # the explicit opt-out


def test_save_replaces_an_existing_file(make_small, small_data, tmp_path):
    path = tmp_path / "index"
    path.write_bytes(b"an older, unrelated file that is longer than the header " * 10)
    first = make_small("l2")
    first.save(path)
    second = make_small("l2")
    second.add(small_data.base)
    second.save(path)
    assert_same_results(retro.IvfPqIndex.load(path, mmap=False), second, small_data.queries)
    assert leftover_temp_files(tmp_path) == []


def test_save_over_the_file_an_index_is_mapped_from(built, data, tmp_path):
    path = tmp_path / "index"
    built["l2"].index.save(path)
    mapped = retro.IvfPqIndex.load(path, mmap=True)
    mapped.save(path)  # renames a new file over the mapped one: the mapping stays valid
    assert_same_results(mapped, built["l2"].index, data.queries)
    assert_same_results(retro.IvfPqIndex.load(path, mmap=False), built["l2"].index, data.queries)


def test_failed_save_reports_and_leaves_no_temp_file(make_small, tmp_path):
    index = make_small("l2")
    with pytest.raises(RuntimeError, match="cannot create"):
        index.save(tmp_path / "missing_dir" / "index")
    (tmp_path / "a_directory").mkdir()
    with pytest.raises(RuntimeError, match="cannot rename"):
        index.save(tmp_path / "a_directory")
    assert leftover_temp_files(tmp_path) == []


# --- files that are not (whole) index files -----------------------------------------------------


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory, small_data):
    """Bytes of a saved IVF16,PQ4 l2 index with 300 vectors (all six sections non-empty)."""
    index = retro.IvfPqIndex(16, 16, 4, metric="l2", seed=1)
    index.niter = 5
    index.train(small_data.base)
    index.add(small_data.base[:300])
    path = tmp_path_factory.mktemp("saved") / "index"
    index.save(path)
    return path.read_bytes()


@pytest.mark.parametrize("mmap", [False, True])
def test_load_of_a_missing_file(tmp_path, mmap):
    with pytest.raises(RuntimeError, match="cannot open index file .*No such file"):
        retro.IvfPqIndex.load(tmp_path / "nothing_here", mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_load_of_an_empty_file_and_of_a_directory(tmp_path, mmap):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(RuntimeError, match="is empty"):
        retro.IvfPqIndex.load(tmp_path / "empty", mmap=mmap)
    with pytest.raises(RuntimeError, match="not a regular file"):
        retro.IvfPqIndex.load(tmp_path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_load_of_truncated_files(saved_file, tmp_path, mmap):
    header = np.frombuffer(saved_file, HEADER_DTYPE, count=1)[0]
    ends = [int(s["offset"] + s["bytes"]) for s in header["sections"]]
    cuts = [1, 8, 100, HEADER_DTYPE.itemsize - 1, HEADER_DTYPE.itemsize, 300, 5000]
    cuts += [end - 1 for end in ends] + [len(saved_file) - 1]
    for cut in cuts:
        path = tmp_path / f"cut_{cut}"
        path.write_bytes(saved_file[:cut])
        with pytest.raises(RuntimeError, match="shorter than the header|truncated or corrupt"):
            retro.IvfPqIndex.load(path, mmap=mmap, verify=False)


@pytest.mark.parametrize("mmap", [False, True])
def test_load_of_a_file_with_bad_magic(saved_file, tmp_path, mmap):
    path = tmp_path / "index"
    path.write_bytes(b"RETROIDY" + saved_file[8:])
    with pytest.raises(RuntimeError, match="not a retro index file \\(bad magic bytes\\)"):
        retro.IvfPqIndex.load(path, mmap=mmap)


def test_load_of_a_wrong_version(saved_file, tmp_path):
    raw = bytearray(saved_file)
    raw[VERSION_OFFSET : VERSION_OFFSET + 4] = (99).to_bytes(4, "little")
    (tmp_path / "index").write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="version 99"):
        retro.IvfPqIndex.load(tmp_path / "index", mmap=False)


def test_load_of_a_numpy_file(tmp_path):
    np.save(tmp_path / "array.npy", np.arange(1000, dtype=np.float32))
    with pytest.raises(RuntimeError, match="not a retro index file"):
        retro.IvfPqIndex.load(tmp_path / "array.npy", mmap=False)


def test_load_of_a_faiss_index(small_data, tmp_path):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(16), 16, 16, 4, 8)
    index.train(small_data.base)
    index.add(small_data.base)
    faiss.write_index(index, str(tmp_path / "faiss.index"))
    with pytest.raises(RuntimeError, match="not a retro index file"):
        retro.IvfPqIndex.load(tmp_path / "faiss.index", mmap=True)


# --- fuzz: random byte mutations ------------------------------------------------------------------


def file_regions(raw):
    """(name, start, stop) of the header, of each non-empty section, and of the alignment gaps
    (the file ends on a 64-byte boundary, so that empty trailing sections lie inside it)."""
    header = np.frombuffer(raw, HEADER_DTYPE, count=1)[0]
    regions = [("header", 0, HEADER_DTYPE.itemsize)]
    for s in range(NUM_SECTIONS):
        offset, size = int(header["sections"][s]["offset"]), int(header["sections"][s]["bytes"])
        if size:
            regions.append((SECTION_NAMES[s], offset, offset + size))
    covered = sorted((start, stop) for _, start, stop in regions)
    gaps = [(a_stop, b_start) for (_, a_stop), (b_start, _) in zip(covered, covered[1:])]
    gaps.append((covered[-1][1], len(raw)))
    assert len(raw) % 64 == 0 and len(raw) - covered[-1][1] < 64  # only alignment at the end
    regions += [("padding", start, stop) for start, stop in gaps if stop > start]
    return regions


def test_fuzz_random_byte_mutations(saved_file, small_data, tmp_path):
    """200 seeded mutations of 1-4 bytes, each inside one region of the file (a region is picked
    uniformly, then offsets in it). Header and sections 0-2 (always verified) must be rejected by
    every load; codes, ids and terms by every verified load, while a mapped unverified load must
    give an index whose search runs. Alignment padding is covered by no checksum: a mutation there
    must either be rejected or leave the results unchanged."""
    rng = np.random.default_rng(2024)
    regions = file_regions(saved_file)
    assert {name for name, _, _ in regions} >= set(SECTION_NAMES) | {"header", "padding"}
    original_path = tmp_path / "original"
    original_path.write_bytes(saved_file)
    original = retro.IvfPqIndex.load(original_path, mmap=False)
    queries = small_data.queries[:8]
    expected = original.search(queries, K, nprobe=original.nlist)
    path = tmp_path / "mutated"
    loads = [(False, True), (True, True), (True, False)]  # (mmap, verify)
    for case in range(200):
        name, start, stop = regions[rng.integers(len(regions))]
        raw = bytearray(saved_file)
        for offset in rng.integers(start, stop, size=rng.integers(1, 5)):
            raw[offset] ^= int(rng.integers(1, 256))
        path.unlink(missing_ok=True)  # a new file: earlier mappings keep the old one
        path.write_bytes(bytes(raw))
        always_checked = name in ("header", "coarse centroids", "PQ centroids", "list sizes")
        for mmap, verify in loads:
            where = f"case {case}: {name}, mmap={mmap}, verify={verify}"
            if name == "padding":
                try:
                    loaded = retro.IvfPqIndex.load(path, mmap=mmap, verify=verify)
                except (RuntimeError, ValueError):
                    continue
                distances, labels = loaded.search(queries, K, nprobe=loaded.nlist)
                assert np.array_equal(distances, expected[0]), where
                assert np.array_equal(labels, expected[1]), where
            elif verify or always_checked:
                with pytest.raises((RuntimeError, ValueError), match="corrupt|not a retro|version"):
                    retro.IvfPqIndex.load(path, mmap=mmap, verify=verify)
            else:
                loaded = retro.IvfPqIndex.load(path, mmap=mmap, verify=verify)
                distances, labels = loaded.search(queries, K, nprobe=loaded.nlist)
                assert distances.shape == labels.shape == (len(queries), K), where
