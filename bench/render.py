"""The tables of docs/ rendered from the result JSONs in bench/results, and nothing else.

Each table sits in its page between `<!-- name:begin -->` and `<!-- name:end -->`; TABLES says which
JSON it is rendered from and by which function (each benchmark renders its own JSON; every table
starts with the run's provenance line, bench/provenance.py). The prose around the markers is left
as it is.

    python bench/render.py            # rewrite every table (and the IVF-PQ recall-QPS plots)
    python bench/render.py --check    # exit 1 naming each table whose page differs from its JSON
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

ROOT = provenance.ROOT
RESULTS_DIR = ROOT / "bench" / "results"
PERFORMANCE_MD = ROOT / "docs" / "PERFORMANCE.md"
SCALING_MD = ROOT / "docs" / "SCALING.md"
IVFPQ_PLOTTED = "ivfpq_cpu*.json"  # the JSONs of bench/ivfpq.py, each with a plot per dataset


def bench(module: str, function: str, *args: object) -> Callable[[dict], str]:
    """The renderer `function(result, *args)` of bench/<module>.py, imported when first called
    (some benchmarks import torch)."""
    return lambda result: getattr(importlib.import_module(module), function)(result, *args)


@dataclass(frozen=True)
class Table:
    name: str  # its markers in page
    page: Path
    result: str  # the JSON in bench/results it is rendered from (absent: the table is empty)
    body: Callable[[dict], str]  # the JSON's table, without the markers


TABLES = (
    Table("ivfpq-cpu", PERFORMANCE_MD, "ivfpq_cpu.json", bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-fastscan-cpu", PERFORMANCE_MD, "ivfpq_cpu_fastscan.json", bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ivfpq-fastscan-residual-cpu", PERFORMANCE_MD, "ivfpq_cpu_fastscan_residual.json",
          bench("ivfpq_results", "markdown_fast_scan", True)),
    Table("ivfpq-opq-cpu", PERFORMANCE_MD, "ivfpq_cpu_opq.json", bench("ivfpq_results", "markdown", "opq")),
    Table("ivfpq-avx512", PERFORMANCE_MD, "ivfpq_cpu_avx512.json", bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-fastscan-avx512", PERFORMANCE_MD, "ivfpq_cpu_fastscan_avx512.json",
          bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ivfpq-avx2", PERFORMANCE_MD, "ivfpq_cpu_avx2native.json", bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-fastscan-avx2", PERFORMANCE_MD, "ivfpq_cpu_fastscan_avx2native.json",
          bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ivfpq-quick-avx2", PERFORMANCE_MD, "ivfpq_cpu_quick_avx2native.json", bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-quick-fastscan-avx2", PERFORMANCE_MD, "ivfpq_cpu_quick_fastscan_avx2native.json",
          bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ops-cpu", PERFORMANCE_MD, "ops_cpu.json", bench("ops", "markdown")),
    Table("ops-cpu-avx2", PERFORMANCE_MD, "ops_cpu_avx2.json", bench("ops", "markdown")),
    Table("ivfpq-avx2forced", PERFORMANCE_MD, "ivfpq_cpu_avx2forced.json", bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-fastscan-avx2forced", PERFORMANCE_MD, "ivfpq_cpu_fastscan_avx2forced.json",
          bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ivfpq-quick-avx2forced", PERFORMANCE_MD, "ivfpq_cpu_quick_avx2forced.json",
          bench("ivfpq_results", "markdown", "pq8")),
    Table("ivfpq-quick-fastscan-avx2forced", PERFORMANCE_MD, "ivfpq_cpu_quick_fastscan_avx2forced.json",
          bench("ivfpq_results", "markdown_fast_scan", False)),
    Table("ops-cpu-avx512", PERFORMANCE_MD, "ops_cpu_avx512.json", bench("ops", "markdown")),
    Table("db-build", PERFORMANCE_MD, "db_build.json", bench("db_build", "markdown")),
    Table("embedder-avx2", PERFORMANCE_MD, "embedder_avx2.json", bench("embedder", "markdown")),
    Table("ops-cuda", PERFORMANCE_MD, "ops_cuda.json", bench("ops", "markdown_cuda")),
    Table("ivfpq-cuda", PERFORMANCE_MD, "ivfpq_cuda.json", bench("ivfpq_cuda", "markdown")),
    Table("cross-entropy-cpu", PERFORMANCE_MD, "cross_entropy_cpu.json", bench("cross_entropy", "markdown")),
    Table("train-cpu", PERFORMANCE_MD, "train_cpu.json", bench("train", "markdown")),
    Table("train-cpu-avx2", PERFORMANCE_MD, "train_cpu_avx2.json", bench("train", "markdown")),
    Table("train-cuda", PERFORMANCE_MD, "train_cuda.json", bench("train", "markdown")),
    Table("sharded-search", SCALING_MD, "sharded_search.json", bench("sharded_search", "markdown")),
    Table("db-build-ranks", SCALING_MD, "db_build_ranks.json", bench("db_build", "ranks_markdown")),
    Table("cost-model", SCALING_MD, "cost_model.json", bench("cost_model", "markdown")),
)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def render(table: Table) -> str:
    """The table's section, markers included, from its JSON as it is now."""
    begin, end = markers(table.name)
    path = RESULTS_DIR / table.result
    if not path.exists():
        return f"{begin}\n{end}"
    return f"{begin}\n{table.body(json.loads(path.read_text()))}\n{end}"


def section(text: str, name: str) -> str | None:
    """The section of a page between name's markers, markers included; None if it has none."""
    begin, end = markers(name)
    if begin not in text or end not in text:
        return None
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def differing() -> list[str]:
    """The tables whose page does not hold their rendering, as "PAGE.md: name"."""
    return [f"{table.page.name}: {table.name}" for table in TABLES
            if section(table.page.read_text(), table.name) != render(table)]


def write_tables(result: Path | None = None) -> list[str]:
    """Rewrites the tables rendered from result (every table if None) in their pages; a page
    without a table's markers gets it at its end. Returns the tables' names."""
    written = []
    for table in TABLES:
        if result is not None and Path(result).resolve() != (RESULTS_DIR / table.result).resolve():
            continue
        text = table.page.read_text() if table.page.exists() else ""
        current, rendered = section(text, table.name), render(table)
        text = text.replace(current, rendered) if current is not None else f"{text}\n{rendered}\n"
        table.page.write_text(text)
        written.append(table.name)
    return written


def write_tables_of(result: Path) -> list[str]:
    """write_tables(result) for a benchmark's --render JSON: exits if no table renders that file."""
    written = write_tables(result)
    if not written:
        raise SystemExit(f"no table in docs/ is rendered from {result}: each renders its JSON in "
                         f"{RESULTS_DIR.relative_to(ROOT)} (bench/render.py's TABLES); copy the run's JSON there")
    return written


def write_plots() -> list[Path]:
    """Redraws the recall-QPS plots of every bench/ivfpq.py JSON."""
    import ivfpq_results

    return [path for json_path in sorted(RESULTS_DIR.glob(IVFPQ_PLOTTED))
            for path in ivfpq_results.plot_result(json_path, json.loads(json_path.read_text()))]


def render_result(path: Path) -> str:
    """Everything docs can show of a result file: its tables, or (none) the provenance line of each
    result in it (a .jsonl holds one per line)."""
    tables = [render(table) for table in TABLES if table.result == path.name]
    if tables:
        return "\n\n".join(tables)
    lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
    return "\n".join(provenance.describe(json.loads(line)) for line in lines if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args()
    if args.check:
        stale = differing()
        for name in stale:
            print(f"differs from its JSON: {name}")
        raise SystemExit(1 if stale else 0)
    print("tables:", ", ".join(write_tables()))
    print("plots:", ", ".join(path.name for path in write_plots()))


if __name__ == "__main__":
    main()
