"""The tables in docs/ are the renderings of their JSONs (bench/render.py), every result file in
bench/results renders, and a result written now carries the provenance of its run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import ivfpq_results  # noqa: E402  (bench/ivfpq_results.py)
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

RESULTS = sorted(render.RESULTS_DIR.glob("*.json")) + sorted(render.RESULTS_DIR.glob("*.jsonl"))


@pytest.mark.parametrize("table", render.TABLES, ids=lambda table: table.name)
def test_every_table_is_the_rendering_of_its_json(table):
    assert render.section(table.page.read_text(), table.name) == render.render(table), (
        f"{table.page.name}: {table.name} differs from bench/results/{table.result}: python bench/render.py")


@pytest.mark.parametrize("path", RESULTS, ids=lambda path: path.name)
def test_every_result_renders(path):
    text = render.render_result(path)
    assert "Run" in text and "Machine:" in text and "Load:" in text


def test_every_ivfpq_json_has_a_plot_per_dataset():
    for path in render.RESULTS_DIR.glob(render.IVFPQ_PLOTTED):
        for png in ivfpq_results.plot_paths(path, json.loads(path.read_text())):
            assert png.exists(), f"{png.name}: python bench/render.py"


def test_check_passes_on_the_docs_and_names_a_table_that_differs(tmp_path, monkeypatch):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "render.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    table = next(t for t in render.TABLES if t.name == "db-build")
    page = tmp_path / "PERFORMANCE.md"
    page.write_text(table.page.read_text().replace("| embed | 19,980 |", "| embed | 19,981 |"))
    monkeypatch.setattr(render, "TABLES", (dataclasses.replace(table, page=page),))
    assert render.differing() == ["PERFORMANCE.md: db-build"]
    render.write_tables()
    assert render.differing() == [] and "| embed | 19,980 |" in page.read_text()


def test_a_result_written_now_records_its_run(tmp_path):
    path = tmp_path / "result.json"
    written = report.write_result(path, {"rows": [1.5]}, threads=2, load_before=[0.5, 0.4, 0.3])
    assert json.loads(path.read_text()) == json.loads(json.dumps(written))
    run = written["provenance"]
    assert run["threads"] == 2 and run["load_before"] == [0.5, 0.4, 0.3] and len(run["load_after"]) == 3
    assert run["cpu"] and run["simd"] and run["bf16_kernel"] and isinstance(run["isa"], list)
    assert run["versions"]["python"] and run["versions"]["retro"] and run["command"].startswith("python ")
    if (ROOT / ".git").exists() and "RETRO_GIT_COMMIT" not in __import__("os").environ:
        assert provenance.COMMIT.fullmatch(run["git_commit"]) and run["git_dirty"] in (True, False)
    line = provenance.describe(written)
    assert "2 thread(s)" in line and "1-minute average 0.50 before" in line
    assert f"`{run['simd']}`" in line and f"`{run['bf16_kernel']}`" in line


def test_a_load_above_the_threads_is_measured_under_load():
    assert provenance.is_loaded([3.0, 1.0, 1.0], [0.1, 0.1, 0.1], 2) is True
    assert provenance.is_loaded(1.9, [2.0], 2) is False
    assert provenance.is_loaded(None, None, 2) is None and provenance.is_loaded([5.0], None, None) is None
    loaded = report.with_provenance({}, threads=1, load_before=[9.0, 9.0, 9.0])
    assert loaded["provenance"]["loaded"] is True
    assert "above its 1 thread(s): **measured under load**" in provenance.describe(loaded)


def test_older_layouts_say_what_they_did_not_record():
    old = {"machine": {"cpu": "Xeon", "cores": 2, "git_commit": "abc1234", "command": "bench/x.py --y",
                       "date": "2026-11-26 22:37 UTC", "torch": "2.13"}}
    line = provenance.describe(old)
    for shown in ("commit `abc1234` (tree state not recorded)", "`python bench/x.py --y`", "ISA flags not recorded",
                  "bf16 kernel not recorded", "threads not recorded", "torch 2.13", "faiss not recorded",
                  "Load: not recorded"):
        assert shown in line
    merged = {"machine": {"git_commit": "aaaaaaa` and `bbbbbbb", "runs": [
        {"git_commit": "aaaaaaa", "command": "bench/x.py"}, {"git_commit": "bbbbbbb", "command": "bench/x.py --z"}]}}
    line = provenance.describe(merged)
    assert "Run 1 of 2: commit `aaaaaaa`" in line and "Run 2 of 2: commit `bbbbbbb`" in line and "and `" not in line
    by_hand = {"machine": {"git_commit": "d71dd86 (model code as at 5b239dd)", "load": "quiet"}}
    line = provenance.describe(by_hand)
    assert 'commit as recorded by hand: "d71dd86 (model code as at 5b239dd)"' in line
    assert 'Load: as recorded: "quiet"' in line


def test_rows_measured_under_load_are_marked():
    # the fast-scan run at a load of 4-5: faiss's single queries stalled (99.87x at k_factor 8, nprobe 2)
    text = render.render(next(t for t in render.TABLES if t.name == "ivfpq-fastscan-cpu"))
    contaminated = next(line for line in text.splitlines() if "| 99.87 |" in line)
    assert "**under load**: CPU 1.09 / 0.96 of 2" in contaminated
    quiet = render.render(next(t for t in render.TABLES if t.name == "ivfpq-cpu"))
    assert "**under load**" not in quiet.split("\n", 3)[3]  # the quiet run: none past the header


def test_a_row_is_under_load_when_others_held_the_cores():
    def row(threads: int, share: float, load: float | None) -> ivfpq_results.SearchRow:
        return ivfpq_results.SearchRow("d", "retro", threads, 1, 0.5, 1000.0, share, None, load)

    rows = [row(2, 1.9, 0.3), row(1, 0.97, 1.8), row(1, 0.97, 2.5), row(2, 0.9, None)]
    data = ivfpq_results.DatasetResult("d", 10, 1, 4, 1, 1, search=rows)
    # the 2-thread settings' own load lingers in the 1-minute average: 1.8 <= 2 is not others' work
    assert [data.under_load(r) for r in rows] == [False, False, True, True]
    assert ivfpq_results.load_cell(data, rows[2:3]) == "**under load**: CPU 0.97 of 1, load 2.50"
