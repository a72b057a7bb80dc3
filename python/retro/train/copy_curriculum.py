"""The copy curriculum: synthetic samples that only a model reading its neighbours can predict.

A share of the training samples is replaced by a copy sample (the copy task of
retro.eval.copy_task, in the database's own tokens): T + m + 1 tokens with no order a decoder could
learn, drawn from the train stream's token distribution (``tokens="stream"``) or uniformly over the
token ids 0 .. the stream's largest (``"uniform"``: the vocabulary as far as the data uses it), eod
aside, whose chunk u has among its k neighbours (in a random slot)
chunk u then chunk u + 1 of the sample itself, aligned, the others drawn the same way
(distractors; ``distractors=False``: every slot holds the right neighbour). Every target from
position m - 1 on is then predictable by copying from the right neighbour, and by nothing else;
the first m - 1 targets are -1 (no neighbour holds them).

Real text rarely repeats another document (training neighbours never come from the sample's own
document), so reading is seldom rewarded on it; copy samples reward nothing else. Whether that
teaches a given model to read within its steps is measured, not assumed: the test-sized model of
retro.eval.copy_task learns copying in ~50 steps, while the demo's RETRO-fit with a fraction of 0.5
learned none in 300 steps (docs/RESULTS.md section 2b), and copy samples alone teach the demo's
model shape slowly with stream tokens and a distractor (section 1c, which measures the options). Which samples are replaced, and their
tokens, depend on (seed, sample id) alone: a resumed run reads the same data.
"""

from __future__ import annotations

import numpy as np

from retro.train.config import COPY_TOKENS
from retro.train.data import SampleDataset, TrainingSamples

SALT = 0xC0917  # keeps the curriculum's draws apart from the other uses of the seed


class CopyCurriculum(TrainingSamples):
    """A RETRO training set with `fraction` of its samples replaced by copy samples.

    Items are those of `samples` (idx (T,), targets (T,), nbr_tokens (L, k, 2m), nbr_lens (L, k)),
    int64 and int32 as there.
    """

    def __init__(self, samples: SampleDataset, fraction: float, seed: int, k: int,
                 tokens: str = "stream", distractors: bool = True) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the copy curriculum's fraction must be in [0, 1], not {fraction}")
        if tokens not in COPY_TOKENS:
            raise ValueError(f"copy tokens must be one of {COPY_TOKENS}, not {tokens!r}")
        if not samples.with_neighbours:
            raise ValueError("the copy curriculum is for RETRO: its samples need neighbours")
        self.samples, self.fraction, self.seed, self.k = samples, fraction, seed, k
        self.distractors = distractors
        stream = samples.stream
        self.pool = (np.asarray(stream.tokens) if tokens == "stream" else
                     np.arange(int(np.max(stream.tokens)) + 1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, j: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, SALT, j])
        if rng.random() >= self.fraction:
            return self.samples[j]
        stream = self.samples.stream
        return copy_sample(rng, self.pool, self.samples.eod_id, stream.block_size,
                           stream.chunk_size, self.k, self.distractors)


def copy_sample(rng: np.random.Generator, pool: np.ndarray, eod_id: int, block_size: int,
                chunk_size: int, k: int, distractors: bool = True) -> tuple[np.ndarray, ...]:
    """One copy sample of T = block_size tokens drawn from pool (any 1-D token array; its eods
    are never drawn): idx (T,), targets (T,) int64, nbr_tokens (L, k, 2m) int64, nbr_lens (L, k)
    int32 (all 2m). Without distractors every one of the k slots holds the right neighbour."""
    m, n_chunks = chunk_size, block_size // chunk_size
    seq = _draw(rng, pool, eod_id, block_size + m + 1)
    idx, targets = seq[:block_size], seq[1:block_size + 1].copy()
    targets[:m - 1] = -1
    nbr_tokens = _draw(rng, pool, eod_id, n_chunks * k * 2 * m).reshape(n_chunks, k, 2 * m)
    slots = rng.integers(0, k, n_chunks)
    for u in range(n_chunks):
        nbr_tokens[u, slots[u] if distractors else slice(None)] = seq[u * m:(u + 2) * m]
    return idx, targets, nbr_tokens, np.full((n_chunks, k), 2 * m, dtype=np.int32)


def _draw(rng: np.random.Generator, pool: np.ndarray, eod_id: int, n: int) -> np.ndarray:
    """(n,) int64 tokens of pool at uniformly drawn positions, eods drawn again."""
    out = np.asarray(pool[rng.integers(0, len(pool), n)], dtype=np.int64)
    for _ in range(100):
        redo = np.flatnonzero(out == eod_id)
        if len(redo) == 0:
            return out
        out[redo] = pool[rng.integers(0, len(pool), len(redo))]
    raise ValueError("the token stream is (almost) all end-of-document tokens")
