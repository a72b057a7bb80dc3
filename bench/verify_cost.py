"""What verifying an index file on load costs: IvfPqIndex.load of a 1M-vector IVF1024,PQ32 index
(d = 128) with verify=True (the default: one xxh64 pass over the codes, ids and terms) and
verify=False, memory-mapped and read, warm page cache, medians of interleaved repeats.

    python bench/verify_cost.py [--out DIR] [--repeats 7]

Writes bench/results/verify_cost.json (with the run's provenance); docs/RELIABILITY.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py)

import retro  # noqa: E402

N, D, NLIST, PQ_M, N_TRAIN = 1_000_000, 128, 1024, 32, 65_536


def build(path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, D), dtype=np.float32)
    index = retro.IvfPqIndex(D, NLIST, PQ_M, seed=0)
    index.niter = 10
    index.train(centres[rng.integers(0, 4096, N_TRAIN)] +
                0.3 * rng.standard_normal((N_TRAIN, D), dtype=np.float32))
    for start in range(0, N, 100_000):
        x = centres[rng.integers(0, 4096, 100_000)] + \
            0.3 * rng.standard_normal((100_000, D), dtype=np.float32)
        index.add(x)
    index.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/verify_cost"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    path = args.out / "index_1m.ivfpq"
    if not path.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(path)
        print(f"built {path} in {time.perf_counter() - started:.0f} s")
    retro.IvfPqIndex.load(path, mmap=False)  # warm the page cache
    times = {(mmap, verify): [] for mmap in (True, False) for verify in (True, False)}
    for _ in range(args.repeats):
        for mmap, verify in times:
            started = time.perf_counter()
            index = retro.IvfPqIndex.load(path, mmap=mmap, verify=verify)
            times[(mmap, verify)].append(time.perf_counter() - started)
            del index
    rows = {f"{'mmap' if mmap else 'read'}, verify={verify}": 1e3 * statistics.median(t)
            for (mmap, verify), t in times.items()}
    result = {"file_bytes": path.stat().st_size, "vectors": N, "spec": f"IVF{NLIST},PQ{PQ_M}",
              "d": D, "median_ms": rows}
    print(json.dumps(result, indent=2))
    report.write_result(report.RESULTS_DIR / "verify_cost.json", result, threads=retro.get_num_threads())


if __name__ == "__main__":
    main()
