"""Shared by test_generate and test_eval: the reference database and tiny untrained runs on it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from test_db_support import reference_db

from retro.train.checkpoint import config_dict, db_identity, save_checkpoint
from retro.db import open_db
from retro.model import GPT, Retro, RetroConfig


def tiny_config(block_size: int, **overrides) -> RetroConfig:
    """2 layers of width 64, CCA in layer 2: builds in ~0.1 s."""
    fields = dict(n_layer=2, n_head=2, n_embd=64, block_size=block_size, cca_layers=(2,))
    return RetroConfig(**{**fields, **overrides})


def save_run(run: Path, model: GPT, kind: str, db_dir: Path) -> Path:
    """A weights-only checkpoint of model, recording db_dir as its database."""
    save_checkpoint(run, {
        "format_version": 1, "kind": kind, "config": config_dict(model.config),
        "model": model.state_dict(), "step": 0, "optimizer": None,
        "db": db_identity(open_db(db_dir)),
    })
    return run


@cache
def tiny_runs(base: Path) -> tuple[Path, Path, Path]:
    """(database dir, retro run, gpt run): seeded untrained tiny models (once per session)."""
    db_dir = reference_db(base)
    block_size = open_db(db_dir).block_size
    torch.manual_seed(0)
    retro = Retro(tiny_config(block_size)).eval()
    gpt = GPT(tiny_config(block_size)).eval()
    return (db_dir, save_run(base / "run_retro", retro, "retro", db_dir),
            save_run(base / "run_gpt", gpt, "gpt", db_dir))
