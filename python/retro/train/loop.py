"""``train(TrainConfig) -> run directory``: the training loop (nanoGPT's, with neighbours).

One optimizer step: grad_accum micro-batches of batch_size samples, each loss scaled by
1 / grad_accum, then gradient clipping and AdamW at the scheduled learning rate. Validation runs
every eval_interval steps on a fixed set of valid samples with their stored neighbours; a
checkpoint is written every checkpoint_interval steps and at the end, holding everything a
resumed run needs to continue with the same losses: RUN/ckpt.safetensors (retro.train.checkpoint)
on one process, a DCP checkpoint under torchrun (retro.train.distributed_checkpoint; the canonical
checkpoint is added at the end), which resumes on any world size with the same global batch. The
temporary files of a save killed midway are removed when the run starts again.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import default_collate

from retro.db import Database, DatabaseError, open_db
from retro.device import resolve_device
from retro.errors import RetroError
from retro.files import remove_stale_temporaries
from retro.model import GPT, Retro, RetroConfig, hf
from retro.model.retro_fit import calibrate_cca_output_scale
from retro.train.checkpoint import (CHECKPOINT, FORMAT_VERSION, KINDS, MODEL_DB_KEYS,
                                    CheckpointError, checkpoint_path, config_dict, db_identity,
                                    db_mismatches, load_checkpoint, save_checkpoint)
from retro.train.config import TrainConfig, changed_settings
from retro.train.copy_curriculum import CopyCurriculum
from retro.train.data import (SampleDataset, TrainingSamples, eval_samples, to_device,
                              train_loader)
from retro.train.distributed import (gradient_sync, join_training, mean_over_ranks, parallel_mode,
                                     rank_batches, rank_device, sum_over_ranks, wrap_model)
from retro.train.distributed_checkpoint import (DCP_DIR, Checkpoint, dcp_to_canonical,
                                                latest_checkpoint, load_canonical, load_dcp,
                                                read_train_state, save_dcp)
from retro.train.log import RunLog, open_trackers
from retro.train.optim import learning_rate, make_optimizer
from retro.world import World, barrier, leave_world

CALIBRATION_SAMPLES = 16  # training samples a RETRO-fit measures the GPT's residual stream on


def train(config: TrainConfig) -> Path:
    """Trains (or, with config.resume, continues) the run config.out; returns its directory.

    Under torchrun every rank calls it (retro.train.distributed): the run joins the process group
    (and leaves it at the end), each rank reads its slice of every global batch, and rank 0 alone
    writes the log, the progress bar and the canonical checkpoint.
    """
    world = join_training(config.device)
    try:
        return _train(config, world)
    finally:
        leave_world(world)


def _train(config: TrainConfig, world: World) -> Path:
    run = Path(config.out)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = rank_device(resolve_device(config.device), world)
    mode = parallel_mode(config.parallel, world)
    db = open_db(config.db)
    if "valid" not in db.splits:
        raise DatabaseError(f"{db.root} has no valid split to validate on (valid_fraction was 0)")
    if world.is_main:
        for directory in (run, *(run / DCP_DIR).glob("step-*")):
            if directory.is_dir():
                remove_stale_temporaries(directory)
    resumed = _resume_state(run, config, db, world)
    state = resumed[1] if resumed is not None else None
    plain, frozen = _model(config, db, state)
    plain.to(device).train()
    model = wrap_model(plain, mode, device)
    # shares model's parameters; compiling a Module gives an OptimizedModule, which torch's
    # annotation of compile calls a plain Callable
    forward = cast(torch.nn.Module, torch.compile(model)) if config.compile else model
    optimizer = make_optimizer(model, config, device)
    step, data_position = 0, 0
    if resumed is not None:
        checkpoint, state = resumed
        if checkpoint.format == "dcp":
            load_dcp(checkpoint, model, optimizer)
        else:
            load_canonical(state, model, optimizer)
        step, data_position = state["step"], state["data_position"]
        _set_rng_state(state["rng"])
    resume_step = step if state is not None else None
    log = RunLog(run, resume_step, open_trackers(run, config, resume_step)) if world.is_main \
        else _NoLog()
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    with_neighbours = config.model == "retro"
    train_samples = SampleDataset(db.root, "train", with_neighbours)
    train_set: TrainingSamples = train_samples
    if config.copy_fraction:
        train_set = CopyCurriculum(train_samples, config.copy_fraction, config.seed,
                                   plain.config.n_nbrs, config.copy_tokens,
                                   config.copy_distractors, config.copy_shift,
                                   config.copy_shift_share)
    valid_set = SampleDataset(db.root, "valid", with_neighbours)
    global_batch = config.batch_size * world.size  # samples per micro-batch over all ranks
    # validation batches of a step's samples: the same set for any split of the global batch
    valid_samples = eval_samples(len(valid_set),
                                 config.eval_batches * global_batch * config.grad_accum)
    batches = iter(train_loader(train_set, config.batch_size, config.seed, data_position,
                                config.num_workers, pin_memory=device.type == "cuda",
                                world=world))
    identity = db_identity(db)
    tokens_per_step = global_batch * config.grad_accum * db.block_size
    stop = min(config.max_iters, config.stop_after or config.max_iters)
    progress = _progress_bar(config, step, stop, world)
    trainable = sum(p.numel() for p in plain.parameters() if p.requires_grad)
    total = sum(p.numel() for p in plain.parameters())
    progress.write(f"{config.model}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
                   f"trained) on {device}{' bf16' if bf16 else ''}"
                   f"{', compiled' if config.compile else ''}"
                   f"{f', {world.size} ranks ({mode})' if mode else ''}; {len(train_set)} train "
                   f"samples of {db.block_size} tokens; steps {step} -> {stop} of "
                   f"{config.max_iters}")
    started = time.perf_counter()
    while step < stop:
        step_started = time.perf_counter()
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(config.grad_accum):
            with gradient_sync(model, micro == config.grad_accum - 1):
                with autocast:
                    loss = _loss(forward, to_device(next(batches), device))
                (loss / config.grad_accum).backward()
            loss_sum += loss.item()
        grad_norm = None
        if config.grad_clip > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = _clip_gradients(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        data_position += global_batch * config.grad_accum
        seconds = time.perf_counter() - step_started
        loss_value = mean_over_ranks(loss_sum / config.grad_accum, world)
        last = step == stop
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_step / seconds:,.0f}")
        if step % config.log_interval == 0 or step == 1 or last:
            log.write({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                       "tokens": step * tokens_per_step, "tokens_per_s": tokens_per_step / seconds,
                       "elapsed_s": time.perf_counter() - started})
        if step % config.eval_interval == 0 or step == config.max_iters:
            val_loss = evaluate(forward, valid_set, valid_samples, config.batch_size, world, device,
                                autocast)
            log.write({"step": step, "val_loss": val_loss})
            progress.write(f"step {step}: train loss {loss_value:.4f}, val loss {val_loss:.4f}")
        if step % config.checkpoint_interval == 0 or last:
            train_state = {
                "format_version": FORMAT_VERSION, "kind": config.model,
                "config": config_dict(plain.config), "step": step,
                "data_position": data_position, "rng": _rng_state(),
                "train_args": config.to_dict(), "db": identity, "frozen": frozen,
                "world_size": world.size,
            }
            if world.distributed:
                save_dcp(run, model, optimizer, train_state)
            else:
                save_checkpoint(run, {**train_state, "model": plain.state_dict(),
                                      "optimizer": optimizer.state_dict()})
    if world.distributed:  # the canonical checkpoint too, for eval, generation, RETRO-fit
        if world.is_main:
            dcp_to_canonical(run)
        barrier(world)
    progress.close()
    log.close()
    return run


def _clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Clips the global gradient norm of params to max_norm; returns the norm before clipping
    (FSDP2's sharded gradients give a DTensor norm, made whole here)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.item()


def evaluate(model: torch.nn.Module, dataset: SampleDataset, samples: np.ndarray,
             batch_size: int, world: World, device: torch.device,
             autocast: contextlib.AbstractContextManager) -> float:
    """Mean loss over samples (all full blocks, so a mean of batch means weighted by batch size),
    the same on every rank: each rank evaluates its slice of every global batch (a rank whose
    slice is empty runs one sample with weight 0, so that FSDP's collectives stay in step) and
    the sums are added over the ranks. Leaves the model in training mode."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)  # loss * samples, samples
    with torch.no_grad():
        for ids in rank_batches(samples.tolist(), batch_size, world):
            weight = len(ids)
            batch = default_collate([dataset[j] for j in (ids or [int(samples[0])])])
            with autocast:
                loss = _loss(model, to_device(batch, device))
            sums += torch.tensor([loss.item() * weight, weight], dtype=torch.float64)
    model.train()
    sums = sum_over_ranks(sums, world)
    return float(sums[0] / sums[1])


def _loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """The mean loss of a GPT or Retro (wrapped or compiled) on batch: idx, targets[, nbr_tokens,
    nbr_lens] (GPT batches have no neighbours)."""
    idx, targets, *neighbours = batch
    if neighbours:
        return model(idx, *neighbours, targets=targets, return_logits=False)[1]
    return model(idx, targets=targets, return_logits=False)[1]


def _resume_state(run: Path, config: TrainConfig, db: Database,
                  world: World) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The checkpoint to continue from (config.resume) and its train state, checked against
    config, the world size and db; None for a fresh run, which must not overwrite one."""
    checkpoint = latest_checkpoint(run)
    if not config.resume:
        if checkpoint is not None:
            raise CheckpointError(f"{run} already holds a training run: resume it (--resume) or "
                                  "choose another --out")
        return None
    if checkpoint is None:
        raise CheckpointError(f"nothing to resume: {run} has no checkpoint ({CHECKPOINT} or "
                              f"{DCP_DIR}/step-*)")
    state = read_train_state(checkpoint)
    stored = state.get("train_args") or {}
    changed = changed_settings(stored, config)
    stored_world = int(state.get("world_size", 1))
    before = stored.get("batch_size", 0) * stored.get("grad_accum", 0) * stored_world
    now = config.batch_size * config.grad_accum * world.size
    if before != now:
        changed.append(
            f"global batch (batch_size x grad_accum x ranks): the run has {before} "
            f"({stored.get('batch_size')} x {stored.get('grad_accum')} x {stored_world}), now "
            f"{now} ({config.batch_size} x {config.grad_accum} x {world.size}); on {world.size} "
            f"rank(s) pass batch_size and grad_accum whose product is {before / world.size:g}")
    if changed:
        raise CheckpointError(f"cannot resume {run} with other settings:\n  "
                              + "\n  ".join(changed))
    mismatches = db_mismatches(state["db"], db, MODEL_DB_KEYS + ("n_nbrs", "train_data"))
    if mismatches:
        raise DatabaseError(f"{db.root} is not the database {run} was trained on:\n  "
                            + "\n  ".join(mismatches))
    if state["kind"] != config.model:
        raise CheckpointError(f"{run} trains a {state['kind']}, not a {config.model}")
    return checkpoint, state


def _model(config: TrainConfig, db: Database,
           state: dict[str, Any] | None) -> tuple[GPT, list[str]]:
    """(model, names of its frozen parameters): the checkpoint's when resuming (its weights are
    loaded by the caller, once the model is wrapped), else fresh (seeded) or RETRO-fitted from
    config.init_from; checked against the database."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    if state is not None:
        model = KINDS[state["kind"]](RetroConfig.from_saved(state["config"]))
        frozen = list(state.get("frozen") or [])
    else:
        # what the database decides, unless set explicitly (then it is checked below)
        from_db = {"chunk_size": db.chunk_size, "n_nbrs": db.n_nbrs, "nbr_len": 2 * db.chunk_size,
                   "pad_id": db.eod_id}
        fields = {**from_db, **config.model_args}
        if config.init_from is not None:
            model = _retro_fit(config, config.init_from, db, fields)
        else:
            model_config = RetroConfig.preset(config.preset or "tiny", **fields)
            _check_fits_db(model_config, db)
            model = KINDS[config.model](model_config)
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return model, frozen


def _retro_fit(config: TrainConfig, init_from: str, db: Database,
               fields: dict[str, Any]) -> Retro:
    """A Retro on the decoder of init_from (config.init_from; frozen with config.freeze): a GPT
    run, or else a Hugging Face GPT-2 (directory or hub id) that reads the database's
    tokenizer."""
    if config.preset is not None:
        raise RetroError("init_from takes the decoder's config from the GPT it names: drop the "
                         "preset")
    gpt: GPT | dict[str, Any]  # a GPT run's checkpoint, or a Hugging Face model
    if checkpoint_path(init_from).exists():
        gpt = load_checkpoint(init_from)
        if gpt["kind"] != "gpt":
            raise CheckpointError(f"init_from needs a GPT run; {init_from} holds a {gpt['kind']}")
        _refuse_mismatches(init_from, db, db_mismatches(gpt.get("db") or {}, db))
    else:
        gpt = _pretrained_gpt(init_from, db)
    model = Retro.from_gpt(gpt, freeze=config.freeze, **fields)
    _check_fits_db(model.config, db)
    if config.cca_start_ratio and "cca_output_scale" not in config.model_args:
        _calibrate_cca(model, db, config.cca_start_ratio)
    return model


def _calibrate_cca(model: Retro, db: Database, start_ratio: float) -> None:
    """Scales the RETRO-fit's CCA outputs to the GPT's residual stream, measured on up to
    CALIBRATION_SAMPLES training samples spread over the train split (retro.model.retro_fit)."""
    samples = SampleDataset(db.root, "train", True)
    picked = np.unique(np.linspace(0, len(samples) - 1, CALIBRATION_SAMPLES).astype(np.int64))
    idx, _, nbr_tokens, nbr_lens = default_collate([samples[int(j)] for j in picked])
    scale = calibrate_cca_output_scale(model, idx, nbr_tokens, nbr_lens, start_ratio)
    print(f"RETRO-fit: CCA outputs x {scale:.4g}, {start_ratio:g} of the GPT's residual stream "
          f"on {len(picked)} training samples")


def _pretrained_gpt(path: str, db: Database) -> GPT:
    """The Hugging Face GPT-2 at path with the database's block size; raises DatabaseError when
    it has fewer positions or reads another tokenizer."""
    directory = hf.resolve(path)
    positions = hf.read_config(directory).block_size
    if positions < db.block_size:
        _refuse_mismatches(path, db, [f"block_size: the model has {positions} positions, the "
                                      f"database's samples {db.block_size} tokens"])
    gpt = GPT.from_pretrained(directory, block_size=db.block_size)
    problem = hf.tokenizer_mismatch(directory, gpt.config, db.tokenizer)
    _refuse_mismatches(path, db, [f"tokenizer: {problem}"] if problem else [])
    return gpt


def _refuse_mismatches(gpt: str, db: Database, mismatches: list[str]) -> None:
    if mismatches:
        raise DatabaseError(f"the GPT {gpt} does not fit {db.root}:\n  "
                            + "\n  ".join(mismatches))


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
        raise DatabaseError(f"the model does not fit the database {db.root}:\n  "
                            + "\n  ".join(wrong))


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
    """tqdm's methods used here, doing nothing (progress=False, and ranks other than 0)."""

    def update(self, n: int) -> None: ...
    def set_postfix(self, **values: str) -> None: ...
    def write(self, line: str) -> None: ...
    def close(self) -> None: ...


class _NoLog:
    """RunLog's methods, doing nothing (ranks other than 0)."""

    def write(self, entry: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _progress_bar(config: TrainConfig, start: int, stop: int, world: World) -> Any:
    if not config.progress or not world.is_main:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=stop, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
