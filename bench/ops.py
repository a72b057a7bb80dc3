"""RETRO's attention ops: the core's kernels (retro.ops) against the fastest PyTorch formulations of
the same math, forward and forward+backward, in one process on the same inputs.

CPU: the 'tiny' preset's shapes and a larger one, 1 and 2 threads, float32 and bfloat16.
CUDA: the paper's training shapes (B 32, T 2048, K 2, R 128, d = 768, 1024, 2048, 4096) in
bfloat16, against every SDPA backend that takes the mask, and the share of the bandwidth floor
(each input read once, each output written once) at the copy rate measured in the same run.

PyTorch anchors (each gives the same result as retro.ops.*_ref; the per-token gather of the
reference itself is far slower and is not timed):
  einsum  per-chunk grouping (queries shifted by chunk_size - 1 into chunks), masked softmax, einsum
  sdpa    the same grouping through torch.nn.functional.scaled_dot_product_attention with a mask

    python bench/ops.py                 # writes bench/results/ops_cpu.json and its table in docs/PERFORMANCE.md
    python bench/ops.py --quick         # small shapes, 1 repeat, no files
    python bench/ops.py --device cuda --out ops_cuda.json   # on the GPU machine (bench/gpu_check.sh)
    python bench/ops.py --render bench/results/ops_cuda.json  # its table into docs/PERFORMANCE.md
                                                              # (as python bench/render.py does)
"""

from __future__ import annotations

import argparse
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
from retro import _core

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

RESULTS = report.RESULTS_DIR / "ops_cpu.json"


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
GPU_SHAPES = [
    Shape("d768 (B32 T2048 H12 Dh64)", 32, 2048, 12, 64),
    Shape("d1024 (B32 T2048 H16 Dh64)", 32, 2048, 16, 64),
    Shape("d2048 (B32 T2048 H16 Dh128)", 32, 2048, 16, 128),
    Shape("d4096 (B32 T2048 H32 Dh128)", 32, 2048, 32, 128),
]
QUICK_GPU_SHAPES = [Shape("quick (B4 T512 H16 Dh64)", 4, 512, 16, 64)]


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
    real = torch.arange(r, device=q.device).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)
    mask = real.reshape(b * n_chunks, 1, 1, n_nbrs * r)
    out = attend(queries, keys, values, mask, scale).transpose(1, 2).reshape(b, n_chunks * m, h, d)
    return F.pad(out[:, : t - m + 1], (0, 0, 0, 0, m - 1, 0))


def _self_grouped(attend, q, k, v, nbr_lens, scale):
    b, n_chunks, n_nbrs, r, h, d = q.shape
    flat = lambda x: x.reshape(-1, r, h, d).transpose(1, 2)  # noqa: E731
    real = (torch.arange(r, device=q.device).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)).reshape(-1, 1, r)
    mask = (real.unsqueeze(-1) & real.unsqueeze(-2))  # (N, 1, R, R): padding rows see nothing
    out = attend(flat(q), flat(k), flat(v), mask, scale)
    return out.transpose(1, 2).reshape(q.shape)


def _cross_grouped(attend, q, k, v, nbr_lens, m, scale):
    b, n_chunks, n_nbrs, r, h, d = q.shape
    queries = q.reshape(b * n_chunks, n_nbrs * r, h, d).transpose(1, 2)
    keys = k.reshape(b * n_chunks, m, h, d).transpose(1, 2)
    values = v.reshape(b * n_chunks, m, h, d).transpose(1, 2)
    real = (torch.arange(r, device=q.device).view(1, 1, 1, r) < nbr_lens.unsqueeze(-1)).reshape(b * n_chunks, 1, n_nbrs * r, 1)
    out = attend(queries, keys, values, real.expand(-1, -1, -1, m), scale)
    return out.transpose(1, 2).reshape(q.shape)


def _sdpa_backend(backend):
    """SDPA restricted to one backend (CUDA): the GPU anchors time each backend apart."""
    from torch.nn.attention import sdpa_kernel

    def attend(q, k, v, mask, scale):
        with sdpa_kernel(backend):
            return _sdpa(q, k, v, mask, scale)

    return attend


def anchors(op: str, m: int, scale: float, device: str = "cpu") -> dict[str, Callable]:
    grouped = {"cca": lambda a: lambda q, k, v, l: _cca_grouped(a, q, k, v, l, m, scale),
               "self": lambda a: lambda q, k, v, l: _self_grouped(a, q, k, v, l, scale),
               "cross": lambda a: lambda q, k, v, l: _cross_grouped(a, q, k, v, l, m, scale)}[op]
    if device == "cpu":
        return {"torch einsum": grouped(_masked_softmax_einsum), "torch sdpa": grouped(_sdpa)}
    from torch.nn.attention import SDPBackend

    backends = {"sdpa cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION,
                "sdpa flash": SDPBackend.FLASH_ATTENTION, "sdpa math": SDPBackend.MATH}
    return {"torch einsum": grouped(_masked_softmax_einsum),
            **{name: grouped(_sdpa_backend(b)) for name, b in backends.items()}}


def ours(op: str, m: int, scale: float) -> Callable:
    return {"cca": lambda q, k, v, l: ops.chunked_cross_attention(q, k, v, l, chunk_size=m, scale=scale),
            "self": lambda q, k, v, l: ops.neighbour_self_attention(q, k, v, l, scale=scale),
            "cross": lambda q, k, v, l: ops.neighbour_cross_attention(q, k, v, l, chunk_size=m, scale=scale)}[op]


# --- timing --------------------------------------------------------------------------------------


def inputs(op: str, s: Shape, dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    g = torch.Generator(device).manual_seed(seed)
    dec = lambda: torch.randn(s.batch, s.tokens, s.heads, s.head_dim, generator=g, device=device).to(dtype)  # noqa: E731
    nbr = lambda: torch.randn(s.batch, s.chunks, s.neighbours, s.neighbour_len, s.heads, s.head_dim,  # noqa: E731
                              generator=g, device=device).to(dtype)
    q, k, v = {"cca": (dec, nbr, nbr), "self": (nbr, nbr, nbr), "cross": (nbr, dec, dec)}[op]
    # a realistic mix: most neighbours full (chunk + continuation), some only the chunk
    lens = torch.where(torch.rand(s.batch, s.chunks, s.neighbours, generator=g, device=device) < 0.8,
                       s.neighbour_len, s.chunk_size)
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


# --- CUDA ----------------------------------------------------------------------------------------



def cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of fn on the GPU between CUDA events, after three warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def copy_bandwidth() -> float:
    """Device-to-device copy rate of a 1 GiB buffer, bytes/s counting bytes read and written."""
    src = torch.randn(2**29, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), 20)
    return 2 * src.numel() * src.element_size() / (ms / 1000)


@dataclass
class GpuRow:
    op: str
    shape: str
    dtype: str
    mode: str
    engine: str
    ms: float | None  # None: the engine refused the call (note says why)
    floor_ms: float  # each input read once, each output written once, at the measured copy rate
    max_error: float | None  # vs float32 math on batch element 0 (forward output)
    note: str = ""


def floor_bytes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, int]:
    """Fewest bytes each mode must move: forward reads q, k, v and writes out; the backward also
    reads out and grad_out and writes a gradient per input."""
    size = lambda x: x.numel() * x.element_size()  # noqa: E731
    inputs_, out = size(q) + size(k) + size(v), size(q)
    return {"forward": inputs_ + out, "forward+backward": 3 * inputs_ + 3 * out}


def bench_case_cuda(op: str, s: Shape, dtype: torch.dtype, repeats: int, bandwidth: float) -> list[GpuRow]:
    scale = 1.0 / s.head_dim**0.5
    q, k, v, lens = inputs(op, s, dtype, device="cuda")
    split = "retro split-backward"  # the same kernels with the backward forced to two kernels
    engines = {"retro": ours(op, s.chunk_size, scale), split: ours(op, s.chunk_size, scale),
               **anchors(op, s.chunk_size, scale, "cuda")}
    exact = engines["torch einsum"](*(x[:1].float() for x in (q, k, v)), lens[:1])
    floors = floor_bytes(q, k, v)
    grad = torch.randn_like(q)
    rows = []
    for mode in ("forward", "forward+backward"):
        leaves = [x.detach().requires_grad_(mode != "forward") for x in (q, k, v)]

        def run(fn):
            if mode == "forward":
                with torch.no_grad():
                    return fn(*leaves, lens)
            return torch.autograd.grad(fn(*leaves, lens), leaves, grad)

        for name, fn in engines.items():
            if name == split and mode == "forward":
                continue
            _core.cuda_set_fused_backward(name != split)
            ms, error, note = None, None, ""
            try:
                ms = cuda_ms(lambda: run(fn), repeats)
                with torch.no_grad():
                    error = (fn(q[:1], k[:1], v[:1], lens[:1]).float() - exact).abs().max().item()
            except (RuntimeError, torch.OutOfMemoryError) as e:  # e.g. flash attention takes no mask
                note = str(e).splitlines()[0][:120]
            _core.cuda_set_fused_backward(True)
            torch.cuda.empty_cache()
            rows.append(GpuRow(op, s.name, str(dtype).removeprefix("torch."), mode, name, ms,
                               1000 * floors[mode] / bandwidth, error, note))
    return rows


def markdown_cuda(result: dict) -> str:
    """The GPU table: retro against the fastest SDPA backend, and retro's share of the floor."""
    rows, machine = result["rows"], result["machine"]
    lines = [provenance.describe(result),
             f"Card: {machine['gpu']}, copy rate {machine['copy_tb_s']:.2f} TB/s (read + write, measured in the "
             "same run; run by `bench/gpu_check.sh`). Median ms over CUDA events; floor = bytes that must move / "
             "copy rate.", "",
             "| op | shape | mode | retro ms | best SDPA ms (backend) | einsum ms | vs best SDPA | % of floor "
             "| retro, two-kernel backward ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        keyed.setdefault((r["op"], r["shape"], r["mode"]), {})[r["engine"]] = r
    for (op, shape, mode), by_engine in keyed.items():
        ours_ = by_engine["retro"]
        sdpa = [r for name, r in by_engine.items() if name.startswith("sdpa") and r["ms"] is not None]
        best = min(sdpa, key=lambda r: r["ms"]) if sdpa else None
        fmt = lambda ms: "-" if ms is None else f"{ms:.3f}"  # noqa: E731
        speedup = "-" if best is None or ours_["ms"] is None else f"**{best['ms'] / ours_['ms']:.2f}x**"
        share = "-" if ours_["ms"] is None else f"{100 * ours_['floor_ms'] / ours_['ms']:.0f}%"
        best_text = "-" if best is None else f"{best['ms']:.3f} ({best['engine'].removeprefix('sdpa ')})"
        split = by_engine.get("retro split-backward", {}).get("ms")
        lines.append(f"| {op} | {shape} | {mode} | {fmt(ours_['ms'])} | {best_text} | "
                     f"{fmt(by_engine['torch einsum']['ms'])} | {speedup} | {share} | {fmt(split)} |")
    if "cca_layer" in result:
        layer = result["cca_layer"]
        lines.append("")
        lines.append(f"The whole CCA layer of the model at {layer['shape']} (projections, core, output projection; "
                     "target: its projection GEMMs alone + 1.25 x the core's floor): " + "; ".join(
                         f"{mode} {layer[mode]['layer_ms']:.3f} ms vs target {layer[mode]['target_ms']:.3f} ms "
                         f"(projections {layer[mode]['projections_ms']:.3f} ms)" for mode in ("forward", "forward+backward")) + ".")
    return "\n".join(lines)


def bench_cca_layer_cuda(s: Shape, repeats: int, bandwidth: float, device: str = "cuda") -> dict:
    """The model's whole CCA layer (projections, core, output projection) against its projection
    GEMMs alone plus 1.25x the core's bandwidth floor: what the layer spends beyond that is copies
    around the core."""
    from retro.model import ChunkedCrossAttention, NeighbourMemory, RetroConfig

    d = s.heads * s.head_dim
    config = RetroConfig(n_embd=d, n_head=s.heads, chunk_size=s.chunk_size, n_nbrs=s.neighbours,
                         nbr_len=s.neighbour_len, block_size=s.tokens, bias=False, dropout=0.0)
    layer = ChunkedCrossAttention(config).to(device, torch.bfloat16)
    new = lambda *shape: torch.randn(*shape, device=device, dtype=torch.bfloat16)  # noqa: E731
    x = new(s.batch, s.tokens, d).requires_grad_()
    encoded = new(s.batch, s.chunks, s.neighbours, s.neighbour_len, d).requires_grad_()
    lens = torch.full((s.batch, s.chunks, s.neighbours), s.neighbour_len, dtype=torch.int32, device=device)
    attends = (torch.arange(s.tokens, device=device) >= s.chunk_size - 1).to(torch.bfloat16)
    memory = NeighbourMemory(encoded, lens, 0, False, s.chunks, attends.view(1, -1, 1).expand(s.batch, -1, -1))
    leaves = [x, encoded, *layer.parameters()]
    parts = {"layer": lambda: (layer(x, memory, None),),
             "projections": lambda: (layer.c_q(x), layer.c_k(encoded), layer.c_v(encoded), layer.c_proj(x))}
    grads = {name: [torch.randn_like(o) for o in fn()] for name, fn in parts.items()}
    meta = lambda *shape: torch.empty(*shape, dtype=torch.bfloat16, device="meta")  # noqa: E731
    floors = floor_bytes(meta(s.batch, s.tokens, s.heads, s.head_dim),
                         *[meta(s.batch, s.chunks, s.neighbours, s.neighbour_len, s.heads, s.head_dim)] * 2)
    result = {"shape": s.name}
    for mode in ("forward", "forward+backward"):
        def run(name):
            if mode == "forward":
                with torch.no_grad():
                    return parts[name]()
            return torch.autograd.grad(parts[name](), leaves, grads[name], allow_unused=True)

        layer_ms, proj_ms = cuda_ms(lambda: run("layer"), repeats), cuda_ms(lambda: run("projections"), repeats)
        floor_ms = 1000 * floors[mode] / bandwidth
        result[mode] = {"layer_ms": layer_ms, "projections_ms": proj_ms, "core_floor_ms": floor_ms,
                        "target_ms": proj_ms + 1.25 * floor_ms}
        print(f"cca layer {s.name} {mode}: {layer_ms:.3f} ms; target = projections {proj_ms:.3f} ms "
              f"+ 1.25 x core floor {floor_ms:.3f} ms = {proj_ms + 1.25 * floor_ms:.3f} ms", flush=True)
    return result


def run_cuda(args) -> None:
    bandwidth = copy_bandwidth()
    machine = {"gpu": torch.cuda.get_device_name(), "copy_tb_s": bandwidth / 1e12}
    print(f"{machine['gpu']}: copy {bandwidth / 1e12:.2f} TB/s", flush=True)
    rows: list[GpuRow] = []
    for s in QUICK_GPU_SHAPES if args.quick else GPU_SHAPES:
        for op in ("cca", "self", "cross"):
            case = bench_case_cuda(op, s, torch.bfloat16, args.repeats, bandwidth)
            rows += case
            for r in case:
                ms = "refused" if r.ms is None else f"{r.ms:8.3f} ms"
                print(f"{r.op:5s} {r.shape:30s} {r.mode:16s} {r.engine:15s} {ms}  floor {r.floor_ms:.3f} ms"
                      f"  err {r.max_error if r.max_error is None else f'{r.max_error:.1e}'} {r.note}", flush=True)
    layer = bench_cca_layer_cuda(QUICK_GPU_SHAPES[0] if args.quick else GPU_SHAPES[1], args.repeats, bandwidth)
    result = report.write_result(args.out, {"machine": machine, "rows": [asdict(r) for r in rows],
                                                  "cca_layer": layer}, threads=torch.get_num_threads())
    print(markdown_cuda(result))
    print(f"wrote {args.out}")


def markdown(result: dict) -> str:
    """The CPU table: retro against the faster PyTorch anchor per op, shape, dtype, threads and mode."""
    rows = [Row(**r) for r in result["rows"]]
    lines = [provenance.describe(result, max(r.threads for r in rows)),
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="the run's JSON (default: bench/results/ops_cpu.json, or ops_cuda.json on CUDA)")
    parser.add_argument("--render", metavar="JSON", type=Path,
                        help="rewrite the tables rendered from JSON (bench/results/ops_cuda.json: the GPU table)")
    args = parser.parse_args()
    if args.render:
        print("rewrote", ", ".join(render.write_tables_of(args.render)))
        return
    if args.device == "cuda":
        args.out = args.out or RESULTS.parent / "ops_cuda.json"
        return run_cuda(args)
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
    out = args.out or RESULTS
    report.write_result(out, {"rows": [asdict(r) for r in rows]}, threads=max(args.threads))
    print(f"wrote {out} and the tables {', '.join(render.write_tables(out)) or '(none)'}")


if __name__ == "__main__":
    main()
