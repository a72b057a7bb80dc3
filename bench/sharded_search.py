"""Sharded IVF-PQ search: the whole index in one process vs the same index as 2 shards searched by
2 torchrun ranks (gloo) with retro.index.shard_search.DistributedIndex.

Builds a seeded synthetic index, splits it, checks that every configuration returns the unsharded
results (ids and distances, bit for bit) and only then times it: queries per second of one batch,
best of --repeats interleaved rounds, plain PQ search and with exact re-ranking. The timing runs
in the torchrun job (rank 0 also times the single-process configurations) as

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        bench/sharded_search.py --rank WORK

Writes bench/results/sharded_search.json and its table in docs/SCALING.md.

    python bench/sharded_search.py [--n 200000] [--d 128] [--nlist 256] [--queries 5000] \\
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

RESULTS = report.RESULTS_DIR / "sharded_search.json"
WORLD = 2  # ranks, and the threads of the largest one-process configuration
K, NPROBE, K_FACTOR = 10, 16, 4
SEARCHES = {"pq": False, "pq + rerank": True}  # name -> re-ranked
DISTRIBUTED = f"{WORLD} torchrun ranks (gloo), 1 shard and 1 thread each"


def timed(search: Callable[[], object]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    search()
    return time.perf_counter() - start


def rank_main(work: Path, repeats: int) -> dict[str, dict[str, float]] | None:
    """One torchrun rank. Checks every configuration against the unsharded results, then times
    them in interleaved rounds, so that the load of other processes falls on all of them alike:
    each round, rank 0 times the single-process configurations while rank 1 waits in a barrier,
    then both ranks time the distributed search (1 thread each). Returns {search: {configuration:
    best queries/s}} on rank 0, None on the others."""
    import torch
    import torch.distributed as dist

    import retro
    from retro.index.shard_search import DistributedIndex, ShardedIndex

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    base = np.load(work / "base.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    distributed = DistributedIndex.load(work / "shards")
    singles = {}  # configuration -> (index, threads), timed on rank 0 only
    if rank == 0:
        whole = retro.IvfPqIndex.load(work / "index.ivfpq")
        sharded = ShardedIndex.load(work / "shards")
        for threads in (1, WORLD):
            singles[f"1 process, {threads} thread(s)"] = (whole, threads)
            singles[f"1 process, {WORLD} shards, {threads} thread(s)"] = (sharded, threads)
    configurations = {**singles, DISTRIBUTED: (distributed, 1)}

    def run(name: str, configuration: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        index, threads = configurations[configuration]
        retro.set_num_threads(threads)
        vectors = base if SEARCHES[name] else None
        return lambda: index.search(queries, K, NPROBE, vectors, K_FACTOR)

    expected = np.load(work / "expected.npz")
    for name in SEARCHES:  # verify (and warm up) before timing
        for configuration in configurations:
            if configuration == DISTRIBUTED or rank == 0:
                distances, labels = run(name, configuration)()
                assert np.array_equal(labels, expected[f"{name}/I"]), (name, configuration)
                assert np.array_equal(distances, expected[f"{name}/D"]), (name, configuration)
    best = {name: dict.fromkeys(configurations, np.inf) for name in SEARCHES}
    for _ in range(repeats):
        for name in SEARCHES:
            for configuration in singles:
                best[name][configuration] = min(best[name][configuration],
                                                timed(run(name, configuration)))
            dist.barrier()
            best[name][DISTRIBUTED] = min(best[name][DISTRIBUTED], timed(run(name, DISTRIBUTED)))
            dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return None
    return {name: {c: len(queries) / t for c, t in times.items()} for name, times in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors in the index")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--pq-m", type=int, default=16)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--rank", type=Path, help="internal: a torchrun rank on this work dir")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rank is not None:
        qps = rank_main(args.rank, args.repeats)
        if qps is not None:
            (args.rank / "qps.json").write_text(json.dumps(qps))
        return

    import retro
    from retro.index.sharding import shard_index
    from vector_sets import synthetic_clustered_split

    base, queries = synthetic_clustered_split(args.n, args.queries, args.d, seed=0)
    index = retro.IvfPqIndex(args.d, args.nlist, args.pq_m, seed=0)
    start = time.perf_counter()
    index.train(base)
    index.add(base)
    print(f"IVF{args.nlist},PQ{args.pq_m} over {args.n:,} x {args.d}: built in "
          f"{time.perf_counter() - start:.1f} s")
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="retro-shards-") as tmp:
        work = Path(tmp)
        expected = {}
        for name, rerank in SEARCHES.items():
            truth = index.search(queries, K, NPROBE, base if rerank else None, K_FACTOR)
            expected[f"{name}/D"], expected[f"{name}/I"] = truth
        np.save(work / "base.npy", base)
        np.save(work / "queries.npy", queries)
        np.savez(work / "expected.npz", **expected)
        index.save(work / "index.ivfpq")
        shard_index(index, WORLD, work / "shards")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={WORLD}", __file__, "--rank", str(work),
                   "--repeats", str(args.repeats)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = json.loads((work / "qps.json").read_text())

    result = {
        "index": {"n": args.n, "d": args.d, "nlist": args.nlist, "pq_m": args.pq_m,
                  "queries": args.queries, "k": K, "nprobe": NPROBE, "k_factor": K_FACTOR,
                  "rounds": args.repeats},
        "qps": rows,
    }
    for line in table(result):
        print(line)
    report.write_result(args.results, result, threads=WORLD, load_before=load_before)
    print(f"results in {args.results}; tables rewritten: {', '.join(render.write_tables(args.results)) or 'none'}")


def table(result: dict) -> list[str]:
    """QPS per configuration and search, with the ratio to the faster unsharded single process
    (on a busy 2-core machine 1 thread can beat 2)."""
    lines = ["| configuration | search | queries/s | vs best unsharded 1 process |",
             "|---|---|---|---|"]
    for name, qps in result["qps"].items():
        baseline = max(qps[f"1 process, {t} thread(s)"] for t in (1, WORLD))
        for label, value in qps.items():
            lines.append(f"| {label} | {name} | {value:,.0f} | {value / baseline:.2f}x |")
    return lines


def markdown(result: dict) -> str:
    """The measured table of docs/SCALING.md."""
    index = result["index"]
    head = (
        f"IVF{index['nlist']},PQ{index['pq_m']} over "
        f"{index['n']:,} seeded synthetic vectors of d={index['d']}, {index['queries']:,} queries "
        f"in one batch, k={index['k']}, nprobe={index['nprobe']}, re-ranking "
        f"k_factor={index['k_factor']}. Best of {index['rounds']} interleaved rounds; every "
        "configuration returned the unsharded ids and distances bit for bit before it was timed."
    )
    return "\n".join([provenance.describe(result, WORLD), head, "", *table(result)])


if __name__ == "__main__":
    main()
