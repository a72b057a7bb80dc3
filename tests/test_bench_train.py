"""bench/train.py end to end on the CPU at CI size (tiny preset cut to 128 tokens, batch 1, 2
timed steps, eager), with the DataLoader over the small reference database: the JSON's structure,
and every number positive and finite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from test_db_support import reference_db

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train.py"
CONFIGS = {"anchor", "gpt", "retro", "retro-ref"}


def test_cpu_run_writes_every_measurement(tmp_path):
    db = reference_db(tmp_path)
    out = tmp_path / "train_cpu.json"
    command = [sys.executable, str(BENCH), "--device", "cpu", "--preset", "tiny", "--block-size",
               "128", "--batch-size", "1", "--steps", "2", "--warmup", "1", "--no-compile",
               "--threads", "2", "--db", str(db), "--loader-seconds", "0.5", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)  # a hang guard; ~25 s alone on 2 cores
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())

    recorded = result["provenance"]
    assert {"git_commit", "git_dirty", "command", "cpu", "isa", "simd", "date", "load_after"} <= recorded.keys()
    assert "--block-size 128" in recorded["command"] and recorded["versions"]["torch"] and recorded["threads"] == 2
    assert result["machine"] == {"device": "cpu", "peak_tflops": None}
    assert {r["config"] for r in result["results"]} == CONFIGS and result["skipped"] == []
    for r in result["results"]:
        assert r["batch_size"] == 1 and r["block_size"] == 128 and r["steps"] == 2
        assert r["compiled"] is False and r["mfu"] is None
        for key in ("step_ms", "step_ms_min", "tokens_per_s", "peak_memory_mb",
                    "flops_per_token", "tflops", "setup_s", "loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["config"], key, r[key])
    by = {r["config"]: r for r in result["results"]}
    assert by["anchor"]["flops_per_token"] == by["gpt"]["flops_per_token"]
    assert by["retro"]["flops_per_token"] == by["retro-ref"]["flops_per_token"]
    # observed: 1.65 at T = 128 (retro.train.flops; the encoder runs on 4x the tokens)
    assert 1.2 < by["retro"]["flops_per_token"] / by["gpt"]["flops_per_token"] < 2.0
    # the same initial weights and batch: the custom ops and the references give the same loss
    assert math.isclose(by["retro"]["loss"], by["retro-ref"]["loss"], rel_tol=1e-3)

    ratios = result["ratios"]["tiny"]
    for key in ("gpt_over_anchor_tokens_per_s", "retro_over_gpt_step_time", "retro_over_gpt_flops",
                "retro_over_gpt_mfu", "retro_over_ref_tokens_per_s"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    assert ratios["paper_retro_over_gpt_gpu_hours"] == 1.258
    assert result["compile_check"]["fullgraph"] is True
    assert result["compile_check"]["graph_breaks"] == 0
    loader = result["loader"]
    assert loader["batches"] >= 5 and loader["tokens_per_s"] > 0
    assert loader["over_retro_step_rate"] > 0
    assert "| tiny | retro |" in run.stdout
