"""OPQ: the rotation in front of IVF-PQ (retro.index.opq trains it, the core applies it): what it
buys on anisotropic data, the file format (version 4, older versions still read), the factory strings,
sharding, the database's index and the GPU training path's host logic, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data.make_legacy_files import LEGACY_FILES, legacy_index
from support import HEADER_DTYPE, recall_at

import retro
from retro.index.factory import index_factory
from retro.index.opq import OpqTrainParams, train_opq_rotation
from retro.index.shard_search import ShardedIndex
from retro.index.sharding import quantizer_fingerprint, split_index

D, NLIST, N_BASE, N_QUERIES, K = 32, 16, 2000, 150, 10
FAST_OPQ = OpqTrainParams(niter=6, niter_pq=3, niter_pq_0=8)
# (pq_m, pq_bits, by_residual): 8-bit PQ of residuals, 4-bit fast-scan of residuals and of vectors
CODES = [(8, 8, True), (16, 4, True), (16, 4, False)]
OPQ_M = 8  # the rotation's sub-quantizers (8-bit): pq_m, or pq_m / 2 for 4-bit codes, as faiss's
# "OPQ48,IVF..,PQ96x4fs"
DATA = Path(__file__).parent / "data"


def anisotropic(n: int, seed: int) -> np.ndarray:
    """(n, D) float32 clustered points whose scale falls by e^(-j/4) along coordinate j: PQ's first
    sub-spaces hold almost all the energy, the case OPQ's rotation evens out."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(98).standard_normal((64, D))
    points = centres[rng.integers(0, 64, n)] + 0.6 * rng.standard_normal((n, D))
    return (points * np.exp(-np.arange(D) / 4.0)).astype(np.float32)


@pytest.fixture(scope="module")
def points():
    return anisotropic(N_BASE, 1), anisotropic(N_QUERIES, 2)


def trained(base, opq_m=0, opq_d=None, pq_m=8, pq_bits=8, by_residual=True, metric="l2"):
    index = retro.IvfPqIndex(D, NLIST, pq_m, pq_bits, metric, seed=5, by_residual=by_residual,
                             opq_m=opq_m, opq_d=opq_d)
    index.niter = 8
    index.opq_train_params = FAST_OPQ
    index.train(base)
    index.add(base)
    return index


def reconstruction_error(index: retro.IvfPqIndex, base: np.ndarray) -> float:
    """Mean squared distance between each stored vector, rotated, and what its codes decode to."""
    coarse, pq = index.coarse_centroids(), index.pq_centroids()
    total = 0.0
    for list_no in range(index.nlist):
        codes, ids = index.list_codes(list_no), index.list_ids(list_no)
        decoded = np.concatenate([pq[m, codes[:, m]] for m in range(index.pq_m)], axis=1)
        if index.by_residual:
            decoded = decoded + coarse[list_no]
        total += float(((index.rotate(base[ids]) - decoded) ** 2).sum())
    return total / index.ntotal


@pytest.mark.parametrize("d_out", [D, 24])
def test_trained_rotation_is_orthonormal_and_its_error_falls(points, d_out):
    base, _ = points
    training = train_opq_rotation(base, d_out, 8, seed=3, params=FAST_OPQ)
    r = training.rotation.astype(np.float64)
    assert r.shape == (d_out, D) and training.rotation.dtype == np.float32
    assert np.abs(r @ r.T - np.eye(d_out)).max() <= 1e-5  # observed 3.3e-8
    # each alternation lowers the error (up to float32 rounding); observed 0.126 -> 0.078
    # (d_out 32) and 0.983 -> 0.062 (d_out 24: the random start drops much of the energy)
    errors = np.array(training.errors)
    assert (np.diff(errors) <= 1e-5 * errors[:-1]).all(), errors
    assert errors[-1] < 0.7 * errors[0], errors
    again = train_opq_rotation(base, d_out, 8, seed=3, params=FAST_OPQ)
    assert np.array_equal(again.rotation, training.rotation)  # seeded


@pytest.mark.parametrize("pq_m, pq_bits, by_residual", CODES)
def test_opq_lowers_the_reconstruction_error_and_keeps_recall(points, pq_m, pq_bits, by_residual):
    base, queries = points
    flat = retro.FlatIndex(D)
    flat.add(base)
    truth = flat.search(queries, K)[1]
    plain = trained(base, pq_m=pq_m, pq_bits=pq_bits, by_residual=by_residual)
    opq = trained(base, opq_m=OPQ_M, pq_m=pq_m, pq_bits=pq_bits, by_residual=by_residual)
    # observed (plain -> OPQ) mean squared error: 8-bit 0.0728 -> 0.0308, 4-bit residuals
    # 0.1226 -> 0.1022, 4-bit vectors 0.3397 -> 0.2558
    assert reconstruction_error(opq, base) < 0.9 * reconstruction_error(plain, base)
    # observed recall@10 at nprobe 8 (plain -> OPQ): 8-bit 0.737 -> 0.891, 4-bit residuals
    # 0.681 -> 0.817, 4-bit vectors 0.471 -> 0.734
    plain_recall = recall_at(plain.search(queries, K, nprobe=8)[1], truth)
    opq_recall = recall_at(opq.search(queries, K, nprobe=8)[1], truth)
    assert opq_recall >= plain_recall, (plain_recall, opq_recall)
    # exact re-ranking against the original vectors gives exact distances
    d_rr, i_rr = opq.search(queries, K, nprobe=8, rerank=base)
    exact = ((queries[:, None, :].astype(np.float64) - base[i_rr]) ** 2).sum(-1)
    np.testing.assert_allclose(d_rr, exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_inner_product_and_a_smaller_output_dimension(points, metric):
    base, queries = points
    index = trained(base, opq_m=4, opq_d=24, pq_m=6, metric=metric)
    assert (index.d, index.ivf_d, index.coarse_centroids().shape) == (D, 24, (NLIST, 24))
    assert index.pq_centroids().shape == (6, 256, 4)
    flat = retro.FlatIndex(D, metric)
    flat.add(base)
    truth = flat.search(queries, K)[1]
    # observed recall@10 with re-ranking: 1.0 (l2 and ip)
    found = index.search(queries, K, nprobe=NLIST, rerank=base, k_factor=8)[1]
    assert recall_at(found, truth) >= 0.95


# --- the file format ---------------------------------------------------------------------------

V4_HEADER_DTYPE = np.dtype(
    [(name, HEADER_DTYPE.fields[name][0]) for name in HEADER_DTYPE.names[:13]]
    + [("opq_m", "<u4"), ("opq_d", "<u4"),
       ("sections", [("offset", "<u8"), ("bytes", "<u8"), ("checksum", "<u8")], (7,)),
       ("header_checksum", "<u8")]
)


@pytest.mark.parametrize("pq_m, pq_bits, by_residual", CODES)
def test_save_and_load_keep_the_rotation_and_the_results(points, tmp_path, pq_m, pq_bits, by_residual):
    base, queries = points
    index = trained(base, opq_m=4, opq_d=16, pq_m=pq_m, pq_bits=pq_bits, by_residual=by_residual)
    index.save(tmp_path / "opq.ivfpq")
    raw = (tmp_path / "opq.ivfpq").read_bytes()
    header = np.frombuffer(raw, V4_HEADER_DTYPE, count=1)[0]
    assert (header["version"], header["d"], header["opq_m"], header["opq_d"]) == (4, D, 4, 16)
    offset, size = (int(v) for v in (header["sections"][6]["offset"], header["sections"][6]["bytes"]))
    assert np.array_equal(np.frombuffer(raw, "<f4", size // 4, offset).reshape(16, D), index.rotation())
    want = index.search(queries, K, nprobe=4)
    want_rr = index.search(queries, K, nprobe=4, rerank=base)
    for mmap in (False, True):
        loaded = retro.IvfPqIndex.load(tmp_path / "opq.ivfpq", mmap=mmap, verify=True)
        assert (loaded.opq_m, loaded.ivf_d, loaded.is_mmapped) == (4, 16, mmap)
        assert np.array_equal(loaded.rotation(), index.rotation())
        for got, expected in ((loaded.search(queries, K, nprobe=4), want),
                              (loaded.search(queries, K, nprobe=4, rerank=base), want_rr)):
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])

    corrupt = bytearray(raw)
    corrupt[offset + 5] ^= 0x10
    (tmp_path / "corrupt.ivfpq").write_bytes(bytes(corrupt))
    with pytest.raises(RuntimeError, match="checksum mismatch in section 'OPQ rotation'"):
        retro.IvfPqIndex.load(tmp_path / "corrupt.ivfpq", mmap=True)


def test_an_untrained_opq_index_round_trips(tmp_path):
    index = retro.IvfPqIndex(D, NLIST, 8, opq_m=8)
    index.save(tmp_path / "untrained")
    loaded = retro.IvfPqIndex.load(tmp_path / "untrained")
    assert (loaded.opq_m, loaded.ivf_d, loaded.is_trained, loaded.rotation()) == (8, D, False, None)


@pytest.mark.parametrize("name", sorted(LEGACY_FILES))
def test_files_of_the_versions_before_opq_load_search_and_save_unchanged(name, tmp_path):
    path = DATA / name
    rebuilt = legacy_index(**LEGACY_FILES[name])  # the same seeded index, built by this build
    queries = np.random.default_rng(8).standard_normal((9, 12)).astype(np.float32)
    for mmap in (False, True):
        old = retro.IvfPqIndex.load(path, mmap=mmap, verify=True)
        assert (old.opq_m, old.ivf_d, old.rotation()) == (0, 12, None)
        for got, want in zip(old.search(queries, 5, nprobe=2), rebuilt.search(queries, 5, nprobe=2)):
            assert np.array_equal(got, want)
    old.save(tmp_path / name)
    rebuilt.save(tmp_path / ("rebuilt-" + name))
    assert (tmp_path / name).read_bytes() == path.read_bytes()  # still written as version 2 / 3
    assert (tmp_path / ("rebuilt-" + name)).read_bytes() == path.read_bytes()


# --- factory strings and bad input -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, want",
    [
        ("OPQ8,IVF16,PQ8", (8, D, 8, 8, True)),
        ("OPQ4_16,IVF16,PQ8", (4, 16, 8, 8, True)),
        ("OPQ8_24,IVF16,PQ12x4fs", (8, 24, 12, 4, False)),
        ("OPQ16,IVF16,PQ16x4", (16, D, 16, 4, True)),
    ],
)
def test_factory_reads_opq_as_faiss_does(spec, want):
    index = index_factory(D, spec)
    assert (index.opq_m, index.ivf_d, index.pq_m, index.pq_bits, index.by_residual) == want


def test_bad_rotations_and_training_sets_are_refused(points):
    base, _ = points
    index = retro.IvfPqIndex(D, NLIST, 8, opq_m=8, opq_d=16)
    with pytest.raises(ValueError, match="OPQ rotation must have shape \\(opq_d=16, d=32\\)"):
        index.set_rotation(np.eye(D, dtype=np.float32))
    skewed = np.eye(D, dtype=np.float32)[:16].copy()
    skewed[3, 4] = 0.1
    with pytest.raises(ValueError, match="rows must be orthonormal: rows 3 and 3"):
        index.set_rotation(skewed)
    with pytest.raises(ValueError, match="needs an index with OPQ"):
        retro.IvfPqIndex(D, NLIST, 8).set_rotation(np.eye(D, dtype=np.float32))
    with pytest.raises(ValueError, match="opq_d=16 needs an OPQ rotation"):
        retro.IvfPqIndex(D, NLIST, 8, opq_d=16)
    with pytest.raises(ValueError, match="OPQ training needs at least 256 points, got 200"):
        index.train(base[:200])
    with pytest.raises(ValueError, match="training data have dimension 31"):
        index.train(base[:, :31])
    with pytest.raises(ValueError, match="OPQ rotation .* maps to 16 dimensions but the coarse centroids have d=32"):
        retro.IvfPqIndex.from_trained(np.zeros((4, D), np.float32), np.zeros((8, 256, 4), np.float32),
                                      rotation=np.eye(D, dtype=np.float32)[:16])
    with pytest.raises(ValueError, match="opq_m is given without a rotation"):
        retro.IvfPqIndex.from_trained(np.zeros((4, D), np.float32), np.zeros((8, 256, 4), np.float32), opq_m=8)
    full = trained(base, opq_m=4, opq_d=16)
    with pytest.raises(RuntimeError, match="needs an empty index"):
        full.set_rotation(full.rotation())
    with pytest.raises(ValueError, match="queries has dimension 16 but the index has d=32"):
        full.search(full.rotate(base[:3]), K)  # queries are given unrotated


# --- sharding, the database's index, the GPU training path ---------------------------------------


def test_shards_of_an_opq_index_search_like_it(points):
    base, queries = points
    index = trained(base, opq_m=4, opq_d=16)
    sharded = ShardedIndex(split_index(index, 3))
    for rerank in (None, base):
        got = sharded.search(queries, K, nprobe=4, rerank=rerank)
        want = index.search(queries, K, nprobe=4, rerank=rerank)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    other = retro.IvfPqIndex.from_trained(
        index.coarse_centroids(), index.pq_centroids(), rotation=-index.rotation(), opq_m=4
    )
    assert quantizer_fingerprint(other) != quantizer_fingerprint(index)


def test_the_database_index_takes_an_opq_string(points, tmp_path, monkeypatch):
    from retro.db.index_build import build_index
    from retro.db.indexing import INDEX_FILE, choose_index, open_searcher
    from retro.world import World

    # faiss's 50 alternations are slow
    monkeypatch.setattr(retro.index.ivf_pq, "OpqTrainParams", lambda: FAST_OPQ)

    base, queries = points
    params = choose_index(len(base), D, "OPQ4_16, IVF16, PQ8", nprobe=16)
    assert params.spec == "OPQ4_16,IVF16,PQ8"
    embeddings = base.astype(np.float16)
    build_index(tmp_path, params, embeddings, 1, "inputs", World(), lambda rows: None,
                lambda block: None)
    index = retro.IvfPqIndex.load(tmp_path / INDEX_FILE)
    assert (index.opq_m, index.ivf_d, index.ntotal) == (4, 16, len(base))
    found = open_searcher(tmp_path, params, embeddings)(queries, K)[1]
    flat = retro.FlatIndex(D)
    flat.add(embeddings.astype(np.float32))
    assert recall_at(found, flat.search(queries, K)[1]) >= 0.95  # observed 0.999 (re-ranked)


def test_gpu_training_trains_the_rotation_and_rotates_before_kmeans(points, monkeypatch):
    torch = pytest.importorskip("torch")
    from retro.index import kmeans

    def exact_assignment(x, centroids, metric="l2"):  # the CUDA assignment, in torch
        dist = torch.cdist(x.double(), centroids.double()) ** 2 if metric == "l2" else -(x @ centroids.T)
        distances, labels = dist.min(1)
        return labels, distances.float()

    monkeypatch.setattr(kmeans, "nearest_centroids", exact_assignment)
    base, queries = points
    index = retro.IvfPqIndex(D, NLIST, 8, opq_m=4, opq_d=16, seed=5)
    index.niter = 3
    index.opq_train_params = FAST_OPQ
    kmeans.train_ivfpq(index, base, "cpu")
    on_cpu = train_opq_rotation(base, 16, 4, seed=5, params=FAST_OPQ).rotation
    assert np.array_equal(index.rotation(), on_cpu)
    assert index.coarse_centroids().shape == (NLIST, 16)
    # every coarse centroid is a mean of rotated points: inside their span, near their norms
    rotated = index.rotate(base)
    assert np.abs(index.coarse_centroids()).max() <= np.abs(rotated).max()
    index.add(base)
    flat = retro.FlatIndex(D)
    flat.add(base)
    found = index.search(queries, K, nprobe=NLIST, rerank=base)[1]
    assert recall_at(found, flat.search(queries, K)[1]) >= 0.85  # observed 0.97
