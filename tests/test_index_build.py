"""retro.db.index_build: the database index encoded block by block (as the ranks of a build do)
equals one ``add`` of every embedding in id order: byte for byte as one file, list by list and in
every search as shards; an interrupted encoding resumes past the blocks it stored."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support import clustered

import retro.index.ivf_pq
from retro.db.index_build import ENCODE_BLOCK, build_index, train_index
from retro.db.indexing import INDEX_FILE, SHARDS_DIR, IndexParams
from retro.index.shard_search import ShardedIndex
from retro.index.sharding import SHARDS_FILE, split_index
from retro.world import World

N, D, SEED = 1000, 32, 3  # 4 encoding blocks of 256, the last one short
PARAMS = IndexParams("IVF16,PQ8", nprobe=4, k_factor=4)


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    """(N, D) float16 unit vectors, as the database stores them."""
    x = clustered(N + 50, D, n_centres=40, seed=SEED)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def one_add(embeddings, tmp_path_factory):
    """The reference: the trained index and every embedding added in one call, and its file."""
    index = train_index(PARAMS, embeddings[:N], SEED)
    index.add(embeddings[:N].astype(np.float32))
    path = tmp_path_factory.mktemp("one_add") / INDEX_FILE
    index.save(path)
    return index, path.read_bytes()


def build(root, params, embeddings, after_block=lambda b: None) -> list[str]:
    return build_index(root, params, embeddings[:N], SEED, "inputs", World(), lambda rows: None,
                       after_block)


def test_one_file_equals_one_add(embeddings, one_add, tmp_path):
    assert N % ENCODE_BLOCK and N > 2 * ENCODE_BLOCK
    assert build(tmp_path, PARAMS, embeddings) == [INDEX_FILE]
    assert (tmp_path / INDEX_FILE).read_bytes() == one_add[1]
    assert os.listdir(tmp_path) == [INDEX_FILE]  # the trained index and the codes are removed


def test_shards_equal_the_split_one_add(embeddings, one_add, tmp_path):
    params = IndexParams(PARAMS.spec, PARAMS.nprobe, PARAMS.k_factor, shards=3)
    files = build(tmp_path, params, embeddings)
    assert files == [f"{SHARDS_DIR}/shard-0000{s}.ivfpq" for s in range(3)] + [
        f"{SHARDS_DIR}/{SHARDS_FILE}"]
    sharded = ShardedIndex.load(tmp_path / SHARDS_DIR)
    assert sharded.id_ranges == [(0, 332), (333, 665), (666, 999)]
    reference = one_add[0]
    for ours, split in zip(sharded.shards, split_index(reference, 3)):
        for list_no in range(reference.nlist):
            assert np.array_equal(ours.list_ids(list_no), split.list_ids(list_no))
            assert np.array_equal(ours.list_codes(list_no), split.list_codes(list_no))
    queries = embeddings[N:].astype(np.float32)
    for rerank in (None, embeddings[:N]):
        got = sharded.search(queries, 7, nprobe=4, rerank=rerank)
        expected = reference.search(queries, 7, nprobe=4, rerank=rerank)
        assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])


class Stop(Exception):
    pass


def test_an_interrupted_encoding_resumes_past_its_stored_blocks(embeddings, one_add, tmp_path):
    def stop_at_1(b):
        if b == 1:
            raise Stop

    with pytest.raises(Stop):
        build(tmp_path, PARAMS, embeddings, stop_at_1)
    encoded = []
    build(tmp_path, PARAMS, embeddings, encoded.append)
    assert encoded == [2, 3]
    assert (tmp_path / INDEX_FILE).read_bytes() == one_add[1]
    assert os.listdir(tmp_path) == [INDEX_FILE]


def test_an_opq_index_encoded_by_blocks_equals_one_add(embeddings, tmp_path, monkeypatch):
    """The rotation is applied per block of rows as in one call: the same codes, the same file."""
    from retro.index.opq import OpqTrainParams

    monkeypatch.setattr(retro.index.ivf_pq, "OpqTrainParams",
                        lambda: OpqTrainParams(niter=4, niter_pq=2, niter_pq_0=4))
    params = IndexParams("OPQ8,IVF16,PQ8", nprobe=4, k_factor=4)
    index = train_index(params, embeddings[:N], SEED)
    assert index.opq_m == 8
    index.add(embeddings[:N].astype(np.float32))
    index.save(tmp_path / "one_add.ivfpq")
    (tmp_path / "built").mkdir()
    build(tmp_path / "built", params, embeddings)
    assert (tmp_path / "built" / INDEX_FILE).read_bytes() == (tmp_path / "one_add.ivfpq").read_bytes()
