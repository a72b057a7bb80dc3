"""The copy-task ablation of docs/RESULTS.md: does RETRO read its neighbours, with and without
positions in its cross-attentions, and with and without their local start?

For each setting of ``cross_positions`` (rotary CCA and encoder cross-attention, rotary CCA only,
none) and of ``cross_locality`` (the rotary cross-attentions' initial score at distance 0; 0:
they start uniform), a tiny RETRO is trained on the copy task (retro.eval.copy_task) with the true
neighbours and with shuffled ones, and the GPT of the same decoder once; the final loss on fresh
batches is reported as a fraction of chance (ln vocab_size). --task overrides CopyTask fields
(a larger vocabulary, chunk or width: where the uniform start plateaus longest).

    python bench/copy_task.py --steps 200 --threads 1     # ~4 minutes on 2 cores
    python bench/copy_task.py --steps 300 --positions rope --out bench/results/copy_task_mid.json \
        --task vocab_size=2048 chunk_size=32 n_embd=128 batch_size=8

Writes bench/results/copy_task.json (with the run's provenance: bench/report.py) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from retro.eval.copy_task import ARMS, CopyTask, train_arm  # noqa: E402
from retro.model import CROSS_POSITIONS, RetroConfig  # noqa: E402

RESULTS = report.RESULTS_DIR / "copy_task.json"


def table(rows: list[dict]) -> str:
    lines = ["| cross_positions | cross_locality | arm | steps | loss (nats) | fraction of chance "
             "| seconds |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        locality = row.get("cross_locality", "-")  # older results: before the local start
        lines.append(f"| {row['cross_positions']} | {locality} | {row['arm']} | {row['steps']} "
                     f"| {row['loss']:.3f} | {row['fraction_of_chance']:.3f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--positions", nargs="+", choices=CROSS_POSITIONS,
                        default=list(CROSS_POSITIONS), help="cross_positions settings to train")
    parser.add_argument("--localities", type=float, nargs="+",
                        default=[RetroConfig.cross_locality, 0.0],
                        help="cross_locality settings to train (rotary positions only)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--task", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="CopyTask fields overridden (ints; lr a float), e.g. vocab_size=2048")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = {key: float(value) if key == "lr" else int(value)
              for key, value in (item.split("=", 1) for item in args.task)}
    base = replace(CopyTask(), **fields)
    rows = []
    for seed in args.seeds:
        settings = [(p, loc) for p in args.positions
                    for loc in (args.localities if p != "none" else [0.0])]
        runs = [(p, loc, arm) for p, loc in settings for arm in ("real", "shuffled")
                if arm in args.arms]
        if "gpt" in args.arms:
            runs.append(("-", 0.0, "gpt"))  # the GPT has no cross-attention: one run
        for positions, locality, arm in runs:
            task = replace(base, cross_positions=positions if arm != "gpt" else "rope",
                           cross_locality=locality)
            result = train_arm(task, arm, args.steps, seed)
            result.pop("model")
            rows.append({"cross_positions": positions, "cross_locality": locality, "seed": seed,
                         **result, "curve": result["curve"][::10]})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report.write_result(args.out, {"task": asdict(base), "rows": rows}, threads=args.threads)
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
