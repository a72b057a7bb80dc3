"""Bytes of token groups as text, for bits per byte (tokenizer-agnostic, as DeepMind reports).

A group's bytes are the UTF-8 bytes of its decoded text plus one per end-of-document token (the
document separator), so that the count does not depend on how the tokenizer spells eod.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retro.data.tokenizer import Tokenizer


def group_bytes(tokenizer: Tokenizer, groups: Sequence[np.ndarray]) -> np.ndarray:
    """(len(groups),) int64: bytes of each group of token ids (decoded in one batch)."""
    eod = tokenizer.eod_id
    pieces, owners = [], []
    counts = np.zeros(len(groups), dtype=np.int64)
    for g, group in enumerate(groups):
        group = np.asarray(group)
        counts[g] = np.count_nonzero(group == eod)
        for piece in np.split(group, np.flatnonzero(group == eod)):
            piece = piece[piece != eod]
            if len(piece):
                pieces.append(piece)
                owners.append(g)
    for owner, text in zip(owners, tokenizer.decode_batch(pieces)):
        counts[owner] += len(text.encode("utf-8"))
    return counts


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Summed cross-entropy in nats over text of n_bytes bytes -> bits per byte."""
    return nats / np.log(2) / n_bytes if n_bytes > 0 else float("nan")
