"""Time every stage of `retro db build` on the default corpus (Wikipedia leads) from scratch.

Prints rows/s and the share of the total time per stage, the recall@k of the stored neighbours
against exact search, and writes bench/results/db_build.json. The two embedding stages (chunks
and query chunks) should take nearly all the time; everything else under 20% together.

    python bench/db_build.py [--out DIR] [--corpus default ...] [--threads 1] [--block-size 2048]

With --nproc N it compares instead `retro db build` in one process with
`torchrun --nproc-per-node N -m retro db build` (each process --threads threads, the index as
--index-shards shards in both, default N), --repeats times interleaved: the median seconds of every
stage and of the whole command, the speed-up, and a check that both wrote the same files
(bench/results/db_build_ranks.json, the table in docs/SCALING.md).

    python bench/db_build.py --nproc 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

RESULTS = report.RESULTS_DIR / "db_build.json"
RANKS_RESULTS = RESULTS.with_name("db_build_ranks.json")
DEFAULT_OUT = Path(__file__).resolve().parent / ".cache" / "db_default"
EMBEDDING_STAGES = ("embed", "queries.")
MAX_OTHER_SHARE = 0.20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="rebuilt from scratch")
    parser.add_argument("--corpus", nargs="+", default=["default"])
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--results", type=Path, default=None,
                        help=f"default {RESULTS} ({RANKS_RESULTS.name} with --nproc)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="compare one process with this many torchrun ranks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each (--nproc)")
    parser.add_argument("--index-shards", type=int, default=None, help="default: --nproc")
    args = parser.parse_args()
    if args.nproc:
        compare_ranks(args)
        return
    args.results = args.results or RESULTS

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
    report.write_result(args.results, result, threads=args.threads)
    print(f"results in {args.results}; tables rewritten: {', '.join(render.write_tables(args.results)) or 'none'}")


def compare_ranks(args: argparse.Namespace) -> None:
    """One process vs args.nproc torchrun ranks, interleaved (see the module docstring)."""
    shards = args.index_shards or args.nproc
    build = ["-m", "retro", "db", "build", "--corpus", *args.corpus, "--block-size",
             str(args.block_size), "--index-shards", str(shards), "--no-progress"]
    launchers = {
        1: [sys.executable],
        args.nproc: [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={args.nproc}"],
    }
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "RAYON_NUM_THREADS": threads,
           "PYTHONPATH": str(report.ROOT / "python")}
    runs: dict[int, list[dict]] = {1: [], args.nproc: []}
    files: dict[int, dict] = {}
    load_before = list(os.getloadavg())
    for repeat in range(args.repeats):
        order = list(launchers) if repeat % 2 == 0 else list(launchers)[::-1]
        for ranks in order:
            out = args.out.with_name(f"{args.out.name}_{ranks}ranks")
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([*launchers[ranks], *build, "--out", str(out)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            manifest = json.loads((out / "manifest.json").read_text())
            files[ranks] = manifest["files"]
            runs[ranks].append({"wall": wall, **{name: stage["seconds"]
                                                 for name, stage in manifest["stages"].items()}})
            print(f"repeat {repeat}: {ranks} rank(s) {wall:.1f} s", flush=True)
    if files[1] != files[args.nproc]:
        raise SystemExit("the builds on 1 and N ranks wrote different files")
    medians = {ranks: {key: statistics.median(run[key] for run in rows) for key in rows[0]}
               for ranks, rows in runs.items()}
    result = {
        "threads_per_process": args.threads,
        "corpus": args.corpus, "nproc": args.nproc, "index_shards": shards,
        "repeats": args.repeats, "runs": {str(r): rows for r, rows in runs.items()},
        "median_seconds": {str(r): m for r, m in medians.items()},
        "speedup": {key: medians[1][key] / medians[args.nproc][key]
                    for key in medians[1] if medians[args.nproc][key] > 0},
        "identical_files": True,
    }
    path = args.results or RANKS_RESULTS
    record = report.write_result(path, result, threads=args.nproc * args.threads, load_before=load_before)
    print(ranks_markdown(record))
    print(f"results in {path}; tables rewritten: {', '.join(render.write_tables(path)) or 'none'}")


def ranks_markdown(result: dict) -> str:
    """The measured table of docs/SCALING.md: median seconds per stage on 1 and N ranks."""
    n = result["nproc"]
    one, many = result["median_seconds"]["1"], result["median_seconds"][str(n)]
    # older JSONs: the threads per process in machine; the run's most threads are N ranks' worth
    per_process = result.get("threads_per_process", (result.get("machine") or {}).get("threads"))
    lines = [
        provenance.describe(result, n * per_process),
        f"{per_process} thread(s) per process, {n} processes at most. "
        f"Corpus {', '.join(result['corpus'])}, index as {result['index_shards']} shard(s) in both "
        f"builds; median of {result['repeats']} interleaved runs each; both wrote the same files "
        "(every checksum in the manifests equal).",
        "",
        f"| stage | 1 process (s) | {n} torchrun ranks (s) | speed-up |",
        "|---|---|---|---|",
    ]
    stages = sorted((key for key in one if key != "wall"), key=lambda key: -one[key])
    for key in [*stages, "wall"]:
        name = "whole command (wall)" if key == "wall" else key
        speedup = f"{one[key] / many[key]:.2f}x" if many[key] > 0 else "-"
        lines.append(f"| {name} | {one[key]:.2f} | {many[key]:.2f} | {speedup} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The stage table of docs/PERFORMANCE.md."""
    counts = result["counts"]
    lines = [
        provenance.describe(result),
        f"Corpus {', '.join(result['corpus'])}: "
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
              + f"; {result['bytes'] / 1e6:.1f} MB on disk."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
