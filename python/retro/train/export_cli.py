"""``retro export RUN --hf DIR``: a run's decoder as a Hugging Face GPT-2 directory.

DIR gets config.json and model.safetensors (retro.model.hf), which
``transformers.GPT2LMHeadModel.from_pretrained(DIR)`` loads with the run's logits, and the run's
tokenizer files. A RETRO run exports its decoder: the model with retrieval off.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro export``."""
    parser = subparsers.add_parser(
        "export", help="write a run's decoder as a Hugging Face GPT-2 (needs torch, safetensors)",
        description="Write the decoder of a GPT or RETRO run (RETRO: with retrieval off) as a "
                    "Hugging Face GPT-2 directory that transformers loads with equal logits.")
    parser.add_argument("run", help="the run directory (or its checkpoint file)")
    parser.add_argument("--hf", required=True, metavar="DIR", help="the directory to write")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from retro.model import hf
    from retro.train.checkpoint import load_model

    model, state = load_model(args.run)
    model.save_pretrained(args.hf)
    written = ["config.json", "model.safetensors"]
    tokenizer = (state.get("db") or {}).get("tokenizer")
    if tokenizer is not None:
        written += hf.write_tokenizer(args.hf, tokenizer, model.config.block_size)
    what = "the decoder of a RETRO run (retrieval off)" if model.encoder is not None else "a GPT"
    print(f"wrote {args.hf}: {what}, as GPT-2 ({', '.join(written)})")
    return 0
