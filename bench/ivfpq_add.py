"""Adding vectors: retro against faiss on the same trained quantizers, interleaved repeats.

    python bench/ivfpq_add.py --spec OPQ48,IVF1024,PQ48

bench/ivfpq.py times each build once where training takes minutes (OPQ), so its add times are
single samples; this measures add alone: retro trains the index once (an OPQ rotation with 2
alternations: add does not depend on its quality), faiss gets the same quantizers through
retro.index.faiss.to_faiss, then both add the text-57k base vectors `--repeats` times each in
alternating order. Writes bench/results/ivfpq_add_<spec>.json (with the run's provenance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import vector_sets  # noqa: E402  (bench/vector_sets.py, beside this file)

import retro  # noqa: E402
from retro.index.faiss import to_faiss  # noqa: E402
from retro.index.opq import OpqTrainParams  # noqa: E402

TEXT_BASE_ROWS = 57988  # the text-57k base of bench/ivfpq.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="OPQ48,IVF1024,PQ48", help="retro.index_factory string (8-bit)")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    x = vector_sets.text_embeddings()[:TEXT_BASE_ROWS]
    ours = retro.index_factory(x.shape[1], args.spec)
    ours.niter = 10
    ours.opq_train_params = OpqTrainParams(niter=2, niter_pq_0=4)
    ours.train(x)
    theirs = to_faiss(ours)
    seconds: dict[str, list[float]] = {"retro": [], "faiss": []}
    for repeat in range(args.repeats):
        for name in ("retro", "faiss") if repeat % 2 == 0 else ("faiss", "retro"):
            index = ours if name == "retro" else theirs
            index.reset()
            start = time.perf_counter()
            index.add(x)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    pairs = [a / b for a, b in zip(seconds["retro"], seconds["faiss"])]
    result = {
        "spec": args.spec,
        "n": len(x),
        "seconds": seconds,
        "median_seconds": medians,
        "median_ratio_of_pairs": statistics.median(pairs),
    }
    print(json.dumps(result))
    report.write_result(report.RESULTS_DIR / f"ivfpq_add_{args.spec.replace(',', '_')}.json", result,
                        threads=retro.get_num_threads())


if __name__ == "__main__":
    main()
