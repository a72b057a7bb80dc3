"""RETRO's attention ops on the CPU: the core's kernels (retro.ops) against the fastest PyTorch
formulations of the same math, forward and forward+backward, at the 'tiny' preset's shapes and at
a larger one, with 1 and 2 threads, in one process on the same inputs.

PyTorch anchors (each gives the same result as retro.ops.*_ref; the per-token gather of the
reference itself is far slower and is not timed):
  einsum  per-chunk grouping (queries shifted by chunk_size - 1 into chunks), masked softmax, einsum
  sdpa    the same grouping through torch.nn.functional.scaled_dot_product_attention with a mask

    python bench/ops.py            # writes bench/results/ops_cpu.json and the table in docs/PERFORMANCE.md
    python bench/ops.py --quick    # small shapes, 1 repeat, no files
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import retro
import retro.ops as ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py)

RESULTS = report.ROOT / "bench" / "results" / "ops_cpu.json"
TABLE_BEGIN, TABLE_END = report.markers("ops-cpu")


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    tokens: int  # T = chunks * chunk_size
    heads: int
    head_dim: int
    neighbours: int = 2  # K
    neighbour_len: int = 128  # R
    chunk_size: int = 64

    @property
    def chunks(self) -> int:
        return self.tokens // self.chunk_size


SHAPES = [
    Shape("tiny (B4 T512 H6 Dh64)", 4, 512, 6, 64),
    Shape("medium-layer (B1 T2048 H16 Dh64)", 1, 2048, 16, 64),
]
QUICK_SHAPES = [Shape("quick (B2 T256 H4 Dh32)", 2, 256, 4, 32)]


# --- the PyTorch anchors -------------------------------------------------------------------------


def _masked_softmax_einsum(q, k, v, mask, scale):
    """q (N, H, Q, D), k/v (N, H, S, D), mask (N, 1, Q|1, S) bool -> (N, H, Q, D); empty rows -> 0."""
    scores = torch.einsum("nhqd,nhsd->nhqs", q, k) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("nhqs,nhsd->nhqd", probs, v)


def _sdpa(q, k, v, mask, scale):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.nan_to_num(0.0)


def _cca_grouped(attend, q, k, v, nbr_lens, m, scale):
    """CCA by shifting the queries into their chunks: (B, T, H, D) -> (B*L, H, m, D)."""
    b, t, h, d = q.shape
    _, n_chunks, n_nbrs, r, _, _ = k.shape
    shifted = F.pad(q[:, m - 1 :], (0, 0, 0, 0, 0, n_chunks * m - (t - m + 1)))  # (B, L*m, H, D)
    queries = shifted.reshape(b * n_chunks, m, h, d).transpose(1, 2)
    keys = k.reshape(b * n_chunks, n_nbrs * r, h, d).transpose(1, 2)
    values = v.reshape(b * n_chunks, n_nbrs * r, h, d).transpose(1, 2)
    real = torch.arange(r).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)
    mask = real.reshape(b * n_chunks, 1, 1, n_nbrs * r)
    out = attend(queries, keys, values, mask, scale).transpose(1, 2).reshape(b, n_chunks * m, h, d)
    return F.pad(out[:, : t - m + 1], (0, 0, 0, 0, m - 1, 0))


def _self_grouped(attend, q, k, v, nbr_lens, scale):
    b, n_chunks, n_nbrs, r, h, d = q.shape
    flat = lambda x: x.reshape(-1, r, h, d).transpose(1, 2)  # noqa: E731
    real = (torch.arange(r).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)).reshape(-1, 1, r)
    mask = (real.unsqueeze(-1) & real.unsqueeze(-2))  # (N, 1, R, R): padding rows see nothing
    out = attend(flat(q), flat(k), flat(v), mask, scale)
    return out.transpose(1, 2).reshape(q.shape)


def _cross_grouped(attend, q, k, v, nbr_lens, m, scale):
    b, n_chunks, n_nbrs, r, h, d = q.shape
    queries = q.reshape(b * n_chunks, n_nbrs * r, h, d).transpose(1, 2)
    keys = k.reshape(b * n_chunks, m, h, d).transpose(1, 2)
    values = v.reshape(b * n_chunks, m, h, d).transpose(1, 2)
    real = (torch.arange(r).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)).reshape(b * n_chunks, 1, n_nbrs * r, 1)
    out = attend(queries, keys, values, real.expand(-1, -1, -1, m), scale)
    return out.transpose(1, 2).reshape(q.shape)


def anchors(op: str, m: int, scale: float) -> dict[str, Callable]:
    grouped = {"cca": lambda a: lambda q, k, v, l: _cca_grouped(a, q, k, v, l, m, scale),
               "self": lambda a: lambda q, k, v, l: _self_grouped(a, q, k, v, l, scale),
               "cross": lambda a: lambda q, k, v, l: _cross_grouped(a, q, k, v, l, m, scale)}[op]
    return {"torch einsum": grouped(_masked_softmax_einsum), "torch sdpa": grouped(_sdpa)}


def ours(op: str, m: int, scale: float) -> Callable:
    return {"cca": lambda q, k, v, l: ops.chunked_cross_attention(q, k, v, l, chunk_size=m, scale=scale),
            "self": lambda q, k, v, l: ops.neighbour_self_attention(q, k, v, l, scale=scale),
            "cross": lambda q, k, v, l: ops.neighbour_cross_attention(q, k, v, l, chunk_size=m, scale=scale)}[op]


# --- timing --------------------------------------------------------------------------------------


def inputs(op: str, s: Shape, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dec = lambda: torch.randn(s.batch, s.tokens, s.heads, s.head_dim, generator=g).to(dtype)  # noqa: E731
    nbr = lambda: torch.randn(s.batch, s.chunks, s.neighbours, s.neighbour_len, s.heads, s.head_dim, generator=g).to(dtype)  # noqa: E731
    q, k, v = {"cca": (dec, nbr, nbr), "self": (nbr, nbr, nbr), "cross": (nbr, dec, dec)}[op]
    # a realistic mix: most neighbours full (chunk + continuation), some only the chunk
    lens = torch.where(torch.rand(s.batch, s.chunks, s.neighbours, generator=g) < 0.8, s.neighbour_len, s.chunk_size)
    return q(), k(), v(), lens.to(torch.int32)


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    threads: int
    mode: str  # "forward" or "forward+backward"
    engine: str
    ms: float
    max_error: float  # vs the float64 reference of the same inputs (forward output)


def bench_case(op: str, s: Shape, dtype: torch.dtype, threads: int, repeats: int) -> list[Row]:
    torch.set_num_threads(threads)
    retro.set_num_threads(threads)
    scale = 1.0 / s.head_dim**0.5
    q, k, v, lens = inputs(op, s, dtype)
    engines = {"retro": ours(op, s.chunk_size, scale), **anchors(op, s.chunk_size, scale)}
    exact = engines["torch einsum"](*(x.double() for x in (q, k, v)), lens)
    rows = []
    for mode in ("forward", "forward+backward"):
        leaves = [x.detach().clone().requires_grad_(mode != "forward") for x in (q, k, v)]
        grad = torch.randn_like(q)

        def run(fn):
            if mode == "forward":
                with torch.no_grad():
                    return fn(*leaves, lens)
            out = fn(*leaves, lens)
            out.backward(grad)
            return out

        times = {name: [] for name in engines}
        names = list(engines)
        for repeat in range(repeats):  # interleaved, alternating order
            for name in names if repeat % 2 == 0 else names[::-1]:
                times[name].append(timed(lambda: run(engines[name]), 1))
        for name, fn in engines.items():
            with torch.no_grad():
                error = (fn(q, k, v, lens).double() - exact).abs().max().item()
            rows.append(Row(op, s.name, str(dtype).removeprefix("torch."), threads, mode, name,
                            1000 * statistics.median(times[name]), error))
    return rows


def markdown(rows: list[Row], machine: dict) -> str:
    lines = [TABLE_BEGIN, f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
             f"commit `{machine['git_commit']}`, {machine['date']}. Command: `python {machine['command']}`. "
             "Median milliseconds of interleaved repeats; speed-up = fastest PyTorch anchor / retro.", "",
             "| op | shape | dtype | threads | mode | retro ms | torch einsum ms | torch sdpa ms | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    keyed: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        keyed.setdefault((r.op, r.shape, r.dtype, r.threads, r.mode), {})[r.engine] = r
    for key, by_engine in keyed.items():
        fastest = min(by_engine["torch einsum"].ms, by_engine["torch sdpa"].ms)
        op, shape, dtype, threads, mode = key
        lines.append(f"| {op} | {shape} | {dtype} | {threads} | {mode} | {by_engine['retro'].ms:.2f} | "
                     f"{by_engine['torch einsum'].ms:.2f} | {by_engine['torch sdpa'].ms:.2f} | "
                     f"**{fastest / by_engine['retro'].ms:.2f}x** |")
    lines.append(TABLE_END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = 1 if args.quick else args.repeats
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    rows: list[Row] = []
    for s in shapes:
        for op in ("cca", "self", "cross"):
            for dtype in dtypes:
                for threads in args.threads:
                    case = bench_case(op, s, dtype, threads, repeats)
                    rows += case
                    for r in case:
                        print(f"{r.op:5s} {r.shape:34s} {r.dtype:8s} t={r.threads} {r.mode:16s} {r.engine:13s} "
                              f"{r.ms:9.2f} ms  err {r.max_error:.1e}", flush=True)
    if args.quick:
        return
    machine = {**report.machine_info(), "torch": torch.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=1))
    report.update_performance_md("ops-cpu", markdown(rows, machine))
    print(f"wrote {RESULTS} and {report.PERFORMANCE_MD}")


if __name__ == "__main__":
    main()
