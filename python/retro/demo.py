"""``retro demo``: the paper's experiment at laptop scale, end to end on the built-in default data.

1. trains a byte-level BPE of ``vocab_size`` tokens on the corpus (Wikipedia leads next to the
   Factbook's Government and Geography sections: facts stated twice in different documents, the
   cross-document redundancy a retrieval model learns to use) and builds three databases from it:
   ``db`` (strict: train documents only), ``db_knowledge`` (the valid documents added, DeepMind's
   Wikipedia setting) and ``db_capitals`` (world capitals swapped among countries in the train
   documents); the last two reuse ``db``'s embeddings;
2. trains a small GPT and a RETRO of the same decoder on the strict database, whose training
   neighbours never come from the sample's own documents: the GPT RETRO-fitted (``retro_init
   "gpt"``, the default; DeepMind §4.2: its decoder frozen, only CCA and the encoder trained,
   CCA's outputs scaled to the GPT's residual stream, retro.model.retro_fit; without neighbours
   its logits are exactly the GPT's), or RETRO from scratch (``"scratch"``, the paper's
   experiment: both models see the samples of the same seeded order); either way with a share
   ``copy_fraction`` of RETRO's samples replaced by copy samples (retro.train.copy_curriculum:
   by default real training samples that find their own continuation among their neighbours,
   which teaches CCA to read; docs/RESULTS.md section 2d);
3. evaluates both on the validation split of the strict and of the knowledge database: loss,
   perplexity, bits per byte, RETRO with real, shuffled, no and oracle neighbours and its retrieval
   gain, the leakage-filtered bits per byte of DeepMind §4.4; factual QA on world capitals with
   retrieval on and off, and against the edited capitals;
4. generates from a validation prompt with live retrieval, showing the neighbours;
5. writes ``OUT/summary.json`` (with the paper's four checks under ``claims``),
   ``OUT/loss_curves.png`` and ``OUT/leakage.png`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retro.errors import RetroError
from retro.train.config import COPY_TOKENS, DTYPES

DEFAULT_OUT = Path("runs") / "demo"
DEMO_CORPUS = ("default", "factbook:government,geography")
# the decoder of both models; RETRO adds CCA in layers 2 and 4 and a narrower 2-layer encoder
DEMO_MODEL = dict(n_layer=4, n_head=4, n_embd=256)
DEMO_RETRIEVAL = dict(cca_layers=(2, 4), enc_n_embd=128, enc_n_head=2)
QA_LIST = "worldcapitals"
RETRO_INITS = ("scratch", "gpt")  # RETRO trained from scratch, or RETRO-fitted from the GPT
# the paper's effects as the demo checks them: (summary key, comparison, threshold)
CLAIMS = {
    "knowledge_ppl_ratio": ("<=", 0.8),  # RETRO / GPT perplexity, valid documents in the database
    "knowledge_retrieval_gain_nats": (">=", 0.2),  # loss without minus with retrieval, same
    "strict_ppl_ratio": ("<=", 1.0),  # RETRO / GPT perplexity, valid documents absent
    "qa_accuracy_ratio": (">=", 2.0),  # capitals accuracy with / without retrieval
    "edited_follows_database": (">=", 0.5),  # share of swapped capitals answered as edited
}


@dataclass
class DemoConfig:
    out: str = str(DEFAULT_OUT)  # tokenizer, databases, runs, plots and summary.json go here
    corpus: tuple[str, ...] = DEMO_CORPUS
    vocab_size: int = 8192  # the corpus-trained BPE's tokens (0: GPT-2's BPE)
    block_size: int = 256  # tokens per training sample
    gpt_steps: int = 400  # optimizer steps of the GPT
    # RETRO-fit of the trained GPT ("gpt"), or RETRO from "scratch" (docs/RESULTS.md 2c and 2d:
    # with half its samples text copy samples, the RETRO-fit reads, and by 600 steps beats the
    # GPT with the valid documents in the database and ties it without; from scratch it reads
    # but only ties the GPT)
    retro_init: str = "gpt"
    retro_steps: int = 600  # optimizer steps of RETRO (300 read, but not yet selectively: RESULTS 2d)
    copy_fraction: float = 0.5  # share of RETRO's samples that are copy samples (curriculum)
    copy_tokens: str = "text"  # what a copy sample is (TrainConfig.copy_tokens)
    copy_shift: int = 0  # text copy samples: own text up to this many tokens off its chunk
    copy_shift_share: float = 1.0  # with copy_shift: the share of chunks shifted (1 .. copy_shift)
    batch_size: int = 16  # samples per step
    learning_rate: float = 2e-3  # peak learning rate of the GPT
    # peak learning rate of RETRO: 1e-3 reads more and ties the GPT in the strict setting where
    # 2e-3 costs there (docs/RESULTS.md 2e, bench/results/demo_bf16_probe.json)
    retro_learning_rate: float = 1e-3
    model_args: dict[str, Any] = field(default_factory=dict)  # RetroConfig fields overridden
    threads: int | None = None  # torch and OpenMP threads; None: all cores
    # training autocast (TrainConfig.dtype); "auto": bfloat16 on a GPU and on a CPU that computes
    # bf16 natively (AVX512-BF16 or AMX; 2.0-2.5x faster steps on a 2-core AMD EPYC with AVX512-BF16,
    # bench/results/train_cpu.json),
    # else float32. Evaluation stays float32.
    dtype: str = "auto"
    eval_samples: int | None = 128  # the first validation samples evaluated; None: all
    new_tokens: int = 64  # tokens generated in the sample
    qa_items: int = 0  # items of the capitals list; 0: all
    seed: int = 1337
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        # refused before the databases are built, not after minutes of work
        if self.dtype not in DTYPES:
            raise RetroError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")
        if self.retro_init not in RETRO_INITS:
            raise RetroError(f"retro_init must be one of {RETRO_INITS}, not {self.retro_init!r}")
        if not 0.0 <= self.copy_fraction <= 1.0:
            raise RetroError(f"copy_fraction must be in [0, 1], not {self.copy_fraction}")
        if self.copy_tokens not in COPY_TOKENS:
            raise RetroError(f"copy_tokens must be one of {COPY_TOKENS}, not {self.copy_tokens!r}")
        if self.copy_shift < 0 or (self.copy_shift and self.copy_tokens != "text"):
            raise RetroError(f"copy_shift must be >= 0, and > 0 only with copy_tokens 'text', not "
                             f"{self.copy_shift} with {self.copy_tokens!r}")
        if not 0.0 <= self.copy_shift_share <= 1.0:
            raise RetroError(f"copy_shift_share must be in [0, 1], not {self.copy_shift_share}")
        for name in ("learning_rate", "retro_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise RetroError(f"{name} must be a finite number > 0, not {value}")
        for name in ("gpt_steps", "retro_steps", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise RetroError(f"{name} must be >= 1, not {getattr(self, name)}")


def demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the demo; returns the summary (also written to OUT/summary.json)."""
    import torch

    from retro.eval.leakage import plot_leakage
    from retro.machine import load_average, machine_info
    from retro.train.checkpoint import load_model

    machine = machine_info()  # the stage times below belong to this machine class and load

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[f"{name}_seconds"] = time.perf_counter() - clock
        clock = time.perf_counter()

    dbs = build_databases(out, config)
    lap("databases")
    runs = train_models(out, config, dbs["strict"])
    lap("training")
    results = evaluate_settings(runs, dbs, config)
    lap("evaluation")
    for setting, result in results.items():
        plot_leakage(result["leakage"], out / f"leakage_{setting}.png",
                     title=f"{setting}: bits per byte of chunks with overlap <= alpha")
    # a RETRO-fit continues its GPT: its curve starts where the GPT's ended
    fitted = config.retro_init == "gpt"
    plot_loss_curves(runs, out / "loss_curves.png",
                     first_steps={"retro": config.gpt_steps} if fitted else None)
    sample = generate_sample(load_model(runs["retro"])[0], dbs["strict"], config)
    lap("generation")

    claims = claim_values(results)
    summary = {
        "claims": {key: {"value": value, "target": f"{CLAIMS[key][0]} {CLAIMS[key][1]}",
                         "met": meets(value, *CLAIMS[key])} for key, value in claims.items()},
        "settings": {setting: {key: result[key] for key in
                               ("models", "retrieval_gain", "leakage", "samples", "tokens", "db")}
                     for setting, result in results.items()},
        "qa": results["strict"].get("qa", {}),
        "config": {key: value for key, value in vars(config).items()},
        "steps": {"gpt": config.gpt_steps, "retro": config.retro_steps},
        "training_dtype": training_dtype(config.dtype),
        "flops": {kind: training_flops(run, config) for kind, run in runs.items()},
        "timings": timings,
        "machine": {**machine, "threads": torch.get_num_threads(), "load_after": load_average()},
        "sample": sample,
        "databases": {name: {"path": str(db.root), "chunks": len(db)} for name, db in dbs.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print_summary(summary, results)
    total = sum(timings.values())
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {total / 60:.1f} min")
    print(f"wrote {out / 'summary.json'}, {out / 'loss_curves.png'}, {out}/leakage_*.png")
    return summary


def build_databases(out: Path, config: DemoConfig) -> dict[str, Any]:
    """The tokenizer (trained once, OUT/tokenizer.json) and the three databases (built, resumed
    or reused): strict, knowledge (valid documents in it) and capitals (edited)."""
    from retro.data.corpus import read_corpus
    from retro.data.tokenizer import GPT2, train_tokenizer
    from retro.db import BuildConfig, build_db

    tokenizer = GPT2
    if config.vocab_size:
        path = out / "tokenizer.json"
        if not path.exists():
            train_tokenizer(read_corpus(config.corpus), config.vocab_size, path)
        tokenizer = str(path)
    base = BuildConfig(corpus=tuple(config.corpus), tokenizer=tokenizer,
                       block_size=config.block_size, align_documents=True)
    strict = build_db(out / "db", base, progress=config.progress)
    reuse = dict(reuse_embeddings=str(out / "db"))
    knowledge = replace_config(base, valid_in_db=True, **reuse)
    capitals = replace_config(base, edits="capitals", **reuse)
    return {"strict": strict,
            "knowledge": build_db(out / "db_knowledge", knowledge, progress=config.progress),
            "capitals": build_db(out / "db_capitals", capitals, progress=config.progress)}


def replace_config(config: Any, **changes: Any) -> Any:
    if "edits" in changes:
        from retro.data.edits import load_edits

        changes["edits"] = load_edits(changes["edits"])
    return replace(config, **changes)


def train_models(out: Path, config: DemoConfig, db: Any) -> dict[str, Path]:
    """The GPT (OUT/gpt) and RETRO (OUT/retro: from scratch, or the GPT RETRO-fitted), trained or
    resumed; a finished run of an earlier demo with the same steps is reused."""
    from retro.train import TrainConfig, train

    from retro.model import DECODER_FIELDS

    fields = {**DEMO_MODEL, **DEMO_RETRIEVAL, "vocab_size": _round_up(db.tokenizer.vocab_size, 64),
              "block_size": db.block_size, **config.model_args}
    retrieval = {key: value for key, value in fields.items() if key not in DECODER_FIELDS}
    # the GPT keeps the overrides that shape a model (the decoder's, and the retrieval shapes its
    # config checks against n_layer); any other retrieval setting leaves the trained GPT reusable
    shapes = (*DECODER_FIELDS, *DEMO_RETRIEVAL)
    gpt_fields = {key: value for key, value in fields.items()
                  if key in shapes or key not in config.model_args}

    def plan(kind: str, steps: int, learning_rate: float, **settings: Any) -> TrainConfig:
        """The run OUT/kind of steps optimizer steps."""
        return TrainConfig(db=str(db.root), out=str(out / kind), model=kind, max_iters=steps,
                           batch_size=config.batch_size, learning_rate=learning_rate,
                           seed=config.seed, threads=config.threads, progress=config.progress,
                           dtype=training_dtype(config.dtype),
                           eval_batches=4, warmup_iters=steps // 20,
                           eval_interval=max(1, steps // 4), checkpoint_interval=steps,
                           **settings)

    # copy_tokens only matters with copy samples (runs without them stay reusable)
    copy_tokens = (dict(copy_tokens=config.copy_tokens, copy_shift=config.copy_shift,
                        copy_shift_share=config.copy_shift_share)
                   if config.copy_fraction else {})
    start = (dict(init_from=str(out / "gpt"), freeze=True, model_args=retrieval)
             if config.retro_init == "gpt" else dict(model_args=fields))
    plans = {
        "gpt": plan("gpt", config.gpt_steps, config.learning_rate, model_args=gpt_fields),
        "retro": plan("retro", config.retro_steps, config.retro_learning_rate,
                      copy_fraction=config.copy_fraction, **copy_tokens, **start),
    }
    runs = {}
    for kind, settings in plans.items():
        run = Path(settings.out)
        done = finished_steps(run)
        if done == settings.max_iters:
            check_reusable(run, settings)
        else:
            # a resumed RETRO-fit keeps init_from (a setting the resume checks) and takes its
            # weights from its checkpoint
            train(replace(settings, resume=done is not None))
        runs[kind] = run
    return runs


def training_dtype(dtype: str) -> str:
    """TrainConfig.dtype of the demo's runs: "auto" -> "bfloat16" where bf16 is native (a GPU, or
    retro.machine.cpu_has_native_bf16), else "float32"; any other value as it is."""
    import torch

    from retro.machine import cpu_has_native_bf16

    if dtype != "auto":
        return dtype
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    return "bfloat16" if native else "float32"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def evaluate_settings(runs: dict[str, Path], dbs: dict[str, Any],
                      config: DemoConfig) -> dict[str, dict[str, Any]]:
    """retro.eval.comparison of RETRO (real, shuffled, oracle and no neighbours) and GPT on the
    strict database (with QA on world capitals, and against the edited capitals) and on the
    knowledge database."""
    from retro.eval.comparison import evaluate

    compare = partial(evaluate, runs["retro"], gpt_run=runs["gpt"],
                      max_samples=config.eval_samples, neighbours=("real", "shuffled", "oracle"))
    return {"strict": compare(dbs["strict"].root, qa_lists=(QA_LIST,),
                              qa_items=config.qa_items or None, edited_db=dbs["capitals"].root),
            "knowledge": compare(dbs["knowledge"].root)}


def claim_values(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The numbers the CLAIMS check, from the two settings' results."""
    def ppl_ratio(setting: str) -> float:
        models = results[setting]["models"]
        return models["retro"]["perplexity"] / models["gpt"]["perplexity"]

    qa = results["strict"]["qa"][QA_LIST]
    with_retrieval, without = qa["retro"]["accuracy"], qa["retro_no_retrieval"]["accuracy"]
    return {
        "knowledge_ppl_ratio": ppl_ratio("knowledge"),
        "knowledge_retrieval_gain_nats":
            results["knowledge"]["retrieval_gain"]["retro"]["real"]["nats"],
        "strict_ppl_ratio": ppl_ratio("strict"),
        "qa_accuracy_ratio": with_retrieval / without if without else float("inf"),
        # NaN (never met) when no item's answer was edited
        "edited_follows_database": qa.get("retro_edited_db", {}).get("follows_database",
                                                                     float("nan")),
    }


def meets(value: float, comparison: str, threshold: float) -> bool:
    return value <= threshold if comparison == "<=" else value >= threshold


def print_summary(summary: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    from retro.eval.comparison import gain_table, results_table
    from retro.eval.leakage import leakage_table
    from retro.eval.qa import qa_table

    for setting, result in results.items():
        print(f"\n{setting} database ({result['db']}): {result['samples']} valid samples")
        print(results_table(result))
        print(gain_table(result))
        print(leakage_table(result["leakage"]))
    if summary["qa"]:
        print()
        print(qa_table(summary["qa"]))
    sample = summary["sample"]
    print(f"\nprompt: {sample['prompt']!r}")
    print(f"RETRO continues: {sample['continuation']!r}")
    for text in sample["neighbours"][:4]:
        print(f"  neighbour: {text[:160]!r}")
    print("\nThe paper's effects at this scale:")
    for key, claim in summary["claims"].items():
        print(f"  {key}: {claim['value']:.3f} (target {claim['target']}): "
              f"{'met' if claim['met'] else 'NOT met'}")


def check_reusable(run: Path, settings: Any) -> None:
    """Refuses a finished run of an earlier demo whose settings differ from this one's."""
    from retro.train.checkpoint import load_checkpoint
    from retro.train.config import changed_settings

    changed = changed_settings(load_checkpoint(run).get("train_args") or {}, settings)
    if changed:
        raise RetroError(f"{run} holds a finished run with other settings:\n  "
                         + "\n  ".join(changed)
                         + f"\ndelete {run} (the demo trains it again) or choose another --out")


def finished_steps(run: Path) -> int | None:
    """Steps of the checkpoint in run, or None if there is none."""
    from retro.train.checkpoint import checkpoint_path, load_checkpoint

    return load_checkpoint(run)["step"] if checkpoint_path(run).exists() else None


def training_flops(run: Path, config: DemoConfig) -> float:
    """Model FLOPs of the run's training (retro.flops: every matmul of decoder, encoder, CCA and
    the attention products, forward and backward) over its steps x batch_size samples."""
    from retro.train.checkpoint import load_model
    from retro.train.flops import training_flops_per_token

    model, state = load_model(run)
    block_size = model.config.block_size
    per_token = training_flops_per_token(model.config, model.encoder is not None, block_size)
    return per_token * block_size * state["step"] * config.batch_size


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


def plot_loss_curves(runs: dict[str, Path], path: Path,
                     first_steps: dict[str, int] | None = None) -> Path:
    """Training and validation loss of each run against the step, as PNG; first_steps shifts a
    run that continues another (a RETRO-fit starts where its GPT ended)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retro.train.log import read_log

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (kind, run) in enumerate(runs.items()):
        log = read_log(run)
        first = (first_steps or {}).get(kind, 0)
        train = [(first + e["step"], e["loss"]) for e in log if "loss" in e]
        valid = [(first + e["step"], e["val_loss"]) for e in log if "val_loss" in e]
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


def parse_model_args(pairs: list[str]) -> dict[str, str | None]:
    """["n_layer=4", ...] -> {"n_layer": "4"}, "none" as None (typed by TrainConfig against
    RetroConfig)."""
    fields: dict[str, str | None] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RetroError(f"--model-arg takes KEY=VALUE (a RetroConfig field), got {pair!r}")
        fields[key] = None if value.lower() == "none" else value
    return fields


def add_parser(subparsers: Any) -> None:
    """``retro demo [--out DIR] [--gpt-steps N] [--retro-steps N] ...``"""
    parser = subparsers.add_parser(
        "demo", help="the whole chain on the default data (~15 min on 2 cores with bf16)",
        description=__doc__.split("\n")[0])  # retro.cli.show_defaults adds the defaults
    defaults = DemoConfig()
    parser.add_argument("--out", default=defaults.out,
                        help="tokenizer, databases, runs, plots and summary.json")
    parser.add_argument("--corpus", nargs="+", default=list(defaults.corpus),
                        help="corpus sources, as retro db build --corpus")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                        help="tokens of the BPE trained on the corpus (0: GPT-2's)")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--gpt-steps", type=int, default=defaults.gpt_steps)
    parser.add_argument("--retro-init", choices=RETRO_INITS, default=defaults.retro_init,
                        help="RETRO from scratch, or RETRO-fit of the trained GPT (decoder frozen)")
    parser.add_argument("--retro-steps", type=int, default=defaults.retro_steps)
    parser.add_argument("--copy-fraction", type=float, default=defaults.copy_fraction,
                        help="share of RETRO's samples that are copy samples (0: real text only)")
    parser.add_argument("--copy-tokens", choices=COPY_TOKENS, default=defaults.copy_tokens,
                        help="copy samples: real text reading its own continuation, or random "
                             "tokens (retro train --copy_tokens)")
    parser.add_argument("--copy-shift", type=int, default=defaults.copy_shift,
                        help="text copy samples: their own text starts up to this many tokens "
                             "into the chunk (retro train --copy_shift; 0: aligned)")
    parser.add_argument("--copy-shift-share", type=float, default=defaults.copy_shift_share,
                        help="with --copy-shift: the share of chunks whose own text is shifted "
                             "(by 1 .. copy-shift tokens), the others aligned; 1: every chunk by "
                             "0 .. copy-shift (retro train --copy_shift_share)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="peak learning rate of the GPT")
    parser.add_argument("--retro-learning-rate", type=float,
                        default=defaults.retro_learning_rate, help="peak learning rate of RETRO")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override a RetroConfig field (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--dtype", choices=DTYPES, default=defaults.dtype,
                        help="training autocast; auto: bfloat16 where the GPU or CPU computes it "
                             "natively (AVX512-BF16, AMX), else float32")
    parser.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                        help="the first validation samples evaluated (0: all)")
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--qa-items", type=int, default=defaults.qa_items,
                        help="items of the capitals list (0: all)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_demo)


def run_demo(args: Any) -> int:
    demo(DemoConfig(
        out=args.out, corpus=tuple(args.corpus), vocab_size=args.vocab_size,
        block_size=args.block_size, gpt_steps=args.gpt_steps, retro_init=args.retro_init,
        retro_steps=args.retro_steps, copy_fraction=args.copy_fraction,
        copy_tokens=args.copy_tokens, copy_shift=args.copy_shift,
        copy_shift_share=args.copy_shift_share,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate, retro_learning_rate=args.retro_learning_rate,
        model_args=parse_model_args(args.model_arg), threads=args.threads or os.cpu_count(),
        dtype=args.dtype, eval_samples=args.eval_samples or None, new_tokens=args.new_tokens,
        qa_items=args.qa_items,
        seed=args.seed, progress=not args.no_progress,
    ))
    return 0
