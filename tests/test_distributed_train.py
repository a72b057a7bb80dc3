"""``retro train`` under torchrun on 2 gloo ranks: DDP and FSDP2 train as one process with the same
global batch, checkpoints resume on another world size, and the DCP <-> ckpt.safetensors converter
keeps every tensor. The model is test_train's 2-layer, 64-wide RETRO on the reference database."""

from __future__ import annotations

import math

import pytest
import torch
from support import torchrun
from test_train import MODEL, SMALL, db_dir, restore_threads, train_losses  # noqa: F401 (fixtures)

from retro.train.checkpoint import CheckpointError, load_checkpoint
from retro.cli import main
from retro.model import Retro, RetroConfig
from retro.train import TrainConfig, read_log, train
from retro.train.distributed_checkpoint import (canonical_to_dcp, dcp_checkpoints,
                                                dcp_to_canonical, latest_checkpoint, load_dcp)

RANKS = 2
RUN_TIMEOUT_S = 240  # a rank stuck in a collective fails the test instead of stalling the suite
STEPS = 4
# 1 process reads 4 samples per step; 2 ranks read 2 each: the same global batch of 4.
ONE = dict(SMALL, batch_size=4, max_iters=STEPS, eval_interval=2, checkpoint_interval=2)
FLAGS = [f"--max_iters={STEPS}", "--eval_interval=2", "--checkpoint_interval=2",
         "--warmup_iters=2", "--learning_rate=3e-3", "--eval_batches=1",
         "--log_interval=1", "--progress=false", "--threads=1", "--block_size=256",
         "--n_layer=2", "--n_head=2", "--n_embd=64", "--cca_layers=2"]
# Observed (summation order only): losses and validation losses within 6e-7 relative (DDP and
# FSDP2), weights within 4.6e-6. Gradient norms: DDP within 1e-9, FSDP2 within 2e-4 relative (its
# norm adds per-shard squares; Adam's first steps magnify tiny differences of near-zero gradients).
LOSS_RTOL, GRAD_NORM_RTOL, WEIGHT_ATOL = 1e-5, 1e-3, 1e-5
# Adam divides by sqrt(v): where a gradient is near zero, a summation-order difference can move a
# weight by a good part of one step (lr 3e-3). CI saw 1 element of 16384 at 1.27e-5 (DDP, grad_accum
# 2), and 1 of the 64 of a CCA key bias (transformer.h.1.cross.c_k.bias, DDP, AVX2). A key bias
# reaches the softmax only through the rotary positions of CCA's keys (cross_positions "rope"): a
# shift shared by every key leaves the softmax as it is, and the rotation makes the bias differ
# between key positions only by the angle of each frequency pair across the neighbour, small for the
# slow pairs, so most of its gradient is near zero and Adam's step there follows rounding noise.
# So: 99.9% of each tensor, and all but one element of a small one, within WEIGHT_ATOL; every
# element within a tenth of one Adam step.
WEIGHT_OUTLIER_FRACTION, WEIGHT_OUTLIER_ATOL = 1e-3, 3e-4


def torchrun_train(*args: str) -> None:
    """retro train on RANKS gloo ranks under torchrun; fails the test if a rank fails."""
    status, output = torchrun(["train", *args], RANKS, RUN_TIMEOUT_S)
    assert status == 0, f"torchrun failed:\n{output[-6000:]}"


def logged(run) -> list[dict]:
    keys = ("step", "loss", "val_loss", "lr", "grad_norm")
    return [{k: v for k, v in entry.items() if k in keys} for entry in read_log(run)]


def assert_same_run(got, expected) -> None:
    """Equal logs (losses, validation losses, gradient norms) and final weights, to tolerance."""
    ours, theirs = logged(got), logged(expected)
    assert [e["step"] for e in ours] == [e["step"] for e in theirs]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a.keys() - {"step"}:
            tolerance = GRAD_NORM_RTOL if key == "grad_norm" else LOSS_RTOL
            assert math.isclose(a[key], b[key], rel_tol=tolerance), (a, b)
    state, reference = load_checkpoint(got), load_checkpoint(expected)
    assert state["step"] == reference["step"]
    assert state["data_position"] == reference["data_position"]
    for name, tensor in reference["model"].items():
        assert_close_weights(name, state["model"][name], tensor)


def assert_close_weights(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """Every element within WEIGHT_OUTLIER_ATOL; all but WEIGHT_OUTLIER_FRACTION of them (at least
    one) within WEIGHT_ATOL."""
    assert got.shape == expected.shape, name
    error = (got.double() - expected.double()).abs()
    assert error.max().item() <= WEIGHT_OUTLIER_ATOL, (name, error.max().item())
    outliers = (error > WEIGHT_ATOL).sum().item()
    assert outliers <= max(1.0, WEIGHT_OUTLIER_FRACTION * error.numel()), (name, outliers, error.numel())


@pytest.fixture(scope="module")
def one_rank(db_dir, tmp_path_factory):
    """The reference: 1 process, batch_size 4, RETRO (decoder blocks and encoder blocks)."""
    out = tmp_path_factory.mktemp("one") / "run"
    return train(TrainConfig(db=db_dir, out=out, model="retro", **ONE))


# (parallel, batch_size, grad_accum) on 2 ranks: a global batch of 4 each
@pytest.mark.parametrize("parallel, batch_size, grad_accum",
                         [("ddp", 2, 1), ("fsdp", 2, 1), ("ddp", 1, 2)])
def test_two_ranks_train_as_one_rank_with_the_same_global_batch(parallel, batch_size, grad_accum,
                                                                db_dir, one_rank, tmp_path):
    run = tmp_path / parallel
    torchrun_train("--db", str(db_dir), "--out", str(run), f"--parallel={parallel}",
                   f"--batch_size={batch_size}", f"--grad_accum={grad_accum}", *FLAGS)
    assert_same_run(run, one_rank)
    assert len(train_losses(run)) == STEPS
    (latest,) = dcp_checkpoints(run)  # older DCP checkpoints are removed
    assert latest.step == STEPS and load_checkpoint(run)["world_size"] == RANKS


def test_resume_on_another_world_size(db_dir, one_rank, tmp_path):
    # 2 ranks (FSDP2) stop after step 2; 1 process resumes their DCP checkpoint with batch 4
    run = tmp_path / "two_then_one"
    torchrun_train("--db", str(db_dir), "--out", str(run), "--parallel=fsdp", "--stop_after=2",
                   "--batch_size=2", *FLAGS)
    assert latest_checkpoint(run).format == "dcp" and latest_checkpoint(run).step == 2
    assert main(["train", "--out", str(run), "--resume", "--batch_size=4"]) == 0
    assert_same_run(run, one_rank)

    # 1 process stops after step 2 (ckpt.safetensors); 2 ranks (DDP) resume it with batch 2 each
    run = tmp_path / "one_then_two"
    train(TrainConfig(db=db_dir, out=run, model="retro", stop_after=2, **ONE))
    assert latest_checkpoint(run).format == "canonical"
    torchrun_train("--out", str(run), "--resume", "--batch_size=2")
    assert_same_run(run, one_rank)


def test_resume_needs_the_same_global_batch(db_dir, one_rank, tmp_path, capsys):
    assert main(["train", "--out", str(one_rank), "--resume", "--batch_size=2",
                 "--max_iters=6"]) == 2
    assert ("global batch (batch_size x grad_accum x ranks): the run has 4 (4 x 1 x 1), now 2 "
            "(2 x 1 x 1)") in capsys.readouterr().err
    with pytest.raises(ValueError, match="parallel must be one of .*not 'zero'"):
        TrainConfig(db=db_dir, out=tmp_path, parallel="zero")


def test_converter_round_trip_keeps_every_tensor(one_rank, tmp_path, capsys):
    original = load_checkpoint(one_rank)
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.safetensors").write_bytes((one_rank / "ckpt.safetensors").read_bytes())
    assert main(["ckpt", "convert", str(run), "--to", "dcp"]) == 0
    assert f"step-{STEPS:08d}" in capsys.readouterr().out
    (run / "ckpt.safetensors").unlink()
    assert latest_checkpoint(run).format == "dcp"
    dcp_to_canonical(run)
    back = load_checkpoint(run)
    assert {k: v for k, v in back.items() if k not in ("model", "optimizer", "rng")} == \
        {k: v for k, v in original.items() if k not in ("model", "optimizer", "rng")}
    assert back["model"].keys() == original["model"].keys()
    for name, tensor in original["model"].items():
        assert torch.equal(back["model"][name], tensor), name
    theirs, ours = original["optimizer"], back["optimizer"]
    def groups(optimizer: dict) -> list[dict]:  # DCP stores the betas tuple as a list
        return [{**group, "betas": tuple(group["betas"])} for group in optimizer["param_groups"]]

    assert groups(ours) == groups(theirs)
    for number, values in theirs["state"].items():
        for key, value in values.items():
            assert torch.equal(ours["state"][number][key], value), (number, key)
    assert canonical_to_dcp(run) == dcp_checkpoints(run)[-1].path


def test_a_dcp_checkpoint_of_another_model_is_refused(one_rank, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.safetensors").write_bytes((one_rank / "ckpt.safetensors").read_bytes())
    canonical_to_dcp(run)
    (checkpoint,) = dcp_checkpoints(run)
    other = Retro(RetroConfig.preset("tiny", **{**MODEL, "n_layer": 3}))
    with pytest.raises(CheckpointError, match="holds another model:\n  n_layer: the checkpoint "
                                              "has 2, the model 3"):
        load_dcp(checkpoint, other, None)
    with pytest.raises(CheckpointError, match="has no complete DCP checkpoint"):
        dcp_to_canonical(tmp_path / "empty")
