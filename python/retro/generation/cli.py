"""``retro generate RUN --db DIR --prompt TEXT``: streams a continuation, then the retrieval costs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from retro.errors import RetroError, finite_float, non_negative_int, positive_int

if TYPE_CHECKING:  # torch-backed: imported by the command, so that --help needs no torch
    from retro.db import Database
    from retro.generation.generator import GenerationStats


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro generate``."""
    parser = subparsers.add_parser("generate", help="continue a prompt, retrieving every chunk")
    parser.add_argument("run", help="a training run directory (or its checkpoint file)")
    parser.add_argument("--db", default=None, help="the database (default: the run's own)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=non_negative_int, default=128)
    parser.add_argument("--temperature", type=finite_float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--top-p", type=finite_float, default=0.9, help="nucleus sampling; 1: off")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-retrieval", action="store_true", help="RETRO without neighbours")
    parser.add_argument("--show-neighbours", action="store_true",
                        help="print the text retrieved for every chunk")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from retro.generation.generator import GenerationStats, generate
    from retro.generation.sampling import check_sampling
    from retro.train.checkpoint import load_model
    from retro.train.run_db import open_run_db

    check_sampling(args.temperature, args.top_k, args.top_p)  # before the model and the index load
    if not args.prompt:  # (byte-level BPE gives any other text tokens)
        raise RetroError("the prompt is empty: give some text with --prompt")
    model, state = load_model(args.run, map_location=args.device)
    db = open_run_db(model, state, args.db)
    tokenizer = db.tokenizer
    prompt = tokenizer.encode_batch([args.prompt])[0]
    retrieving = model.encoder is not None and not args.no_retrieval
    if retrieving:  # load the embedder and the index before the clock starts
        setup = time.perf_counter()
        db.embedder.embed([args.prompt])  # the first call also warms the encoder up
        db.search  # noqa: B018 (opens the index)
        print(f"[embedder and index loaded in {time.perf_counter() - setup:.2f} s]",
              file=sys.stderr)
    stats = GenerationStats()
    print(args.prompt, end="", flush=True)
    decoded, new_tokens = "", []
    for token in generate(model, db, prompt, args.max_new_tokens, args.temperature, args.top_k,
                          args.top_p, args.seed, stats, retrieving):
        new_tokens.append(token)
        text = tokenizer.decode_batch([new_tokens])[0]
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(decoded):], end="", flush=True)
            decoded = text
    print()
    if args.show_neighbours:
        print(neighbour_report(db, stats))
    print(cost_report(stats, len(new_tokens), retrieving), file=sys.stderr)
    return 0


def neighbour_report(db: Database, stats: GenerationStats) -> str:
    """Each retrieved chunk's text and its neighbours' (chunk + continuation) as text."""
    tokenizer, lines = db.tokenizer, []
    for record in stats.retrievals:
        for i, query in enumerate(record.queries):
            lines.append(f"--- chunk {record.first_chunk + i}: "
                         f"{tokenizer.texts_without_eod([query])[0]!r}")
            for j, (chunk_id, length) in enumerate(zip(record.ids[i], record.lens[i])):
                if chunk_id < 0:
                    lines.append(f"  neighbour {j}: none")
                    continue
                text = tokenizer.decode_batch([record.tokens[i, j, :length]])[0]
                lines.append(f"  neighbour {j} (chunk {chunk_id}, doc {db.doc_ids[chunk_id]}): "
                             f"{text!r}")
    return "\n".join(lines)


def cost_report(stats: GenerationStats, n_tokens: int, retrieving: bool) -> str:
    """Tokens per second, and retrieval's cost per chunk and share of the time."""
    total = stats.decode_seconds + stats.retrieval_seconds
    lines = [f"[{n_tokens} tokens in {total:.2f} s ({n_tokens / max(total, 1e-9):.1f} tokens/s); "
             f"{stats.n_pad} pad tokens before the prompt; window slid {stats.slides} times]"]
    if retrieving and stats.retrievals:
        prompt = stats.retrievals[0]
        per_chunk = stats.generated_chunk_ms
        lines.append(
            f"[retrieval: prompt {len(prompt.queries)} chunks in {1e3 * prompt.seconds:.1f} ms; "
            + (f"{len(stats.retrievals) - 1} generated chunks at {per_chunk:.1f} ms each; "
               if per_chunk is not None else "no chunk completed during generation; ")
            + f"{100 * stats.retrieval_share:.1f}% of the time]")
    return "\n".join(lines)

