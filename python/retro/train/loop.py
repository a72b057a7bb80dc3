"""``train(TrainConfig) -> run directory``: the training loop (nanoGPT's, with neighbours).

One optimizer step: grad_accum micro-batches of batch_size samples, each loss scaled by
1 / grad_accum, then gradient clipping and AdamW at the scheduled learning rate. Validation runs
every eval_interval steps on a fixed set of valid samples with their stored neighbours; a
checkpoint (retro.checkpoint) is written every checkpoint_interval steps and at the end, holding
everything a resumed run needs to continue with the same losses.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from retro.checkpoint import (FORMAT_VERSION, KINDS, MODEL_DB_KEYS, checkpoint_path, config_dict,
                              db_identity, db_mismatches, load_checkpoint, save_checkpoint)
from retro.db import Database, open_db
from retro.model import GPT, Retro, RetroConfig
from retro.train.config import RESUME_FIXED, TrainConfig
from retro.train.data import SampleDataset, eval_samples, to_device, train_loader
from retro.train.log import RunLog
from retro.train.optim import learning_rate, make_optimizer


def train(config: TrainConfig) -> Path:
    """Trains (or, with config.resume, continues) the run config.out; returns its directory."""
    run = Path(config.out)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    db = open_db(config.db)
    if "valid" not in db.splits:
        raise ValueError(f"{db.root} has no valid split to validate on (valid_fraction was 0)")
    state = _resume_state(run, config, db)
    model, frozen = _model(config, db, state)
    model.to(device).train()
    optimizer = make_optimizer(model, config, device)
    step, data_position = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, data_position = state["step"], state["data_position"]
        _set_rng_state(state["rng"])
    log = RunLog(run, resume_step=step if state is not None else None)
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    with_neighbours = config.model == "retro"
    train_set = SampleDataset(db.root, "train", with_neighbours)
    valid_set = SampleDataset(db.root, "valid", with_neighbours)
    valid_loader = DataLoader(
        valid_set, batch_size=config.batch_size,
        sampler=eval_samples(len(valid_set), config.eval_batches * config.batch_size).tolist())
    batches = iter(train_loader(train_set, config.batch_size, config.seed, data_position,
                                config.num_workers, pin_memory=device.type == "cuda"))
    identity = db_identity(db)
    tokens_per_step = config.batch_size * config.grad_accum * db.block_size
    stop = min(config.max_iters, config.stop_after or config.max_iters)
    progress = _progress_bar(config, step, stop)
    if config.progress:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        progress.write(f"{config.model}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
                       f"trained) on {device}{' bf16' if bf16 else ''}; {len(train_set)} train "
                       f"samples of {db.block_size} tokens; steps {step} -> {stop} of "
                       f"{config.max_iters}")
    started = time.perf_counter()
    while step < stop:
        step_started = time.perf_counter()
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(config.grad_accum):
            with autocast:
                loss = _loss(model, to_device(next(batches), device))
            (loss / config.grad_accum).backward()
            loss_sum += loss.item()
        grad_norm = None
        if config.grad_clip > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        data_position += config.batch_size * config.grad_accum
        seconds = time.perf_counter() - step_started
        loss_value = loss_sum / config.grad_accum
        last = step == stop
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_step / seconds:,.0f}")
        if step % config.log_interval == 0 or step == 1 or last:
            log.write({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                       "tokens": step * tokens_per_step, "tokens_per_s": tokens_per_step / seconds,
                       "elapsed_s": time.perf_counter() - started})
        if step % config.eval_interval == 0 or step == config.max_iters:
            val_loss = evaluate(model, valid_loader, device, autocast)
            log.write({"step": step, "val_loss": val_loss})
            progress.write(f"step {step}: train loss {loss_value:.4f}, val loss {val_loss:.4f}")
        if step % config.checkpoint_interval == 0 or last:
            save_checkpoint(run, {
                "format_version": FORMAT_VERSION, "kind": config.model,
                "config": config_dict(model.config), "model": model.state_dict(), "step": step,
                "optimizer": optimizer.state_dict(), "data_position": data_position,
                "rng": _rng_state(), "train_args": config.to_dict(), "db": identity,
                "frozen": frozen,
            })
    progress.close()
    return run


def evaluate(model: GPT, loader: DataLoader, device: torch.device,
             autocast: contextlib.AbstractContextManager) -> float:
    """Mean loss over the loader's samples (all full blocks, so a mean of batch means weighted by
    batch size); leaves the model in training mode."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            with autocast:
                loss = _loss(model, to_device(batch, device))
            total += loss.item() * len(batch[0])
            count += len(batch[0])
    model.train()
    return total / count


def _loss(model: GPT, batch: list[torch.Tensor]) -> torch.Tensor:
    """batch: idx, targets[, nbr_tokens, nbr_lens] (GPT batches have no neighbours)."""
    idx, targets, *neighbours = batch
    if neighbours:
        return model(idx, *neighbours, targets=targets)[1]
    return model(idx, targets=targets)[1]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def _resume_state(run: Path, config: TrainConfig, db: Database) -> dict[str, Any] | None:
    """The checkpoint to continue from (config.resume), checked against config and db; None for a
    fresh run, which must not overwrite one."""
    exists = checkpoint_path(run).exists()
    if not config.resume:
        if exists:
            raise ValueError(f"{run} already holds a training run: resume it (--resume) or choose "
                             "another --out")
        return None
    if not exists:
        raise ValueError(f"nothing to resume: {checkpoint_path(run)} does not exist")
    state = load_checkpoint(run)
    stored = state.get("train_args") or {}
    changed = [f"{key}: the run has {stored.get(key)!r}, now {getattr(config, key)!r}"
               for key in RESUME_FIXED if stored.get(key) != getattr(config, key)]
    if changed:
        raise ValueError(f"cannot resume {run} with other settings:\n  " + "\n  ".join(changed))
    mismatches = db_mismatches(state["db"], db, MODEL_DB_KEYS + ("n_nbrs", "train_data"))
    if mismatches:
        raise ValueError(f"{db.root} is not the database {run} was trained on:\n  "
                         + "\n  ".join(mismatches))
    if state["kind"] != config.model:
        raise ValueError(f"{run} trains a {state['kind']}, not a {config.model}")
    return state


def _model(config: TrainConfig, db: Database,
           state: dict[str, Any] | None) -> tuple[GPT, list[str]]:
    """(model, names of its frozen parameters): from the checkpoint when resuming, else fresh
    (seeded) or RETRO-fitted from config.init_from; checked against the database."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    if state is not None:
        model = KINDS[state["kind"]](RetroConfig(**state["config"]))
        model.load_state_dict(state["model"])
        frozen = list(state.get("frozen") or [])
    else:
        # what the database decides, unless set explicitly (then it is checked below)
        from_db = {"chunk_size": db.chunk_size, "n_nbrs": db.n_nbrs, "nbr_len": 2 * db.chunk_size,
                   "pad_id": db.eod_id}
        fields = {**from_db, **config.model_args}
        if config.init_from is not None:
            model = _retro_fit(config, db, fields)
        else:
            model_config = RetroConfig.preset(config.preset or "tiny", **fields)
            _check_fits_db(model_config, db)
            model = KINDS[config.model](model_config)
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return model, frozen


def _retro_fit(config: TrainConfig, db: Database, fields: dict[str, Any]) -> Retro:
    """A Retro on the decoder of the GPT run config.init_from (frozen with config.freeze)."""
    gpt = load_checkpoint(config.init_from)
    if gpt["kind"] != "gpt":
        raise ValueError(f"init_from needs a GPT run; {config.init_from} holds a {gpt['kind']}")
    mismatches = db_mismatches(gpt.get("db") or {}, db)
    if mismatches:
        raise ValueError(f"the GPT run {config.init_from} does not fit {db.root}:\n  "
                         + "\n  ".join(mismatches))
    if config.preset is not None:
        raise ValueError("init_from takes the decoder's config from the GPT run: drop the preset")
    model = Retro.from_gpt(gpt, freeze=config.freeze, **fields)
    _check_fits_db(model.config, db)
    return model


def _check_fits_db(config: RetroConfig, db: Database) -> None:
    """Raises ValueError listing each way the model config does not fit the database."""
    vocab = int(db.manifest.components["tokenizer"]["vocab_size"])
    problems = [
        (config.block_size == db.block_size,
         f"block_size: the model has {config.block_size}, the database's samples "
         f"{db.block_size} tokens; pass --block_size={db.block_size} (or build a database with "
         f"--block-size {config.block_size})"),
        (config.chunk_size == db.chunk_size,
         f"chunk_size: the model has {config.chunk_size}, the database {db.chunk_size}"),
        (config.nbr_len == 2 * db.chunk_size,
         f"nbr_len: the model has {config.nbr_len}, the database's neighbours (chunk + "
         f"continuation) {2 * db.chunk_size}"),
        (config.n_nbrs == db.n_nbrs,
         f"n_nbrs: the model has {config.n_nbrs}, the database stores {db.n_nbrs}"),
        (config.vocab_size >= vocab,
         f"vocab_size: the model has {config.vocab_size}, the tokenizer {vocab} tokens"),
        (config.pad_id == db.eod_id,
         f"pad_id: the model has {config.pad_id}, the database's end-of-document token is "
         f"{db.eod_id}"),
    ]
    wrong = [message for ok, message in problems if not ok]
    if wrong:
        raise ValueError(f"the model does not fit the database {db.root}:\n  " + "\n  ".join(wrong))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _NoProgress:
    """tqdm's methods used here, doing nothing (progress=False)."""

    def update(self, n: int) -> None: ...
    def set_postfix(self, **values: str) -> None: ...
    def write(self, line: str) -> None: ...
    def close(self) -> None: ...


def _progress_bar(config: TrainConfig, start: int, stop: int) -> Any:
    if not config.progress:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=stop, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
