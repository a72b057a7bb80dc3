"""Where a re-ranked 4-bit fast-scan search spends its time, on synthetic clusters small enough
for quick runs (the 1M benchmark's structure: bench/vector_sets.py's mixture, 384 dimensions).

    python bench/fastscan_profile.py                       # CPU ms per batch, scan and re-ranking
    perf record -g python bench/fastscan_profile.py --loop 20   # the same search, for a profile

Prints the CPU time (this process, so a busy machine inflates it less than wall time) of a batch
search with re-ranking, of the scan alone (k * k_factor results, no re-ranking), of re-ranking
the scan's candidates alone, and of single queries; and an MD5 of the batch's labels, to check
that two builds return the same results. Two builds compare by running this with each on
PYTHONPATH, alternately. The trained index is cached in the dataset cache directory.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
import vector_sets

import retro

K = 10


def cpu_ms(fn, repeats: int) -> float:
    """Smallest CPU time of `repeats` calls, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300_000, help="base vectors")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--k-factor", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp16", action="store_true", help="float16 re-ranking rows")
    parser.add_argument("--loop", type=int, default=0,
                        help="only run this many batch searches (for perf)")
    args = parser.parse_args()

    base, queries = vector_sets.synthetic_clustered_split(args.n, 1000, 384, seed=0)
    path = vector_sets.DEFAULT_CACHE_DIR / f"fastscan_profile_{args.n}_{args.nlist}.index"
    if path.exists():
        index = retro.IvfPqIndex.load(path, mmap=False)
    else:
        index = retro.IvfPqIndex(384, args.nlist, 96, 4, by_residual=False)
        index.niter = 10
        index.train(base[: 64 * args.nlist])
        index.add(base)
        path.parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
    rows = base.astype(np.float16) if args.fp16 else base
    k_scan = K * args.k_factor

    def search() -> np.ndarray:
        return index.search(queries, K, nprobe=args.nprobe, rerank=rows, k_factor=args.k_factor)[1]

    def scan() -> np.ndarray:
        return index.search(queries, k_scan, nprobe=args.nprobe)[1]

    def single() -> None:
        for q in queries[:200]:
            index.search(q[None], K, nprobe=args.nprobe, rerank=rows, k_factor=args.k_factor)

    if args.loop:
        for _ in range(args.loop):
            search()
        return
    candidates = scan()
    rerank = lambda: index.rerank_candidates(queries, candidates, K, rows)  # noqa: E731
    print(f"n={args.n} nlist={args.nlist} nprobe={args.nprobe} k_factor={args.k_factor}, "
          f"1000 queries, {'float16' if args.fp16 else 'float32'} rows, labels md5 "
          f"{hashlib.md5(search().tobytes()).hexdigest()[:12]}")
    print(f"  batch with re-ranking {cpu_ms(search, args.repeats):8.1f} ms CPU")
    print(f"  scan alone (k={k_scan})  {cpu_ms(scan, args.repeats):8.1f} ms CPU")
    print(f"  re-ranking alone      {cpu_ms(rerank, args.repeats):8.1f} ms CPU")
    print(f"  200 single queries    {cpu_ms(single, args.repeats):8.1f} ms CPU")

if __name__ == "__main__":
    main()
