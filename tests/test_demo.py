"""retro demo end to end on the small reference database: both models train for the same steps,
are evaluated and compared, a sample is generated, and summary.json and the plots are written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from test_run_support import tiny_runs  # noqa: E402

import retro.cli  # noqa: E402


def test_demo_on_a_small_database(tmp_path_factory, tmp_path, capsys):
    db_dir, _, _ = tiny_runs(tmp_path_factory.getbasetemp())
    out = tmp_path / "demo"
    tiny = ["--model-arg", "n_layer=2", "--model-arg", "n_embd=64", "--model-arg", "n_head=2",
            "--model-arg", "cca_layers=2"]
    status = retro.cli.main(["demo", "--out", str(out), "--db", str(db_dir), "--steps", "3",
                             "--batch-size", "2", "--eval-samples", "2", "--new-tokens", "8", "--qa-items", "12",
                             "--threads", "1", "--no-progress", *tiny])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"retro", "retro_no_retrieval", "gpt"}
    for scores in summary["models"].values():
        assert scores["loss"] > 0 and scores["bpb"] > 0 and scores["perplexity"] > 1
    assert summary["steps"] == 3 and summary["flops_per_model"]["retro"] > summary["flops_per_model"]["gpt"]
    assert summary["sample"]["prompt"] and summary["sample"]["neighbours"]
    assert set(summary["qa"]) == {"worldcapitals", "general", "artandliterature", "greekmyth"}
    for settings in summary["qa"].values():
        assert set(settings) == {"retro", "retro_no_retrieval", "gpt"}
        assert all(s["items"] == 12 and 0 <= s["accuracy"] <= 1 for s in settings.values())
    assert (out / "loss_curves.png").stat().st_size > 0 and (out / "leakage.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| retro |" in printed and "| greekmyth | gpt | 12 |" in printed and "total" in printed


def test_demo_refuses_a_bad_model_arg(tmp_path):
    assert retro.cli.main(["demo", "--out", str(tmp_path), "--model-arg", "n_layer"]) == 2
