"""IVF-PQ on the GPU (``python bench/ivfpq.py --device cuda ...`` runs this): QPS against recall@10.

    python bench/ivfpq.py --device cuda --budget-s 300 --out bench/results/ivfpq_cuda.json
    python bench/ivfpq.py --device cuda --configs 1m-384-48 --budget-s 120    # one configuration
    python bench/ivfpq.py --device cuda --render bench/results/ivfpq_cuda.json  # its table into
                                                                               # docs/PERFORMANCE.md

Configurations (name = size-d-pq_m): synthetic Gaussian-mixture data drawn on the GPU (1M x 384 and
10M x 96), nlist ~ 4 sqrt(N), pq_m = d/8 and d/4. Per configuration, on one card in one run:
- build: k-means training on the GPU (retro.index.kmeans: a sample of 64 points per list, 10
  iterations), encoding on the GPU, appending on the host, upload; each time reported.
- the anchors: exact search in PyTorch (bf16 GEMM + topk over the whole base, chunked) for a
  batch of queries, and our CPU index searching the same index (saved and memory-mapped) with
  all the machine's cores on a subset of the queries;
- ours: batch-10k QPS and batch-1 QPS (queries one at a time, synchronised) for a sweep of nprobe,
  recall@10 against exact float32 search, float16 tables at one nprobe;
- bandwidth: a device-to-device copy (bytes read + written per second) and the scan kernel's
  code bytes per second of scan-kernel time (torch.profiler), and their ratio.
Configurations are skipped once the budget would be exceeded; results go to one JSON with the card
and the run's provenance (bench/report.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

import retro  # noqa: E402

K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
SINGLE_NPROBES = (8, 32)
CPU_NPROBES = (8, 32)
RECALL_TARGET = 0.9
RERANK_K_FACTOR = 8  # re-ranked rows: K * 8 PQ candidates re-scored against the float32 base


@dataclass
class Config:
    name: str
    n: int
    d: int
    pq_m: int

    @property
    def nlist(self) -> int:
        return int(round(4 * math.sqrt(self.n)))


CONFIGS = {
    c.name: c
    for c in (
        Config("1m-384-48", 1_000_000, 384, 48),
        Config("10m-96-12", 10_000_000, 96, 12),
        Config("1m-384-96", 1_000_000, 384, 96),
        Config("10m-96-24", 10_000_000, 96, 24),
    )
}


@dataclass
class Row:
    nprobe: int
    recall: float
    batch_qps: float
    single_qps: float | None = None


@dataclass
class Result:
    config: dict
    train_s: float
    encode_s: float
    append_upload_s: float
    exact_bf16_qps: float
    exact_bf16_recall: float
    rows: list[Row] = field(default_factory=list)
    rerank_rows: list[Row] = field(default_factory=list)  # the same with exact re-ranking
    fp16_row: Row | None = None
    cpu_rows: list[dict] = field(default_factory=list)
    copy_gbps: float = 0.0
    scan_gbps: float | None = None
    kernel_ms: dict = field(default_factory=dict)  # one batch search at nprobe 32, per kernel
    summary: dict = field(default_factory=dict)


def torch_mod():
    import torch

    return torch


def mixture(n: int, d: int, nq: int, seed: int = 0):
    """Base (n, d) and queries (nq, d) float32 on the GPU from one seeded Gaussian mixture of 1000
    centres (noise std = the centres' std, as bench/vector_sets.py draws it on the CPU)."""
    torch = torch_mod()
    g = torch.Generator(device="cuda").manual_seed(seed)
    centres = torch.randn(1000, d, generator=g, device="cuda")

    def draw(m: int):
        labels = torch.randint(0, 1000, (m,), generator=g, device="cuda")
        return centres[labels] + torch.randn(m, d, generator=g, device="cuda")

    base = torch.cat([draw(min(1_000_000, n - i)) for i in range(0, n, 1_000_000)])
    return base, draw(nq)


def exact_top_k(base, queries, k: int, dtype) -> object:
    """Labels (nq, k) of exact L2 search: GEMM in `dtype` + topk, the base in chunks of 2^17 rows
    (a 10k x 2^17 float32 distance block is 5 GiB)."""
    torch = torch_mod()
    best_d = best_i = None
    q = queries.to(dtype)
    chunk = 1 << 17
    for s in range(0, base.shape[0], chunk):
        b = base[s : s + chunk]
        dist = (b * b).sum(1)[None, :] - 2 * (q @ b.to(dtype).T).float()
        d, i = dist.topk(k, dim=1, largest=False)
        i = i + s
        if best_d is not None:
            d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
            d, order = d.topk(k, dim=1, largest=False)
            i = i.gather(1, order)
        best_d, best_i = d, i
    return best_i


def cuda_time(fn, repeats: int = 3) -> float:
    """Median seconds of fn() by CUDA events (bench/ops.py's timer)."""
    from ops import cuda_ms  # bench/ops.py

    return cuda_ms(fn, repeats) / 1e3


def recall(labels, truth) -> float:
    """Mean fraction of the true top-K found in the returned top-K (torch tensors on one device)."""
    hits = (labels[:, :, None] == truth[:, None, :]).any(2).sum()
    return float(hits) / truth.numel()


def kernel_times(gpu, queries, nprobe: int) -> dict[str, float]:
    """Device milliseconds per kernel of one batch search (torch.profiler), by kernel name; {} if
    the profiler is unavailable (reported, not fatal)."""
    torch = torch_mod()
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            gpu.search(queries, K, nprobe=nprobe)
            torch.cuda.synchronize()
        return {e.key[:120]: e.device_time_total / 1e3 for e in prof.key_averages() if e.device_time_total > 0}
    except Exception as error:  # the profiler is optional here
        print(f"  kernel times not measured: {error}")
        return {}


def scan_bandwidth(gpu, queries, nprobe: int, kernels: dict[str, float]) -> float | None:
    """GB/s of code bytes read by scan_kernel over its own device time, or None."""
    torch = torch_mod()
    scan_ms = sum(ms for name, ms in kernels.items() if "scan_kernel" in name)
    if scan_ms <= 0:
        return None
    # the bytes every query's nprobe lists hold, from the queries' own coarse assignment
    sizes = gpu.host.list_sizes()
    centroids = torch.from_numpy(gpu.host.coarse_centroids()).cuda()
    dist = (centroids * centroids).sum(1)[None, :] - 2 * queries @ centroids.T
    lists = dist.topk(nprobe, dim=1, largest=False).indices
    vectors = torch.from_numpy(sizes).cuda()[lists].sum()
    return float(vectors) * gpu.pq_m / (scan_ms / 1e3) / 1e9


def build(config: Config, base):
    """A GPU-trained index (k-means on the GPU over a sample of 64 points per list, 10
    iterations), filled through the GPU encoder: (CudaIvfPqIndex, train, encode, append + upload
    seconds)."""
    from retro.index.cuda import CudaIvfPqIndex

    torch = torch_mod()
    host = retro.IvfPqIndex(config.d, config.nlist, config.pq_m)
    host.niter = 10
    host.max_points_per_centroid = 64
    sample = base[torch.randperm(base.shape[0], device="cuda")[: 64 * config.nlist]]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    host.train(sample, device="cuda")
    train_s = time.perf_counter() - t0
    gpu = CudaIvfPqIndex(host)
    t0 = time.perf_counter()
    parts = [gpu.encode(base[s : s + 1_000_000]) for s in range(0, base.shape[0], 1_000_000)]
    torch.cuda.synchronize()
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    host.add_preassigned(torch.cat([p[0] for p in parts]).cpu().numpy(),
                         torch.cat([p[1] for p in parts]).cpu().numpy())
    gpu = CudaIvfPqIndex(host)
    torch.cuda.synchronize()
    return gpu, train_s, encode_s, time.perf_counter() - t0


def single_qps(gpu, queries, nprobe: int) -> float:
    """Queries per second searched one at a time, each waited for (the latency-bound case)."""
    torch = torch_mod()
    gpu.search(queries[:1], K, nprobe=nprobe)
    t0 = time.perf_counter()
    for i in range(queries.shape[0]):
        gpu.search(queries[i : i + 1], K, nprobe=nprobe)
    torch.cuda.synchronize()
    return queries.shape[0] / (time.perf_counter() - t0)


def sweep(gpu, queries, truth, args, rerank=None) -> list[Row]:
    """Recall@10 and batch QPS per nprobe (and single-query QPS at SINGLE_NPROBES), PQ alone or
    re-ranking K * RERANK_K_FACTOR candidates against `rerank` (the float32 base on the GPU)."""
    rows = []
    for nprobe in NPROBES:
        options = {"rerank": rerank, "k_factor": RERANK_K_FACTOR} if rerank is not None else {}
        search = functools.partial(gpu.search, queries, K, nprobe=nprobe, **options)
        row = Row(nprobe, recall(search()[1], truth), args.nq / cuda_time(search))
        if rerank is None and nprobe in SINGLE_NPROBES:
            row.single_qps = single_qps(gpu, queries[: args.single], nprobe)
        rows.append(row)
        label = f"+ re-ranking {RERANK_K_FACTOR * K}" if rerank is not None else ""
        print(f"  nprobe {nprobe:4d} {label}: recall@10 {row.recall:.3f}  batch {row.batch_qps:12,.0f} QPS"
              + (f"  single {row.single_qps:8,.0f} QPS" if row.single_qps else ""), flush=True)
    return rows


def run_config(config: Config, args) -> Result:
    torch = torch_mod()
    print(f"== {config.name}: N={config.n} d={config.d} nlist={config.nlist} pq_m={config.pq_m}", flush=True)
    base, queries = mixture(config.n, config.d, args.nq)
    truth = exact_top_k(base, queries, K, torch.float32)
    exact_s = cuda_time(functools.partial(exact_top_k, base, queries, K, torch.bfloat16), repeats=2)
    exact_recall = recall(exact_top_k(base, queries, K, torch.bfloat16), truth)
    print(f"  exact bf16 GEMM + topk: {args.nq / exact_s:,.0f} QPS (recall {exact_recall:.3f})", flush=True)
    gpu, train_s, encode_s, append_s = build(config, base)
    print(f"  train {train_s:.1f} s (GPU), encode {encode_s:.2f} s (GPU), append + upload {append_s:.1f} s", flush=True)
    result = Result({**asdict(config), "nlist": config.nlist}, train_s, encode_s, append_s, args.nq / exact_s, exact_recall)
    result.rows = sweep(gpu, queries, truth, args)
    result.rerank_rows = sweep(gpu, queries, truth, args, rerank=base)
    del base
    torch.cuda.empty_cache()
    labels = gpu.search(queries, K, nprobe=32, fp16_lut=True)[1]
    seconds = cuda_time(lambda: gpu.search(queries, K, nprobe=32, fp16_lut=True))
    result.fp16_row = Row(32, recall(labels, truth), args.nq / seconds)
    print(f"  fp16 tables, nprobe 32: recall@10 {result.fp16_row.recall:.3f}  batch {result.fp16_row.batch_qps:,.0f} QPS")
    from ops import copy_bandwidth  # bench/ops.py: a 1 GiB device-to-device copy, read + written

    result.copy_gbps = copy_bandwidth() / 1e9
    result.kernel_ms = kernel_times(gpu, queries, 32)
    result.scan_gbps = scan_bandwidth(gpu, queries, 32, result.kernel_ms)
    print("  kernels at nprobe 32 (ms):", json.dumps({k: round(v, 3) for k, v in result.kernel_ms.items()}))
    print(f"  copy {result.copy_gbps:,.0f} GB/s, scan codes {result.scan_gbps or float('nan'):,.0f} GB/s")
    result.cpu_rows = cpu_anchor(gpu.host, queries[: args.cpu_nq].cpu().numpy(), truth[: args.cpu_nq])
    result.summary = summarize(result)
    print("  summary:", json.dumps(result.summary), flush=True)
    return result


def cpu_anchor(host, queries: np.ndarray, truth) -> list[dict]:
    """Our CPU index searching the same (GPU-trained) index, saved and memory-mapped, with all the
    machine's cores."""
    torch = torch_mod()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        host.save(Path(tmp) / "index")
        cpu = retro.IvfPqIndex.load(Path(tmp) / "index", mmap=True)
        retro.set_num_threads(os.cpu_count() or 1)
        for nprobe in CPU_NPROBES:
            cpu.search(queries[:10], K, nprobe=nprobe)
            t0 = time.perf_counter()
            labels = cpu.search(queries, K, nprobe=nprobe)[1]
            seconds = time.perf_counter() - t0
            r = recall(torch.from_numpy(labels).to(truth.device), truth)
            rows.append({"nprobe": nprobe, "recall": r, "batch_qps": len(queries) / seconds,
                         "threads": retro.get_num_threads()})
            print(f"  CPU nprobe {nprobe}: recall@10 {r:.3f}  {len(queries) / seconds:,.0f} QPS "
                  f"({retro.get_num_threads()} threads)", flush=True)
    return rows


def summarize(result: Result) -> dict:
    """Best batch QPS at recall >= 0.9 (PQ alone, and re-ranked) against the exact anchor, and
    against the CPU at the same nprobe."""
    def best_at_target(rows: list[Row]) -> Row | None:
        good = [r for r in rows if r.recall >= RECALL_TARGET]
        return max(good, key=lambda r: r.batch_qps) if good else None

    best, best_rerank = best_at_target(result.rows), best_at_target(result.rerank_rows)
    cpu = {r["nprobe"]: r for r in result.cpu_rows}
    gpu = {r.nprobe: r for r in result.rows}
    return {
        "max_recall": max(r.recall for r in result.rows),  # PQ alone may stay below 0.9
        "best_qps_at_recall_0.9": best.batch_qps if best else None,
        "nprobe_at_recall_0.9": best.nprobe if best else None,
        "vs_exact_bf16": best.batch_qps / result.exact_bf16_qps if best else None,
        "rerank_best_qps_at_recall_0.9": best_rerank.batch_qps if best_rerank else None,
        "rerank_nprobe_at_recall_0.9": best_rerank.nprobe if best_rerank else None,
        "rerank_vs_exact_bf16": best_rerank.batch_qps / result.exact_bf16_qps if best_rerank else None,
        "vs_cpu_same_nprobe": {n: gpu[n].batch_qps / cpu[n]["batch_qps"] for n in cpu if n in gpu},
        "scan_over_copy_bandwidth": result.scan_gbps / result.copy_gbps if result.scan_gbps else None,
    }


def card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def write_json(args, results: list[Result], skipped: list[str], failed: list[dict]) -> None:
    output = {
        "card": card(),
        "results": [asdict(r) for r in results],
        "skipped_for_budget": skipped,
        "failed": failed,
    }
    # the CPU anchor runs on every core (cpu_anchor); the command is the one sys.argv holds
    report.write_result(Path(args.out), output, threads=os.cpu_count())


def markdown(output: dict) -> str:
    """The PERFORMANCE.md table of a run's JSON: per configuration, build times, the anchors, and
    ours per nprobe."""
    lines = [provenance.describe(output), ""]
    for r in output["results"]:
        c, s = r["config"], r["summary"]
        lines += [
            f"### {c['name']}: {c['n']:,} x {c['d']}, IVF{c['nlist']},PQ{c['pq_m']}",
            "",
            f"Build: train {r['train_s']:.1f} s, encode {r['encode_s']:.2f} s (GPU), append + upload "
            f"{r['append_upload_s']:.1f} s. Exact PyTorch (bf16 GEMM + topk): "
            f"{r['exact_bf16_qps']:,.0f} QPS at recall {r['exact_bf16_recall']:.3f}. Copy "
            f"{r['copy_gbps']:,.0f} GB/s; scan kernel {r['scan_gbps'] or float('nan'):,.0f} GB/s of codes.",
            "",
            "| nprobe | recall@10 | batch QPS | x exact | single QPS | CPU QPS (same index) | "
            f"re-ranked x{RERANK_K_FACTOR}: recall@10 | batch QPS |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        cpu = {row["nprobe"]: row for row in r["cpu_rows"]}
        reranked = {row["nprobe"]: row for row in r["rerank_rows"]}
        for row in r["rows"]:
            single = f"{row['single_qps']:,.0f}" if row["single_qps"] else ""
            cpu_qps = f"{cpu[row['nprobe']]['batch_qps']:,.0f}" if row["nprobe"] in cpu else ""
            rr = reranked.get(row["nprobe"])
            rr_cells = f"{rr['recall']:.3f} | {rr['batch_qps']:,.0f}" if rr else " | "
            lines.append(f"| {row['nprobe']} | {row['recall']:.3f} | {row['batch_qps']:,.0f} | "
                         f"{row['batch_qps'] / r['exact_bf16_qps']:.2f} | {single} | {cpu_qps} | {rr_cells} |")
        lines += ["", f"Summary: {json.dumps(s)}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--nq", type=int, default=10_000, help="queries per batch")
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--cpu-nq", type=int, default=1_000, help="queries of the CPU anchor")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="a configuration starts only if the longest so far fits in what is left "
                             "(each takes ~1-3 min); the JSON is rewritten after each")
    parser.add_argument("--out", default="bench/results/ivfpq_cuda.json")
    parser.add_argument("--render", metavar="JSON", type=Path,
                        help="rewrite the tables rendered from JSON (bench/results/ivfpq_cuda.json) and exit")
    args = parser.parse_args(argv)
    if args.render:
        print("rewrote", ", ".join(render.write_tables_of(args.render)))
        return
    torch = torch_mod()
    if not (retro.cuda_available() and torch.cuda.is_available()):
        sys.exit("bench/ivfpq.py --device cuda needs a CUDA build of retro and a GPU")
    started = time.perf_counter()
    results, skipped, failed, longest = [], [], [], 0.0
    for name in args.configs.split(","):
        elapsed = time.perf_counter() - started
        if elapsed + longest > args.budget_s:  # the next one would likely end past the budget
            skipped.append(name)
            continue
        try:
            results.append(run_config(CONFIGS[name], args))
        except Exception as error:  # keep the other configurations' numbers; the log has the trace
            import traceback

            traceback.print_exc()
            failed.append({"config": name, "error": repr(error)})
        longest = max(longest, time.perf_counter() - started - elapsed)
        torch.cuda.empty_cache()
        write_json(args, results, skipped, failed)  # after each configuration: a cut run keeps them
    write_json(args, results, skipped, failed)
    print(f"{'config':12s} {'nprobe@0.9':>10s} {'QPS@0.9':>12s} {'x exact':>8s} {'scan/copy':>9s}")
    for r in results:
        s = r.summary
        print(f"{r.config['name']:12s} {s['nprobe_at_recall_0.9'] or '-':>10} "
              f"{s['best_qps_at_recall_0.9'] or 0:12,.0f} {s['vs_exact_bf16'] or 0:8.2f} "
              f"{s['scan_over_copy_bandwidth'] or 0:9.2f}")
    print(f"wrote {args.out}" + (f"; FAILED: {failed}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
