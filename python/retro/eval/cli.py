"""``retro eval RUN [--db DIR] [--gpt RUN] [--json]``: a thin layer over retro.eval.comparison."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retro.data.trivia import DEFAULT_LISTS
from retro.errors import RetroError, non_negative_int, positive_int
from retro.eval.sources import NEIGHBOURS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro eval``."""
    parser = subparsers.add_parser(
        "eval", help="validation loss, perplexity and bits per byte, with and without retrieval")
    parser.add_argument("run", help="a training run directory (RETRO or GPT)")
    parser.add_argument("--db", default=None, help="the database (default: the run's own)")
    parser.add_argument("--gpt", default=None, help="a GPT run to compare on the same samples")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="default: the whole split")
    parser.add_argument("--neighbours", nargs="+", choices=NEIGHBOURS, default=["real", "none"],
                        help="neighbour sources RETRO is scored with (none is always added: the "
                        "retrieval gain is the loss without minus the loss with): real = the "
                        "stored ones, shuffled = another chunk's, oracle = each chunk's own text "
                        "and true continuation (the upper bound)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="leakage plot PNG (default: RUN/leakage.png)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--text-quality", type=non_negative_int, default=0, metavar="N",
                        help="also sample N continuations per model (nucleus p=0.9) and report "
                        "repetition, self-BLEU and Zipf (paper Table 3)")
    parser.add_argument("--new-tokens", type=positive_int, default=128,
                        help="tokens per sampled continuation")
    parser.add_argument("--qa", nargs="*", default=None, metavar="LIST",
                        help="factual QA: Red-Trivia lists and/or 'factbook' (no LIST: "
                        f"{' '.join(DEFAULT_LISTS)}, and factbook when the database holds it), "
                        "by likelihood with 10 choices")
    parser.add_argument("--qa-items", type=positive_int, default=None,
                        help="items per QA list (a seeded sample; default: all)")
    parser.add_argument("--edited-db", default=None,
                        help="with --qa: a database built with --edits; RETRO also answers with "
                        "neighbours from it, on the items whose answer was edited")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    # torch-backed: imported by the command, so that --help needs no torch
    from retro.eval.comparison import evaluate, gain_table, results_table
    from retro.eval.leakage import leakage_table, plot_leakage
    from retro.eval.qa import qa_table
    from retro.eval.text_quality import text_quality_of_runs, text_quality_table
    from retro.train.checkpoint import checkpoint_path

    qa_lists = () if args.qa is None else (args.qa or "default")
    if args.edited_db and not qa_lists:
        raise RetroError("--edited-db is read by the QA comparison: add --qa")
    result = evaluate(args.run, args.db, args.gpt, args.split, args.batch_size, args.max_samples,
                      args.device, qa_lists, args.qa_items, args.edited_db, args.neighbours)
    plot = args.plot or checkpoint_path(args.run).parent / "leakage.png"
    result["leakage"]["plot"] = str(plot_leakage(result["leakage"], plot))
    if args.text_quality:
        result["text_quality"] = text_quality_of_runs(args.run, args.db, args.gpt, args.text_quality,
                                                      args.new_tokens)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['split']}: {result['samples']} samples, {result['tokens']} tokens, "
          f"{result['bytes']} bytes ({result['db']})")
    print(results_table(result))
    if result["retrieval_gain"]:
        print("\nRetrieval gain: loss without retrieval minus loss with the neighbours (nats; "
              "per offset: over the targets that read neighbours)")
        print(gain_table(result))
    print("\nLeakage-filtered bits per byte (DeepMind §4.4): chunks whose longest common token run "
          "with RET(C_{u-1}) is <= alpha * chunk_size")
    print(leakage_table(result["leakage"]))
    print(f"plot: {result['leakage']['plot']}")
    if "qa" in result:
        print("\nFactual QA by likelihood (10 choices; acc_norm: per byte; answer retrieved: an "
              "accepted answer is in the prompt's neighbours; edited rows: neighbours from "
              f"{result.get('edited_db')}, on the items whose answer was edited):")
        print(qa_table(result["qa"]))
    if "text_quality" in result:
        print("\nText quality of sampled continuations (nucleus p = 0.9):")
        print(text_quality_table(result["text_quality"]))
    return 0
