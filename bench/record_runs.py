"""Records training runs made with `retro train` (and their `retro eval --json` results) in one
result JSON with provenance: each run's settings as stored in its checkpoint, the command that
reproduces it, and its logged training and validation loss curves.

    python bench/record_runs.py --out bench/results/x.json --note "..." \
        --run RUN [--eval RUN=EVAL.json ...] [--run RUN ...]

A run evaluated once keeps its result under "eval"; one evaluated on several databases (--eval
given for it more than once) keeps them under "evals", in the order given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import report

# the TrainConfig settings a run's command spells out (beside --db, --out and its model_args)
COMMAND_FIELDS = ("model", "copy_fraction", "copy_tokens", "copy_distractors", "copy_shift",
                  "cca_start_ratio", "max_iters",
                  "batch_size", "learning_rate", "warmup_iters", "eval_interval", "eval_batches",
                  "seed", "threads")


def run_record(run: Path) -> dict:
    """A run's stored settings, its reproducing command and its loss curves."""
    from retro.train.checkpoint import load_checkpoint
    from retro.train.log import read_log

    args = load_checkpoint(run)["train_args"]
    model_args = " ".join(f"--{key}={_value(value)}" for key, value in args["model_args"].items())
    settings = " ".join(f"--{key}={_value(args[key])}" for key in COMMAND_FIELDS if key in args)
    if args.get("init_from"):  # a RETRO-fit
        settings += f" --init-from {args['init_from']}" + (" --freeze" if args["freeze"] else "")
    log = read_log(run)
    return {
        "run": run.name,
        "train_args": args,
        "command": f"retro train --db {args['db']} --out {args['out']} {settings} {model_args}",
        "loss_every_10": [round(e["loss"], 4) for e in log if "loss" in e],
        "val_loss": {e["step"]: round(e["val_loss"], 4) for e in log if "val_loss" in e},
    }


def _value(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", required=True, help="what the runs test and show")
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--eval", action="append", default=[], metavar="RUN=JSON",
                        help="a `retro eval --json` output of a run (by its directory name); "
                             "repeatable, also for one run")
    args = parser.parse_args()
    evals: dict[str, list[dict]] = {}
    for name, path in (pair.split("=", 1) for pair in args.eval):
        evals.setdefault(name, []).append(json.loads(Path(path).read_text()))
    runs = []
    for run in args.run:
        record = run_record(run)
        results = evals.get(run.name, [])
        if len(results) == 1:
            record["eval"] = results[0]
        elif results:
            record["evals"] = results
        runs.append(record)
    report.write_result(args.out, {"note": args.note, "runs": runs}, threads=None)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
