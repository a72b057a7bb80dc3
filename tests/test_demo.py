"""retro demo end to end on a small corpus: a BPE trained on it, the strict, knowledge and edited
databases, a GPT and its RETRO-fit, both settings evaluated with every neighbour source, QA on world
capitals against the edited database, a sample generated, summary.json with the paper's checks and
the plots written; RETRO from scratch (the default) and RETRO-fitted from the GPT."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
from test_db_support import corpus_dir  # noqa: E402

import retro.cli  # noqa: E402
import retro.train  # noqa: E402
from retro import demo  # noqa: E402
from retro.demo import CLAIMS, DemoConfig  # noqa: E402


@pytest.mark.parametrize("retro_init", ["scratch", "gpt"])
def test_demo_on_a_small_corpus(tmp_path_factory, tmp_path, capsys, retro_init):
    corpus = corpus_dir(tmp_path_factory.getbasetemp())
    out = tmp_path / "demo"
    tiny = ["--model-arg", "n_layer=2", "--model-arg", "n_embd=32", "--model-arg", "n_head=2",
            "--model-arg", "cca_layers=2", "--model-arg", "enc_n_embd=16",
            "--model-arg", "enc_n_head=2"]
    args = ["demo", "--out", str(out), "--corpus", str(corpus), "--vocab-size", "400",
            "--gpt-steps", "3", "--retro-init", retro_init, "--retro-steps", "2",
            "--copy-fraction", "0.5", "--batch-size", "2", "--eval-samples", "2",
            "--new-tokens", "8", "--qa-items", "12", "--threads", "1", "--no-progress", *tiny]
    assert retro.cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["claims"]) == set(CLAIMS)
    for claim in summary["claims"].values():
        assert isinstance(claim["met"], bool) and claim["target"]
    for setting in ("strict", "knowledge"):
        models = summary["settings"][setting]["models"]
        assert set(models) == {"retro", "retro_shuffled", "retro_oracle", "retro_no_retrieval",
                               "gpt"}
        for scores in models.values():
            assert scores["loss"] > 0 and scores["bpb"] > 0 and scores["perplexity"] > 1
        # RETRO-fit: without neighbours exactly the GPT (its decoder is the GPT's, frozen)
        fitted = models["retro_no_retrieval"]["loss"] == pytest.approx(models["gpt"]["loss"],
                                                                       rel=1e-6)
        assert fitted == (retro_init == "gpt")
        assert set(summary["settings"][setting]["retrieval_gain"]["retro"]) == {
            "real", "shuffled", "oracle"}
    assert summary["steps"] == {"gpt": 3, "retro": 2}
    assert summary["config"]["retro_init"] == retro_init
    assert summary["flops"]["retro"] > 0 and summary["flops"]["gpt"] > 0
    assert summary["sample"]["prompt"] and summary["sample"]["neighbours"]
    settings = summary["qa"]["worldcapitals"]
    assert {"retro", "retro_no_retrieval", "gpt"} <= set(settings)
    assert all(settings[name]["items"] == 12 for name in ("retro", "retro_no_retrieval", "gpt"))
    assert all(0 <= s["accuracy"] <= 1 for s in settings.values())
    assert (out / "tokenizer.json").exists() and (out / "loss_curves.png").stat().st_size > 0
    assert (out / "leakage_strict.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| retro |" in printed and "knowledge_ppl_ratio" in printed and "total" in printed
    # a second run reuses the tokenizer, the databases and the finished runs
    assert retro.cli.main(args) == 0
    # but not a finished RETRO of other settings: it says which and what to do
    other = "gpt" if retro_init == "scratch" else "scratch"
    assert retro.cli.main([*args, "--retro-init", other]) == 2
    assert "other settings" in capsys.readouterr().err
    # a retrieval-only setting changes the RETRO run, not the GPT's: the GPT is reused
    gpt_checkpoint = sorted((out / "gpt").glob("ckpt*"))
    stamps = [p.stat().st_mtime_ns for p in gpt_checkpoint]
    (out / "retro").rename(out / "retro_before")
    assert retro.cli.main([*args, "--model-arg", "cross_local_heads=1"]) == 0
    assert gpt_checkpoint and [p.stat().st_mtime_ns for p in gpt_checkpoint] == stamps


def test_demo_refuses_a_bad_model_arg(tmp_path):
    assert retro.cli.main(["demo", "--out", str(tmp_path), "--model-arg", "n_layer"]) == 2


@pytest.mark.parametrize("flag, value", [("--copy-fraction", "1.5"), ("--copy-fraction", "nan"),
                                         ("--retro-steps", "0"), ("--batch-size", "-1"),
                                         ("--retro-learning-rate", "nan"),
                                         ("--learning-rate", "0"), ("--copy-shift", "-1"),
                                         ("--copy-shift-share", "2")])
def test_demo_refuses_bad_settings_before_any_work(tmp_path, flag, value):
    assert retro.cli.main(["demo", "--out", str(tmp_path / "out"), flag, value]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("retro_init", ["scratch", "gpt"])
def test_demo_resumes_an_interrupted_retro(monkeypatch, tmp_path, retro_init):
    started = []
    monkeypatch.setattr(retro.train, "train", started.append)
    monkeypatch.setattr(demo, "finished_steps", lambda run: {"gpt": 3, "retro": 1}[run.name])
    reused = []
    monkeypatch.setattr(demo, "check_reusable", lambda run, settings: reused.append(run.name))
    db = SimpleNamespace(root=tmp_path / "db", block_size=64,
                         tokenizer=SimpleNamespace(vocab_size=400))
    config = DemoConfig(gpt_steps=3, retro_init=retro_init, retro_steps=2, block_size=64)
    runs = demo.train_models(tmp_path, config, db)
    assert runs == {"gpt": tmp_path / "gpt", "retro": tmp_path / "retro"}
    [run] = started  # the finished GPT is reused, once its settings are checked
    assert reused == ["gpt"]
    # the run's own settings: init_from, freeze and copy_fraction are among those a resumed run
    # must keep
    assert run.resume and run.max_iters == 2 and run.copy_fraction == config.copy_fraction
    assert run.dtype == demo.training_dtype("auto")
    if retro_init == "gpt":
        assert run.init_from == str(tmp_path / "gpt") and run.freeze
    else:
        assert run.init_from is None and not run.freeze
        assert run.model_args["n_embd"] == demo.DEMO_MODEL["n_embd"]


@pytest.mark.parametrize("native", [True, False])
def test_demo_trains_in_bf16_where_the_cpu_computes_it(monkeypatch, native):
    import retro.machine

    monkeypatch.setattr(retro.machine, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.training_dtype("auto") == ("bfloat16" if native else "float32")
    assert demo.training_dtype("float32") == "float32"
    assert demo.training_dtype("bfloat16") == "bfloat16"


def test_the_demo_preset_is_the_demos_model():
    from retro.model import RetroConfig

    defaults = DemoConfig()
    expected = RetroConfig(**demo.DEMO_MODEL, **demo.DEMO_RETRIEVAL,
                           vocab_size=defaults.vocab_size, block_size=defaults.block_size)
    assert RetroConfig.preset("demo") == expected
