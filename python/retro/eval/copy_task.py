"""The copy task: does a RETRO model read its neighbours?

Random tokens (no structure a decoder could learn), cut into chunks of m; the one neighbour of
chunk u is chunk u followed by chunk u+1, exactly what retrieval returns when the database holds
the document. Every target from position m on lies in the neighbour that its token attends to,
so it is predictable only by copying from there; chance is ln(vocab_size) nats. Three arms:

- ``real``: RETRO with the true neighbours (it should fall far below chance);
- ``shuffled``: RETRO with another sequence's neighbours (it must stay at chance);
- ``gpt``: the same decoder without retrieval (it must stay at chance).

    python -m retro.eval.copy_task --steps 200        # the three arms, losses as JSON

Used by tests/test_copy_task.py and bench/copy_task.py (docs/RESULTS.md's ablation).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from retro.model import GPT, Retro, RetroConfig

ARMS = ("real", "shuffled", "gpt")


@dataclass
class CopyTask:
    """The data and the model of the copy task (defaults: ~10 s per 100 steps on 2 cores)."""

    vocab_size: int = 256
    chunk_size: int = 16  # m
    n_chunks: int = 4  # L: sequences of T = L * m tokens
    batch_size: int = 16
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    cca_layers: tuple[int, ...] = (1, 2)
    cross_positions: str = "rope"  # RetroConfig.cross_positions
    cross_locality: float = RetroConfig.cross_locality  # 0: the cross-attentions start uniform
    cca_locality_offset: int = RetroConfig.cca_locality_offset  # where CCA's local start peaks
    lr: float = 2e-3
    warmup: int = 20

    @property
    def chance(self) -> float:
        """Loss of a uniform guess, nats."""
        return math.log(self.vocab_size)

    def config(self) -> RetroConfig:
        """The tiny RETRO (and, as GPT, its decoder) of the task."""
        m = self.chunk_size
        return RetroConfig(vocab_size=self.vocab_size, block_size=self.n_chunks * m,
                           n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                           chunk_size=m, n_nbrs=1, nbr_len=2 * m, pad_id=0,
                           cca_layers=self.cca_layers, cross_positions=self.cross_positions,
                           cross_locality=self.cross_locality,
                           cca_locality_offset=self.cca_locality_offset)

    def batch(self, generator: torch.Generator,
              arm: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """idx (B, T), targets (B, T) (-1 before position m-1: not copyable) and the neighbours
        (B, L, 1, 2m) of the arm (None for gpt)."""
        b, m, n = self.batch_size, self.chunk_size, self.n_chunks
        seq = torch.randint(0, self.vocab_size, (b, (n + 1) * m + 1), generator=generator)
        idx, targets = seq[:, :n * m], seq[:, 1:n * m + 1].clone()
        targets[:, :m - 1] = -1  # their targets lie in chunk 0, which no neighbour holds
        if arm == "gpt":
            return idx, targets, None
        nbrs = torch.stack([seq[:, u * m:(u + 2) * m] for u in range(n)], dim=1)  # (B, L, 2m)
        if arm == "shuffled":
            nbrs = nbrs.roll(1, dims=0)  # another sequence's: the same distribution, no copy
        return idx, targets, nbrs.unsqueeze(2)


def loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor,
         nbrs: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy of the copyable targets."""
    if isinstance(model, Retro):
        return model(idx, nbrs, targets=targets)[1]
    return model(idx, targets=targets)[1]


def train_arm(task: CopyTask, arm: str, steps: int, seed: int = 0,
              eval_batches: int = 4) -> dict[str, Any]:
    """Trains a fresh model on one arm; returns its training curve and the final loss on fresh
    batches of the same arm, with the loss as a fraction of chance."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, not {arm!r}")
    torch.manual_seed(seed)
    model = (GPT if arm == "gpt" else Retro)(task.config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    curve, start = [], time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = task.lr * min(1.0, (step + 1) / task.warmup)
        value = loss(model, *task.batch(generator, arm))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        curve.append(round(value.item(), 4))
    model.eval()
    held_out = torch.Generator().manual_seed(seed + 1_000_003)
    with torch.no_grad():
        final = sum(loss(model, *task.batch(held_out, arm)).item()
                    for _ in range(eval_batches)) / eval_batches
    return {"arm": arm, "steps": steps, "loss": final, "fraction_of_chance": final / task.chance,
            "curve": curve, "seconds": time.perf_counter() - start, "model": model}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--cross-positions", default="rope", choices=("rope", "cca", "none"))
    parser.add_argument("--cross-locality", type=float, default=RetroConfig.cross_locality)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    task = CopyTask(cross_positions=args.cross_positions, cross_locality=args.cross_locality)
    for arm in args.arms:
        result = train_arm(task, arm, args.steps, args.seed)
        result.pop("model")
        print(json.dumps({"task": asdict(task), **result, "curve": result["curve"][::10]}))


if __name__ == "__main__":
    main()
