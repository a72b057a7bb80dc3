"""``retro demo``: the paper's experiment at laptop scale, end to end on the built-in default data.

1. builds (or reuses) the default retrieval database (Wikipedia leads, MiniLM, IVF-PQ);
2. trains a tiny GPT and a tiny RETRO with the same decoder, for the same steps, on the same
   samples in the same order;
3. evaluates both on the validation split: loss, perplexity and bits per byte for GPT, RETRO and
   RETRO with retrieval off, and the leakage-filtered bits per byte of DeepMind §4.4; and on
   factual QA (trivia cloze prompts, 10 choices) with retrieval on and off;
4. generates from a validation prompt with live retrieval, showing the neighbours;
5. writes ``OUT/summary.json``, ``OUT/loss_curves.png`` and ``OUT/leakage.png`` and prints a table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retro.errors import RetroError

DEFAULT_OUT = Path("runs") / "demo"


@dataclass
class DemoConfig:
    out: str = str(DEFAULT_OUT)  # runs, plots and summary.json go here
    db: str | None = None  # an existing database; None: OUT/db, built (or resumed) first
    steps: int = 50  # optimizer steps of each model (~11 minutes for both on 2 cores, float32)
    batch_size: int = 8  # samples of block_size tokens per step
    preset: str = "tiny"
    model_args: dict[str, Any] = field(default_factory=dict)  # RetroConfig fields overridden
    threads: int | None = None  # torch and OpenMP threads; None: all cores
    eval_samples: int | None = None  # validation samples evaluated; None: all
    new_tokens: int = 64  # tokens generated in the sample
    qa_items: int = 50  # items of each factual QA list (retro.eval.trivia.DEFAULT_LISTS); 0: no QA
    seed: int = 1337
    progress: bool = True  # progress bars


def demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the demo; returns the summary (also written to OUT/summary.json)."""
    import torch

    from retro.train.checkpoint import load_model
    from retro.db import BuildConfig, build_db, open_db
    from retro.eval.evaluate import evaluate, results_table
    from retro.eval.leakage import leakage_table, plot_leakage
    from retro.eval.qa import qa_table
    from retro.data.trivia import DEFAULT_LISTS
    from retro.model import RetroConfig
    from retro.train import TrainConfig, train

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    db_dir = Path(config.db) if config.db else out / "db"
    if config.db:
        db = open_db(db_dir)
    else:
        block_size = RetroConfig.preset(config.preset, **config.model_args).block_size
        db = build_db(db_dir, BuildConfig(corpus=("default",), block_size=block_size))
    timings["database_seconds"] = time.perf_counter() - start
    block_size = db.block_size  # the models are built for the database's samples
    model_args = {**config.model_args, "block_size": block_size}

    runs = {}
    for kind in ("gpt", "retro"):
        start = time.perf_counter()
        run = out / kind
        done = finished_steps(run)
        if done == config.steps:  # a finished run of an earlier demo: reuse it
            runs[kind] = run
            continue
        runs[kind] = train(TrainConfig(
            resume=done is not None,
            db=str(db_dir), out=str(out / kind), model=kind, preset=config.preset,
            model_args=model_args, max_iters=config.steps, batch_size=config.batch_size, warmup_iters=config.steps // 10,
            eval_interval=max(1, config.steps // 5), checkpoint_interval=config.steps,
            seed=config.seed, threads=config.threads, progress=config.progress,
        ))
        timings[f"train_{kind}_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    result = evaluate(runs["retro"], db_dir, gpt_run=runs["gpt"], max_samples=config.eval_samples,
                      qa_lists=DEFAULT_LISTS if config.qa_items else (), qa_items=config.qa_items)
    timings["eval_seconds"] = time.perf_counter() - start
    plot_leakage(result["leakage"], out / "leakage.png", title="bits per byte of chunks with overlap <= alpha")
    plot_loss_curves(runs, out / "loss_curves.png")

    start = time.perf_counter()
    sample = generate_sample(load_model(runs["retro"])[0], db, config)
    timings["generate_seconds"] = time.perf_counter() - start

    summary = {
        "models": result["models"],
        "leakage": result["leakage"],
        "qa": result.get("qa", {}),
        "steps": config.steps,
        "tokens_per_model": config.steps * config.batch_size * block_size,
        "flops_per_model": {kind: training_flops(runs[kind], config, block_size) for kind in runs},
        "timings": timings,
        "sample": sample,
        "database": {"path": str(db_dir), "chunks": len(db)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print()
    print(results_table(result))
    print()
    print(leakage_table(result["leakage"]))
    if "qa" in result:
        print()
        print(qa_table(result["qa"]))
    print()
    print(f"prompt: {sample['prompt']!r}")
    print(f"RETRO continues: {sample['continuation']!r}")
    for text in sample["neighbours"]:
        print(f"  neighbour: {text[:160]!r}")
    total = sum(timings.values())
    print(f"\n{', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}; total {total / 60:.1f} min")
    print(f"wrote {out / 'summary.json'}, {out / 'loss_curves.png'}, {out / 'leakage.png'}")
    return summary


def finished_steps(run: Path) -> int | None:
    """Steps of the checkpoint in run, or None if there is none."""
    from retro.train.checkpoint import checkpoint_path, load_checkpoint

    return load_checkpoint(run)["step"] if checkpoint_path(run).exists() else None


def training_flops(run: Path, config: DemoConfig, block_size: int) -> float:
    """Model FLOPs of the run's training (retro.flops: every matmul of decoder, encoder, CCA and
    the attention products, forward and backward) over steps x batch_size samples."""
    from retro.train.checkpoint import load_model
    from retro.train.flops import training_flops_per_token

    model, _ = load_model(run)
    per_token = training_flops_per_token(model.config, model.encoder is not None, block_size)
    return per_token * block_size * config.steps * config.batch_size


def generate_sample(model: Any, db: Any, config: DemoConfig) -> dict[str, Any]:
    """A continuation of the first validation sample's first chunk, with what it retrieved."""
    from retro.generation.generator import GenerationStats, generate

    prompt = np.asarray(db.split("valid").stream.sample(0)[: db.chunk_size])
    stats = GenerationStats()
    tokens = list(generate(model, db, prompt, max_new_tokens=config.new_tokens, temperature=0.8,
                           top_p=0.9, seed=config.seed, stats=stats))
    neighbours = db.tokenizer.decode_batch([  # every retrieval's neighbours (real tokens only)
        record.tokens[i, j, : record.lens[i, j]]
        for record in stats.retrievals
        for i in range(len(record.ids))
        for j in range(record.ids.shape[1])
        if record.lens[i, j] > 0
    ])
    return {
        "prompt": db.tokenizer.texts_without_eod([prompt])[0],
        "continuation": db.tokenizer.decode_batch([tokens])[0],
        "neighbours": neighbours,
        "retrieval_ms_per_chunk": stats.generated_chunk_ms,
        "retrieval_share": stats.retrieval_share,
    }


def plot_loss_curves(runs: dict[str, Path], path: Path) -> Path:
    """Training and validation loss of each run against the step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retro.train.log import read_log

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (kind, run) in enumerate(runs.items()):
        log = read_log(run)
        train = [(e["step"], e["loss"]) for e in log if "loss" in e]
        valid = [(e["step"], e["val_loss"]) for e in log if "val_loss" in e]
        if train:
            ax.plot(*zip(*train), color=f"C{i}", alpha=0.5, label=f"{kind} train")
        if valid:
            ax.plot(*zip(*valid), "o-", color=f"C{i}", label=f"{kind} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_model_args(pairs: list[str]) -> dict[str, str]:
    """["n_layer=4", ...] -> {"n_layer": "4"} (typed by TrainConfig against RetroConfig)."""
    fields = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RetroError(f"--model-arg takes KEY=VALUE (a RetroConfig field), got {pair!r}")
        fields[key] = None if value.lower() == "none" else value
    return fields


def add_parser(subparsers: Any) -> None:
    """``retro demo [--out DIR] [--steps N] ...``"""
    parser = subparsers.add_parser("demo", help="the whole chain on the default data (~15 min on 2 cores)",
                                   description=__doc__.split("\n")[0])
    defaults = DemoConfig()
    parser.add_argument("--out", default=defaults.out, help="runs, plots and summary.json")
    parser.add_argument("--db", default=None, help="use this database instead of building OUT/db")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per model")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RetroConfig field of both models (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: the whole valid split")
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--qa-items", type=int, default=defaults.qa_items,
                        help="items per factual QA list (0: no QA)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_demo)


def run_demo(args: Any) -> int:
    demo(DemoConfig(
        out=args.out, db=args.db, steps=args.steps, batch_size=args.batch_size, preset=args.preset,
        model_args=parse_model_args(args.model_arg), threads=args.threads or os.cpu_count(),
        eval_samples=args.eval_samples, new_tokens=args.new_tokens, qa_items=args.qa_items,
        seed=args.seed,
        progress=not args.no_progress,
    ))
    return 0
