"""The copy curriculum: training samples that reward a model for reading its neighbours.

A seeded share of the training samples is replaced by copy samples, of one of two kinds:

- ``tokens="text"``: the real sample, with its own text among the neighbours of each chunk u
  (in a random slot): chunk u then its continuation, cut at its document's end, exactly what a
  database holding the sample's document would return (TokenStream.own_neighbours); the other
  slots keep the retrieved neighbours (distractors; ``distractors=False``: every slot holds the
  own text). The targets stay the text's, so no language-modelling data is lost, and those from
  position m - 1 on can be copied. This is the knowledge setting's situation (the evaluated
  text in the database) taught on training documents only; evaluation never sees it. With
  ``shift`` > 0 each such neighbour starts a random 0 .. shift tokens into its chunk: the text to
  copy sits at no fixed offset, so the model must find it by its content, as it must find a fact
  in a neighbour from another document.
- random tokens (the copy task of retro.eval.copy_task in the database's own tokens): T + m + 1
  tokens with no order a decoder could learn, drawn from the train stream's token distribution
  (``"stream"``) or uniformly over the token ids 0 .. the stream's largest (``"uniform"``), eod
  aside, whose chunk u has among its k neighbours chunk u then chunk u + 1 of the sample itself,
  aligned, the others drawn the same way; the first m - 1 targets are -1 (no neighbour holds
  them).

Real text rarely repeats another document (training neighbours never come from the sample's own
document), so reading is seldom rewarded on it; copy samples reward it on every target after the
first chunk. Whether that teaches a given model to read within its steps is measured, not
assumed (docs/RESULTS.md sections 1c and 2b). Which samples are replaced, and their tokens,
depend on (seed, sample id) alone: a resumed run reads the same data.
"""

from __future__ import annotations

import numpy as np

from retro.db.streams import TokenStream
from retro.train.config import COPY_TOKENS
from retro.train.data import SampleDataset, TrainingSamples

SALT = 0xC0917  # keeps the curriculum's draws apart from the other uses of the seed


class CopyCurriculum(TrainingSamples):
    """A RETRO training set with `fraction` of its samples replaced by copy samples.

    Items are those of `samples` (idx (T,), targets (T,), nbr_tokens (L, k, 2m), nbr_lens (L, k)),
    int64 and int32 as there.
    """

    def __init__(self, samples: SampleDataset, fraction: float, seed: int, k: int,
                 tokens: str = "stream", distractors: bool = True, shift: int = 0,
                 shift_share: float = 1.0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the copy curriculum's fraction must be in [0, 1], not {fraction}")
        if tokens not in COPY_TOKENS:
            raise ValueError(f"copy tokens must be one of {COPY_TOKENS}, not {tokens!r}")
        if not samples.with_neighbours:
            raise ValueError("the copy curriculum is for RETRO: its samples need neighbours")
        self.samples, self.fraction, self.seed, self.k = samples, fraction, seed, k
        self.distractors = distractors
        if not 0 <= shift <= samples.stream.chunk_size or (shift and tokens != "text"):
            raise ValueError(f"the copy shift must be in 0..{samples.stream.chunk_size}, and "
                             f"needs text copy samples; got {shift} with {tokens!r}")
        if not 0.0 <= shift_share <= 1.0:
            raise ValueError(f"the copy shift's share must be in [0, 1], not {shift_share}")
        self.shift, self.shift_share = shift, shift_share
        self.tokens = tokens
        stream = samples.stream
        self.pool = (np.asarray(stream.tokens) if tokens != "uniform" else
                     np.arange(int(np.max(stream.tokens)) + 1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, j: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, SALT, j])
        if rng.random() >= self.fraction:
            return self.samples[j]
        stream = self.samples.stream
        if self.tokens == "text":
            return self_reading_sample(rng, self.samples[j], stream, j, self.samples.eod_id,
                                       self.distractors, self.shift, self.shift_share)
        return copy_sample(rng, self.pool, self.samples.eod_id, stream.block_size,
                           stream.chunk_size, self.k, self.distractors)


def self_reading_sample(rng: np.random.Generator, sample: tuple[np.ndarray, ...],
                        stream: TokenStream, j: int, eod_id: int,
                        distractors: bool = True, shift: int = 0,
                        shift_share: float = 1.0) -> tuple[np.ndarray, ...]:
    """Real sample j (idx, targets, nbr_tokens (L, k, 2m), nbr_lens (L, k), as SampleDataset
    gives it) with its own neighbours (TokenStream.own_neighbours, each starting a random 0 ..
    shift tokens into its chunk; with shift_share < 1, a random 1 .. shift tokens for that share
    of the chunks and 0 for the others) in one random slot of each chunk, its retrieved
    neighbours in the others (without distractors: in every slot). Its targets from position
    m - 1 on can be copied; those of chunk 0 stay, as no neighbour holds them."""
    idx, targets, nbr_tokens, nbr_lens = (np.array(x) for x in sample)
    n_chunks, k = nbr_lens.shape
    shifts = _shifts(rng, n_chunks, shift, shift_share) if shift else None
    own, own_lens = stream.own_neighbours(j, eod_id, shifts)
    slots = np.asarray(rng.integers(0, k, size=n_chunks)).tolist()
    for u in range(n_chunks):
        slot: int | slice = slots[u] if distractors else slice(None)
        nbr_tokens[u, slot] = own[u]
        nbr_lens[u, slot] = own_lens[u]
    return idx, targets, nbr_tokens, nbr_lens


def _shifts(rng: np.random.Generator, n_chunks: int, shift: int, share: float) -> np.ndarray:
    """(n_chunks,) int64 offsets: uniform in 0 .. shift (share 1, the draws of the first
    curriculum), or 1 .. shift for a random share of the chunks and 0 for the others."""
    if share == 1.0:
        return np.asarray(rng.integers(0, shift + 1, size=n_chunks))
    shifted = rng.random(n_chunks) < share
    return np.where(shifted, rng.integers(1, shift + 1, size=n_chunks), 0)


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
