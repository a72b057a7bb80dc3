"""Loading a checkpoint never runs code (issue 23 item 1, issue 20 item 4): crafted pickles in
ckpt.pt, a DCP train_state.pt and a DCP .metadata are refused by every command that reads them,
before their payload runs; checkpoints are safetensors, and the torch.save files of format 1 still
load (numpy RNG state included) or convert once with an explicit --trust-pickle."""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from retro.cli import main
from retro.model import GPT, Retro, RetroConfig
from retro.train import TrainConfig
from retro.train.checkpoint import (CheckpointError, checkpoint_path, load_checkpoint,
                                    save_checkpoint)
from retro.train.distributed_checkpoint import (Checkpoint, canonical_to_dcp, dcp_checkpoints,
                                                load_dcp, read_train_state, to_canonical)
from retro.train.optim import make_optimizer

CONFIG = RetroConfig.preset("tiny", vocab_size=256, block_size=128, n_layer=2, n_head=2,
                            n_embd=32, cca_layers=(2,))


class Payload:
    """What an attacker's pickle holds: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def gpt_state() -> dict:
    """A GPT checkpoint dict as retro train writes it (weights, optimizer, the three RNG states)."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    settings = TrainConfig(db="db", out="run", model="gpt")
    optimizer = make_optimizer(model, settings, torch.device("cpu"))
    model(torch.zeros(1, 8, dtype=torch.long), targets=torch.zeros(1, 8, dtype=torch.long))[1] \
        .backward()
    optimizer.step()
    return {"format_version": 1, "kind": "gpt", "config": dataclasses.asdict(CONFIG),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1,
            "data_position": 4, "frozen": [], "world_size": 1,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()},
            "train_args": settings.to_dict()}


def crafted_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose ckpt.pt carries a payload, and the payload's marker file."""
    run, marker = tmp_path / "evil", tmp_path / "payload-ran"
    run.mkdir()
    torch.save({"format_version": 1, "kind": "gpt", "config": {}, "model": {}, "step": 1,
                "payload": Payload(marker)}, run / "ckpt.pt")
    return run, marker


def test_every_reader_of_a_crafted_ckpt_pt_refuses_it_before_the_payload_runs(tmp_path, capsys):
    run, marker = crafted_run(tmp_path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(run)
    with pytest.raises(Exception, match="refused|Weights only load failed"):
        Retro.from_gpt(run / "ckpt.pt")
    with pytest.raises(CheckpointError, match="refused"):
        to_canonical(run)
    commands = [["eval", str(run)], ["generate", str(run), "--prompt", "x"],
                ["train", "--out", str(run), "--resume"],
                ["train", "--db", str(tmp_path / "no-db"), "--out", str(tmp_path / "fit"),
                 "--init-from", str(run)],
                ["ckpt", "convert", str(run), "--to", "canonical"],
                ["ckpt", "convert", str(run), "--to", "dcp"]]
    for command in commands:
        assert main(command) == 2, command
        assert not marker.exists(), command
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_a_crafted_dcp_train_state_or_metadata_is_refused(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, gpt_state())
    step = canonical_to_dcp(run)
    marker = tmp_path / "payload-ran"
    # train_state: a legacy train_state.pt with a payload in place of the safetensors one
    (step / "train_state.safetensors").unlink()
    torch.save({"config": {}, "step": 1, "payload": Payload(marker)}, step / "train_state.pt")
    (checkpoint,) = dcp_checkpoints(run)
    with pytest.raises(CheckpointError, match="refused"):
        read_train_state(checkpoint)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert not marker.exists()
    # DCP's own metadata file is a pickle too
    step = canonical_to_dcp(run)
    (step / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    model = GPT(CONFIG)
    with pytest.raises(CheckpointError, match="is not part of DCP's metadata"):
        load_dcp(Checkpoint("dcp", step, 1), model, None)
    assert not marker.exists()


def test_checkpoints_are_safetensors_and_round_trip_exactly(tmp_path):
    state = gpt_state()
    path = save_checkpoint(tmp_path / "run", state)
    assert path.name == "ckpt.safetensors" and path.read_bytes()[8:9] == b"{"  # header: JSON
    back = load_checkpoint(tmp_path / "run")
    assert back["rng"]["python"] == state["rng"]["python"]
    numpy_state, numpy_back = state["rng"]["numpy"], back["rng"]["numpy"]
    assert numpy_back[0] == numpy_state[0] and np.array_equal(numpy_back[1], numpy_state[1])
    assert numpy_back[1].dtype == numpy_state[1].dtype and numpy_back[2:] == numpy_state[2:]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # betas tuple
    assert back["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()  # int keys
    for name, tensor in state["model"].items():
        assert torch.equal(back["model"][name], tensor), name
    # tied weights are stored once and come back as one tensor
    assert back["model"]["lm_head.weight"] is back["model"]["transformer.wte.weight"]


def test_from_gpt_reads_retros_own_checkpoints_old_and_new(tmp_path):
    state = gpt_state()
    save_checkpoint(tmp_path / "new", state)
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "ckpt.pt")  # format 1: torch.save with numpy's RNG state
    for source in (tmp_path / "new", tmp_path / "new" / "ckpt.safetensors",
                   tmp_path / "old" / "ckpt.pt", tmp_path / "old"):
        model = Retro.from_gpt(source)
        assert torch.equal(model.lm_head.weight, state["model"]["lm_head.weight"]), source
    assert checkpoint_path(tmp_path / "old").name == "ckpt.pt"
    assert load_checkpoint(tmp_path / "old")["step"] == 1


def test_an_old_checkpoint_with_other_objects_converts_only_with_trust_pickle(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # a numpy scalar: pickled through numpy's scalar constructor, which weights_only refuses
    torch.save({**gpt_state(), "note": np.float64(0.5)}, run / "ckpt.pt")
    assert main(["ckpt", "convert", str(run), "--to", "canonical"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["ckpt", "convert", str(run), "--to", "canonical", "--trust-pickle"]) == 0
    assert not (run / "ckpt.pt").exists() and load_checkpoint(run)["note"] == 0.5
