"""Time every stage of `retro db build` on the default corpus (Wikipedia leads) from scratch.

Prints rows/s and the share of the total time per stage, the recall@k of the stored neighbours
against exact search, and writes bench/results/db_build.json. The two embedding stages (chunks
and query chunks) should take nearly all the time; everything else under 20% together.

    python bench/db_build.py [--out DIR] [--corpus default ...] [--threads 1] [--block-size 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (bench/report.py)

RESULTS = Path(__file__).resolve().parent / "results" / "db_build.json"
DEFAULT_OUT = Path(__file__).resolve().parent / ".cache" / "db_default"
EMBEDDING_STAGES = ("embed", "queries.")
MAX_OTHER_SHARE = 0.20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="rebuilt from scratch")
    parser.add_argument("--corpus", nargs="+", default=["default"])
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    import retro
    from retro.db import BuildConfig, build_db
    from retro.db.info import neighbour_recall, stage_table

    torch.set_num_threads(args.threads)
    retro.set_num_threads(args.threads)
    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    db = build_db(args.out, BuildConfig(corpus=tuple(args.corpus), block_size=args.block_size))
    wall = time.perf_counter() - start

    stages = db.manifest.stages
    total = sum(stage["seconds"] for stage in stages.values())
    embedding = sum(s["seconds"] for name, s in stages.items() if name.startswith(EMBEDDING_STAGES))
    recall = {split: neighbour_recall(db, split) for split in db.splits}
    print("\n".join(stage_table(db.manifest)))
    print(f"wall {wall:.1f} s (stages {total:.1f} s; the rest reads the corpus and loads models)")
    print(f"embedding stages: {embedding / total:.1%} of the stage time; others "
          f"{1 - embedding / total:.1%} (target < {MAX_OTHER_SHARE:.0%})")
    for split, value in recall.items():
        print(f"recall@{db.n_nbrs} of stored {split} neighbours vs exact search: {value:.4f}")

    result = {
        "machine": {**report.machine_info(), "threads": args.threads, "torch": torch.__version__},
        "corpus": args.corpus,
        "counts": db.manifest.counts,
        "components": db.manifest.components,
        "stages": {
            name: {**stage, "rows_per_s": stage["rows"] / stage["seconds"], "share": stage["seconds"] / total}
            for name, stage in stages.items()
            if stage["seconds"] > 0
        },
        "wall_seconds": wall,
        "embedding_share": embedding / total,
        "recall": recall,
        "bytes": sum(entry["bytes"] for entry in db.manifest.files.values()),
    }
    for name, stage in result["stages"].items():
        stage.pop("inputs", None)
        stage.pop("outputs", None)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    report.update_performance_md("db-build", markdown(result))
    print(f"results in {args.results} and {report.PERFORMANCE_MD}")


def markdown(result: dict) -> str:
    """The stage table of docs/PERFORMANCE.md."""
    machine, counts = result["machine"], result["counts"]
    begin, end = report.markers("db-build")
    lines = [
        begin,
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s), torch "
        f"{machine['torch']}, commit `{machine['git_commit']}`, {machine['date']}. Command: "
        f"`python {machine['command']}`. Corpus {', '.join(result['corpus'])}: "
        + ", ".join(f"{value:,} {name}" for name, value in counts.items() if isinstance(value, int)) + ".",
        "",
        "| stage | rows | seconds | rows/s | share |",
        "|---|---|---|---|---|",
    ]
    for name, stage in result["stages"].items():
        lines.append(f"| {name} | {stage['rows']:,} | {stage['seconds']:.1f} | {stage['rows_per_s']:,.0f} | "
                     f"{stage['share']:.1%} |")
    lines += ["", f"Embedding stages: **{result['embedding_share']:.1%}** of the stage time (target: the rest "
              f"< {MAX_OTHER_SHARE:.0%}); wall {result['wall_seconds']:.0f} s; "
              + "; ".join(f"recall@k of stored {split} neighbours vs exact {value:.3f}" for split, value in result["recall"].items())
              + f"; {result['bytes'] / 1e6:.1f} MB on disk.", end]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
