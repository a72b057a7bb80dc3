"""Text quality of sampled continuations (the paper's Table 3): repetition, self-BLEU and Zipf.

- ``repetition_rate``: the share of a continuation's token n-grams (n = 4) that already occurred
  earlier in the same continuation (Welleck et al. 2020's seq-rep-n), averaged over continuations.
- ``self_bleu``: the mean BLEU-n (n = 4, uniform weights, no brevity penalty) of each continuation
  against all the others as references (Zhu et al. 2018): high = the samples look alike.
- ``zipf_coefficient``: s in frequency ~ rank^-s, by least squares on log frequency against log
  rank over all generated tokens (Holtzman et al. 2020); natural text is near 1.

``text_quality`` samples the continuations with nucleus sampling (p = 0.9, as the paper) from
validation prompts and returns the three numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

Tokens = Sequence[int]


def ngrams(tokens: Tokens, n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(continuations: Sequence[Tokens], n: int = 4) -> float:
    """Mean share of n-grams seen before in the same continuation (those with no n-gram skipped)."""
    rates = []
    for tokens in continuations:
        grams = ngrams(list(tokens), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else 0.0


def bleu(hypothesis: Tokens, references: Sequence[Tokens], n: int = 4) -> float:
    """BLEU-n of one hypothesis: the geometric mean of clipped k-gram precisions, k = 1..n (0 if
    any precision is 0), without brevity penalty."""
    log_sum = 0.0
    for k in range(1, n + 1):
        counts = Counter(ngrams(list(hypothesis), k))
        if not counts:
            return 0.0
        best: Counter = Counter()
        for reference in references:
            best |= Counter(ngrams(list(reference), k))
        clipped = sum(min(count, best[gram]) for gram, count in counts.items())
        if clipped == 0:
            return 0.0
        log_sum += math.log(clipped / sum(counts.values()))
    return math.exp(log_sum / n)


def self_bleu(continuations: Sequence[Tokens], n: int = 4) -> float:
    """Mean BLEU-n of each continuation against all the others."""
    if len(continuations) < 2:
        raise ValueError("self-BLEU needs at least two continuations")
    scores = [bleu(c, [*continuations[:i], *continuations[i + 1:]], n)
              for i, c in enumerate(continuations)]
    return float(np.mean(scores))


def zipf_coefficient(continuations: Sequence[Tokens]) -> float:
    """s of frequency ~ rank^-s fitted over the token counts of all continuations."""
    counts = np.array(sorted(Counter(t for c in continuations for t in c).values(), reverse=True), float)
    if len(counts) < 2:
        raise ValueError("the Zipf coefficient needs at least two distinct tokens")
    ranks = np.arange(1, len(counts) + 1, dtype=float)
    slope = np.polyfit(np.log(ranks), np.log(counts), 1)[0]
    return float(-slope)


def text_quality(model: Any, db: Any, n_prompts: int = 20, max_new_tokens: int = 128,
                 top_p: float = 0.9, seed: int = 0, retrieval: bool = True) -> dict[str, float]:
    """Samples a continuation of the first chunk of n_prompts validation samples (evenly spread)
    and measures them; retrieval=False samples RETRO without neighbours."""
    from retro.generation import generate

    stream = db.split("valid").stream
    picks = np.linspace(0, stream.n_samples - 1, num=min(n_prompts, stream.n_samples)).astype(int)
    continuations = [
        list(generate(model, db, stream.sample(int(j))[: db.chunk_size], max_new_tokens=max_new_tokens,
                      temperature=1.0, top_p=top_p, seed=seed + i, retrieval=retrieval))
        for i, j in enumerate(picks)
    ]
    return {
        "continuations": len(continuations),
        "repetition_rate": repetition_rate(continuations),
        "self_bleu": self_bleu(continuations),
        "zipf_coefficient": zipf_coefficient(continuations),
    }


def text_quality_of_runs(run: str, db_dir: str | None = None, gpt_run: str | None = None,
                         n_prompts: int = 20, max_new_tokens: int = 128) -> dict[str, dict]:
    """text_quality for a RETRO run with and without retrieval (or a GPT run), and gpt_run."""
    from retro.eval.comparison import run_models

    models, db = run_models(run, db_dir, gpt_run)
    return {name: text_quality(m, db, n_prompts, max_new_tokens, retrieval=r)
            for name, (m, r) in models.items()}


def text_quality_table(scores: dict[str, dict]) -> str:
    rows = ["| model | continuations | repetition (4-grams) | self-BLEU-4 | Zipf coefficient |",
            "|---|---|---|---|---|"]
    for name, s in scores.items():
        rows.append(f"| {name} | {s['continuations']} | {s['repetition_rate']:.3f} | "
                    f"{s['self_bleu']:.3f} | {s['zipf_coefficient']:.3f} |")
    return "\n".join(rows)
