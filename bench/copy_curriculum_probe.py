"""Why the copy curriculum does not teach the demo's RETRO to read: copy samples alone (fraction 1),
the demo's model shape, with the copy task's two simplifications toggled one at a time.

retro.train.copy_curriculum draws a copy sample's tokens from the train stream (its unigram
distribution) and hides the one right neighbour among k = 2 (a distractor in the other slot);
the copy test (retro.eval.copy_task, which learns) draws tokens uniformly and gives one neighbour.
Each arm trains a fresh RETRO on copy_sample batches for --steps steps and logs the loss on the
copyable targets; chance is the entropy of the token distribution.

    python bench/copy_curriculum_probe.py --db runs/demo/db --steps 150 --threads 1 \
        --arms stream:2 uniform:2 stream:1 uniform:1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import report
import torch

from retro.db import open_db
from retro.model import Retro, RetroConfig
from retro.train import TrainConfig
from retro.train.copy_curriculum import copy_sample
from retro.train.optim import learning_rate, make_optimizer

MODEL = dict(n_layer=4, n_head=4, n_embd=128, cca_layers=(2, 4), enc_n_embd=128, enc_n_head=2)


def train_arm(pool: np.ndarray, eod_id: int, k: int, args: argparse.Namespace,
              vocab: int, block_size: int, chunk_size: int) -> list[float]:
    """Loss every 10 steps of a fresh RETRO trained on copy samples drawn from pool."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = RetroConfig(vocab_size=vocab, block_size=block_size, chunk_size=chunk_size,
                         n_nbrs=k, nbr_len=2 * chunk_size,
                         **{**MODEL, "cca_layers": args.cca_layers})
    model = Retro(config).train()
    schedule = TrainConfig(db="-", out="-", max_iters=args.steps, learning_rate=args.lr,
                           warmup_iters=args.steps // 20)
    optimizer = make_optimizer(model, schedule, torch.device("cpu"))
    curve = []
    for step in range(args.steps):
        batch = [copy_sample(rng, pool, eod_id, block_size, chunk_size, k)
                 for _ in range(args.batch_size)]
        idx, targets, nbr_tokens, nbr_lens = (torch.from_numpy(np.stack(x)) for x in zip(*batch))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, schedule)
        _, loss = model(idx, nbr_tokens, nbr_lens, targets=targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            curve.append(round(loss.item(), 4))
            print(f"  step {step}: {loss.item():.4f}", flush=True)
    return curve


def entropy(pool: np.ndarray, eod_id: int) -> float:
    """Nats of a token drawn from pool, eods excluded (the loss of a model that does not read)."""
    counts = np.bincount(pool[pool != eod_id])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="the demo's strict database")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cca-layers", type=lambda text: tuple(map(int, text.split(","))),
                        default=MODEL["cca_layers"], help="e.g. 1,3 (default: the demo's 2,4)")
    parser.add_argument("--arms", nargs="+", default=["stream:2", "uniform:2", "stream:1"],
                        help="POOL:K, POOL 'stream' (the train stream's tokens) or 'uniform'")
    parser.add_argument("--out", type=Path,
                        default=report.RESULTS_DIR / "copy_curriculum_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    db = open_db(args.db)
    stream = np.asarray(db.split("train").stream.tokens)
    vocab = -(-db.tokenizer.vocab_size // 64) * 64
    pools = {"stream": stream, "uniform": np.arange(db.tokenizer.vocab_size, dtype=np.int64)}
    rows = []
    for arm in args.arms:
        name, k = arm.split(":")
        pool = pools[name]
        started = time.perf_counter()
        print(f"{arm}:", flush=True)
        curve = train_arm(pool, db.eod_id, int(k), args, vocab, db.block_size, db.chunk_size)
        chance = entropy(pool, db.eod_id)
        rows.append({"pool": name, "k": int(k), "steps": args.steps, "chance_nats": round(chance, 4),
                     "final_loss": curve[-1], "fraction_of_chance": round(curve[-1] / chance, 3),
                     "curve_every_10": curve, "seconds": round(time.perf_counter() - started)})
        print(f"{arm}: {curve[-1]:.4f} nats, chance {chance:.4f} -> {rows[-1]['fraction_of_chance']}")
    model = {**MODEL, "cca_layers": args.cca_layers}
    report.write_result(args.out, {"model": model, "batch_size": args.batch_size, "lr": args.lr,
                                   "rows": rows}, threads=args.threads,
                        load_before=load_before)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
