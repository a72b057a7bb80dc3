"""IVF-PQ on the CPU: retro against faiss IndexIVFPQ on the same data, parameters and threads.

    python bench/ivfpq.py                      # full run: 1M x 384 synthetic + real text embeddings
    python bench/ivfpq.py --quick              # ~3 minutes: 100k x 384 synthetic, the demo
    python bench/ivfpq.py --families fastscan --nq 1000   # only the 4-bit fast-scan comparison
    python bench/ivfpq.py --datasets text --families opq  # OPQ<m>,IVF..,PQ<m> against faiss's
    python bench/ivfpq.py --device cuda --budget-s 300    # the GPU index: bench/ivfpq_cuda.py

For each dataset both engines train on the same sample with the same k-means iterations, add the
same vectors, and search the same queries for nprobe in 1..256 with 1 and 2 threads: recall@10
against exact search (faiss IndexFlat), queries per second for a batch of queries and for single
queries (medians of interleaved repeats, each with its CPU share).

Two families of indexes, each against its faiss counterpart with equal code bytes per vector:
"pq8" is 8-bit PQ (IndexIVFPQ, with IndexRefineFlat re-ranking rows on the text data), "fastscan"
is 4-bit fast-scan PQ with twice the sub-quantizers ("IVF..,PQ<2m>x4fs") and exact re-ranking of
k * k_factor candidates against the float32 base vectors (IndexRefineFlat), which is how both reach
recall@10 0.90 and 0.95; its summary compares the best QPS of each engine over all (nprobe,
k_factor) at those recalls. The re-ranking vectors (n x d float32) are stored apart from the codes.
A third family, "opq", is the 8-bit one behind an OPQ rotation ("OPQ<m>,IVF<nlist>,PQ<m>", faiss's
IndexPreTransform(OPQMatrix, IndexIVFPQ)), both rotations trained with faiss's OPQMatrix defaults.
Every family is also compared at equal recall: each engine's QPS interpolated at recall@10 0.5,
0.7 and 0.9 on its recall-QPS curve (bench/equal_recall.py).

Each family's rows go to their own JSON (bench/results/ivfpq_cpu.json for pq8,
ivfpq_cpu_<family>[_residual].json for the others, ivfpq_cpu_quick* with --quick), beside a
recall-QPS plot per dataset (<json stem>_<dataset>.png); bench/render.py renders the tables of
docs/PERFORMANCE.md from them (bench/ivfpq_results.py), which the run does at its end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vector_sets  # noqa: E402  (bench/vector_sets.py, beside this file)
import render  # noqa: E402
import report  # noqa: E402
import ivfpq_results  # noqa: E402
from ivfpq_results import (  # noqa: E402
    K, OPQ, PQ8, DatasetResult, BuildRow, SearchRow, summarize, summarize_equal_recall, summarize_fast_scan,
)

import retro  # noqa: E402
from retro.machine import cpu_model  # noqa: E402

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
IDLE_LOAD = 0.5  # 1-minute load average below which the machine counts as idle


# --- data -----------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Base vectors (n, d), queries (nq, d), both float32, and the index parameters used on them."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    nlist: int
    pq_m: int
    train_size: int  # the same training sample for both engines: base[:train_size]
    niter: int
    # k_factors of the fast-scan rows: the synthetic clusters are hard for PQ (8-bit recall@10
    # saturates at 0.29), so recall 0.90 needs more re-ranked candidates there than on real text
    fs_k_factors: tuple[int, ...] = (2, 4, 8, 16)


def synthetic_dataset(n: int, nq: int, d: int = 384) -> Dataset:
    base, queries = vector_sets.synthetic_clustered_split(n, nq, d, seed=0)
    nlist = 4096 if n >= 1_000_000 else 1024
    return Dataset(f"synthetic-{n // 1000}k", base, queries, nlist, d // 8, 64 * nlist, 10, (8, 16, 32, 64))


def text_dataset(nq: int) -> Dataset:
    """Real MiniLM embeddings of Wikipedia/Factbook/KJV chunks; nq seeded rows held out as queries."""
    vectors = vector_sets.text_embeddings()
    held_out = np.random.default_rng(0).permutation(len(vectors))
    queries, base = vectors[held_out[:nq]], vectors[np.sort(held_out[nq:])]
    nlist = 1024
    return Dataset(f"text-{len(base) // 1000}k", base, queries, nlist, 48, len(base), 10)


def ground_truth(data: Dataset) -> np.ndarray:
    """(nq, K) exact neighbours by faiss IndexFlatL2 (the anchor's exact search), cached on disk."""
    import faiss

    digest = hashlib.sha256()
    for array in (data.base[:: max(1, len(data.base) // 1000)], data.queries):
        digest.update(np.ascontiguousarray(array).tobytes())
    path = vector_sets.DEFAULT_CACHE_DIR / f"gt_{data.name}_{len(data.base)}_{digest.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    exact = faiss.IndexFlatL2(data.base.shape[1])
    exact.add(data.base)
    _, labels = exact.search(data.queries, K)
    path.parent.mkdir(parents=True, exist_ok=True)
    vector_sets.save_atomically(labels, path)
    return labels


def recall_at_k(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-K found in the returned top-K."""
    hits = sum(len(set(row) & set(true_row)) for row, true_row in zip(labels, truth))
    return hits / truth.size


# --- engines ---------------------------------------------------------------------------------------


class RetroEngine:
    """retro's IvfPqIndex: 8-bit PQ with data.pq_m sub-quantizers (behind an OPQ rotation with as
    many, if opq), or 4-bit fast-scan with twice as many (the same code bytes per vector) of the
    vectors themselves, as faiss's fast-scan index."""

    def __init__(self, data: Dataset, pq_bits: int = 8, by_residual: bool = True, opq: bool = False) -> None:
        pq_m = data.pq_m if pq_bits == 8 else 2 * data.pq_m
        self.name = OPQ.ours if opq else PQ8.ours if pq_bits == 8 else "retro-fs"
        self.index = retro.IvfPqIndex(data.base.shape[1], data.nlist, pq_m, pq_bits, by_residual=by_residual,
                                      opq_m=data.pq_m if opq else 0)
        self.index.niter = data.niter

    def train(self, x: np.ndarray) -> None:
        self.index.train(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def objective(self) -> float:
        return self.index.coarse_objective

    def search(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        return self.index.search(x, K, nprobe=nprobe)[1]


class FaissEngine:
    """faiss IndexIVFPQ (8-bit; behind an OPQMatrix if opq, "OPQ<m>,IVF<nlist>,PQ<m>np") or
    IndexIVFPQFastScan ("IVF<nlist>,PQ<2 pq_m>x4fs")."""

    def __init__(self, data: Dataset, pq_bits: int = 8, by_residual: bool = True, opq: bool = False) -> None:
        import faiss

        d = data.base.shape[1]
        if opq:  # np: no polysemous training, as the plain IndexIVFPQ below
            self.name = OPQ.theirs
            self.index = faiss.index_factory(d, f"OPQ{data.pq_m},IVF{data.nlist},PQ{data.pq_m}np")
        elif pq_bits == 8:
            self.name = PQ8.theirs
            self.quantizer = faiss.IndexFlatL2(d)
            self.index = faiss.IndexIVFPQ(self.quantizer, d, data.nlist, data.pq_m, 8)
        else:
            self.name = "faiss-fs"
            self.index = faiss.index_factory(d, f"IVF{data.nlist},PQ{2 * data.pq_m}x4fs")  # IndexIVFPQFastScan
            self.index.by_residual = by_residual  # faiss's default is False
        self.ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
        self.ivf.cp.niter = data.niter
        self.ivf.pq.cp.niter = data.niter
        self.ivf.cp.verbose = False

    def train(self, x: np.ndarray) -> None:
        self.index.train(x)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def objective(self) -> float:
        return float("nan")  # faiss's IndexIVF does not keep its clustering's objective

    def search(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        self.ivf.nprobe = nprobe
        return self.index.search(x, K)[1]


class RetroRerankEngine:
    """retro's IVF-PQ with exact re-ranking of K * k_factor candidates against the base vectors."""

    def __init__(self, engine: RetroEngine, base: np.ndarray, k_factor: int) -> None:
        self.engine, self.base, self.k_factor = engine, base, k_factor
        self.name = f"{engine.name}+rerank{k_factor}"

    def search(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        return self.engine.index.search(x, K, nprobe=nprobe, rerank=self.base, k_factor=self.k_factor)[1]


class FaissRefineEngine:
    """faiss IndexRefineFlat around the same IndexIVFPQ: its exact re-ranking."""

    def __init__(self, engine: FaissEngine, base: np.ndarray, k_factor: int) -> None:
        import faiss

        self.engine = engine
        self.refine = faiss.IndexRefineFlat(engine.index, faiss.swig_ptr(base))
        self.refine.k_factor = k_factor
        self.name = f"{engine.name}+refine{k_factor}"

    def search(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        self.engine.ivf.nprobe = nprobe
        return self.refine.search(x, K)[1]


def set_threads(n: int) -> None:
    import faiss

    retro.set_num_threads(n)
    faiss.omp_set_num_threads(n)


# --- timing ----------------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float  # median wall time
    cpu_share: float  # CPU seconds / wall seconds of the median run (2.0 = two busy cores)


MAX_IDLE_WAIT = [120.0]  # seconds wait_for_idle() waits at most (--max-idle-wait)


def wait_for_idle(max_wait: float | None = None) -> float:
    """Waits until the 1-minute load average falls below IDLE_LOAD; returns the load seen."""
    max_wait = MAX_IDLE_WAIT[0] if max_wait is None else max_wait
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    while load > IDLE_LOAD and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    if load > IDLE_LOAD:
        print(f"  warning: machine not idle (load {load:.2f}); timings may be pessimistic")
    return load


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds of fn() and the CPU seconds of all this process's threads per wall second
    (process_time: nanoseconds, where os.times() counted 10 ms ticks, coarse for short batches)."""
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return wall, (time.process_time() - cpu) / wall


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Runs each function `repeats` times, alternating the order, and keeps medians."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    names = list(fns)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            runs[name].append(timed(fns[name]))
    result = {}
    for name, samples in runs.items():
        samples.sort()
        wall, share = samples[len(samples) // 2]
        result[name] = Timing(wall, share)
    return result


# --- the benchmark ---------------------------------------------------------------------------------


def build_engines(
    data: Dataset, threads: int, repeats: int, result: DatasetResult, pq_bits: int = 8, by_residual: bool = True,
    opq: bool = False,
):
    """Trains and adds with both engines `repeats` times (interleaved); keeps the last pair."""
    train_x = data.base[: data.train_size]
    engines: dict[str, object] = {}
    timings: dict[str, list[tuple[float, float]]] = {}
    set_threads(threads)
    for repeat in range(repeats):
        for cls in (RetroEngine, FaissEngine) if repeat % 2 == 0 else (FaissEngine, RetroEngine):
            wait_for_idle()
            engine = cls(data, pq_bits, by_residual, opq)
            train_s, _ = timed(lambda: engine.train(train_x))
            add_s, _ = timed(lambda: engine.add(data.base))
            timings.setdefault(engine.name, []).append((train_s, add_s))
            engines[engine.name] = engine
            print(f"  {engine.name:8s} train {train_s:7.2f} s  add {add_s:7.2f} s")
    for name, samples in timings.items():
        result.build.append(
            BuildRow(
                data.name,
                name,
                threads,
                statistics.median(s[0] for s in samples),
                statistics.median(s[1] for s in samples),
                engines[name].objective(),
                data.train_size,
                data.niter,
            )
        )
    ours = next(e for e in engines.values() if isinstance(e, RetroEngine))
    theirs = next(e for e in engines.values() if isinstance(e, FaissEngine))
    return ours, theirs


def search_grid(
    data: Dataset,
    engines: list,
    truth: np.ndarray,
    threads: int,
    nprobes: tuple[int, ...],
    repeats: int,
    n_single: int,
    result: DatasetResult,
) -> None:
    set_threads(threads)
    singles = data.queries[:n_single]
    for nprobe in nprobes:
        if nprobe > data.nlist:
            continue
        load = wait_for_idle()
        labels = {e.name: e.search(data.queries, nprobe) for e in engines}
        batch = interleaved({e.name: (lambda e=e: e.search(data.queries, nprobe)) for e in engines}, repeats)
        single = (
            interleaved(
                {e.name: (lambda e=e: [e.search(singles[i : i + 1], nprobe) for i in range(n_single)]) for e in engines},
                repeats,
            )
            if n_single
            else {}
        )
        for e in engines:
            row = SearchRow(
                data.name,
                e.name,
                threads,
                nprobe,
                recall_at_k(labels[e.name], truth),
                len(data.queries) / batch[e.name].seconds,
                batch[e.name].cpu_share,
                n_single / single[e.name].seconds if single else None,
                load,
            )
            result.search.append(row)
            single_text = f"{row.single_qps:9.0f}" if row.single_qps else "        -"
            print(
                f"  t={threads} nprobe {nprobe:3d} {e.name:17s} recall@{K} {row.recall:.3f}  "
                f"batch {row.batch_qps:9.0f} qps (cpu {row.batch_cpu_share:.2f})  single {single_text} qps"
            )


# --- main ------------------------------------------------------------------------------------------


def run_dataset(data: Dataset, args: argparse.Namespace) -> tuple[DatasetResult, list[dict]]:
    print(f"== {data.name}: base {data.base.shape}, queries {data.queries.shape}, IVF{data.nlist},PQ{data.pq_m}, "
          f"train sample {data.train_size}, {data.niter} k-means iterations")
    truth = ground_truth(data)
    result = DatasetResult(data.name, len(data.base), len(data.queries), data.base.shape[1], data.nlist, data.pq_m)
    threads_list = sorted(args.threads, reverse=True)
    summaries = []
    for family in (PQ8, OPQ):
        if family.name not in args.families:
            continue
        ours, theirs = build_engines(data, threads_list[0], args.build_repeats, result, opq=family.opq)
        for threads in threads_list:
            search_grid(data, [ours, theirs], truth, threads, args.nprobes, args.repeats, args.single, result)
        if args.rerank and data.name.startswith("text"):
            rerankers = [RetroRerankEngine(ours, data.base, f) for f in args.rerank] + [
                FaissRefineEngine(theirs, data.base, f) for f in args.rerank
            ]
            search_grid(data, rerankers, truth, threads_list[0], args.nprobes, args.repeats, 0, result)
        summaries += [summarize(result, t, family) for t in threads_list]
        del ours, theirs
    if "fastscan" in args.families:
        k_factors = args.fs_k_factors or data.fs_k_factors
        print(f"  fast-scan: IVF{data.nlist},PQ{2 * data.pq_m}x4fs + exact re-ranking, "
              f"{min(args.fs_nq, len(data.queries))} queries, k_factors {k_factors}")
        ours, theirs = build_engines(data, threads_list[0], args.build_repeats, result, pq_bits=4,
                                     by_residual=args.fs_residual)
        fs_data = replace(data, queries=data.queries[: args.fs_nq])
        rerankers = [RetroRerankEngine(ours, data.base, f) for f in k_factors] + [
            FaissRefineEngine(theirs, data.base, f) for f in k_factors
        ]
        for threads in threads_list:
            search_grid(fs_data, rerankers, truth[: args.fs_nq], threads, args.nprobes, args.repeats,
                        args.single, result)
        summaries += [summarize_fast_scan(result, t) for t in threads_list]
    for s in summaries:
        print("  summary:", json.dumps(s))
    return result, summaries


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    known, rest = pre.parse_known_args()
    if known.device == "cuda":  # its own options: bench/ivfpq_cuda.py --help
        import ivfpq_cuda

        return ivfpq_cuda.main(rest)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU index (bench/ivfpq_cuda.py and its options)")
    parser.add_argument("--quick", action="store_true",
                        help="100k synthetic only; writes ivfpq_cpu_quick[_<family>].json, no tables")
    parser.add_argument("--datasets", default="synthetic,text", help="comma list of synthetic, text")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic base size")
    parser.add_argument("--nq", type=int, default=10_000, help="queries per batch")
    parser.add_argument("--single", type=int, default=500, help="queries timed one by one")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    parser.add_argument("--nprobes", type=lambda s: tuple(int(p) for p in s.split(",")), default=NPROBES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--rerank", type=lambda s: [int(f) for f in s.split(",")], default=[4, 16],
                        help="k_factors for the 8-bit re-ranking rows (text dataset)")
    parser.add_argument("--families", type=lambda s: s.split(","), default=["pq8", "fastscan"],
                        help="comma list of pq8 (8-bit IndexIVFPQ), fastscan (4-bit PQ..x4fs + re-ranking) "
                             "and opq (8-bit behind an OPQ rotation, OPQ<m>,IVF..,PQ<m>)")
    parser.add_argument("--fs-k-factors", type=lambda s: [int(f) for f in s.split(",")], default=None,
                        help="k_factors of the fast-scan rows (default: 8,16,32,64 synthetic, 2,4,8,16 text)")
    parser.add_argument("--fs-nq", type=int, default=1000, help="queries per batch of the fast-scan rows")
    parser.add_argument("--fs-residual", action="store_true",
                        help="fast-scan codes of the residuals (by_residual=True) in both engines, instead "
                             "of the vectors (faiss's default); results go to their own JSON and section")
    parser.add_argument("--tag", default="",
                        help="appended to the JSONs' names, e.g. avx2 for a run held to AVX2 "
                             "(RETRO_SIMD=avx2 FAISS_SIMD_LEVEL=AVX2 ATEN_CPU_CAPABILITY=avx2)")
    parser.add_argument("--max-idle-wait", type=float, default=120.0,
                        help="seconds to wait for an idle machine before each measurement (a shared "
                             "machine may never be idle: ratios measured in one process stay valid)")
    args = parser.parse_args()
    MAX_IDLE_WAIT[0] = args.max_idle_wait
    if args.quick:
        args.datasets, args.n, args.nq, args.single = "synthetic", 100_000, 2_000, 200
        args.nprobes, args.repeats, args.build_repeats, args.threads = (1, 4, 16, 64), 3, 1, [os.cpu_count() or 1]
        args.fs_k_factors = [8, 32]

    import faiss

    print(f"retro {retro.__version__} ({retro.simd_level()}) vs faiss {faiss.__version__} on {cpu_model()}")
    results, summaries = [], {}
    for name in args.datasets.split(","):
        data = synthetic_dataset(args.n, args.nq) if name == "synthetic" else text_dataset(args.nq)
        result, dataset_summaries = run_dataset(data, args)
        results.append(result)
        summaries[result.name] = dataset_summaries
        del data

    written: list[tuple[Path, dict]] = []
    for family in args.families:  # one JSON per family, as its table in docs/PERFORMANCE.md
        stem = result_stem(args.quick, family, args.fs_residual) + (f"_{args.tag}" if args.tag else "")
        path = report.RESULTS_DIR / f"{stem}.json"
        rows = [r.of_family(family) for r in results]
        payload = {"results": [asdict(r) for r in rows],
                   "summaries": {name: [s for s in listed if s and s["family"] == family]
                                 for name, listed in summaries.items()},
                   "equal_recall": {r.name: summarize_equal_recall(r, family) for r in rows}}
        written.append((path, report.write_result(path, payload, threads=max(args.threads))))
        print(f"wrote {path}")
    # Plots and tables last: a tracked file rewritten before a family's JSON is written would
    # mark that JSON's tree dirty.
    for path, record in written:
        print(f"drew {', '.join(p.name for p in ivfpq_results.plot_result(path, record))}")
    tables = [name for path, _ in written for name in render.write_tables(path)]
    if tables:
        print(f"rewrote the tables {', '.join(tables)}")


def result_stem(quick: bool, family: str, residual: bool) -> str:
    """The name of one family's JSON in bench/results: ivfpq_cpu[_quick][_<family>][_residual]
    (the pq8 family has no suffix; _residual: fast-scan codes of the residuals)."""
    stem = "ivfpq_cpu" + ("_quick" if quick else "") + ("" if family == PQ8.name else f"_{family}")
    return stem + ("_residual" if residual and family == "fastscan" else "")


if __name__ == "__main__":
    main()
