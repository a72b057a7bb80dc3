"""bench/cost_model.py: every row says where its rate comes from, and the one measured training
row is the benchmark's own rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import cost_model  # noqa: E402  (bench/cost_model.py)


def test_every_row_is_measured_or_derived_and_the_table_renders():
    result = cost_model.cost_model(nodes=2, gpus_per_node=8, cores_per_node=64)
    rows = result["database"] + result["training"]
    assert rows and all(row["hours"] > 0 for row in rows)
    assert all(row["source"].startswith(("measured: `python bench/", "derived: ")) for row in rows)
    train = json.loads((BENCH / "results" / "train_cuda.json").read_text())
    gpt = next(r for r in train["results"] if r["config"] == "gpt")
    gpt_small = next(row for row in result["training"] if row["stage"].startswith("train GPT-small"))
    assert gpt_small["hours"] == cost_model.TOKENS / gpt["tokens_per_s"] / 3600
    assert gpt_small["quoted"] == "1,240 GPU-hours"
    retro_xxl = next(row for row in result["memory"] if row["model"] == "RETRO-xxl")
    assert 9.3e9 < retro_xxl["params"] < 9.7e9  # the paper's 9.5B
    table = cost_model.render(result)
    assert table.startswith("<!-- cost-model:begin -->") and "16 nodes" not in table
    assert "2 nodes of 8 GPUs and 64 cores (16 GPUs, 128 cores)" in table
