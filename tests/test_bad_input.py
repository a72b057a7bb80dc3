"""Every wrong input is refused with ValueError (the caller's mistake) or RuntimeError (the index's
state) and a message naming the problem; accepted input types give the float32 results."""

import os
import subprocess
import sys

import numpy as np
import pytest

import retro

D = 16


@pytest.fixture
def filled(make_small, small_data):
    index = make_small("l2")
    index.add(small_data.base[:500])
    return index


@pytest.fixture
def x(small_data):
    return small_data.queries.copy()  # (100, 16) float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d": 18, "nlist": 4, "pq_m": 4}, "d=18 is not divisible by pq_m=4"),
        ({"d": 16, "nlist": 4, "pq_m": 4, "pq_bits": 5}, "pq_bits must be 8 \\(PQ\\) or 4 \\(fast-scan PQ\\), got 5"),
        ({"d": 16, "nlist": 4, "pq_m": 4, "pq_bits": 16}, "pq_bits must be 8 \\(PQ\\) or 4 \\(fast-scan PQ\\), got 16"),
        ({"d": 0, "nlist": 4, "pq_m": 4}, "dimension d must be positive"),
        ({"d": 16, "nlist": 0, "pq_m": 4}, "nlist must be positive"),
        ({"d": 16, "nlist": 4, "pq_m": 0}, "pq_m must be positive"),
        ({"d": 16, "nlist": 4, "pq_m": 4, "metric": "cosine"}, "unknown metric 'cosine'"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retro.IvfPqIndex(**kwargs)


def test_flat_index_bad_arguments(x):
    with pytest.raises(ValueError, match="unknown metric 'L1'"):
        retro.FlatIndex(D, "L1")
    with pytest.raises(ValueError, match="dimension d must be positive"):
        retro.FlatIndex(0)
    flat = retro.FlatIndex(D)
    with pytest.raises(ValueError, match="added vectors has dimension 8 but the index has d=16"):
        flat.add(x[:, :8])
    with pytest.raises(ValueError, match="k must be positive"):
        flat.search(x, 0)


def test_too_few_training_points(small_data):
    with pytest.raises(ValueError, match="at least nlist=300 points, got 299"):
        retro.IvfPqIndex(D, 300, 4).train(small_data.base[:299])
    with pytest.raises(ValueError, match="at least 2\\^pq_bits=256 points, got 255"):
        retro.IvfPqIndex(D, 16, 4).train(small_data.base[:255])


def test_add_and_search_before_training(x):
    index = retro.IvfPqIndex(D, 16, 4)
    with pytest.raises(RuntimeError, match="not trained: call train\\(\\) before add\\(\\)"):
        index.add(x)
    with pytest.raises(RuntimeError, match="not trained: call train\\(\\) before search\\(\\)"):
        index.search(x, 5)


@pytest.mark.parametrize("stage", ["train", "add", "search"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(make_small, small_data, stage, value):
    index = make_small("l2") if stage != "train" else retro.IvfPqIndex(D, 16, 4)
    x = small_data.base.copy()
    x[123, 7] = value
    what = {"train": "training data", "add": "added vectors", "search": "queries"}[stage]
    message = f"{what} contains NaN or inf \\(first at row 123, column 7\\)"
    with pytest.raises(ValueError, match=message):
        if stage == "search":
            index.search(x, 5)
        else:
            getattr(index, stage)(x)


def test_float64_values_beyond_float32_range_are_refused(filled, x):
    x = x.astype(np.float64)
    x[0, 0] = 1e300  # becomes inf in float32 (numpy's overflow warning is not under test)
    with np.errstate(over="ignore"), pytest.raises(ValueError, match="queries contains NaN or inf"):
        filled.search(x, 5)


def test_wrong_dimension(filled, x):
    with pytest.raises(ValueError, match="queries has dimension 15 but the index has d=16"):
        filled.search(x[:, :15], 5)
    with pytest.raises(ValueError, match="added vectors has dimension 32 but the index has d=16"):
        filled.add(np.hstack([x, x]))
    with pytest.raises(ValueError, match="training data has dimension 8"):
        retro.IvfPqIndex(D, 16, 4).train(x[:, :8])


@pytest.mark.parametrize("shape", [(16,), (2, 4, 16), ()])
def test_not_two_dimensional(filled, shape):
    with pytest.raises(ValueError, match="queries must be a 2-D array \\(n, d\\)"):
        filled.search(np.zeros(shape, np.float32), 5)
    with pytest.raises(ValueError, match="added vectors must be a 2-D array"):
        filled.add(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, object])
def test_non_float_dtypes_are_refused(filled, x, dtype):
    with pytest.raises(ValueError, match="must hold floating-point values, got dtype"):
        filled.search(x.astype(dtype), 5)
    with pytest.raises(ValueError, match="must hold floating-point values"):
        filled.add(x.astype(dtype))


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(filled, x, k):
    with pytest.raises(ValueError, match=f"k must be positive, got {k}"):
        filled.search(x, k)


@pytest.mark.parametrize("nprobe", [0, -3, 2.5])
def test_nprobe_must_be_a_positive_integer(filled, x, nprobe):
    with pytest.raises(ValueError, match="nprobe must be (a )?positive"):
        filled.search(x, 5, nprobe=nprobe)


def test_bad_ids(make_small, x):
    index = make_small("l2")
    with pytest.raises(ValueError, match="ids must have shape \\(100,\\), got \\(99,\\)"):
        index.add(x, np.arange(99))
    with pytest.raises(ValueError, match="ids must have shape \\(100,\\), got \\(100, 1\\)"):
        index.add(x, np.arange(100).reshape(100, 1))
    with pytest.raises(ValueError, match="ids must be integers, got dtype float64"):
        index.add(x, np.arange(100, dtype=np.float64))
    assert index.ntotal == 0


def test_bad_rerank_arguments(filled, x, small_data):
    with pytest.raises(ValueError, match="rerank vectors must be float32 or float16, got float64"):
        filled.search(x, 5, rerank=small_data.base.astype(np.float64))
    with pytest.raises(ValueError, match="rerank vectors must be a 2-D array \\(n, d\\) with d=16"):
        filled.search(x, 5, rerank=small_data.base[:, :8].copy())
    with pytest.raises(ValueError, match="rerank vectors must be C-contiguous"):
        filled.search(x, 5, rerank=np.asfortranarray(small_data.base))
    with pytest.raises(ValueError, match="k_factor must be >= 1, got 0"):
        filled.search(x, 5, rerank=small_data.base, k_factor=0)


def test_global_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="unknown SIMD level 'sse'"):
        retro.set_simd_level("sse")
    with pytest.raises(ValueError, match="unknown bf16 kernel 'fp8'"):
        retro.set_bf16_kernel("fp8")
    with pytest.raises(ValueError, match="the number of threads must be >= 1"):
        retro.set_num_threads(0)
    with pytest.raises(ValueError, match="niter must be >= 1"):
        retro.IvfPqIndex(D, 16, 4).niter = 0


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("IVF1024,PQ96x8fs", "PQ codes are 8-bit \\('PQ<m>' or 'PQ<m>x8'\\) or 4-bit fast-scan"),
        ("IVF1024,PQ96x6", "PQ codes are 8-bit"),
        ("HNSW32", "unsupported index description 'HNSW32'"),
        ("IVF1024", "unsupported index description"),
        ("", "unsupported index description"),
        ("IVF1024,PQ5", "d=96 is not divisible by pq_m=5"),
        ("OPQ5,IVF1024,PQ8", "'OPQ5,IVF1024,PQ8' for d=96: .*the OPQ output dimension 96 is not divisible by opq_m=5"),
        ("OPQ8_128,IVF1024,PQ8", "opq_d=128 must be in \\[1, d=96\\]"),
        ("OPQ8_48,IVF1024,PQ32", "the OPQ output dimension 48 is not divisible by pq_m=32"),
        ("OPQ0,IVF1024,PQ8", "OPQ needs at least one sub-quantizer"),
        ("OPQ8_0,IVF1024,PQ8", "opq_d must be positive"),
        ("OPQ8_,IVF1024,PQ8", "unsupported index description"),
        ("IVF1024,PQ8,OPQ8", "unsupported index description"),
    ],
)
def test_index_factory_bad_strings(description, message):
    with pytest.raises(ValueError, match=message):
        retro.index_factory(96, description)


def test_index_factory_good_strings():
    ivf = retro.index_factory(96, "IVF1024, PQ48x8", metric="ip")
    assert (ivf.nlist, ivf.pq_m, ivf.pq_bits, ivf.metric) == (1024, 48, 8, "ip")
    for description, by_residual in (("IVF1024,PQ96x4fs", False), ("IVF1024,PQ96x4", True)):
        fast = retro.index_factory(96, description)
        assert (fast.nlist, fast.pq_m, fast.pq_bits, fast.metric) == (1024, 96, 4, "l2")
        assert fast.by_residual == by_residual  # as faiss's IndexIVFPQFastScan / 4-bit IndexIVFPQ
    flat = retro.index_factory(96, "Flat")
    assert isinstance(flat, retro.FlatIndex) and flat.d == 96


# --- accepted inputs ---------------------------------------------------------------------------


def test_torch_cpu_tensors_are_accepted(filled, x):
    torch = pytest.importorskip("torch")
    expected = filled.search(x, 5)
    for dtype in (torch.float32, torch.float64):
        distances, labels = filled.search(torch.from_numpy(x).to(dtype), 5)
        assert np.array_equal(labels, expected[1]) and np.array_equal(distances, expected[0])
    bf16 = torch.from_numpy(x).to(torch.bfloat16)
    distances, labels = filled.search(bf16, 5)
    rounded = filled.search(bf16.float().numpy(), 5)
    assert np.array_equal(labels, rounded[1]) and np.array_equal(distances, rounded[0])
    with pytest.raises(ValueError, match="queries must hold floating-point values, got .*int64"):
        filled.search(torch.zeros((2, D), dtype=torch.int64), 5)


def test_torch_ids_and_grad_tensors_are_accepted(make_small, small_data):
    torch = pytest.importorskip("torch")
    index = make_small("l2")
    x = torch.from_numpy(small_data.base[:50]).requires_grad_(True)
    index.add(x, torch.arange(1000, 1050))
    _, labels = index.search(small_data.base[:50], 1, nprobe=16)
    assert set(labels[:, 0]) <= set(range(1000, 1050))


def test_other_float_layouts_are_accepted(filled, x):
    expected = filled.search(x, 5)
    for variant in (x.astype(np.float64), np.asfortranarray(x), x.astype(np.float16), x.tolist()):
        reference = filled.search(np.asarray(variant, dtype=np.float32), 5)
        got = filled.search(variant, 5)
        assert np.array_equal(got[1], reference[1]) and np.array_equal(got[0], reference[0])
    strided = np.hstack([x, x])[:, ::2]
    contiguous = np.ascontiguousarray(strided)
    assert np.array_equal(filled.search(strided, 5)[1], filled.search(contiguous, 5)[1])
    assert np.array_equal(filled.search(x, 5)[1], expected[1])


def test_training_on_values_whose_squares_overflow_float32_terminates(tmp_path):
    """Finite input whose squared norms overflow float32 (|x| ~ 1e19) must train or be refused.
    It runs in a subprocess so that a hang fails the test instead of stalling the suite; 20 s is
    ~30x the normal run time of this script (~0.7 s with the import)."""
    script = tmp_path / "train_huge.py"
    script.write_text(
        "import numpy as np, retro\n"
        "x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32) * 1e19\n"
        "index = retro.IvfPqIndex(16, 16, 4)\n"
        "index.niter = 3\n"
        "try:\n"
        "    index.train(x)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    index.add(x)\n"
        "    labels = index.search(x[:5], 3, nprobe=16)[1]\n"
        "    finite = np.isfinite(index.coarse_centroids()).all()\n"
        "    print('trained', bool(finite), bool(labels.min() >= 0))\n"
    )
    try:
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                timeout=20, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("IvfPqIndex.train did not return within 20 s on 600 x 16 values of ~1e19")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:") or result.stdout.strip() == "trained True True"
