"""The copy-task ablation of docs/RESULTS.md: does RETRO read its neighbours, with and without
positions in its cross-attentions?

For each setting of ``cross_positions`` (rotary CCA and encoder cross-attention, rotary CCA only,
none), a tiny RETRO is trained on the copy task (retro.eval.copy_task) with the true neighbours
and with shuffled ones, and the GPT of the same decoder once; the final loss on fresh batches is
reported as a fraction of chance (ln 256).

    python bench/copy_task.py --steps 200 --threads 1     # ~3 minutes on 2 cores

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

from retro.eval.copy_task import CopyTask, train_arm  # noqa: E402

RESULTS = report.RESULTS_DIR / "copy_task.json"


def table(rows: list[dict]) -> str:
    lines = ["| cross_positions | arm | steps | loss (nats) | fraction of chance | seconds |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['cross_positions']} | {row['arm']} | {row['steps']} "
                     f"| {row['loss']:.3f} | {row['fraction_of_chance']:.3f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        runs = [(p, arm) for p in ("rope", "cca", "none") for arm in ("real", "shuffled")]
        runs.append(("rope", "gpt"))  # the GPT has no cross-attention: one run
        for positions, arm in runs:
            task = replace(CopyTask(), cross_positions=positions)
            result = train_arm(task, arm, args.steps, seed)
            result.pop("model")
            rows.append({"cross_positions": positions if arm != "gpt" else "-", "seed": seed,
                         **result, "curve": result["curve"][::10]})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report.write_result(args.out, {"task": asdict(CopyTask()), "rows": rows}, threads=args.threads)
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
