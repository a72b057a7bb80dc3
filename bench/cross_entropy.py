"""The training loss on the CPU: retro.ops.cross_entropy (the core's kernel) against
F.cross_entropy, forward + backward, in one process on the same logits and threads.

Shapes: the demo's step (16 x 256 tokens, its BPE's 8,192 tokens) and the tiny preset's (4 x 512
tokens, GPT-2's 50,304); float32 logits, and bfloat16 logits as bf16 autocast's lm_head gives them
(F.cross_entropy under autocast then computes on a float32 copy, as in training). Median of
--repeats runs after one warm-up; the gradients of both are checked equal first.

    python bench/cross_entropy.py          # writes bench/results/cross_entropy_cpu.json
    python bench/cross_entropy.py --render bench/results/cross_entropy_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import retro
from retro.ops.cross_entropy import cross_entropy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

SHAPES = {"demo": (16 * 256, 8192), "tiny": (4 * 512, 50304)}  # (tokens, vocab)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def anchor_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy as a training step computes it (bf16 autocast: on a float32 copy)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=logits.dtype == torch.bfloat16):
        return F.cross_entropy(logits, targets, ignore_index=-1)


def step_seconds(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor,
                 repeats: int) -> float:
    """Median seconds of loss_fn forward + backward (one warm-up first)."""
    times = []
    for i in range(repeats + 1):
        x = logits.detach().requires_grad_()
        begin = time.perf_counter()
        loss_fn(x, targets).backward()
        if i:
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def bench_case(shape: str, dtype: str, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    retro.set_num_threads(threads)
    rows, vocab = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(DTYPES[dtype])
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[::97] = -1  # ignored rows, as padding gives them
    grads = []
    for fn in (cross_entropy_loss, anchor_loss):
        x = logits.detach().requires_grad_()
        fn(x, targets).backward()
        grads.append(x.grad.float())
    difference = (grads[0] - grads[1]).abs().max().item()
    ours = step_seconds(cross_entropy_loss, logits, targets, repeats)
    anchor = step_seconds(anchor_loss, logits, targets, repeats)
    return {"shape": shape, "tokens": rows, "vocab": vocab, "dtype": dtype, "threads": threads,
            "ours_ms": 1000 * ours, "anchor_ms": 1000 * anchor, "speedup": anchor / ours,
            "max_grad_difference": difference}


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, targets, ignore_index=-1)


def markdown(result: dict) -> str:
    lines = [provenance.describe(result), "",
             "| shape | tokens x vocab | logits | threads | F.cross_entropy ms | retro ms | speed-up "
             "| max grad difference |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['tokens']} x {r['vocab']:,} | {r['dtype']} | "
                     f"{r['threads']} | {r['anchor_ms']:.1f} | {r['ours_ms']:.1f} | "
                     f"**{r['speedup']:.2f}x** | {r['max_grad_difference']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=report.RESULTS_DIR / "cross_entropy_cpu.json")
    parser.add_argument("--render", metavar="JSON", type=Path,
                        help="only rewrite the table rendered from JSON")
    args = parser.parse_args(argv)
    if args.render:
        print("rewrote", ", ".join(render.write_tables_of(args.render)))
        return
    rows = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            for threads in map(int, args.threads.split(",")):
                rows.append(bench_case(shape, dtype, threads, args.repeats))
                r = rows[-1]
                print(f"{shape} {dtype} {threads} thread(s): F.cross_entropy {r['anchor_ms']:.1f} ms, "
                      f"retro {r['ours_ms']:.1f} ms, {r['speedup']:.2f}x", flush=True)
    result = report.write_result(args.out, {"rows": rows}, threads=max(r["threads"] for r in rows))
    print(markdown(result))
    print("rewrote", ", ".join(render.write_tables_of(args.out)))


if __name__ == "__main__":
    main()
