"""The sharded index: split + merged search equals the unsharded index (ids and bit-identical
distances, ties included), in one process and on 2 gloo ranks; bad input raises on every rank."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import D, NLIST, clustered

import retro
from retro.index.shard_search import ShardedIndex
from retro.index.sharding import (
    SHARDS_FILE,
    load_shards,
    read_manifest,
    save_shards,
    shard_index,
    split_index,
)

# (k, nprobe, rerank): k below and above the shards' sizes; nprobe 16 scans ~1250 of 5000 vectors
# (the unsharded index filters with its quantized table, the shards of ~600 do not), NLIST all.
SEARCHES = [(10, 16, False), (10, 16, True), (3000, NLIST, False), (50, NLIST, True)]
WORLD = 2
RANK_TIMEOUT_S = 90  # a rank stuck in a collective fails the test instead of stalling the suite


def searched(index, queries, k, nprobe, rerank, base):
    return index.search(queries, k, nprobe=nprobe, rerank=base if rerank else None)


def assert_same(got, expected):
    (d_got, i_got), (d_exp, i_exp) = got, expected
    assert i_got.shape == i_exp.shape and d_got.dtype == np.float32 and i_got.dtype == np.int64
    assert np.array_equal(i_got, i_exp)
    assert np.array_equal(d_got, d_exp)  # bit-identical, infinities of missing results included


@pytest.fixture(scope="module")
def tied(built, data):
    """metric -> the shared index's quantizers over data.base twice (ids i and i + N): every
    distance is tied, so the order of ties decides the results."""
    out = {}
    base = np.concatenate([data.base, data.base])
    for metric in ("l2", "ip"):
        trained = built[metric].index
        index = retro.IvfPqIndex.from_trained(
            trained.coarse_centroids(), trained.pq_centroids(), metric
        )
        index.add(base)
        out[metric] = (index, base)
    return out


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_split_search_equals_unsharded(built, data, metric, n_shards):
    index = built[metric].index
    shards = split_index(index, n_shards)
    assert sum(s.ntotal for s in shards) == index.ntotal
    assert max(s.ntotal for s in shards) - min(s.ntotal for s in shards) <= 1  # equal counts
    sharded = ShardedIndex(shards)
    for k, nprobe, rerank in SEARCHES:
        assert_same(
            searched(sharded, data.queries, k, nprobe, rerank, data.base),
            searched(index, data.queries, k, nprobe, rerank, data.base),
        )


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ties_are_broken_by_smaller_id_as_unsharded(tied, data, metric):
    index, base = tied[metric]
    n = len(data.base)
    # shard 0 holds the copies (ids >= n), shard 1 the originals: the merge must still put the
    # original (smaller id) first, as the unsharded index does
    shards = split_index(index, 3, bounds=[n, n])  # and an empty middle shard
    assert [s.ntotal for s in shards] == [n, 0, n]
    sharded = ShardedIndex(shards[::-1])
    for k, nprobe, rerank in SEARCHES[:2]:
        got = searched(sharded, data.queries, k, nprobe, rerank, base)
        assert_same(got, searched(index, data.queries, k, nprobe, rerank, base))
        assert np.all(got[1][:, 0::2] < n) and np.array_equal(got[1][:, 1::2], got[1][:, 0::2] + n)


def test_shards_round_trip_through_their_directory(built, data, tmp_path):
    index = built["l2"].index
    manifest = read_manifest(Path(shard_index(index, 2, tmp_path)).parent)
    assert [e["ntotal"] for e in manifest["shards"]] == [2500, 2500]
    assert manifest["shards"][0]["id_hi"] < manifest["shards"][1]["id_lo"]
    for mmap in (True, False):
        loaded = ShardedIndex.load(tmp_path, mmap=mmap)
        assert_same(loaded.search(data.queries, 10, nprobe=16), index.search(data.queries, 10, 16))


def test_bad_input(built, make_small, data, tmp_path):
    index = built["l2"].index
    two = split_index(index, 2)
    with pytest.raises(ValueError, match="positive integer"):
        ShardedIndex(two).search(data.queries, 0)
    with pytest.raises(ValueError, match="k_factor must be a positive integer"):
        ShardedIndex(two).search(data.queries, 5, rerank=data.base, k_factor=0)
    with pytest.raises(ValueError, match="n_shards must be a positive integer"):
        split_index(index, 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        split_index(index, 3, bounds=[10, 5])
    with pytest.raises(ValueError, match="not trained"):
        ShardedIndex([retro.IvfPqIndex(D, NLIST, 8)])
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedIndex([])
    with pytest.raises(ValueError, match="overlapping id ranges"):
        ShardedIndex([two[0], two[0]])
    with pytest.raises(ValueError, match="other trained quantizers"):
        ShardedIndex([two[0], split_index(built["ip"].index, 2)[1]])
    other = make_small("l2")
    other.add(data.base[:10, :16], ids=np.arange(10_000, 10_010))
    with pytest.raises(ValueError, match="other trained quantizers"):
        ShardedIndex([two[0], other])
    with pytest.raises(FileNotFoundError, match="not a shard directory"):
        ShardedIndex.load(tmp_path)
    save_shards(two, tmp_path)
    two[1].save(tmp_path / "shard-00000.ivfpq")  # a shard swapped for another one
    with pytest.raises(ValueError, match=r"holds ids \(2500, 4999\), shards.json says \(0, 2499\)"):
        ShardedIndex.load(tmp_path)


# --- 2 gloo ranks --------------------------------------------------------------------------------


def rank_main(rank: int, world: int, init_method: str, work: str) -> None:
    """One rank: loads the shard directories of work/, runs the searches, pickles what it got."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from retro.index.shard_search import DistributedIndex

    torch.set_num_threads(1)
    retro.set_num_threads(1)  # 2 ranks on 2 cores
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    root = Path(work)
    base = np.load(root / "base.npy", mmap_mode="r")
    queries = np.load(root / "queries.npy")
    out: dict = {"results": {}, "errors": {}}
    for name in ("l2-3", "ip-2"):
        index = DistributedIndex.load(root / name)
        for i, (k, nprobe, rerank) in enumerate(SEARCHES):
            src = i % world  # each rank is src in turn; the other passes no queries
            x = queries if rank == src else None
            out["results"][name, k, nprobe, rerank] = index.search(
                x, k, nprobe=nprobe, rerank=base if rerank else None, src=src
            )
    index = DistributedIndex.load(root / "l2-3")
    cases = {
        "k=0": lambda: index.search(queries, 0),
        "k differs": lambda: index.search(queries, 5 + rank),
        "bad queries on src": lambda: index.search(queries[:, :5] if rank == 0 else None, 5),
        "src out of range": lambda: index.search(queries, 5, src=world),
        "short rerank": lambda: index.search(queries, 5, rerank=base[:100]),
        "one shard": lambda: DistributedIndex.load(root / "one"),
        "other quantizers": lambda: DistributedIndex.load(root / "mixed"),
    }
    for case, call in cases.items():
        try:
            call()
        except ValueError as e:
            out["errors"][case] = str(e)
    # the group still works after the errors; 1 query leaves rank 1 no slice to finish, 3 uneven
    out["after"] = index.search(queries, 3, nprobe=4)
    out["1 query"] = index.search(queries[:1], 5, nprobe=4, rerank=base)
    out["3 queries"] = index.search(queries[:3], 5, nprobe=4)
    dist.destroy_process_group()
    (root / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(built, data, tmp_path_factory):
    """Shards written, 2 gloo ranks run rank_main; returns what each rank pickled."""
    work = tmp_path_factory.mktemp("ranks")
    np.save(work / "base.npy", data.base)
    np.save(work / "queries.npy", data.queries)
    n = len(data.base)
    save_shards(split_index(built["l2"].index, 3, bounds=[n // 3, n // 3]), work / "l2-3")
    shard_index(built["ip"].index, 2, work / "ip-2")
    shard_index(built["l2"].index, 1, work / "one")
    mixed = split_index(built["l2"].index, 2)
    save_shards(mixed, work / "mixed")
    split_index(built["ip"].index, 2)[1].save(work / "mixed" / "shard-00001.ivfpq")

    init_method = f"tcp://127.0.0.1:{free_port()}"
    tests = Path(__file__).parent
    path = os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    code = "import sys, test_sharding as t; t.rank_main(int(sys.argv[1]), {}, {!r}, {!r})".format(
        WORLD, init_method, str(work)
    )
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r)], env=env, stderr=subprocess.PIPE, text=True
        )
        for r in range(WORLD)
    ]
    try:
        errs = [p.communicate(timeout=RANK_TIMEOUT_S)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    for r, (p, err) in enumerate(zip(ranks, errs)):
        assert p.returncode == 0, f"rank {r} failed:\n{err}"
    return [pickle.loads((work / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def test_distributed_search_equals_unsharded(two_ranks, built, data):
    for rank_out in two_ranks:
        assert len(rank_out["results"]) == 2 * len(SEARCHES)
        for (name, k, nprobe, rerank), got in rank_out["results"].items():
            index = built[name.split("-")[0]].index
            assert_same(got, searched(index, data.queries, k, nprobe, rerank, data.base))
        index = built["l2"].index
        assert_same(rank_out["after"], index.search(data.queries, 3, nprobe=4))
        assert_same(rank_out["1 query"], index.search(data.queries[:1], 5, 4, rerank=data.base))
        assert_same(rank_out["3 queries"], index.search(data.queries[:3], 5, nprobe=4))


def test_distributed_bad_input_raises_on_every_rank(two_ranks):
    expected = {
        "k=0": "k must be a positive integer",
        "k differs": "ranks passed different",
        "bad queries on src": "rank 0: queries have d=5",
        "src out of range": "src must be a rank of the group (0..1), got 2",
        "short rerank": "rerank vectors have 100 rows but the shards hold id",
        "one shard": "1 shards for a world of 2 ranks",
        "other quantizers": "quantizers differ",
    }
    for rank_out in two_ranks:
        assert set(rank_out["errors"]) == set(expected)
        for case, message in expected.items():
            assert message in rank_out["errors"][case], (case, rank_out["errors"][case])


def test_cli_shard(built, data, tmp_path, capsys):
    import retro.cli

    built["ip"].index.save(tmp_path / "ip.ivfpq")
    assert retro.cli.main(["index", "shard", "--shards", "2", str(tmp_path / "ip.ivfpq"),
                           str(tmp_path / "shards")]) == 0
    assert "shard-00001.ivfpq: 2,500 vectors, ids 2500 .. 4999" in capsys.readouterr().out
    shards, _, _ = load_shards(tmp_path / "shards")
    got = ShardedIndex(shards).search(data.queries, 10, nprobe=16)
    assert_same(got, built["ip"].index.search(data.queries, 10, nprobe=16))
    assert retro.cli.main(["index", "shard", "--shards", "0", str(tmp_path / "ip.ivfpq"),
                           str(tmp_path / "bad")]) == 2
    assert "retro: error: --shards must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad" / SHARDS_FILE).exists()


@pytest.mark.parametrize("by_residual", [True, False])
def test_fast_scan_shards_keep_their_coding(small_data, by_residual):
    """4-bit codes of residuals or (faiss's PQ..x4fs) of the vectors themselves: the shards code the
    same way, so their merged search equals the unsharded one."""
    index = retro.IvfPqIndex(16, 16, 4, pq_bits=4, seed=1, by_residual=by_residual)
    index.train(small_data.base)
    index.add(small_data.base)
    shards = split_index(index, 2)
    assert all(s.pq_bits == 4 and s.by_residual == by_residual for s in shards)
    for k, nprobe, rerank in ((10, 4, False), (10, 16, True)):
        assert_same(
            searched(ShardedIndex(shards), small_data.queries, k, nprobe, rerank, small_data.base),
            searched(index, small_data.queries, k, nprobe, rerank, small_data.base),
        )
