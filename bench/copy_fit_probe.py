"""Does a RETRO of the demo's size learn to copy? The copy task at the demo's scale.

A GPT of the demo's decoder (4 layers, width 256, vocabulary 8192, learned positions; randomly
initialised, or the demo's trained GPT with --init-from) is RETRO-fitted (CCA in layers 2 and 4, a 2-layer encoder of width 128; decoder
frozen unless --no-freeze) on copy batches only: random tokens drawn from --vocab-used ids, the
neighbour of chunk u being chunk u then chunk u + 1 (k = 2, the other neighbour another sample's).
The loss on the copyable targets is printed every 25 steps; chance is ln(vocab_used).

    python bench/copy_fit_probe.py --steps 200 --lr 5e-3                 # frozen, m = 64
    python bench/copy_fit_probe.py --steps 150 --lr 2e-3 --no-freeze
    python bench/copy_fit_probe.py --steps 150 --lr 5e-3 --chunk-size 16 [--vocab-used 256]
    python bench/copy_fit_probe.py --steps 150 --lr 2e-3 --init-from runs/demo/gpt [--no-freeze]

Appends one JSON line per run to bench/results/copy_fit_probe.jsonl (provenance, curve).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from retro.model import GPT, Retro, RetroConfig  # noqa: E402

RESULTS = report.RESULTS_DIR / "copy_fit_probe.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--vocab-used", type=int, default=8192)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--no-freeze", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-from", default=None,
                        help="a trained GPT run of the demo's decoder (default: a random one)")
    parser.add_argument("--cross-locality", type=float, default=RetroConfig.cross_locality)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab, m, block, batch, k = 8192, args.chunk_size, 256, 8, 2
    n_chunks = block // m
    torch.manual_seed(0)
    config = RetroConfig(vocab_size=vocab, block_size=block, n_layer=4, n_head=4, n_embd=256,
                         chunk_size=m, n_nbrs=k, nbr_len=2 * m, pad_id=0, positions="learned",
                         cca_layers=(2, 4))
    model = Retro.from_gpt(args.init_from or GPT(config), freeze=not args.no_freeze,
                           cca_layers=(2, 4), enc_n_embd=128, enc_n_head=2, chunk_size=m,
                           n_nbrs=k, nbr_len=2 * m, cross_locality=args.cross_locality)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    curve, started = [], time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)
        seq = torch.randint(1, args.vocab_used, (batch, (n_chunks + 1) * m + 1),
                            generator=generator)
        idx, targets = seq[:, :block], seq[:, 1:block + 1].clone()
        targets[:, :m - 1] = -1
        own = torch.stack([seq[:, u * m:(u + 2) * m] for u in range(n_chunks)], 1)
        nbrs = torch.stack([own, own.roll(1, 0)], 2)  # (B, L, k, 2m)
        lens = torch.full((batch, n_chunks, k), 2 * m)
        loss = model(idx, nbrs, lens, targets=targets)[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(round(loss.item(), 3))
        if step % 25 == 0:
            print(step, curve[-1], f"{time.perf_counter() - started:.0f} s", flush=True)
    result = {"args": vars(args), "chance": round(math.log(args.vocab_used), 3), "final": curve[-1],
              "curve_every_25": curve[::25], "seconds": round(time.perf_counter() - started)}
    with open(RESULTS, "a") as file:  # one line per run: the file is a log of runs, appended to
        file.write(json.dumps(report.with_provenance(result, threads=torch.get_num_threads())) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
