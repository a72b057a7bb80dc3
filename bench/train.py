"""Training throughput of GPT and RETRO on one device, against a plain compiled GPT and the unfused
RETRO, in one process on the same seeded synthetic batch (issue 10).

Configurations (each a full training step: forward, backward, AdamW step; bf16 autocast on CUDA,
float32 on the CPU; the optimizer is retro.train's make_optimizer, fused AdamW on CUDA):
  anchor     a plain nanoGPT-style GPT written below (pre-LN, SDPA is_causal, GELU MLP, tied
             embeddings), the preset's decoder shapes: the issue's 455k tokens/s at small on an H100
  gpt        retro.GPT
  retro      retro.Retro with retrieval, the ops as built (the CUDA kernels on a CUDA build)
  retro-ref  retro.Retro on the pure-PyTorch retro.ops.*_ref attentions, eager: the unfused anchor
             (RETRO-pytorch's einsum attention: 46.0k tokens/s at small on an H100, issue 10)
With --compile (default on CUDA) anchor, gpt and retro run under torch.compile(fullgraph=True); a
model that does not compile whole is recorded and compiled with graph breaks. Without it, the
Retro model is traced by torch._dynamo.explain to count its graph breaks.

Measured: median step time over CUDA events (perf_counter on the CPU) after warm-up (compilation
included there), tokens/s = batch x block_size / step time, peak memory (max_memory_allocated on
CUDA, the peak resident set above the start on the CPU), model FLOPs per token (retro.train.flops:
every matmul of decoder, encoder, CCA, neighbour cross-attention and the attention products, x3 for
training) and MFU = FLOPs per token x tokens/s / the card's dense bf16 peak. With --db, also
the training DataLoader alone over that database's memmaps, in tokens/s against RETRO's step rate.

Targets (issue 10), from the same run: gpt tokens/s >= anchor's; retro MFU >= 0.9 x gpt's; the
RETRO/GPT step-time ratio beside their FLOP ratio and the paper's +25.8% GPU-hours.

    python bench/train.py                                  # CPU, tiny preset (CI size)
    python bench/train.py --device cuda --preset small --out $OUT/train_cuda.json   # ~4 min
    python bench/train.py --render bench/results/train_cuda.json   # its table into PERFORMANCE.md
                                                                   # (as python bench/render.py does)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import retro
import retro.model.layers
from retro import ops
from retro.train.flops import PAPER_SMALL_OVERHEAD, training_flops_per_token
from retro.model import GPT, Retro, RetroConfig
from retro.train.config import DTYPES, TrainConfig
from retro.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

CONFIGS = ("retro", "gpt", "anchor", "retro-ref")  # the budget skips from the end: RETRO first
RETRIEVAL = {"anchor": False, "gpt": False, "retro": True, "retro-ref": True}
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# RETRO-pytorch 0.3.9 at small, bf16, T=2048 on an H100 (issue 10): a number, not a run of ours.
RETRO_PYTORCH_H100_TOKENS_PER_S = 46.0e3
MIN_TIMED_STEPS = 2  # a config cut by the budget still reports a median of at least this many


# --- the plain GPT anchor (nanoGPT's model, the preset's shapes) -------------------------------


class AnchorBlock(nn.Module):
    """Pre-LN block: x += proj(causal SDPA(qkv(ln_1(x)))); x += mlp(ln_2(x)). (B, T, C) -> same."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        c, bias = config.n_embd, config.bias
        self.n_head = config.n_head
        self.ln_1 = nn.LayerNorm(c, bias=bias)
        self.c_attn = nn.Linear(c, 3 * c, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(c, c, bias=bias)
        self.ln_2 = nn.LayerNorm(c, bias=bias)
        self.c_fc = nn.Linear(c, 4 * c, bias=bias)
        self.c_mlp = nn.Linear(4 * c, c, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.c_mlp(F.gelu(self.c_fc(self.ln_2(x))))


class AnchorGPT(nn.Module):
    """nanoGPT: learned positions, n_layer AnchorBlocks, final LayerNorm, tied lm_head."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(AnchorBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """idx, targets (B, T) -> mean cross-entropy."""
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """retro.model calls the pure-PyTorch *_ref attentions instead of retro.ops' kernels."""
    saved = retro.model.layers.ops
    retro.model.layers.ops = types.SimpleNamespace(
        chunked_cross_attention=ops.chunked_cross_attention_ref,
        neighbour_self_attention=ops.neighbour_self_attention_ref,
        neighbour_cross_attention=ops.neighbour_cross_attention_ref)
    try:
        yield
    finally:
        retro.model.layers.ops = saved


# --- data, models, one step ----------------------------------------------------------------------


@dataclass
class Batch:
    idx: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64
    nbr_tokens: torch.Tensor  # (B, L, K, R) int64
    nbr_lens: torch.Tensor  # (B, L, K) int32


def synthetic_batch(config: RetroConfig, batch_size: int, device: torch.device,
                    seed: int = 0) -> Batch:
    """Seeded random tokens; neighbours full (chunk + continuation) 80% of the time, else only the
    chunk, as at the end of a document."""
    g = torch.Generator().manual_seed(seed)
    b, t, m = batch_size, config.block_size, config.chunk_size
    shape = (b, t // m, config.n_nbrs)
    tokens = torch.randint(0, config.vocab_size, (b, t + 1), generator=g)
    nbr_tokens = torch.randint(0, config.vocab_size, (*shape, config.nbr_len), generator=g)
    full = torch.rand(shape, generator=g) < 0.8
    nbr_lens = torch.where(full, config.nbr_len, min(m, config.nbr_len)).to(torch.int32)
    return Batch(*(x.to(device) for x in (tokens[:, :-1], tokens[:, 1:], nbr_tokens, nbr_lens)))


def build(name: str, config: RetroConfig, device: torch.device) -> tuple[nn.Module, Callable]:
    """The model of configuration `name` on device, and loss(model, batch) -> scalar."""
    if name == "anchor":
        return AnchorGPT(config).to(device), lambda m, x: m(x.idx, x.targets)
    if name == "gpt":
        return (GPT(config).to(device),
                lambda m, x: m(x.idx, targets=x.targets, return_logits=False)[1])
    return (Retro(config).to(device),
            lambda m, x: m(x.idx, x.nbr_tokens, x.nbr_lens, targets=x.targets,
                           return_logits=False)[1])


def graph_breaks(model: nn.Module, loss: Callable, batch: Batch) -> dict:
    """torch._dynamo.explain of one forward: graphs, graph breaks and their reasons."""
    try:
        explained = torch._dynamo.explain(lambda x: loss(model, x))(batch)
    finally:
        torch._dynamo.reset()
    return {"checked_by": "torch._dynamo.explain", "fullgraph": explained.graph_break_count == 0,
            "graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "reasons": [str(r.reason)[:300] for r in explained.break_reasons]}


@dataclass
class Measurement:
    config: str  # anchor, gpt, retro or retro-ref
    preset: str
    batch_size: int
    block_size: int
    compiled: bool
    fullgraph: bool | None  # compiled whole (None: not compiled)
    steps: int  # timed steps
    step_ms: float  # median
    step_ms_min: float
    step_ms_max: float
    tokens_per_s: float
    peak_memory_mb: float
    flops_per_token: float  # model FLOPs of one training step per token (retro.train.flops)
    tflops: float  # achieved model TFLOP/s
    mfu: float | None  # tflops / the device's peak (None: no peak known)
    setup_s: float  # build, compilation and warm-up
    loss: float  # the last step's (finite: the step did real work)
    note: str = ""
    dtype: str = "auto"  # autocast: auto (bf16 on CUDA, float32 on the CPU), float32, bfloat16


class Memory:
    """Peak memory of a span: CUDA's allocator peak, or on the CPU the peak resident set (VmHWM,
    reset through /proc/self/clear_refs) above the resident set at the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # kernels before 4.0: the process's peak stays
            Path("/proc/self/clear_refs").write_text("5")
        self.start = _proc_status_kb("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (_proc_status_kb("VmHWM") - self.start) / 1024


def _proc_status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


def time_steps(step: Callable[[], torch.Tensor], warmup: int, steps: int, device: torch.device,
               deadline: float) -> tuple[list[float], float, float]:
    """(seconds of each timed step, seconds of the warm-up, the last loss). Timing stops at the
    deadline once MIN_TIMED_STEPS are done."""
    started = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    _sync(device)
    setup = time.perf_counter() - started
    cuda = device.type == "cuda"
    spans = []
    for _ in range(steps):
        if len(spans) >= MIN_TIMED_STEPS and time.perf_counter() > deadline:
            break
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            loss = step()
            end.record()
            spans.append((begin, end))
        else:
            begin = time.perf_counter()
            loss = step()
            spans.append(time.perf_counter() - begin)
    _sync(device)
    seconds = [b.elapsed_time(e) / 1000 for b, e in spans] if cuda else spans
    return seconds, setup, loss.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, preset: str, config: RetroConfig, args: argparse.Namespace,
            batch_size: int, peak: float | None, deadline: float,
            dtype: str = "auto") -> tuple[Measurement, dict | None]:
    """One configuration's Measurement under autocast dtype, and for 'retro' its graph-break
    check."""
    device = torch.device(args.device)
    memory = Memory(device)
    memory.reset()
    torch.manual_seed(args.seed)
    model, loss_fn = build(name, config, device)
    model.train()
    optimizer = make_optimizer(model, TrainConfig(db="", out=""), device)
    batch = synthetic_batch(config, batch_size, device, args.seed)
    compiled = args.compile and name != "retro-ref"
    fullgraph = None
    forward = model
    if compiled:
        forward, fullgraph = torch.compile(model, fullgraph=True), True
    bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    note = ""

    def step() -> torch.Tensor:
        with autocast:
            loss = loss_fn(forward, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    with reference_ops() if name == "retro-ref" else contextlib.nullcontext():
        try:
            seconds, setup, loss = time_steps(step, args.warmup, args.steps, device, deadline)
        except torch._dynamo.exc.Unsupported as error:  # a graph break under fullgraph=True
            note = f"not fullgraph: {str(error).splitlines()[0][:200]}"
            torch._dynamo.reset()
            forward, fullgraph = torch.compile(model), False
            seconds, setup, loss = time_steps(step, args.warmup, args.steps, device, deadline)
    check = None
    if name == "retro":
        check = ({"checked_by": "torch.compile(fullgraph=True)", "fullgraph": fullgraph,
                  "note": note} if compiled else graph_breaks(model, loss_fn, batch))
    step_s = statistics.median(seconds)
    tokens_per_s = batch_size * config.block_size / step_s
    flops = training_flops_per_token(config, RETRIEVAL[name])
    result = Measurement(
        name, preset, batch_size, config.block_size, compiled, fullgraph, len(seconds),
        1000 * step_s, 1000 * min(seconds), 1000 * max(seconds), tokens_per_s, memory.peak_mb(),
        flops, flops * tokens_per_s / 1e12, None if peak is None else flops * tokens_per_s / peak,
        setup, loss, note, dtype)
    return result, check


def _release(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_with_retries(name: str, preset: str, config: RetroConfig, args: argparse.Namespace,
                         peak: float | None, deadline: float,
                         dtype: str = "auto") -> tuple[Measurement | None, dict | None, str]:
    """measure() at --batch-size, halving it on out-of-memory; (None, None, why) if even batch 1
    fails or the configuration fails otherwise (one failure must not lose the GPU run)."""
    batch_size, why = args.batch_size, ""
    while batch_size >= 1:
        try:
            result, check = measure(name, preset, config, args, batch_size, peak, deadline, dtype)
        except torch.OutOfMemoryError:
            why = f"out of memory at batch {batch_size}"
            batch_size //= 2
            continue
        except Exception as error:  # noqa: BLE001  (recorded in the JSON, the run goes on)
            return None, None, f"{type(error).__name__}: {str(error).strip()[:300]}"
        finally:
            _release(torch.device(args.device))
        if batch_size != args.batch_size:
            result.note = "; ".join(filter(None, [result.note, f"{why}: batch halved"]))
        return result, check, ""
    return None, None, why


# --- the data loader alone -----------------------------------------------------------------------


def measure_loader(db: str, batch_size: int, num_workers: int, device: torch.device,
                   seconds: float) -> dict:
    """retro.train's DataLoader over db's train split with neighbours: batches/s and tokens/s
    after the first batch (which opens the memmaps and starts the workers)."""
    from retro.train.data import SampleDataset, to_device, train_loader

    dataset = SampleDataset(db, "train", with_neighbours=True)
    loader = iter(train_loader(dataset, batch_size, seed=0, start=0, num_workers=num_workers,
                               pin_memory=device.type == "cuda"))
    to_device(next(loader), device)
    n, started = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - started < seconds:
        to_device(next(loader), device)  # the copy the training loop makes, included
        n += 1
    _sync(device)
    rate = n / (time.perf_counter() - started)
    block_size = dataset._view.stream.block_size
    return {"db": str(db), "batch_size": batch_size, "block_size": block_size,
            "num_workers": num_workers, "batches": n, "batches_per_s": rate,
            "tokens_per_s": rate * batch_size * block_size}


# --- ratios, table, JSON -------------------------------------------------------------------------


def ratios(results: list[Measurement], device_name: str) -> dict[str, dict]:
    """Per preset (and dtype, "<preset> <dtype>", when not auto): the issue's ratios from the
    configurations measured (absent: not measured); with float32 and bfloat16 rows of a preset,
    "<preset> bfloat16 / float32": each configuration's bf16 speed-up."""
    out: dict[str, dict] = {}
    for preset, dtype in dict.fromkeys((r.preset, r.dtype) for r in results):
        by = {r.config: r for r in results if (r.preset, r.dtype) == (preset, dtype)}
        entry: dict = {}
        if "gpt" in by and "anchor" in by:
            entry["gpt_over_anchor_tokens_per_s"] = by["gpt"].tokens_per_s / by["anchor"].tokens_per_s
            entry["target_gpt_at_least_anchor"] = entry["gpt_over_anchor_tokens_per_s"] >= 1.0
        if "gpt" in by and "retro" in by:
            gpt, ret = by["gpt"], by["retro"]
            # time per token, so a batch halved on out-of-memory still compares
            entry["retro_over_gpt_step_time"] = gpt.tokens_per_s / ret.tokens_per_s
            entry["retro_over_gpt_flops"] = ret.flops_per_token / gpt.flops_per_token
            entry["paper_retro_over_gpt_gpu_hours"] = 1.0 + PAPER_SMALL_OVERHEAD
            entry["retro_over_gpt_mfu"] = ret.tflops / gpt.tflops
            entry["target_retro_mfu_at_least_0.9_gpt"] = entry["retro_over_gpt_mfu"] >= 0.9
        if "retro" in by and "retro-ref" in by:
            entry["retro_over_ref_tokens_per_s"] = by["retro"].tokens_per_s / by["retro-ref"].tokens_per_s
        if "retro" in by and preset == "small" and "H100" in device_name:
            entry["retro_over_retro_pytorch_tokens_per_s"] = (
                by["retro"].tokens_per_s / RETRO_PYTORCH_H100_TOKENS_PER_S)
        out[preset if dtype == "auto" else f"{preset} {dtype}"] = entry
    for preset in dict.fromkeys(r.preset for r in results):
        speeds = {(r.config, r.dtype): r.tokens_per_s for r in results if r.preset == preset}
        gains = {f"{config}_bf16_over_float32_tokens_per_s": speeds[config, "bfloat16"] / speed
                 for (config, dtype), speed in speeds.items()
                 if dtype == "float32" and (config, "bfloat16") in speeds}
        if gains:
            out[f"{preset} bfloat16 / float32"] = gains
    return out


def table(result: dict) -> str:
    """The results as Markdown: one row per configuration, then the ratios and checks."""
    lines = ["| preset | config | dtype | batch | compiled | step ms | tokens/s | peak MB "
             "| GFLOP/token | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in map(lambda d: Measurement(**d), result["results"]):
        compiled = ("fullgraph" if r.fullgraph else "with breaks") if r.compiled else "eager"
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        dtype = r.dtype if r.dtype != "auto" else (
            "bfloat16" if result["machine"]["device"] == "cuda" else "float32")
        lines.append(f"| {r.preset} | {r.config} | {dtype} | {r.batch_size} | {compiled} "
                     f"| {r.step_ms:.1f} | "
                     f"{r.tokens_per_s:,.0f} | {r.peak_memory_mb:,.0f} | {r.flops_per_token / 1e9:.3f} "
                     f"| {r.tflops:.2f} | {mfu} |")
    lines.append("")
    for preset, entry in result["ratios"].items():
        parts = []
        if "gpt_over_anchor_tokens_per_s" in entry:
            parts.append(f"gpt / anchor tokens/s **{entry['gpt_over_anchor_tokens_per_s']:.2f}x** "
                         "(target >= 1)")
        if "retro_over_gpt_step_time" in entry:
            parts.append(f"RETRO / GPT time per token **{entry['retro_over_gpt_step_time']:.2f}x** "
                         f"vs FLOPs {entry['retro_over_gpt_flops']:.2f}x (paper: "
                         f"+{100 * PAPER_SMALL_OVERHEAD:.1f}% GPU-hours at small); RETRO / GPT MFU "
                         f"**{entry['retro_over_gpt_mfu']:.2f}** (target >= 0.9)")
        if "retro_over_ref_tokens_per_s" in entry:
            parts.append(f"retro / retro-ref tokens/s **{entry['retro_over_ref_tokens_per_s']:.2f}x**")
        if "retro_over_retro_pytorch_tokens_per_s" in entry:
            parts.append(f"retro / RETRO-pytorch (46.0k tokens/s, issue 10) "
                         f"**{entry['retro_over_retro_pytorch_tokens_per_s']:.2f}x**")
        parts += [f"{key.removesuffix('_bf16_over_float32_tokens_per_s')} tokens/s "
                  f"**{value:.2f}x**" for key, value in entry.items()
                  if key.endswith("_bf16_over_float32_tokens_per_s")]
        lines.append(f"{preset}: " + "; ".join(parts) + ".")
    check = result["compile_check"]
    if check:
        breaks = "" if check["fullgraph"] else f" ({check.get('graph_breaks', '?')} breaks)"
        lines.append(f"\nRetro under torch.compile: fullgraph **{check['fullgraph']}**{breaks}, "
                     f"checked by {check['checked_by']}.")
    loader = result["loader"]
    if "tokens_per_s" in loader:
        lines.append(f"\nData loader alone ({loader['num_workers']} workers, batch "
                     f"{loader['batch_size']} x {loader['block_size']} tokens): "
                     f"{loader['batches_per_s']:.1f} batches/s, {loader['tokens_per_s']:,.0f} "
                     f"tokens/s = **{loader.get('over_retro_step_rate', float('nan')):.1f}x** "
                     "RETRO's training rate (target >= 5).")
    else:
        lines.append(f"\nData loader: {loader['note']}")
    for s in result["skipped"]:
        lines.append(f"\nSkipped: {s['preset']} {s['config']} ({s['reason']}).")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The PERFORMANCE.md table of a run (markers train-<device>)."""
    m = result["machine"]
    device = (f"Device: {m['device_name']} (peak {m['peak_tflops']} TFLOP/s bf16). " if m["device"] == "cuda"
              else "Device: the CPU. ")
    return "\n".join([
        provenance.describe(result), f"{device}Median step time of {result['settings']['steps']} "
        "timed steps after warm-up; FLOPs by `retro.train.flops`.", "", table(result)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None,
                        help="comma list, measured in order (default: small on CUDA, tiny on CPU)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {CONFIGS}")
    parser.add_argument("--dtypes", default="auto",
                        help=f"comma list of autocast dtypes {DTYPES}, each measured (auto: bf16 "
                             "on CUDA, float32 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 CUDA, 4 CPU")
    parser.add_argument("--block-size", type=int, default=None,
                        help="tokens per sample T (default: the preset's; a multiple of chunk_size)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile anchor, gpt and retro (default: on CUDA only)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="our models recompute each block in the backward (not the anchor)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="no configuration starts unless the longest so far still fits")
    parser.add_argument("--db", default=None, help="a retrieval database: time its DataLoader too")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (--db)")
    parser.add_argument("--loader-seconds", type=float, default=3.0)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak (default: known cards; CPU none)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and retro)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default bench/results/train_<device>.json")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the tables rendered from --out (bench/results/train_<device>.json: "
                             "docs/PERFORMANCE.md's train-<device>)")
    parser.add_argument("--render", metavar="JSON", type=Path,
                        help="only rewrite the tables rendered from JSON (bench/results/train_<device>.json)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = dict(preset="small" if cuda else "tiny", batch_size=16 if cuda else 4,
                    steps=20 if cuda else 5, warmup=3 if cuda else 1, compile=cuda,
                    out=str(report.ROOT / "bench" / "results" / f"train_{args.device}.json"))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")
    unknown = set(args.dtypes.split(",")) - set(DTYPES)
    if unknown:
        parser.error(f"unknown dtypes {sorted(unknown)}; choose from {DTYPES}")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.render:
        print("rewrote", ", ".join(render.write_tables_of(args.render)))
        return None
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
        retro.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high")
    machine: dict = {"device": args.device}
    peak = None if args.peak_tflops is None else args.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak or next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        machine.update(device_name=name, capability=list(torch.cuda.get_device_capability(device)),
                       cuda=torch.version.cuda, retro_cuda_kernels=ops.attention.CUDA_MAX_KEY_SLOTS > 0)
    machine["peak_tflops"] = None if peak is None else peak / 1e12
    settings = ("preset", "configs", "dtypes", "batch_size", "block_size", "steps", "warmup", "compile",
                "activation_checkpointing", "budget_s", "seed")
    result = {"machine": machine, "settings": {k: getattr(args, k) for k in settings},
              "results": [], "ratios": {}, "compile_check": None,
              "loader": {"note": "skipped: no --db given"}, "skipped": [], "seconds": 0.0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.db:  # first: a few seconds, and a run cut short still has it
        result["loader"] = measure_loader(args.db, args.batch_size, args.num_workers, device,
                                          args.loader_seconds)
    durations: list[float] = []
    for preset in args.preset.split(","):
        sizes = {"block_size": args.block_size} if args.block_size else {}
        config = RetroConfig.preset(preset, **sizes,
                                    activation_checkpointing=args.activation_checkpointing)
        for dtype, name in itertools.product(args.dtypes.split(","), args.configs.split(",")):
            # the mean so far: compiled configs cost more than the eager retro-ref that ends a preset
            expected = statistics.mean(durations) if durations else 0.0
            if time.perf_counter() + expected > deadline:
                why = f"budget: {args.budget_s:.0f} s, configs take {expected:.0f} s on average"
                result["skipped"].append({"preset": preset, "config": name, "reason": why})
                print(f"skip {preset} {name}: {why}", flush=True)
                continue
            begin = time.perf_counter()
            measured, check, why = measure_with_retries(name, preset, config, args, peak, deadline,
                                                        dtype)
            durations.append(time.perf_counter() - begin)
            if measured is None:
                result["skipped"].append({"preset": preset, "config": name, "reason": why})
                print(f"skip {preset} {name}: {why}", flush=True)
            else:
                result["results"].append(asdict(measured))
                result["compile_check"] = result["compile_check"] or check
                print(progress_line(measured), flush=True)
            summarise(result, started)
            report.write_result(out, result, threads=torch.get_num_threads())  # after each: a cut run keeps it
    summarise(result, started)
    result = report.write_result(out, result, threads=torch.get_num_threads())
    print()
    print(table(result))
    if args.update_docs:
        print("rewrote", ", ".join(render.write_tables_of(out)))
    print(f"\nwrote {out} after {result['seconds']:.0f} s")
    return result


def progress_line(r: Measurement) -> str:
    mfu = "" if r.mfu is None else f", MFU {100 * r.mfu:.1f}%"
    return (f"{r.preset:6s} {r.config:9s} {r.dtype:8s} batch {r.batch_size:3d}: {r.step_ms:9.1f} ms/step, "
            f"{r.tokens_per_s:12,.0f} tokens/s, peak {r.peak_memory_mb:,.0f} MB, "
            f"{r.tflops:.2f} TFLOP/s{mfu} (setup {r.setup_s:.0f} s) {r.note}")


def summarise(result: dict, started: float) -> None:
    """Fills in result's ratios, the loader's share of RETRO's rate and the seconds so far."""
    measured = [Measurement(**r) for r in result["results"]]
    result["ratios"] = ratios(measured, result["machine"].get("device_name", ""))
    rates = [r.tokens_per_s for r in measured if r.config == "retro"]
    if rates and "tokens_per_s" in result["loader"]:
        result["loader"]["over_retro_step_rate"] = result["loader"]["tokens_per_s"] / rates[0]
    result["seconds"] = time.perf_counter() - started


if __name__ == "__main__":
    main()
