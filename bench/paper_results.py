"""The paper's claims at laptop scale (docs/RESULTS.md), from one command.

A tiny GPT and a tiny RETRO (the same decoder) are trained for the same steps on the same samples
of the strict database (Wikipedia leads; valid documents absent from it), then evaluated:

  strict      validation loss, perplexity, bits per byte and bpb(alpha) on the strict database;
  knowledge   the same runs with the valid documents added to the database (DeepMind's Wikipedia
              setting), without retraining;
  qa          factual QA (Red-Trivia cloze prompts, 10 choices) with retrieval on, off, and from
              a database whose world capitals are swapped among countries (``--edits capitals``);
  edited      validation perplexity with neighbours from that edited database;
  text        repetition, self-BLEU and Zipf of sampled continuations (paper Table 3).

Every stage reuses what an earlier invocation finished (databases, runs), so a rerun evaluates.

    python bench/paper_results.py --out runs/results                 # ~2.5 h on 2 cores
    python bench/paper_results.py --out runs/results --record        # + bench/results, docs/results

Writes OUT/paper_results.json with the run's provenance (bench/report.py; with --record also
bench/results/paper_results.json and the plots in docs/results/) and prints every table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py)

from retro.train.checkpoint import checkpoint_path, load_checkpoint  # noqa: E402
from retro.db import BuildConfig, build_db  # noqa: E402
from retro.demo import plot_loss_curves  # noqa: E402
from retro.eval.comparison import evaluate, results_table  # noqa: E402
from retro.eval.leakage import leakage_table, plot_leakage  # noqa: E402
from retro.eval.qa import qa_table  # noqa: E402
from retro.eval.text_quality import text_quality_of_runs, text_quality_table  # noqa: E402
from retro.data.trivia import DEFAULT_LISTS  # noqa: E402
from retro.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BLOCK_SIZE = 512  # the tiny preset's
DATABASES = {  # name -> BuildConfig overrides (all: the default corpus, block_size 512, seed 0)
    "db_strict": {},
    "db_knowledge": {"valid_in_db": True},
    "db_capitals": {"edits": "capitals"},
}


def build_databases(out: Path) -> dict[str, Path]:
    """The three databases (built, or resumed / reused)."""
    from retro.data.edits import load_edits

    paths = {}
    for name, overrides in DATABASES.items():
        fields = {**overrides, "block_size": BLOCK_SIZE}
        if "edits" in fields:
            fields["edits"] = load_edits(fields["edits"])
        build_db(out / name, BuildConfig(**fields), progress=True, log=lambda line: None)
        paths[name] = out / name
    return paths


def train_runs(out: Path, db: Path, steps: int, threads: int | None) -> dict[str, Path]:
    """GPT and RETRO on the same samples in the same order (resumed, or reused when finished)."""
    runs = {}
    for kind in ("gpt", "retro"):
        run = out / kind
        done = load_checkpoint(run)["step"] if checkpoint_path(run).exists() else None
        if done != steps:
            train(TrainConfig(db=str(db), out=str(run), model=kind, preset="tiny",
                              max_iters=steps, batch_size=8, learning_rate=1e-3, warmup_iters=30,
                              eval_interval=80, checkpoint_interval=40, log_interval=10,
                              threads=threads, resume=done is not None))
        runs[kind] = run
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/results"))
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--qa-items", type=int, default=None, help="default: every item")
    parser.add_argument("--text-prompts", type=int, default=20)
    parser.add_argument("--record", action="store_true",
                        help="also write bench/results/paper_results.json and docs/results/*.png")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    dbs = build_databases(args.out)
    timings["databases_s"] = time.perf_counter() - start
    start = time.perf_counter()
    runs = train_runs(args.out, dbs["db_strict"], args.steps, args.threads)
    timings["training_s"] = time.perf_counter() - start

    retro_run, gpt_run = str(runs["retro"]), str(runs["gpt"])
    results: dict[str, Any] = {}
    start = time.perf_counter()
    results["strict"] = evaluate(retro_run, dbs["db_strict"], gpt_run, qa_lists=DEFAULT_LISTS,
                                 qa_items=args.qa_items, edited_db=dbs["db_capitals"])
    results["knowledge"] = evaluate(retro_run, dbs["db_knowledge"], gpt_run)
    results["edited"] = evaluate(retro_run, dbs["db_capitals"])
    timings["eval_s"] = time.perf_counter() - start
    start = time.perf_counter()
    results["text_quality"] = text_quality_of_runs(retro_run, str(dbs["db_strict"]), gpt_run,
                                                   args.text_prompts, 128)
    timings["text_quality_s"] = time.perf_counter() - start

    plots = ROOT / "docs" / "results" if args.record else args.out
    for setting in ("strict", "knowledge"):
        plot_leakage(results[setting]["leakage"], plots / f"leakage_{setting}.png",
                     title=f"bpb vs alpha, {setting} setting")
    plot_loss_curves(runs, plots / "loss_curves.png")
    record = report.with_provenance({"steps": args.steps, "timings": timings, "results": results},
                                    threads=torch.get_num_threads())
    report.write_json(args.out / "paper_results.json", record)
    if args.record:
        report.write_json(report.RESULTS_DIR / "paper_results.json", record)

    for setting in ("strict", "knowledge", "edited"):
        print(f"\n## {setting}: {results[setting]['db']}\n")
        print(results_table(results[setting]))
        print()
        print(leakage_table(results[setting]["leakage"]))
    print("\n## factual QA\n")
    print(qa_table(results["strict"]["qa"]))
    print("\n## text quality\n")
    print(text_quality_table(results["text_quality"]))
    print(f"\n{', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
