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
The full run writes bench/results/ivfpq_cpu.json, bench/results/ivfpq_cpu.png and the table in
docs/PERFORMANCE.md.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import vector_sets  # noqa: E402  (bench/vector_sets.py, beside this file)

import retro  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
FAST_SCAN_ENGINES = ("retro-fs", "faiss-fs")  # engine names (and prefixes) of the fast-scan family


@dataclass(frozen=True)
class PairFamily:
    """Two engines compared at equal nprobe: the 8-bit family, with or without OPQ."""

    name: str  # --families entry and the summaries' "family"
    ours: str  # engine names
    theirs: str
    section: str  # its markers in docs/PERFORMANCE.md
    opq: bool


PQ8 = PairFamily("pq8", "retro", "faiss", "ivfpq-cpu", opq=False)
OPQ = PairFamily("opq", "retro-opq", "faiss-opq", "ivfpq-opq-cpu", opq=True)


def fast_scan_section(residual: bool) -> str:
    """The PERFORMANCE.md markers of the fast-scan rows: codes of the vectors (faiss's default) or,
    with --fs-residual, of their residuals."""
    return "ivfpq-fastscan-residual-cpu" if residual else "ivfpq-fastscan-cpu"


def is_fast_scan(engine: str) -> bool:
    return engine.startswith(FAST_SCAN_ENGINES)
K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
IDLE_LOAD = 0.5  # 1-minute load average below which the machine counts as idle
RECALL_TARGETS = (0.90, 0.95)  # where the fast-scan family is compared


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
    before, start = os.times(), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return wall, cpu / wall


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


@dataclass
class SearchRow:
    dataset: str
    engine: str
    threads: int
    nprobe: int
    recall: float
    batch_qps: float
    batch_cpu_share: float
    single_qps: float | None = None


@dataclass
class BuildRow:
    dataset: str
    engine: str
    threads: int
    train_seconds: float
    add_seconds: float
    coarse_objective: float
    train_size: int
    niter: int


@dataclass
class DatasetResult:
    name: str
    n: int
    nq: int
    d: int
    nlist: int
    pq_m: int
    build: list[BuildRow] = field(default_factory=list)
    search: list[SearchRow] = field(default_factory=list)


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
        wait_for_idle()
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
            )
            result.search.append(row)
            single_text = f"{row.single_qps:9.0f}" if row.single_qps else "        -"
            print(
                f"  t={threads} nprobe {nprobe:3d} {e.name:17s} recall@{K} {row.recall:.3f}  "
                f"batch {row.batch_qps:9.0f} qps (cpu {row.batch_cpu_share:.2f})  single {single_text} qps"
            )


# --- summary against the targets ------------------------------------------------------------------


def qps_at_recall(rows: list[SearchRow], recall: float, attribute: str) -> float | None:
    """QPS at the given recall, log-linearly interpolated along the engine's nprobe curve."""
    points = sorted((r.recall, getattr(r, attribute)) for r in rows if getattr(r, attribute))
    for (r0, q0), (r1, q1) in zip(points, points[1:]):
        if r0 <= recall <= r1:
            if r1 == r0:
                return max(q0, q1)
            w = (recall - r0) / (r1 - r0)
            return float(np.exp((1 - w) * np.log(q0) + w * np.log(q1)))
    if points and points[0][0] >= recall:  # already there at the smallest nprobe
        return points[0][1]
    return None


def summarize_fast_scan(result: DatasetResult, threads: int) -> dict:
    """At each recall target, the best batch QPS of each fast-scan engine over all its (nprobe,
    k_factor) rows that reach it, that row's single-query QPS, and the ratios retro / faiss."""
    rows = [r for r in result.search if r.threads == threads]
    summary: dict = {"family": "fastscan", "threads": threads}
    for target in RECALL_TARGETS:
        best = {}
        for prefix in ("retro-fs+", "faiss-fs+"):
            reaching = [r for r in rows if r.engine.startswith(prefix) and r.recall >= target]
            best[prefix[:-1]] = max(reaching, key=lambda r: r.batch_qps, default=None)
        ours, theirs = best["retro-fs"], best["faiss-fs"]
        entry = {name: asdict(row) if row else None for name, row in best.items()}
        if ours and theirs:
            entry["batch_ratio"] = ours.batch_qps / theirs.batch_qps
            if ours.single_qps and theirs.single_qps:
                entry["single_ratio"] = ours.single_qps / theirs.single_qps
        summary[f"recall_{target:.2f}"] = entry
    return summary


def summarize(result: DatasetResult, threads: int, family: PairFamily = PQ8) -> dict:
    rows = [r for r in result.search if r.threads == threads]
    ours = sorted((r for r in rows if r.engine == family.ours), key=lambda r: r.nprobe)
    theirs = sorted((r for r in rows if r.engine == family.theirs), key=lambda r: r.nprobe)
    if not ours or not theirs:
        return {}
    best = max(r.recall for r in theirs)
    anchor = next(r for r in theirs if r.recall >= 0.95 * best)
    summary = {
        "family": family.name,
        "threads": threads,
        "faiss_best_recall": best,
        "anchor_nprobe": anchor.nprobe,
        "anchor_recall": anchor.recall,
        "max_recall_gap": max(abs(a.recall - b.recall) for a, b in zip(ours, theirs)),
    }
    for attribute in ("batch_qps", "single_qps"):
        theirs_qps = getattr(anchor, attribute)
        ours_qps = qps_at_recall(ours, anchor.recall, attribute)
        summary[f"{attribute}_faiss"] = theirs_qps
        summary[f"{attribute}_retro"] = ours_qps
        summary[f"{attribute}_ratio"] = ours_qps / theirs_qps if ours_qps and theirs_qps else None
    builds = {b.engine: b for b in result.build}
    if family.ours in builds and family.theirs in builds:
        summary["train_ratio"] = builds[family.ours].train_seconds / builds[family.theirs].train_seconds
        summary["add_ratio"] = builds[family.ours].add_seconds / builds[family.theirs].add_seconds
    return summary


# --- reports ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    import faiss

    return {
        **report.machine_info(),
        "retro_simd": retro.simd_level(),
        "retro_version": retro.__version__,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
    }


def pareto(rows: list[SearchRow], attribute: str) -> list[SearchRow]:
    """The rows no other row beats in both recall and QPS, by increasing recall: an engine's best
    configurations when it has several knobs (nprobe and k_factor)."""
    front: list[SearchRow] = []
    for row in sorted(rows, key=lambda r: (-r.recall, -getattr(r, attribute))):
        if not front or getattr(row, attribute) > getattr(front[-1], attribute):
            front.append(row)
    return front[::-1]


def plot(results: list[DatasetResult], path: Path) -> None:
    """QPS against recall: one curve per engine and thread count along nprobe; the fast-scan
    engines (several k_factors each) as the Pareto front over all their (nprobe, k_factor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    colors = {"retro": "C0", "faiss": "C1", "retro-fs": "C2", "faiss-fs": "C3", "retro-opq": "C4",
              "faiss-opq": "C5"}
    for row_axes, result in zip(axes, results):
        for ax, attribute, title in zip(row_axes, ("batch_qps", "single_qps"), ("batch", "single queries")):
            curves: dict[tuple[str, int], list[SearchRow]] = {}
            for r in result.search:
                if getattr(r, attribute):
                    name = r.engine.split("+")[0] if is_fast_scan(r.engine) else r.engine
                    curves.setdefault((name, r.threads), []).append(r)
            top_threads = max((t for _, t in curves), default=1)
            for (name, threads), rows in sorted(curves.items()):
                if is_fast_scan(name):
                    rows = pareto(rows, attribute)
                else:
                    rows = sorted(rows, key=lambda r: r.nprobe)
                style = "-" if threads == top_threads else ":"
                marker = "s" if "rerank" in name or "refine" in name or is_fast_scan(name) else "o"
                label = f"{name} + re-ranking (best of nprobe, k_factor)" if is_fast_scan(name) else name
                ax.plot([r.recall for r in rows], [getattr(r, attribute) for r in rows], style,
                        color=colors[name.split("+")[0]], marker=marker, label=f"{label}, {threads} thr")
            ax.set_yscale("log")
            ax.set_xlabel(f"recall@{K}")
            ax.set_ylabel("queries / s")
            engines = {r.engine.split("+")[0] for r in result.search}
            codes = [code for code, shown in ((f"PQ{result.pq_m}", PQ8.ours in engines),
                                              (f"OPQ{result.pq_m},PQ{result.pq_m}", OPQ.ours in engines),
                                              (f"PQ{2 * result.pq_m}x4fs", FAST_SCAN_ENGINES[0] in engines))
                     if shown]
            ax.set_title(f"{result.name} (nlist {result.nlist}; {', '.join(codes)}): {title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: list[DatasetResult], summaries: dict, machine: dict, family: PairFamily = PQ8) -> str:
    begin, end = report.markers(family.section)
    ours_name, theirs_name = family.ours, family.theirs
    lines = [
        begin,
        f"Machine: {machine['cpu']}, {machine['cores']} cores, retro SIMD `{machine['retro_simd']}`, "
        f"faiss-cpu {machine['faiss_version']}, commit `{machine['git_commit']}`, {machine['date']}.",
        f"Command: `python {machine['command']}`. Medians of interleaved repeats; recall@{K} against "
        "faiss IndexFlatL2. Ratio = retro / faiss.",
        "",
    ]
    for result in results:
        opq = f"OPQ{result.pq_m}," if family.opq else ""
        lines += [f"### {result.name}: {result.n:,} x {result.d}, {result.nq:,} queries, "
                  f"{opq}IVF{result.nlist},PQ{result.pq_m}", ""]
        lines += ["| engine | threads | train s | add s | k-means objective |", "|---|---|---|---|---|"]
        for b in result.build:
            if b.engine not in (ours_name, theirs_name):
                continue
            lines.append(f"| {b.engine} | {b.threads} | {b.train_seconds:.2f} | {b.add_seconds:.2f} | {b.coarse_objective:.6g} |")
        lines += ["", "| threads | nprobe | recall retro | recall faiss | batch QPS retro | batch QPS faiss | ratio | single QPS retro | single QPS faiss | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by_key = {(r.engine, r.threads, r.nprobe): r for r in result.search}
        for (engine, threads, nprobe), ours in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if engine != ours_name or (theirs_name, threads, nprobe) not in by_key:
                continue
            theirs = by_key[(theirs_name, threads, nprobe)]
            single = (
                f"{ours.single_qps:,.0f} | {theirs.single_qps:,.0f} | {ours.single_qps / theirs.single_qps:.2f}"
                if ours.single_qps and theirs.single_qps else "- | - | -"
            )
            lines.append(
                f"| {threads} | {nprobe} | {ours.recall:.3f} | {theirs.recall:.3f} | {ours.batch_qps:,.0f} | "
                f"{theirs.batch_qps:,.0f} | {ours.batch_qps / theirs.batch_qps:.2f} | {single} |"
            )
        rerank = [r for r in result.search if r.engine.startswith((ours_name + "+", theirs_name + "+"))]
        if rerank:
            lines += ["", "With exact re-ranking (batch):", "", "| engine | threads | nprobe | recall | batch QPS |", "|---|---|---|---|---|"]
            for r in sorted(rerank, key=lambda r: (r.engine, r.threads, r.nprobe)):
                lines.append(f"| {r.engine} | {r.threads} | {r.nprobe} | {r.recall:.3f} | {r.batch_qps:,.0f} |")
        for s in summaries.get(result.name, []):
            if not s or s["family"] != family.name:
                continue
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            lines += ["", f"Summary, {s['threads']} thread(s): faiss reaches 95% of its best recall@{K} "
                      f"({s['faiss_best_recall']:.3f}) at nprobe {s['anchor_nprobe']} (recall {s['anchor_recall']:.3f}); "
                      f"at that recall retro/faiss QPS = **{fmt(s['batch_qps_ratio'])}x** batch, "
                      f"**{fmt(s['single_qps_ratio'])}x** single; largest recall gap at equal nprobe "
                      f"{s['max_recall_gap']:.3f}"
                      + (f"; train {fmt(s['train_ratio'])}x, add {fmt(s['add_ratio'])}x faiss's time." if "train_ratio" in s else ".")]
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


def markdown_fast_scan(results: list[DatasetResult], summaries: dict, machine: dict, residual: bool = False) -> str:
    """The fast-scan family: build times, every (threads, k_factor, nprobe) row side by side, and
    the best QPS of each engine at the recall targets."""
    begin, end = report.markers(fast_scan_section(residual))
    lines = [
        begin,
        f"Machine: {machine['cpu']}, {machine['cores']} cores, retro SIMD `{machine['retro_simd']}`, "
        f"faiss-cpu {machine['faiss_version']}, commit `{machine['git_commit']}`, {machine['date']}.",
        f"Command: `python {machine['command']}`. Medians of interleaved repeats; recall@{K} against "
        f"faiss IndexFlatL2; both engines code the {'residuals (by_residual=True)' if residual else 'vectors themselves (by_residual=False)'} "
        "and re-rank k * k_factor candidates exactly against the float32 base vectors (faiss: "
        "IndexRefineFlat). Ratio = retro / faiss.",
        "",
    ]
    fmt = lambda v: "-" if not v else f"{v:,.0f}"  # noqa: E731
    for result in results:
        rows = [r for r in result.search if is_fast_scan(r.engine)]
        if not rows:
            continue
        fs_m = 2 * result.pq_m
        lines += [f"### {result.name}: {result.n:,} x {result.d}, IVF{result.nlist},PQ{fs_m}x4fs "
                  f"({fs_m // 2} code bytes per vector; re-ranking vectors {4 * result.d} bytes per vector, apart)", ""]
        lines += ["| engine | threads | train s | add s |", "|---|---|---|---|"]
        for b in result.build:
            if is_fast_scan(b.engine):
                lines.append(f"| {b.engine} | {b.threads} | {b.train_seconds:.2f} | {b.add_seconds:.2f} |")
        for s in summaries.get(result.name, []):
            if s.get("family") != "fastscan":
                continue
            for target in RECALL_TARGETS:
                entry = s[f"recall_{target:.2f}"]
                ours, theirs = entry["retro-fs"], entry["faiss-fs"]
                describe = lambda row: (  # noqa: E731
                    "not reached" if row is None else
                    f"{row['batch_qps']:,.0f} QPS batch, {fmt(row['single_qps'])} single "
                    f"({row['engine'].split('+')[1]}, nprobe {row['nprobe']}, recall {row['recall']:.3f})")
                ratio = (f"**{entry['batch_ratio']:.2f}x** batch, **{entry.get('single_ratio', 0):.2f}x** single"
                         if "batch_ratio" in entry else "n/a")
                lines += ["", f"At recall@{K} >= {target:.2f}, {s['threads']} thread(s): retro {describe(ours)}; "
                          f"faiss {describe(theirs)}; retro / faiss = {ratio}."]
        lines += ["", "| threads | k_factor | nprobe | recall retro | recall faiss | batch QPS retro | batch QPS faiss | ratio | single QPS retro | single QPS faiss | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        by_key = {(r.engine, r.threads, r.nprobe): r for r in rows}
        ours_rows = [(key, row) for key, row in by_key.items() if key[0].startswith("retro-fs+")]
        k_factor_of = lambda engine: int(engine.split("rerank")[1])  # noqa: E731
        for (engine, threads, nprobe), ours in sorted(ours_rows, key=lambda kv: (kv[0][1], k_factor_of(kv[0][0]), kv[0][2])):
            k_factor = k_factor_of(engine)
            theirs = by_key.get((f"faiss-fs+refine{k_factor}", threads, nprobe))
            if theirs is None:
                continue
            single = (f"{fmt(ours.single_qps)} | {fmt(theirs.single_qps)} | {ours.single_qps / theirs.single_qps:.2f}"
                      if ours.single_qps and theirs.single_qps else "- | - | -")
            lines.append(f"| {threads} | {k_factor} | {nprobe} | {ours.recall:.3f} | {theirs.recall:.3f} | "
                         f"{ours.batch_qps:,.0f} | {theirs.batch_qps:,.0f} | {ours.batch_qps / theirs.batch_qps:.2f} | {single} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines)


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
    parser.add_argument("--quick", action="store_true", help="100k synthetic only; writes ivfpq_cpu_quick.json")
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
    parser.add_argument("--max-idle-wait", type=float, default=120.0,
                        help="seconds to wait for an idle machine before each measurement (a shared "
                             "machine may never be idle: ratios measured in one process stay valid)")
    args = parser.parse_args()
    MAX_IDLE_WAIT[0] = args.max_idle_wait
    if args.quick:
        args.datasets, args.n, args.nq, args.single = "synthetic", 100_000, 2_000, 200
        args.nprobes, args.repeats, args.build_repeats, args.threads = (1, 4, 16, 64), 3, 1, [os.cpu_count() or 1]
        args.fs_k_factors = [8, 32]

    machine = machine_info()
    print(f"retro {machine['retro_version']} ({machine['retro_simd']}) vs faiss {machine['faiss_version']} on {machine['cpu']}")
    results, summaries = [], {}
    for name in args.datasets.split(","):
        data = synthetic_dataset(args.n, args.nq) if name == "synthetic" else text_dataset(args.nq)
        result, dataset_summaries = run_dataset(data, args)
        results.append(result)
        summaries[result.name] = dataset_summaries
        del data

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "ivfpq_cpu" + ("_quick" if args.quick else "")
    stem += "" if "pq8" in args.families else "_" + "_".join(args.families)
    stem += "_residual" if args.fs_residual else ""
    output = {"machine": machine, "results": [asdict(r) for r in results], "summaries": summaries}
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(output, indent=1))
    plot(results, RESULTS_DIR / f"{stem}.png")
    for family in (PQ8, OPQ):
        if not args.quick and family.name in args.families:
            report.update_performance_md(family.section, markdown(results, summaries, machine, family))
    if not args.quick and "fastscan" in args.families:
        report.update_performance_md(fast_scan_section(args.fs_residual),
                                     markdown_fast_scan(results, summaries, machine, args.fs_residual))
    print(f"wrote {RESULTS_DIR / stem}.json and .png" + ("" if args.quick else f", and {report.PERFORMANCE_MD}"))


if __name__ == "__main__":
    main()
