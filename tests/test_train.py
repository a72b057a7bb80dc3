"""retro.train on the small reference database of test_db_support (block_size 256, m = 64, k = 2):
a 2-layer, 64-wide RETRO and GPT (the GPT-2 vocabulary's head dominates their cost)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from test_db_support import reference_db

from retro.train.checkpoint import load_checkpoint, load_model
from retro.cli import main
from retro.errors import RetroError
from retro.db import open_db
from retro.train import TrainConfig, read_log, train
from retro.train.config import apply_overrides
from retro.train.data import SampleDataset, train_loader

MODEL = dict(block_size=256, n_layer=2, n_head=2, n_embd=64, cca_layers=(2,))
SMALL = dict(model_args=MODEL, batch_size=2, warmup_iters=2, learning_rate=3e-3, eval_batches=1,
             log_interval=1, progress=False, threads=1)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    return reference_db(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def gpt_run(db_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt") / "run"
    return train(TrainConfig(db=db_dir, out=out, model="gpt", max_iters=6, **SMALL))


def train_losses(run) -> list[float]:
    return [entry["loss"] for entry in read_log(run) if "loss" in entry]


def test_gpt_trains_logs_and_checkpoints(gpt_run, db_dir):
    losses = train_losses(gpt_run)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    # from ln(50304) = 10.83 the unigram statistics come first; observed 10.84 -> 9.46
    assert losses[-1] < losses[0] - 0.5
    val_losses = [entry["val_loss"] for entry in read_log(gpt_run) if "val_loss" in entry]
    assert val_losses and all(math.isfinite(x) for x in val_losses)
    model, state = load_model(gpt_run)
    assert state["kind"] == "gpt" and state["step"] == 6 and state["data_position"] == 12
    assert state["db"]["block_size"] == 256 and state["db"]["train_data"]
    assert state["train_args"]["model_args"] == MODEL
    assert model.config.n_layer == 2 and model.encoder is None


def test_retro_trains_with_its_neighbours(db_dir, tmp_path):
    run = train(TrainConfig(db=db_dir, out=tmp_path / "run", model="retro", max_iters=3,
                            eval_interval=3, **SMALL))
    losses = train_losses(run)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    model, state = load_model(run)
    assert state["kind"] == "retro" and state["frozen"] == []
    assert (model.config.n_nbrs, model.config.nbr_len, model.config.pad_id) == (2, 128, 50256)
    assert read_log(run)[-1]["step"] == 3 and "val_loss" in read_log(run)[-1]


def test_gpt_and_retro_read_the_same_samples_with_the_stored_neighbours(db_dir):
    retro_batches = iter(train_loader(SampleDataset(db_dir, "train", True), 3, seed=5, start=4,
                                      num_workers=0, pin_memory=False))
    gpt_batches = iter(train_loader(SampleDataset(db_dir, "train", False), 3, seed=5, start=4,
                                    num_workers=1, pin_memory=False))  # a worker: the same order
    view = open_db(db_dir).split("train")
    stored_ids, stored_lens = view.neighbours()
    samples = {tuple(view.stream.sample(j)[:-1]): j for j in range(view.stream.n_samples)}
    for _ in range(30):  # past the first epoch (70 samples)
        idx, targets, nbr_tokens, nbr_lens = next(retro_batches)
        gpt_idx, gpt_targets = next(gpt_batches)
        assert torch.equal(idx, gpt_idx) and torch.equal(targets, gpt_targets)
        assert torch.equal(idx[:, 1:], targets[:, :-1])
        assert nbr_tokens.shape == (3, 4, 2, 128) and nbr_lens.dtype == torch.int32
        for row in range(3):
            j = samples[tuple(idx[row].tolist())]
            np.testing.assert_array_equal(nbr_lens[row].numpy(), stored_lens[4 * j:4 * j + 4])
            ids = stored_ids[4 * j:4 * j + 4]
            found = ids >= 0
            first = open_db(db_dir).chunks.tokens[ids[found]]
            np.testing.assert_array_equal(nbr_tokens[row][torch.from_numpy(found)][:, :64], first)


def test_resume_gives_the_losses_of_an_uninterrupted_run(db_dir, tmp_path):
    settings = dict(db=db_dir, model="retro", max_iters=6, eval_interval=2, checkpoint_interval=2,
                    **SMALL)
    whole = train(TrainConfig(out=tmp_path / "whole", **settings))
    half = train(TrainConfig(out=tmp_path / "half", stop_after=3, **settings))
    assert load_checkpoint(half)["step"] == 3 and len(train_losses(half)) == 3
    with open(half / "log.jsonl", "a") as log:  # an interrupted run's line after its checkpoint
        log.write(json.dumps({"step": 4, "loss": 0.0}) + "\n")
    assert main(["train", "--out", str(half), "--resume"]) == 0
    strip = [{k: v for k, v in e.items() if k in ("step", "loss", "val_loss", "lr", "grad_norm")}
             for e in read_log(whole)]
    assert [{k: v for k, v in e.items() if k in ("step", "loss", "val_loss", "lr", "grad_norm")}
            for e in read_log(half)] == strip  # bitwise equal on 1 CPU thread
    whole_state, half_state = load_checkpoint(whole), load_checkpoint(half)
    assert half_state["step"] == 6 and half_state["data_position"] == whole_state["data_position"]
    for name, tensor in whole_state["model"].items():
        assert torch.equal(tensor, half_state["model"][name]), name

    # A run of checkpoint format 1 (torch.save, numpy RNG state) killed while saving resumes the
    # same: read with weights_only=True, converted by its next save, the temp file removed.
    legacy = train(TrainConfig(out=tmp_path / "legacy", stop_after=3, **settings))
    torch.save(load_checkpoint(legacy), legacy / "ckpt.pt")
    (legacy / "ckpt.safetensors").unlink()
    stale = legacy / "ckpt.safetensors.999999999.tmp"  # no such process
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--out", str(legacy), "--resume"]) == 0
    assert [{k: v for k, v in e.items() if k in ("step", "loss", "val_loss", "lr", "grad_norm")}
            for e in read_log(legacy)] == strip
    assert not stale.exists() and not (legacy / "ckpt.pt").exists()
    assert load_checkpoint(legacy)["step"] == 6


# inductor itself calls the deprecated torch.jit.script_method (torch 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_gives_the_losses_of_eager_training(db_dir, tmp_path):
    settings = dict(db=db_dir, model="retro", max_iters=2, eval_interval=2, **SMALL)
    eager = train(TrainConfig(out=tmp_path / "eager", **settings))
    try:
        compiled = train(TrainConfig(out=tmp_path / "compiled", compile=True, **settings))
    finally:
        torch._dynamo.reset()
    losses = [[(e.get("loss"), e.get("val_loss")) for e in read_log(run)] for run in (eager, compiled)]
    assert len(losses[1]) == 3  # two steps and one validation
    for (loss, val), (loss_c, val_c) in zip(*losses):
        assert (loss is None) == (loss_c is None) and (val is None) == (val_c is None)
        # observed: 9e-8 relative at most (inductor fuses the float32 math differently)
        assert math.isclose(loss or val, loss_c or val_c, rel_tol=1e-4)


def test_retro_fit_trains_only_cca_and_the_encoder(gpt_run, db_dir, tmp_path):
    run = train(TrainConfig(db=db_dir, out=tmp_path / "fit", init_from=str(gpt_run), freeze=True,
                            max_iters=2, **{**SMALL, "model_args": {"cca_layers": (2,)}}))
    gpt, retro_fit = load_checkpoint(gpt_run), load_checkpoint(run)
    assert retro_fit["frozen"] and all(name in gpt["model"] for name in retro_fit["frozen"])
    for name, tensor in gpt["model"].items():
        assert torch.equal(tensor, retro_fit["model"][name]), name
    new = [name for name in retro_fit["model"] if name not in gpt["model"]]
    assert any(n.startswith("encoder.") for n in new) and any(".cross." in n for n in new)
    # the same seeded start, one step less: CCA and the encoder did train
    one_step = train(TrainConfig(db=db_dir, out=tmp_path / "one", init_from=str(gpt_run),
                                 freeze=True, max_iters=1, **{**SMALL, "model_args": {}}))
    trained = load_checkpoint(one_step)["model"]
    assert any(not torch.equal(trained[n], retro_fit["model"][n]) for n in new)


@pytest.mark.parametrize("settings, scale", [
    (dict(), None),  # calibrated on the training samples: retro.model.retro_fit
    (dict(cca_start_ratio=0.0), 1.0),  # off
    (dict(model_args={"cca_output_scale": 2.0}), 2.0),  # given
])
def test_retro_fit_scales_cca_to_the_gpt_residual_stream(settings, scale, gpt_run, db_dir,
                                                         tmp_path, capsys):
    run = train(TrainConfig(db=db_dir, out=tmp_path / "fit", init_from=str(gpt_run), freeze=True,
                            max_iters=1, **{**SMALL, "model_args": {}, **settings}))
    stored = load_checkpoint(run)["config"]["cca_output_scale"]
    calibrated = "CCA outputs x" in capsys.readouterr().out
    assert calibrated == (scale is None)
    assert stored == scale if scale is not None else math.isfinite(stored) and stored != 1.0


def test_a_model_that_does_not_fit_the_database(db_dir, tmp_path):
    with pytest.raises(ValueError, match=r"block_size: the model has 512.*--block_size=256"):
        train(TrainConfig(db=db_dir, out=tmp_path / "run", model="gpt", progress=False))
    with pytest.raises(ValueError, match="chunk_size: the model has 32"):
        train(TrainConfig(db=db_dir, out=tmp_path / "run", progress=False,
                          model_args={**MODEL, "chunk_size": 32}))


def test_bad_settings(db_dir, gpt_run, tmp_path, capsys):
    config = TrainConfig(db=db_dir, out=tmp_path / "run")
    with pytest.raises(ValueError, match="unknown setting 'n_layr' \\(did you mean 'n_layer'"):
        apply_overrides(config, {"n_layr": "2"})
    with pytest.raises(ValueError, match="n_layer must be an int, got 'two'"):
        apply_overrides(config, {"n_layer": "two"})
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        apply_overrides(config, {"max_iters": "0"})
    assert apply_overrides(config, {"cca_layers": "1,2", "enc_n_embd": "none",
                                    "progress": "false"}).model_args == \
        {"cca_layers": (1, 2), "enc_n_embd": None}
    with pytest.raises(ValueError, match="freeze needs init_from"):
        TrainConfig(db=db_dir, out=tmp_path, freeze=True)
    with pytest.raises(ValueError, match="unknown model setting"):
        TrainConfig(db=db_dir, out=tmp_path, model_args={"layers": 2})
    with pytest.raises(ValueError, match="already holds a training run"):
        train(TrainConfig(db=db_dir, out=gpt_run, model="gpt", **SMALL))
    with pytest.raises(ValueError,
                       match=r"(?s)cannot resume .*global batch .*the run has 2 \(2 x 1 x 1\), now 4"):
        train(TrainConfig(db=db_dir, out=gpt_run, model="gpt", resume=True,
                          **{**SMALL, "batch_size": 4}))
    with pytest.raises(ValueError, match="init_from needs a GPT run"):
        retro_run = train(TrainConfig(db=db_dir, out=tmp_path / "r", max_iters=1, **SMALL))
        train(TrainConfig(db=db_dir, out=tmp_path / "r2", init_from=str(retro_run), **SMALL))

    assert main(["train", "--db", str(db_dir), "--out", str(tmp_path / "c"), "--n_layer=two"]) == 2
    assert "n_layer must be an int, got 'two'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--db", str(db_dir), "--out", str(tmp_path / "c"), "--n_layr=2"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --n_layr=2" in capsys.readouterr().err
    assert main(["train", "--db", str(db_dir), "--out", str(tmp_path / "c")]) == 2
    assert "--block_size=256" in capsys.readouterr().err


class FakeWandb:
    """The part of the wandb module a run uses, recording its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def init(self, **settings):
        self.calls.append(("init", settings))
        return self

    def log(self, scalars, step):
        self.calls.append(("log", step, scalars))

    def finish(self):
        self.calls.append(("finish",))


def test_tensorboard_and_wandb_get_the_logged_numbers(db_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    run = train(apply_overrides(
        TrainConfig(db=db_dir, out=tmp_path / "run", model="gpt", max_iters=2, eval_interval=2,
                    **SMALL),
        {"tensorboard": "true", "wandb_project": "retro-tests"}))
    entries = read_log(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("loss", "lr", "val_loss"):
        logged = [(e["step"], e[key]) for e in entries if key in e]
        assert logged and [(s.step, s.value) for s in events.Scalars(key)] == \
            [(step, pytest.approx(value, rel=1e-6)) for step, value in logged]  # float32 events
    init, *logs, finish = wandb.calls
    assert init[0] == "init" and init[1]["project"] == "retro-tests" and init[1]["name"] == "run"
    assert init[1]["config"]["max_iters"] == 2 and finish == ("finish",)
    assert [(step, scalars.get("loss"), scalars.get("val_loss")) for _, step, scalars in logs] == \
        [(e["step"], e.get("loss"), e.get("val_loss")) for e in entries]
    # off by default: neither is imported
    monkeypatch.setitem(sys.modules, "wandb", None)
    plain = train(TrainConfig(db=db_dir, out=tmp_path / "plain", model="gpt", max_iters=1,
                              **SMALL))
    assert not (plain / "tensorboard").exists()
    with pytest.raises(RetroError, match="pip install wandb"):
        train(TrainConfig(db=db_dir, out=tmp_path / "w", model="gpt", max_iters=1, wandb_log=True,
                          **SMALL))
