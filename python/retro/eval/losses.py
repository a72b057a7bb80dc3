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

from retro.errors import RetroError
from retro.data.tokenizer import Tokenizer
from retro.db import Database
from retro.db.streams import TokenStream, padding_targets
from retro.eval.bytes import group_bytes
from retro.eval.sources import NEIGHBOURS  # torch-free, for `retro eval --help`
from retro.model import GPT


def n_samples(db: Database, split: str, max_samples: int | None) -> int:
    """Samples evaluated: the split's, or its first max_samples."""
    total = db.split(split).stream.n_samples
    if total == 0:
        raise RetroError(f"the {split} split of {db.root} has no sample of {db.block_size + 1} "
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
    """tokens (S, T + 1) -> (S, L + 1) int64 bytes of each target group (see the module doc);
    an aligned stream's padding targets count none, as they count no loss."""
    n, block_size = tokens.shape[0], tokens.shape[1] - 1
    groups = group_of_target(block_size, chunk_size)
    n_groups = groups[-1] + 1
    bounds = np.searchsorted(groups, np.arange(n_groups + 1))  # group g = targets[b[g]:b[g+1]]
    targets, counted = tokens[:, 1:], ~padding_targets(tokens, tokenizer.eod_id)
    pieces = [targets[j, bounds[g]:bounds[g + 1]][counted[j, bounds[g]:bounds[g + 1]]]
              for j in range(n) for g in range(n_groups)]
    return group_bytes(tokenizer, pieces).reshape(n, n_groups)


def sample_neighbours(db: Database, split: str, count: int, n_nbrs: int,
                      source: str = "real") -> tuple[np.ndarray, np.ndarray] | None:
    """Neighbour tokens (S, L, k, 2m) int64 and lengths (S, L, k) int32 of the first count
    samples' query chunks, from one source:

    - "real": the stored neighbours (the first n_nbrs);
    - "shuffled": the stored neighbours of another chunk, half the evaluated chunks away (same
      distribution, unrelated text: what reading neighbours is worth when they are wrong);
    - "oracle": one neighbour, the chunk itself then its true continuation in the split's stream,
      cut at its document's end (what the database would return if it held the evaluated text:
      the upper bound);
    - "none": None (retrieval off).
    """
    if source not in NEIGHBOURS:
        raise RetroError(f"neighbours must be one of {NEIGHBOURS}, not {source!r}")
    if source == "none":
        return None
    if source == "oracle":
        return oracle_neighbours(db.split(split).stream, count, db.tokenizer.eod_id)
    tokens, lens = stored_neighbours(db, split, count, n_nbrs)
    if source == "shuffled":
        if tokens.shape[0] * tokens.shape[1] < 2:
            raise RetroError("shuffled neighbours need at least two query chunks to swap; "
                             f"{count} sample(s) of {tokens.shape[1]} chunk(s) were given")
        shift = tokens.shape[0] * tokens.shape[1] // 2
        tokens, lens = (np.roll(x.reshape(-1, *x.shape[2:]), shift, axis=0).reshape(x.shape)
                        for x in (tokens, lens))
    return tokens, lens


def stored_neighbours(db: Database, split: str, count: int,
                      n_nbrs: int) -> tuple[np.ndarray, np.ndarray]:
    """The "real" source of :func:`sample_neighbours`: the first n_nbrs stored neighbours of the
    first count samples' query chunks, tokens (S, L, k, 2m) int64 and lengths (S, L, k) int32."""
    return db.split(split).sample_neighbours(np.arange(count), db.chunks, n_nbrs)


def oracle_neighbours(stream: TokenStream, count: int,
                      eod_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, L, 1, 2m) int64 tokens and (S, L, 1) int32 lengths: for each chunk u of the first
    count samples, the chunk then its true continuation, cut at its document's end as the
    database cuts a neighbour (TokenStream.own_neighbours)."""
    tokens, lens = zip(*(stream.own_neighbours(j, eod_id) for j in range(count)))
    return np.stack(tokens)[:, :, None], np.stack(lens)[:, :, None]


@torch.no_grad()
def token_losses(model: GPT, tokens: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray] | None,
                 batch_size: int = 4) -> np.ndarray:
    """Cross-entropy (nats) of every target: (S, T) float64.

    tokens (S, T + 1); neighbours: (nbr_tokens (S, L, k, R), nbr_lens (S, L, k)) for a Retro
    with retrieval, None for a GPT or a Retro with retrieval off.
    """
    device = model.lm_head.weight.device
    out = np.zeros((tokens.shape[0], tokens.shape[1] - 1), dtype=np.float64)
    for begin in range(0, tokens.shape[0], batch_size):
        batch = torch.from_numpy(tokens[begin:begin + batch_size]).to(device)  # (B, T + 1)
        kwargs = {}
        if neighbours is not None:
            nbr_tokens, nbr_lens = (x[begin:begin + batch_size] for x in neighbours)
            kwargs["nbr_tokens"] = torch.from_numpy(nbr_tokens).to(device)
            kwargs["nbr_lens"] = torch.from_numpy(nbr_lens.astype(np.int32)).to(device)
        logits, _ = model(batch[:, :-1], **kwargs)  # (B, T, vocab)
        nats = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(),
                               reduction="none").view(batch.shape[0], -1)  # (B, T)
        out[begin:begin + batch.shape[0]] = nats.double().cpu().numpy()
    return out


def group_sums(nats: np.ndarray, chunk_size: int) -> np.ndarray:
    """Per-target nats (S, T) -> summed nats of each target group (S, L + 1)."""
    groups = group_of_target(nats.shape[1], chunk_size)
    out = np.zeros((nats.shape[0], groups[-1] + 1), dtype=np.float64)
    np.add.at(out.T, groups, nats.T)  # out.T is a view: row g of it gets every column of group g
    return out


def chunk_losses(model: GPT, tokens: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray] | None,
                 batch_size: int = 4) -> np.ndarray:
    """Summed cross-entropy (nats) of each target group: (S, L + 1) float64 (see token_losses)."""
    return group_sums(token_losses(model, tokens, neighbours, batch_size), model.config.chunk_size)


def loss_by_position(nats: np.ndarray, chunk_size: int,
                     counted: np.ndarray | None = None) -> np.ndarray:
    """(m,) float64: mean nats of the targets at each offset within a chunk, over the targets
    that had neighbours to read (chunks u >= 1, sample positions m .. T) and are counted
    ((S, T) bool; None: all)."""
    if counted is None:
        counted = np.ones(nats.shape, dtype=bool)
    read = (nats * counted)[:, chunk_size - 1:]  # target at sample position q = column + 1 >= m
    weight = counted[:, chunk_size - 1:]
    offset = (np.arange(chunk_size - 1, nats.shape[1]) + 1) % chunk_size
    return np.array([read[:, offset == i].sum() / max(1, weight[:, offset == i].sum())
                     for i in range(chunk_size)])
