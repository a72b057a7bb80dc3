"""Per-chunk validation losses: a model over a split's samples with their stored neighbours.

Sample j is stream[j*T : j*T + T + 1]: inputs are its first T tokens, targets the T after the
first. Targets are grouped by the chunk they belong to, group u = sample positions [u*m, (u+1)*m)
(group 0 lacks position 0, which is no target) and a last group L = T / m holding position T.
Every target of chunk u >= 1 is predicted from RET(C_{u-1}), the neighbours of the chunk before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from retro.data.tokenizer import Tokenizer
from retro.db import Database
from retro.eval.bytes import group_bytes
from retro.model import GPT


def n_samples(db: Database, split: str, max_samples: int | None) -> int:
    """Samples evaluated: the split's, or its first max_samples."""
    total = db.split(split).stream.n_samples
    if total == 0:
        raise ValueError(f"the {split} split of {db.root} has no sample of {db.block_size + 1} "
                         "tokens")
    return total if max_samples is None else min(total, max_samples)


def samples(db: Database, split: str, count: int) -> np.ndarray:
    """(count, T + 1) int64 tokens of the split's first count samples."""
    stream = db.split(split).stream
    return np.stack([stream.sample(j) for j in range(count)]).astype(np.int64)


def group_of_target(block_size: int, chunk_size: int) -> np.ndarray:
    """(T,) int64: the group of the target at sample position q = 1 .. T (q // m)."""
    return np.arange(1, block_size + 1) // chunk_size


def chunk_bytes(tokenizer: Tokenizer, tokens: np.ndarray, chunk_size: int) -> np.ndarray:
    """tokens (S, T + 1) -> (S, L + 1) int64 bytes of each target group (see the module doc)."""
    n, block_size = tokens.shape[0], tokens.shape[1] - 1
    groups = group_of_target(block_size, chunk_size)
    n_groups = groups[-1] + 1
    bounds = np.searchsorted(groups, np.arange(n_groups + 1))  # group g = targets[b[g]:b[g+1]]
    targets = tokens[:, 1:]
    pieces = [targets[j, bounds[g]:bounds[g + 1]] for j in range(n) for g in range(n_groups)]
    return group_bytes(tokenizer, pieces).reshape(n, n_groups)


def stored_neighbours(db: Database, split: str, count: int,
                      n_nbrs: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour tokens (S, L, k, 2m) int64 and lengths (S, L, k) int32 of the first count
    samples' query chunks, from the stored neighbour ids (chunk + continuation)."""
    chunks_per_sample = db.block_size // db.chunk_size
    ids, _ = db.split(split).neighbours()
    ids = np.asarray(ids[: count * chunks_per_sample, :n_nbrs])
    tokens, lens = db.chunks.neighbour_values(ids)
    return (tokens.reshape(count, chunks_per_sample, *tokens.shape[1:]),
            lens.reshape(count, chunks_per_sample, -1))


@torch.no_grad()
def chunk_losses(model: GPT, tokens: np.ndarray, nbr_tokens: np.ndarray | None,
                 nbr_lens: np.ndarray | None, batch_size: int = 4) -> np.ndarray:
    """Summed cross-entropy (nats) of each target group: (S, L + 1) float64.

    tokens (S, T + 1); nbr_tokens (S, L, k, R) and nbr_lens (S, L, k) for a Retro with retrieval,
    None for a GPT or a Retro with retrieval off.
    """
    device = model.lm_head.weight.device
    n, block_size = tokens.shape[0], tokens.shape[1] - 1
    groups = torch.from_numpy(group_of_target(block_size, model.config.chunk_size)).to(device)
    n_groups = int(groups[-1]) + 1
    out = np.zeros((n, n_groups), dtype=np.float64)
    for begin in range(0, n, batch_size):
        batch = torch.from_numpy(tokens[begin:begin + batch_size]).to(device)  # (B, T + 1)
        kwargs = {}
        if nbr_tokens is not None:
            kwargs["nbr_tokens"] = torch.from_numpy(nbr_tokens[begin:begin + batch_size]).to(device)
            kwargs["nbr_lens"] = torch.from_numpy(
                nbr_lens[begin:begin + batch_size].astype(np.int32)).to(device)
        logits, _ = model(batch[:, :-1], **kwargs)  # (B, T, vocab)
        nats = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(),
                               reduction="none").view(batch.shape[0], -1)  # (B, T)
        summed = torch.zeros(batch.shape[0], n_groups, dtype=torch.float64, device=device)
        summed.index_add_(1, groups, nats.double())
        out[begin:begin + batch.shape[0]] = summed.cpu().numpy()
    return out
