"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import math

import torch

from retro.errors import RetroError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raises RetroError unless 0 <= temperature < inf, top_k >= 1 and 0 < top_p <= 1 (NaN fails
    every comparison, so each test is written to refuse it)."""
    if not (math.isfinite(temperature) and temperature >= 0) \
            or (top_k is not None and not top_k >= 1) \
            or (top_p is not None and not 0 < top_p <= 1):
        raise RetroError(f"need a finite temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                         f"{temperature}, {top_k}, {top_p}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """One token id from logits (vocab,): argmax when temperature is 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely tokens and to the smallest
    set whose probability reaches top_p (the most likely token always stays)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        probs, order = torch.sort(torch.softmax(logits, dim=-1), descending=True)
        # drop a token when the more likely ones already reach top_p
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
