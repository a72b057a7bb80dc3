"""``evaluate``: validation loss, perplexity and bits per byte of RETRO (with and without
retrieval) and GPT over the same samples, with the leakage-filtered breakdown."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from retro.errors import RetroError
from retro.train.checkpoint import load_model
from retro.db import Database
from retro.eval.bytes import bits_per_byte
from retro.eval.qa import qa_comparison
from retro.data.trivia import lists_for
from retro.eval.leakage import ALPHAS, filtered_bpb, sample_overlaps
from retro.db.streams import padding_targets
from retro.eval.losses import (NEIGHBOURS, chunk_bytes, group_sums, loss_by_position, n_samples,
                               sample_neighbours, samples, stored_neighbours, token_losses)
from retro.model import GPT
from retro.train.run_db import open_matching_db, open_run_db


def evaluate_models(models: dict[str, tuple[GPT, bool]], db: Database, split: str = "valid",
                    batch_size: int = 4, max_samples: int | None = None,
                    alphas: tuple[float, ...] = ALPHAS,
                    neighbours: Sequence[str] = ("real", "none")) -> dict[str, Any]:
    """Scores each named (model, retrieval on?) over the split's samples.

    A model with retrieval is scored once per neighbour source (retro.eval.losses.NEIGHBOURS):
    "real" under its own name, the others as "<name>_<source>" ("none" as
    "<name>_no_retrieval"). Returns a JSON-ready dict: split, samples, tokens, bytes, models
    {name: {loss, perplexity, bpb, neighbours}}, retrieval_gain {name: {source: {nats,
    per_position}}} (the loss without retrieval minus the loss with the source's neighbours,
    overall and at each offset within a chunk, over the targets that read neighbours), and
    leakage (see leakage.filtered_bpb, with the real neighbours).
    """
    count = n_samples(db, split, max_samples)
    tokens = samples(db, split, count)  # (S, T + 1)
    real = stored_neighbours(db, split, count, db.n_nbrs)
    n_bytes = chunk_bytes(db.tokenizer, tokens, db.chunk_size)  # (S, L + 1)
    counted = ~padding_targets(tokens, db.eod_id)  # (S, T): an aligned stream's padding is not
    n_tokens = int(counted.sum())
    nats, scores, by_position = {}, {}, {}
    # each source's neighbours are read once
    given_by_source: dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None] = {
        ("real", db.n_nbrs): real}
    for name, model, source in scored_models(models, neighbours):
        key = (source, model.config.n_nbrs)
        if key not in given_by_source:
            given_by_source[key] = sample_neighbours(db, split, count, key[1], source)
        given = given_by_source[key]
        per_token = token_losses(model, tokens, given, batch_size) * counted  # (S, T)
        nats[name] = group_sums(per_token, db.chunk_size)
        by_position[name] = loss_by_position(per_token, db.chunk_size, counted)
        loss = float(per_token.sum()) / n_tokens
        scores[name] = {"loss": loss, "perplexity": math.exp(loss), "neighbours": source,
                        "bpb": bits_per_byte(float(per_token.sum()), int(n_bytes.sum()))}
    overlaps = sample_overlaps(tokens, *real, db.chunk_size)
    return {"split": split, "samples": count, "tokens": n_tokens, "bytes": int(n_bytes.sum()),
            "models": scores, "retrieval_gain": retrieval_gains(models, scores, by_position),
            "leakage": filtered_bpb(overlaps, nats, n_bytes, alphas)}


def scored_name(name: str, source: str) -> str:
    """The result name of a retrieval model scored with a neighbour source."""
    return {"real": name, "none": f"{name}_no_retrieval"}.get(source, f"{name}_{source}")


def scored_models(models: dict[str, tuple[GPT, bool]],
                  neighbours: Sequence[str]) -> list[tuple[str, GPT, str]]:
    """(result name, model, neighbour source) of every score: a model with retrieval once per
    source, always with "none" (the gain's baseline); a model without, once with "none"."""
    bad = sorted(set(neighbours) - set(NEIGHBOURS))
    if bad:
        raise RetroError(f"neighbours must be among {NEIGHBOURS}, not {bad}")
    scored, done = [], set()
    for name, (model, retrieval) in models.items():
        if not retrieval or model.encoder is None:
            if name not in done:
                scored.append((name, model, "none"))
            continue
        for source in dict.fromkeys([*neighbours, "none"]):
            scored.append((scored_name(name, source), model, source))
            done.add(scored_name(name, source))  # e.g. run_models' "retro_no_retrieval"
    return scored


def retrieval_gains(models: dict[str, tuple[GPT, bool]], scores: dict[str, dict],
                    by_position: dict[str, np.ndarray]) -> dict[str, dict[str, dict]]:
    """{model: {source: {"nats": loss(none) - loss(source), "per_position": [m floats]}}} for
    every model with retrieval and every source it was scored with."""
    gains = {}
    for name, (model, retrieval) in models.items():
        base = scored_name(name, "none")
        if not retrieval or model.encoder is None or base not in scores:
            continue
        gains[name] = {
            source: {"nats": scores[base]["loss"] - scores[scored_name(name, source)]["loss"],
                     "per_position": (by_position[base]
                                      - by_position[scored_name(name, source)]).tolist()}
            for source in NEIGHBOURS
            if source != "none" and scored_name(name, source) in scores}
    return gains


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
             edited_db: str | os.PathLike | None = None,
             neighbours: Sequence[str] = ("real", "none")) -> dict[str, Any]:
    """``retro eval``: a RETRO run with retrieval ("retro") and without ("retro_no_retrieval"), or
    a GPT run ("gpt"), plus gpt_run ("gpt") when given, on db (default: the run's database).
    neighbours: the neighbour sources RETRO is scored with (see evaluate_models).

    qa_lists: factual QA lists (retro.data.trivia) scored by every model, up to qa_items items
    each, into result["qa"] ("default": trivia.lists_for the database's corpus); with edited_db (a database built with edits), also RETRO's answers
    with neighbours from it (retro.eval.qa.qa_comparison). Every run is checked against the
    database (see retro.train.run_db.open_run_db), and edited_db against that database.
    """
    models, database = run_models(run, db, gpt_run, device)
    result = evaluate_models(models, database, split, batch_size, max_samples,
                             neighbours=neighbours)
    result["run"], result["db"] = str(run), str(database.root)
    if qa_lists:
        edited = open_matching_db(database, edited_db) if edited_db is not None else None
        if qa_lists == "default":
            qa_lists = lists_for(database.config["corpus"])
        result["qa"] = qa_comparison(models, database, qa_lists, qa_items, edited)
        if edited is not None:
            result["edited_db"] = str(edited.root)
    return result


def gain_table(result: dict[str, Any]) -> str:
    """The retrieval gain of each model and neighbour source (nats), overall and at the first,
    middle and last offsets within a chunk, as a Markdown table."""
    rows = ["| model | neighbours | gain (nats) | offset 0 | offset m/2 | offset m-1 |",
            "|---|---|---|---|---|---|"]
    for name, sources in result["retrieval_gain"].items():
        for source, gain in sources.items():
            per = gain["per_position"]
            rows.append(f"| {name} | {source} | {gain['nats']:+.4f} | {per[0]:+.3f} "
                        f"| {per[len(per) // 2]:+.3f} | {per[-1]:+.3f} |")
    return "\n".join(rows)


def results_table(result: dict[str, Any]) -> str:
    """The models' loss, perplexity and bits per byte as a Markdown table."""
    rows = ["| model | loss | perplexity | bits per byte |", "|---|---|---|---|"]
    for name, s in result["models"].items():
        rows.append(f"| {name} | {s['loss']:.4f} | {s['perplexity']:.2f} | {s['bpb']:.4f} |")
    return "\n".join(rows)
