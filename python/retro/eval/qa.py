"""Factual QA scored by likelihood: each choice's log-probability after the item's prompt.

An item's prompt is left-padded with ``<|endoftext|>`` to whole chunks (the paper's rule, as in
generation), so a RETRO model predicts the answer, which starts the next chunk, from the
neighbours of the prompt's chunks, retrieved through ``Database.retrieve``. The prompt is decoded
once per item and its decoding state (``DecodeCache.repeat``) continued by every choice.

Scores per (model setting, list): the mean log-likelihood of the gold answer (nats per token),
multiple-choice accuracy by the summed log-probability (``accuracy``) and by the log-probability
per byte of the choice (``accuracy_norm``, lm-evaluation-harness's acc_norm), and, with retrieval,
the share of items whose retrieved neighbours contain an accepted answer (``answer_retrieved``).
Against an edited database (retro.data.edits) the items whose gold answer was edited are asked
with the edited answer among the choices, and ``follows_database`` is the share answered with it
(``edited_answer_retrieved``: the share whose neighbours contain the edited answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from retro.data.trivia import QAItem, qa_items
from retro.db import Database, DatabaseError
from retro.model import GPT


@dataclass(frozen=True)
class ChoiceScores:
    """Scores of items' choices: log_probs and n_tokens (items, choices), neighbour_texts per
    item (the decoded neighbours of its prompt's chunks; empty without retrieval)."""

    log_probs: np.ndarray  # (n, C) float64 summed log-probability of each choice's tokens
    n_tokens: np.ndarray  # (n, C) int64 tokens of each choice
    neighbour_texts: list[str]


def score_choices(model: GPT, db: Database, items: Sequence[QAItem], retrieval: bool,
                  batch_size: int = 16) -> ChoiceScores:
    """Log-probabilities of every item's choices after its prompt.

    model: a Retro (neighbours from db when retrieval is True) or a GPT. db gives the tokenizer
    (and the neighbours). Choices are tokenized with a leading space; one longer than a chunk is
    cut to the chunk size. Raises ValueError for an item without choices or a prompt that leaves
    no room for an answer within block_size.
    """
    config = model.config
    m, tokenizer = config.chunk_size, db.tokenizer
    n_choices = len(items[0].choices) if items else 0
    if any(len(item.choices) != n_choices or n_choices == 0 for item in items):
        raise ValueError("every item needs the same, non-zero number of choices (trivia.with_choices)")
    prompts = [_left_pad(p, m, db.eod_id) for p in tokenizer.encode_batch([i.prompt for i in items])]
    too_long = [i for i, p in zip(items, prompts) if len(p) + m > config.block_size]
    if too_long:
        raise ValueError(f"the prompt of {too_long[0].question!r} leaves no room for an answer in "
                         f"block_size {config.block_size}")
    choices = tokenizer.encode_batch([" " + c for item in items for c in item.choices])
    choices = [c[:m] for c in choices]

    retrieving = retrieval and model.encoder is not None
    neighbours = _retrieve(db, prompts, config.n_nbrs) if retrieving else []
    log_probs = np.zeros((len(items), n_choices))
    # items whose prompts have the same number of chunks are decoded together
    by_chunks: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_chunks.setdefault(len(prompt) // m, []).append(i)
    for group in by_chunks.values():
        for begin in range(0, len(group), batch_size):
            batch = group[begin:begin + batch_size]
            log_probs[batch] = _batch_log_probs(
                model, np.stack([prompts[i] for i in batch]),
                [choices[i * n_choices + j] for i in batch for j in range(n_choices)],
                [neighbours[i] for i in batch] if retrieving else None, db.eod_id)
    texts = [_neighbour_text(db, n) for n in neighbours] if retrieving else [""] * len(items)
    n_tokens = np.array([len(c) for c in choices], dtype=np.int64).reshape(len(items), n_choices)
    return ChoiceScores(log_probs, n_tokens, texts)


def _left_pad(tokens: np.ndarray, m: int, pad_id: int) -> np.ndarray:
    """tokens (n,) -> (ceil(n / m) * m,) int64, pad_id first."""
    n_pad = -len(tokens) % m
    return np.concatenate([np.full(n_pad, pad_id, dtype=np.int64), tokens.astype(np.int64)])


def _retrieve(db: Database, prompts: list[np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per prompt: its chunks' neighbour tokens (L, k, 2m) and lengths (L, k), one retrieve call."""
    m = db.chunk_size
    queries = np.concatenate([p.reshape(-1, m) for p in prompts])
    _, lens, tokens = db.retrieve(queries, k=k)
    bounds = np.cumsum([0] + [len(p) // m for p in prompts])
    return [(tokens[a:b], lens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _neighbour_text(db: Database, neighbours: tuple[np.ndarray, np.ndarray]) -> str:
    tokens, lens = neighbours
    rows = [tokens[u, j, :lens[u, j]] for u in range(len(lens)) for j in range(lens.shape[1])]
    return "\n".join(db.tokenizer.decode_batch(rows))


@torch.no_grad()
def _batch_log_probs(model: GPT, prompts: np.ndarray, choices: list[np.ndarray],
                     neighbours: list[tuple[np.ndarray, np.ndarray]] | None,
                     pad_id: int) -> np.ndarray:
    """prompts (I, L*m); choices: I*C token arrays, item-major; neighbours per item or None.
    Returns (I, C) summed log-probabilities."""
    device = model.lm_head.weight.device
    n_items, prompt_len = prompts.shape
    n_choices = len(choices) // n_items
    width = max(len(c) for c in choices)
    cache = model.new_cache(n_items, prompt_len + width)
    kwargs = {}
    if neighbours is not None:
        kwargs["nbr_tokens"] = torch.from_numpy(np.stack([t for t, _ in neighbours])).to(device)
        kwargs["nbr_lens"] = torch.from_numpy(np.stack([n for _, n in neighbours])).to(device)
    first, _ = model(torch.from_numpy(prompts).to(device), last_only=True, cache=cache, **kwargs)
    targets = np.full((len(choices), width), pad_id, dtype=np.int64)
    for row, choice in enumerate(choices):
        targets[row, :len(choice)] = choice
    targets_t = torch.from_numpy(targets).to(device)  # (I*C, A)
    logits = first.repeat_interleave(n_choices, dim=0)  # (I*C, 1, V)
    if width > 1:  # the choices' tokens but the last, after the shared prompt
        rest, _ = model(targets_t[:, :-1], cache=cache.repeat(n_choices))
        logits = torch.cat([logits, rest], dim=1)  # (I*C, A, V)
    token_lp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets_t[..., None])[..., 0]
    lengths = torch.tensor([len(c) for c in choices], device=device)
    real = torch.arange(width, device=device)[None, :] < lengths[:, None]
    summed = (token_lp.double() * real).sum(dim=1)
    return summed.view(n_items, n_choices).cpu().numpy()


def qa_scores(items: Sequence[QAItem], scores: ChoiceScores,
              edited: dict[int, str] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of one (model setting, list); see the module doc.

    edited: item position -> the answer the database was edited to (then present among its
    choices); adds follows_database and follows_original over those items.
    """
    lp, n_tok = scores.log_probs, scores.n_tokens
    n_bytes = np.array([[len(c.encode()) + 1 for c in item.choices] for item in items])
    result: dict[str, Any] = {
        "items": len(items),
        "cloze": int(sum(item.is_cloze for item in items)),
        "gold_nats_per_token": float(np.mean(-lp[:, 0] / n_tok[:, 0])),
        "accuracy": float(np.mean(lp.argmax(axis=1) == 0)),
        "accuracy_norm": float(np.mean((lp / n_bytes).argmax(axis=1) == 0)),
        "chance": 1.0 / lp.shape[1],
    }
    if any(scores.neighbour_texts):
        result["answer_retrieved"] = float(np.mean([
            any(a.lower() in text.lower() for a in item.answers)
            for item, text in zip(items, scores.neighbour_texts)]))
    if edited:
        picks = [items[i].choices[int(lp[i].argmax())] for i in edited]
        result["edited_items"] = len(edited)
        if any(scores.neighbour_texts):
            result["edited_answer_retrieved"] = float(np.mean([
                edited[i].lower() in scores.neighbour_texts[i].lower() for i in edited]))
        result["follows_database"] = float(np.mean([p == edited[i] for p, i in zip(picks, edited)]))
        result["follows_original"] = float(np.mean([p == items[i].gold for p, i in zip(picks, edited)]))
    return result


def edited_items(items: Sequence[QAItem],
                 edits: Sequence[Sequence[str]]) -> tuple[list[QAItem], dict[int, str]]:
    """The items whose gold answer an edit replaces, with the edited answer among their choices
    (in place of the last distractor if absent), and position -> edited answer."""
    mapping = dict((old, new) for old, new in edits)
    out: list[QAItem] = []
    edited: dict[int, str] = {}
    for item in items:
        new = mapping.get(item.gold)
        if new is None or not item.choices:
            continue
        choices = item.choices if new in item.choices else (*item.choices[:-1], new)
        edited[len(out)] = new
        out.append(replace(item, choices=choices))
    return out, edited


def qa_comparison(models: dict[str, tuple[GPT, bool]], db: Database, lists: Sequence[str],
                  max_items: int | None = None, edited_db: Database | None = None,
                  batch_size: int = 16) -> dict[str, dict[str, Any]]:
    """{list: {setting: qa_scores}} for each named (model, retrieval on?) on each list, and for
    every model with retrieval, "<name>_edited_db": its answers with neighbours from edited_db
    (a database built with edits) on the items whose answer was edited."""
    edits = edited_db.config.get("edits", []) if edited_db is not None else []
    if edited_db is not None and not edits:
        raise DatabaseError(f"{edited_db.root} was built without edits (retro db build --edits)")
    results: dict[str, dict[str, Any]] = {}
    for name in lists:
        items = qa_items(name, max_items)
        results[name] = {setting: qa_scores(items, score_choices(model, db, items, retrieval,
                                                                 batch_size))
                         for setting, (model, retrieval) in models.items()}
        swapped, edited = edited_items(items, edits)
        if edited_db is None or not edited:
            continue
        for setting, (model, retrieval) in models.items():
            if retrieval and model.encoder is not None:
                scores = score_choices(model, edited_db, swapped, True, batch_size)
                results[name][f"{setting}_edited_db"] = qa_scores(swapped, scores, edited)
    return results


def qa_table(results: dict[str, dict[str, Any]]) -> str:
    """The QA results as a Markdown table, a row per (list, setting)."""
    rows = ["| list | model | items | accuracy | acc_norm | gold nats/token | answer retrieved "
            "| follows database |", "|---|---|---|---|---|---|---|---|"]
    for name, settings in results.items():
        for setting, s in settings.items():
            retrieved = f"{s['answer_retrieved']:.3f}" if "answer_retrieved" in s else "-"
            follows = "-"
            if "follows_database" in s:
                follows = f"{s['follows_database']:.3f} (original {s['follows_original']:.3f}"
                if "edited_answer_retrieved" in s:
                    follows += f"; edited answer retrieved {s['edited_answer_retrieved']:.3f}"
                follows += ")"
            rows.append(f"| {name} | {setting} | {s.get('edited_items', s['items'])} | "
                        f"{s['accuracy']:.3f} | {s['accuracy_norm']:.3f} | "
                        f"{s['gold_nats_per_token']:.3f} | {retrieved} | {follows} |")
    return "\n".join(rows)
