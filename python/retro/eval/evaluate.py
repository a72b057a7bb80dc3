"""``evaluate``: validation loss, perplexity and bits per byte of RETRO (with and without
retrieval) and GPT over the same samples, with the leakage-filtered breakdown."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from retro.train.checkpoint import load_model
from retro.db import Database
from retro.eval.bytes import bits_per_byte
from retro.eval.qa import qa_comparison
from retro.data.trivia import lists_for
from retro.eval.leakage import ALPHAS, filtered_bpb, sample_overlaps
from retro.eval.losses import chunk_bytes, chunk_losses, n_samples, samples, stored_neighbours
from retro.model import GPT
from retro.train.run_db import open_matching_db, open_run_db


def evaluate_models(models: dict[str, tuple[GPT, bool]], db: Database, split: str = "valid",
                    batch_size: int = 4, max_samples: int | None = None,
                    alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """Scores each named (model, retrieval on?) over the split's samples and stored neighbours.

    Returns a JSON-ready dict: split, samples, tokens, bytes, models {name: {loss, perplexity,
    bpb}}, and leakage (see leakage.filtered_bpb).
    """
    count = n_samples(db, split, max_samples)
    tokens = samples(db, split, count)  # (S, T + 1)
    nbr_tokens, nbr_lens = stored_neighbours(db, split, count, db.n_nbrs)
    n_bytes = chunk_bytes(db.tokenizer, tokens, db.chunk_size)  # (S, L + 1)
    n_tokens = count * db.block_size
    nats, scores = {}, {}
    for name, (model, retrieval) in models.items():
        k = model.config.n_nbrs
        nats[name] = chunk_losses(model, tokens,
                                  nbr_tokens[:, :, :k] if retrieval else None,
                                  nbr_lens[:, :, :k] if retrieval else None, batch_size)
        loss = float(nats[name].sum()) / n_tokens
        scores[name] = {"loss": loss, "perplexity": math.exp(loss),
                        "bpb": bits_per_byte(float(nats[name].sum()), int(n_bytes.sum()))}
    overlaps = sample_overlaps(tokens, nbr_tokens, nbr_lens, db.chunk_size)
    return {"split": split, "samples": count, "tokens": n_tokens, "bytes": int(n_bytes.sum()),
            "models": scores, "leakage": filtered_bpb(overlaps, nats, n_bytes, alphas)}


def run_models(run: str | os.PathLike, db: str | os.PathLike | None = None,
               gpt_run: str | os.PathLike | None = None,
               device: str = "cpu") -> tuple[dict[str, tuple[GPT, bool]], Database]:
    """The models a comparison runs, name -> (model, with retrieval), and their database: a RETRO
    run as "retro" and "retro_no_retrieval" (or a GPT run as "gpt"), plus gpt_run as "gpt" (or
    "gpt_2"). Every run is checked against the database (retro.train.run_db.open_run_db)."""
    model, state = load_model(run, map_location=device)
    database = open_run_db(model, state, db)
    if model.encoder is not None:
        models = {"retro": (model, True), "retro_no_retrieval": (model, False)}
    else:
        models = {"gpt": (model, False)}
    if gpt_run is not None:
        gpt, gpt_state = load_model(gpt_run, map_location=device)
        open_run_db(gpt, gpt_state, database.root)
        models["gpt" if "gpt" not in models else "gpt_2"] = (gpt, False)
    return models, database


def evaluate(run: str | os.PathLike, db: str | os.PathLike | None = None,
             gpt_run: str | os.PathLike | None = None, split: str = "valid", batch_size: int = 4,
             max_samples: int | None = None, device: str = "cpu",
             qa_lists: Sequence[str] | str = (),
             qa_items: int | None = None,
             edited_db: str | os.PathLike | None = None) -> dict[str, Any]:
    """``retro eval``: a RETRO run with retrieval ("retro") and without ("retro_no_retrieval"), or
    a GPT run ("gpt"), plus gpt_run ("gpt") when given, on db (default: the run's database).

    qa_lists: factual QA lists (retro.data.trivia) scored by every model, up to qa_items items
    each, into result["qa"] ("default": trivia.lists_for the database's corpus); with edited_db (a database built with edits), also RETRO's answers
    with neighbours from it (retro.eval.qa.qa_comparison). Every run is checked against the
    database (see retro.train.run_db.open_run_db), and edited_db against that database.
    """
    models, database = run_models(run, db, gpt_run, device)
    result = evaluate_models(models, database, split, batch_size, max_samples)
    result["run"], result["db"] = str(run), str(database.root)
    if qa_lists:
        edited = open_matching_db(database, edited_db) if edited_db is not None else None
        if qa_lists == "default":
            qa_lists = lists_for(database.config["corpus"])
        result["qa"] = qa_comparison(models, database, qa_lists, qa_items, edited)
        if edited is not None:
            result["edited_db"] = str(edited.root)
    return result


def results_table(result: dict[str, Any]) -> str:
    """The models' loss, perplexity and bits per byte as a Markdown table."""
    rows = ["| model | loss | perplexity | bits per byte |", "|---|---|---|---|"]
    for name, s in result["models"].items():
        rows.append(f"| {name} | {s['loss']:.4f} | {s['perplexity']:.2f} | {s['bpb']:.4f} |")
    return "\n".join(rows)
