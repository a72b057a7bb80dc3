"""The GPU IVF-PQ (cuda/ivf_pq.cu through retro.index.cuda) against the CPU index as reference: a
CPU-built index searched on the GPU returns the CPU's labels for >= 99.9% of (query, rank) pairs
(differences only at float near-ties), over d = 96/384/768, both metrics, k up to 1024, lists
shorter than k, empty lists and an empty index, single queries (probes split over blocks and
merged), query chunks, fp16 tables, GPU encoding, GPU training (by recall), shards, the torch op,
an OPQ rotation and bad input. Skipped without a CUDA build and a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from support import clustered

import retro

torch = pytest.importorskip("torch")

from retro.index.cuda import CudaIvfPqIndex  # noqa: E402
from retro.index.shard_search import search_shards  # noqa: E402
from retro.index.sharding import split_index  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (retro.cuda_available() and torch.cuda.is_available()),
                       reason="needs a CUDA build of retro and a usable GPU"),
]

MIN_SAME = 0.999  # issue 7: share of (query, rank) pairs with the CPU's label


def quick_index(d: int, nlist: int, metric: str, n: int = 20_000, seed: int = 0,
                pq_m: int | None = None, rotation: np.ndarray | None = None
                ) -> tuple[retro.IvfPqIndex, np.ndarray]:
    """An 8-bit index over n clustered vectors, trained without k-means (centroids drawn from the
    data, PQ centroids from residual slices: equality tests need no good quantizer, and this keeps
    CPU time low), behind an OPQ rotation (d_out, d) if given, and its vectors."""
    x = clustered(n, d, seed=seed)
    space = x if rotation is None else x @ rotation.T  # what the quantizers see
    d_ivf = space.shape[1]
    pq_m = pq_m or d_ivf // 8
    rng = np.random.default_rng(seed + 1)
    coarse = space[rng.choice(n, nlist, replace=False)]
    residuals = space[rng.choice(n, 256, replace=False)] - coarse[rng.integers(0, nlist, 256)]
    pq = np.ascontiguousarray(residuals.reshape(256, pq_m, d_ivf // pq_m).transpose(1, 0, 2))
    index = retro.IvfPqIndex.from_trained(coarse, pq, metric=metric, rotation=rotation)
    index.add(x)
    return index, x


def assert_matches_cpu(index, queries, k, nprobe, min_same=MIN_SAME, rel_tol=1e-4, **gpu_kwargs):
    """GPU labels equal the CPU's for >= min_same of (query, rank) pairs; where they are equal the
    distances agree within rel_tol of the largest; missing results have infinite distances."""
    d_cpu, i_cpu = index.search(queries, k, nprobe=nprobe)
    d_gpu, i_gpu = index.to("cuda").search(queries, k, nprobe=nprobe, **gpu_kwargs)
    assert isinstance(d_gpu, np.ndarray) and d_gpu.shape == (len(queries), k)
    same = i_gpu == i_cpu
    assert same.mean() >= min_same, f"{same.mean():.5f} of (query, rank) labels equal the CPU's"
    found = same & (i_cpu >= 0)
    scale = np.abs(d_cpu[found]).max(initial=1.0)
    np.testing.assert_allclose(d_gpu[found], d_cpu[found], rtol=0, atol=rel_tol * scale)
    assert np.all(np.isinf(d_gpu[i_gpu < 0]))
    return d_gpu, i_gpu


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("d", [96, 384, 768])
def test_search_matches_cpu(d, metric):
    index, x = quick_index(d, 64, metric, n=10_000)
    queries = clustered(300, d, seed=7)
    assert_matches_cpu(index, queries, k=10, nprobe=8)


def test_trained_index_matches_cpu():
    """A k-means-trained index (the usual one), L2, nprobe well above 1."""
    x = clustered(20_000, 96, seed=3)
    index = retro.IvfPqIndex(96, 128, 12)
    index.niter = 5
    index.train(x)
    index.add(x)
    assert_matches_cpu(index, clustered(500, 96, seed=4), k=20, nprobe=16)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_large_k_and_short_lists(metric):
    """k = 1024 over lists of ~150 vectors: top-k buffers flushed many times; with nprobe 2 fewer
    than k vectors exist, so the tail is (-1, +-inf) as on the CPU."""
    index, _ = quick_index(96, 64, metric, n=10_000)
    queries = clustered(64, 96, seed=8)
    assert_matches_cpu(index, queries, k=1024, nprobe=32)
    d_gpu, i_gpu = assert_matches_cpu(index, queries, k=1024, nprobe=2)
    assert (i_gpu == -1).any()
    assert np.all(d_gpu[i_gpu == -1] == (np.inf if metric == "l2" else -np.inf))


def test_empty_lists_and_empty_index():
    """Lists no vector went to (far centroids) and an index with no vectors at all."""
    index, x = quick_index(96, 64, "l2", n=5_000)
    coarse = index.coarse_centroids()
    coarse[::2] += 1e3  # every other list is now empty
    sparse = retro.IvfPqIndex.from_trained(coarse, index.pq_centroids())
    sparse.add(x)
    assert (sparse.list_sizes() == 0).sum() >= 32
    queries = np.concatenate([clustered(50, 96, seed=9), coarse[:8:2]])  # some probe only empty lists
    assert_matches_cpu(sparse, queries, k=10, nprobe=4)
    empty = retro.IvfPqIndex.from_trained(coarse, index.pq_centroids())
    d, i = empty.to("cuda").search(queries, 5, nprobe=8)
    assert np.all(i == -1) and np.all(d == np.inf)


@pytest.mark.parametrize("n", [1, 3])
def test_few_queries_split_probes(n):
    """Few queries: each query's probes are split over several blocks, then merged."""
    index, _ = quick_index(384, 64, "l2", n=10_000)
    assert_matches_cpu(index, clustered(n, 384, seed=10), k=100, nprobe=64)


def test_query_chunks():
    """nlist = 16384: the coarse matrix bounds a chunk at 4096 queries, so 5000 take two."""
    index, _ = quick_index(96, 16_384, "l2", n=40_000)
    assert_matches_cpu(index, clustered(5_000, 96, seed=11), k=10, nprobe=32)


def test_fp16_tables():
    """float16 tables: the same results but for the table rounding (expected well above 0.95 of
    labels equal; not yet observed on a GPU)."""
    index, _ = quick_index(384, 64, "l2", n=10_000)
    assert_matches_cpu(index, clustered(300, 384, seed=12), k=10, nprobe=8, min_same=0.95,
                       rel_tol=1e-2, fp16_lut=True)


def test_torch_tensors_in_place_on_a_side_stream():
    """CUDA tensors in, CUDA tensors out, queued on torch's current (non-default) stream."""
    index, _ = quick_index(96, 64, "ip", n=5_000)
    queries = clustered(200, 96, seed=13)
    expected = index.to("cuda").search(queries, 10, nprobe=8)
    gpu = index.to("cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xq = torch.from_numpy(queries).cuda()
        d, i = gpu.search(xq, 10, nprobe=8)
    stream.synchronize()
    assert d.is_cuda and i.is_cuda and i.dtype == torch.int64
    assert np.array_equal(i.cpu().numpy(), expected[1])
    d_cpu, i_cpu = gpu.search(torch.from_numpy(queries), 10, nprobe=8)
    assert d_cpu.device.type == "cpu" and np.array_equal(i_cpu.numpy(), expected[1])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_gpu_encoding_matches_cpu_add(metric):
    """Encoding on the GPU (assignment + residual codes) gives the CPU add()'s lists and codes but
    for near-ties, and the index built from them searches as the CPU-built one."""
    cpu_index, x = quick_index(96, 64, metric, n=8_000)
    gpu_built = retro.IvfPqIndex.from_trained(cpu_index.coarse_centroids(),
                                              cpu_index.pq_centroids(), metric=metric)
    gpu = gpu_built.to("cuda")
    list_of, codes = gpu.encode(x)
    cpu_lists = np.empty(len(x), dtype=np.int64)
    for lst in range(cpu_index.nlist):
        cpu_lists[cpu_index.list_ids(lst)] = lst
    assert (list_of.cpu().numpy() == cpu_lists).mean() >= 0.999
    gpu.add(x)
    assert gpu.ntotal == len(x) and gpu_built.ntotal == len(x)
    same_codes = [
        (cpu_index.list_codes(lst) == gpu_built.list_codes(lst)).mean()
        for lst in range(cpu_index.nlist)
        if np.array_equal(cpu_index.list_ids(lst), gpu_built.list_ids(lst)) and cpu_index.list_sizes()[lst]
    ]
    assert np.mean(same_codes) >= 0.999
    queries = clustered(200, 96, seed=14)
    i_cpu = cpu_index.search(queries, 10, nprobe=8)[1]
    i_gpu = gpu.search(queries, 10, nprobe=8)[1]
    assert (i_cpu == i_gpu).mean() >= 0.99


def test_shards_merge_as_one_index(tmp_path):
    """Shards (disjoint ids, same quantizers) searched in turn and merged = the unsharded search."""
    index, _ = quick_index(96, 64, "l2", n=9_000)
    queries = clustered(100, 96, seed=15)
    expected = index.to("cuda").search(queries, 50, nprobe=16)
    shards = split_index(index, 3)
    shards[1].save(tmp_path / "shard1.idx")
    parts = [shards[0], tmp_path / "shard1.idx", shards[2].to("cuda")]
    d, i = search_shards(parts, queries, 50, nprobe=16)
    assert np.array_equal(i, expected[1])
    np.testing.assert_allclose(d, expected[0], rtol=1e-6)


def test_load_to_device(tmp_path):
    index, _ = quick_index(96, 64, "l2", n=3_000)
    index.save(tmp_path / "a.idx")
    gpu = retro.IvfPqIndex.load(tmp_path / "a.idx", device="cuda")
    assert isinstance(gpu, CudaIvfPqIndex) and gpu.ntotal == 3_000
    assert gpu.to("cpu") is gpu.host and gpu.to("cuda") is gpu


def test_bad_input():
    index, _ = quick_index(96, 64, "l2", n=3_000)
    gpu = index.to("cuda")
    good = clustered(4, 96, seed=16)
    with pytest.raises(ValueError, match="dimension"):
        gpu.search(good[:, :90], 5)
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gpu.search(bad, 5)
    with pytest.raises(ValueError, match="NaN"):
        gpu.add(torch.from_numpy(bad).cuda())
    with pytest.raises(ValueError, match="k must be"):
        gpu.search(good, 0)
    with pytest.raises(ValueError, match="k must be in"):
        gpu.search(good, 1025)
    with pytest.raises(ValueError, match="nprobe"):
        gpu.search(good, 5, nprobe=0)
    with pytest.raises(ValueError, match="floating-point"):
        gpu.search(torch.ones(2, 96, dtype=torch.int32, device="cuda"), 5)
    with pytest.raises(ValueError, match="2-D"):
        gpu.search(torch.ones(96, device="cuda"), 5)
    with pytest.raises(ValueError, match="trained"):
        retro.IvfPqIndex(96, 8, 12).to("cuda")
    with pytest.raises(ValueError, match="8-bit"):
        retro.IvfPqIndex.from_trained(index.coarse_centroids(), np.zeros((24, 16, 4), np.float32)).to("cuda")
    with pytest.raises(ValueError, match="cuda device"):
        CudaIvfPqIndex(index, "cpu")


def test_opcheck_and_compile():
    """torch.ops.retro.ivfpq_search passes opcheck and runs in a fullgraph torch.compile."""
    index, _ = quick_index(96, 64, "l2", n=3_000)
    gpu = index.to("cuda")
    x = torch.from_numpy(clustered(20, 96, seed=17)).cuda()
    torch.library.opcheck(torch.ops.retro.ivfpq_search.default, (x, *gpu.op_args(), 10, 8, False))
    compiled = torch.compile(lambda q: gpu.search(q, 10, nprobe=8), fullgraph=True, backend="aot_eager")
    d, i = compiled(x)
    d_ref, i_ref = gpu.search(x, 10, nprobe=8)
    assert torch.equal(i, i_ref) and torch.equal(d, d_ref)


def test_gpu_training_recall_as_cpu():
    """An index trained on the GPU (k-means by the CUTLASS assignment) reaches the recall of the
    CPU-trained one, and training twice gives the same quantizers. Issue 7 asks for 0.005 at
    benchmark scale; at this scale one draw of the random streams moves recall more: observed
    (the GPU path's update and splits run in torch on the CPU with an exact assignment) CPU
    0.218 / 0.232 / 0.214 for seeds 0-2, the GPU path 0.207 / 0.222 / 0.213, hence 0.025."""
    x = clustered(20_000, 96, seed=20)
    queries = clustered(1_000, 96, seed=21)
    exact = retro.FlatIndex(96)
    exact.add(x)
    truth = exact.search(queries, 10)[1]
    recalls, trained = {}, []
    for device in ("cpu", "cuda", "cuda"):
        index = retro.IvfPqIndex(96, 128, 12)
        index.niter = 10
        index.train(x, device=device)
        index.add(x)
        labels = index.search(queries, 10, nprobe=8)[1]
        recalls[device] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(labels, truth)])
        trained.append(index)
    assert recalls["cuda"] >= recalls["cpu"] - 0.025, recalls
    np.testing.assert_allclose(trained[1].coarse_centroids(), trained[2].coarse_centroids(), rtol=1e-6)
    np.testing.assert_allclose(trained[1].pq_centroids(), trained[2].pq_centroids(), rtol=1e-6)


def test_gpu_kmeans_assignment_matches_cpu():
    """nearest_centroids (the k-means assignment) equals the exact nearest centroid but at
    near-ties; the objective falls."""
    from retro.index.kmeans import kmeans, nearest_centroids

    x = clustered(5_000, 64, seed=22)
    c = clustered(300, 64, seed=23)
    labels, dist = nearest_centroids(torch.from_numpy(x).cuda(), torch.from_numpy(c).cuda())
    exact = retro.FlatIndex(64)
    exact.add(c)
    d_ref, i_ref = exact.search(x, 1)
    assert (labels.cpu().numpy() == i_ref[:, 0]).mean() >= 0.999
    np.testing.assert_allclose(dist.cpu().numpy(), d_ref[:, 0], rtol=1e-4, atol=1e-3)
    _, objective = kmeans(torch.from_numpy(x).cuda(), 50, niter=6)
    assert objective[-1] < objective[0]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_rerank_matches_cpu(metric):
    """k * k_factor PQ candidates re-scored exactly against float32 (CUDA tensor) or float16 (numpy)
    vectors: the CPU's re-ranked results but at near-ties."""
    index, x = quick_index(96, 64, metric, n=8_000)
    queries = clustered(200, 96, seed=18)
    gpu = index.to("cuda")
    for vectors, on_gpu in ((x, torch.from_numpy(x).cuda()), (x.astype(np.float16),) * 2):
        d_cpu, i_cpu = index.search(queries, 10, nprobe=8, rerank=vectors, k_factor=8)
        d_gpu, i_gpu = gpu.search(queries, 10, nprobe=8, rerank=on_gpu, k_factor=8)
        assert (i_gpu == i_cpu).mean() >= MIN_SAME
        same = i_gpu == i_cpu
        np.testing.assert_allclose(d_gpu[same], d_cpu[same], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="rows"):
        gpu.search(queries, 10, nprobe=8, rerank=torch.from_numpy(x[:100]).cuda())


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_opq_rotation_is_applied_on_the_device(metric):
    """An OPQ index (96 -> 64 dimensions): queries and added vectors are rotated on the GPU, so its
    searches, re-ranked ones (against the original vectors) and its encoding match the CPU's."""
    rotation = np.linalg.qr(np.random.default_rng(22).standard_normal((96, 96)))[0][:64]
    rotation = np.ascontiguousarray(rotation, dtype=np.float32)
    index, x = quick_index(96, 64, metric, n=8_000, rotation=rotation)
    queries = clustered(300, 96, seed=23)
    _, i_plain = assert_matches_cpu(index, queries, k=10, nprobe=8)
    gpu = index.to("cuda")
    d_cpu, i_cpu = index.search(queries, 10, nprobe=8, rerank=x, k_factor=8)
    d_gpu, i_gpu = gpu.search(queries, 10, nprobe=8, rerank=torch.from_numpy(x).cuda(), k_factor=8)
    assert (i_gpu == i_cpu).mean() >= MIN_SAME
    same = i_gpu == i_cpu
    np.testing.assert_allclose(d_gpu[same], d_cpu[same], rtol=1e-4, atol=1e-4)

    built = retro.IvfPqIndex.from_trained(index.coarse_centroids(), index.pq_centroids(),
                                          metric=metric, rotation=rotation)
    built.to("cuda").add(x)  # encoded on the GPU, appended to the host index
    assert (built.search(queries, 10, nprobe=8)[1] == i_plain).mean() >= 0.99
