"""``generate``: streaming decoding with live retrieval, one retrieval per completed chunk.

The prompt is left-padded with the pad token (``<|endoftext|>``) to whole chunks (the paper's rule),
so every prompt chunk is complete and its neighbours are retrieved in one batch before decoding.
After that, each time a sampled token completes a chunk of m tokens, the chunk is retrieved through
``Database.retrieve`` (the one retrieval path) and its neighbours go with the call that feeds that
token to the model, which encodes them once (see Retro.forward and its cache).

Past block_size the window slides by whole chunks: when the next token would not fit, the first
chunk of the window is dropped and the remaining tokens are decoded again from position 0 with a
fresh cache, reusing the neighbours already retrieved for their chunks (no retrieval is repeated).
Chunk-aligned windows are what the model saw in training (samples start at chunk boundaries).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from retro.errors import RetroError
from retro.db import Database
from retro.generation.sampling import sample_next
from retro.model import GPT
from retro.model.decoding import DecodeCache


@dataclass
class RetrievalRecord:
    """One call of Database.retrieve during generation."""

    first_chunk: int  # index of the first chunk retrieved, in the padded sequence
    queries: np.ndarray  # (n, m) int64 the chunks' tokens
    ids: np.ndarray  # (n, k) int64 database chunk ids, -1 = none
    lens: np.ndarray  # (n, k) int32 real tokens of each neighbour
    tokens: np.ndarray  # (n, k, 2m) int64 neighbour chunk + continuation
    seconds: float


@dataclass
class GenerationStats:
    """Filled in by generate while it runs."""

    n_pad: int = 0  # pad tokens put before the prompt
    retrievals: list[RetrievalRecord] = field(default_factory=list)  # the prompt's first
    decode_seconds: float = 0.0  # model calls and sampling
    slides: int = 0  # times the window moved by one chunk

    @property
    def retrieval_seconds(self) -> float:
        return sum(r.seconds for r in self.retrievals)

    @property
    def generated_chunk_ms(self) -> float | None:
        """Mean retrieval time (ms) of a chunk completed during generation (None: none was)."""
        times = [r.seconds for r in self.retrievals[1:]]
        return 1e3 * sum(times) / len(times) if times else None

    @property
    def retrieval_share(self) -> float:
        """Retrieval's share of the generation time (retrieval + decoding)."""
        total = self.retrieval_seconds + self.decode_seconds
        return self.retrieval_seconds / total if total > 0 else 0.0


def generate(model: GPT, db: Database | None, prompt_tokens: Sequence[int] | np.ndarray,
             max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None,
             stats: GenerationStats | None = None, retrieval: bool = True,
             use_cache: bool = True) -> Iterator[int]:
    """Yields up to max_new_tokens sampled token ids, one at a time, after prompt_tokens.

    model: a Retro (retrieves from db unless retrieval is False or db None) or a GPT (db, if
        given, only bounds the vocabulary to its tokenizer's). prompt_tokens: 1..block_size token ids. temperature 0: greedy. seed: of the
        sampling generator. stats: filled in with the padding, retrievals and timings.
    use_cache: False decodes every token with a full forward pass over the window (the reference
        the KV-cached path must match).
    Raises ValueError for an empty or too long prompt, or bad sampling parameters.
    """
    config = model.config
    m, block_size = config.chunk_size, config.block_size
    prompt = np.asarray(prompt_tokens, dtype=np.int64).ravel()
    if len(prompt) == 0:
        raise RetroError("the prompt is empty: give at least one token")
    if len(prompt) > block_size:
        raise RetroError(f"the prompt has {len(prompt)} tokens, more than the model's block_size "
                         f"({block_size}); shorten it")
    vocab_size = config.vocab_size if db is None else min(db.tokenizer.vocab_size, config.vocab_size)
    if prompt.min() < 0 or prompt.max() >= vocab_size:
        raise RetroError(f"prompt token ids must be in [0, {vocab_size})")
    if max_new_tokens < 0:
        raise RetroError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    sample_next(torch.zeros(1), temperature, top_k, top_p)  # checks the parameters before any work
    stats = GenerationStats() if stats is None else stats
    pad_id = config.pad_id if db is None else db.eod_id
    stats.n_pad = -len(prompt) % m
    tokens = [pad_id] * stats.n_pad + prompt.tolist()
    source = db if retrieval and model.encoder is not None else None  # None: no neighbours
    window = _Window(model, tokens, use_cache, source is not None)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    if source is not None:
        window.retrieve(source, 0, len(tokens) // m, stats)
    started = time.perf_counter()
    logits = window.restart(0)
    for i in range(max_new_tokens):
        logits[vocab_size:] = float("-inf")  # padding rows of the embedding are not tokens
        token = sample_next(logits, temperature, top_k, top_p, generator)
        tokens.append(token)
        stats.decode_seconds += time.perf_counter() - started
        yield token
        if i == max_new_tokens - 1:
            return
        if source is not None and len(tokens) % m == 0:
            window.retrieve(source, len(tokens) // m - 1, len(tokens) // m, stats)
        started = time.perf_counter()
        if len(tokens) - window.start > block_size:
            stats.slides += 1
            logits = window.restart(window.start + m)
        else:
            logits = window.advance()


class _Window:
    """The tokens the model sees, tokens[start:], and their decoding state."""

    def __init__(self, model: GPT, tokens: list[int], use_cache: bool, retrieving: bool) -> None:
        self.model, self.tokens, self.use_cache, self.retrieving = model, tokens, use_cache, retrieving
        self.start = 0
        self.cache: DecodeCache | None = None
        self.nbr_tokens: list[np.ndarray] = []  # per chunk of tokens: (k, 2m) int64
        self.nbr_lens: list[np.ndarray] = []  # per chunk: (k,) int32

    def retrieve(self, db: Database, first: int, stop: int, stats: GenerationStats) -> None:
        """Retrieves chunks first .. stop-1 of tokens (one Database.retrieve call)."""
        m = self.model.config.chunk_size
        queries = np.asarray(self.tokens[first * m: stop * m], dtype=np.int64).reshape(-1, m)
        started = time.perf_counter()
        ids, lens, nbr_tokens = db.retrieve(queries, k=self.model.config.n_nbrs)
        seconds = time.perf_counter() - started
        stats.retrievals.append(RetrievalRecord(first, queries, ids, lens, nbr_tokens, seconds))
        self.nbr_tokens.extend(nbr_tokens)
        self.nbr_lens.extend(lens)

    def restart(self, start: int) -> torch.Tensor:
        """Decodes tokens[start:] from position 0; returns the next token's logits (vocab,)."""
        self.start = start
        self.cache = self.model.new_cache(1) if self.use_cache else None
        return self._forward(start)

    def advance(self) -> torch.Tensor:
        """Feeds the newest token; returns the next token's logits (vocab,)."""
        if not self.use_cache:
            return self._forward(self.start)
        return self._forward(len(self.tokens) - 1)

    @torch.no_grad()
    def _forward(self, begin: int) -> torch.Tensor:
        """Feeds tokens[begin:] (the cache, if any, holds tokens[start:begin])."""
        m = self.model.config.chunk_size
        device = self.model.lm_head.weight.device
        idx = torch.tensor([self.tokens[begin:]], dtype=torch.int64, device=device)  # (1, T)
        kwargs = {}
        # chunks this call completes, as indices into tokens (windows start on chunk boundaries)
        first, stop = begin // m, len(self.tokens) // m
        if self.retrieving and stop > first:
            kwargs["nbr_tokens"] = torch.from_numpy(
                np.stack(self.nbr_tokens[first:stop]))[None].to(device)  # (1, L, k, 2m)
            kwargs["nbr_lens"] = torch.from_numpy(
                np.stack(self.nbr_lens[first:stop]).astype(np.int32))[None].to(device)  # (1, L, k)
        logits, _ = self.model(idx, last_only=True, cache=self.cache, **kwargs)
        return logits[0, -1].float()  # (vocab,)
