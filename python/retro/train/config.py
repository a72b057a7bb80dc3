"""TrainConfig: a training run's settings (flat, nanoGPT style) and typed ``key=value`` overrides.

Every field of :class:`TrainConfig` and of :class:`retro.model.RetroConfig` can be set from the
command line as ``--key=value``; the value is parsed by the field's annotation (int, float, bool,
str, ``X | None`` with "none", tuples as "3,6"), so ``--n_layer=two`` fails with the field's name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retro.errors import RetroError
from retro.model import RetroConfig

MODELS = ("retro", "gpt")
DTYPES = ("auto", "float32", "bfloat16")
PARALLEL = ("auto", "ddp", "fsdp")
# what a copy sample is (copy_curriculum): random tokens ("stream": its unigram, "uniform" ids), or
# "text": a real sample that reads its own continuation
COPY_TOKENS = ("text", "stream", "uniform")
# Settings a resumed run must keep: they decide the model, the data order or the optimisation.
# (batch_size and grad_accum may change with the world size: their product with it may not.)
RESUME_FIXED = ("model", "preset", "model_args", "init_from", "freeze", "cca_start_ratio",
                "copy_fraction", "copy_tokens", "copy_shift", "copy_shift_share",
                "copy_distractors", "seed", "learning_rate", "min_lr_ratio", "warmup_iters",
                "weight_decay", "beta1", "beta2", "grad_clip")


@dataclass
class TrainConfig:
    """A training run (``retro train``); ``retro.train.train(config)`` runs it."""

    db: str  # the retrieval database directory (retro db build)
    out: str  # the run directory: ckpt.safetensors, log.jsonl
    model: str = "retro"  # "retro" or "gpt" (the same decoder without retrieval)
    preset: str | None = None  # RetroConfig preset; None: "tiny", or the init_from run's config
    model_args: dict[str, Any] = field(default_factory=dict)  # RetroConfig fields overridden
    # RETRO-fit (its decoder, fresh CCA and encoder): a GPT run, or a Hugging Face GPT-2 directory
    init_from: str | None = None
    freeze: bool = False  # with init_from: train only CCA and the encoder (DeepMind §4.2)
    # with init_from: CCA's output starts at this share of the GPT's residual stream's RMS, a fresh
    # model's (retro.model.retro_fit); 0: cca_output_scale as model_args give it
    cca_start_ratio: float = 0.25
    # share of the training samples replaced by copy samples (retro.train.copy_curriculum), a
    # curriculum that teaches CCA to read; RETRO only, 0: off
    copy_fraction: float = 0.0
    # copy samples: "text" (a real sample with its own continuation among its neighbours), or
    # random tokens from "stream" (its unigram) or "uniform" ids
    copy_tokens: str = "stream"
    copy_distractors: bool = True  # False: every neighbour slot of a copy sample is the right one
    # text copy samples: each own-text neighbour starts a random 0 .. copy_shift tokens into its
    # chunk, so that copying means finding the text by content (0: aligned, at a fixed offset)
    copy_shift: int = 0
    # with copy_shift: the share of chunks shifted (by 1 .. copy_shift), the others aligned;
    # 1: every chunk by 0 .. copy_shift
    copy_shift_share: float = 1.0
    resume: bool = False  # continue the run in `out` from its checkpoint
    # optimisation: AdamW, linear warmup then cosine decay to min_lr_ratio * learning_rate
    max_iters: int = 2000  # optimizer steps
    batch_size: int = 8  # samples per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimizer step (global batch: x batch_size x ranks)
    learning_rate: float = 6e-4  # the paper's for 'small'
    min_lr_ratio: float = 0.1  # cosine floor, as a share of learning_rate
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # end of the cosine; None: max_iters
    weight_decay: float = 0.1  # on 2-D weights only (matrices and embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0: off
    # evaluation, logging, checkpoints
    eval_interval: int = 200  # steps between validation losses (and at the end)
    eval_batches: int = 20  # validation batches of a step's global batch (batch_size x ranks x
    # grad_accum samples), spread evenly over the valid split
    log_interval: int = 10  # steps between log.jsonl lines (and at the end)
    checkpoint_interval: int = 500  # steps between checkpoints (and at the end)
    # beside log.jsonl (off by default; each needs its package): TensorBoard in RUN/tensorboard,
    # Weights & Biases (nanoGPT's flags; a wandb_project alone turns it on too)
    tensorboard: bool = False
    wandb_log: bool = False
    wandb_project: str | None = None  # None: "retro"
    wandb_run_name: str | None = None  # None: the run directory's name
    stop_after: int | None = None  # end this invocation after this step, checkpointed (resumable)
    # execution
    seed: int = 1337  # model init and data order
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # autocast: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16"
    compile: bool = False  # torch.compile the model (nanoGPT's compile; worth it on a GPU)
    num_workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch CPU threads; None: leave torch's setting
    progress: bool = True  # tqdm bar with loss, tokens/s and ETA
    parallel: str = "auto"  # under torchrun: "ddp" ("auto") or "fsdp" (FSDP2, per block)

    def __post_init__(self) -> None:
        self.db, self.out = str(self.db), str(self.out)
        if self.init_from is not None:
            self.init_from = str(self.init_from)
        _check(self.model in MODELS, f"model must be one of {MODELS}, not {self.model!r}")
        _check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, not {self.dtype!r}")
        _check(self.parallel in PARALLEL,
               f"parallel must be one of {PARALLEL}, not {self.parallel!r}")
        positive = ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                    "log_interval", "checkpoint_interval")
        for name in positive:
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("warmup_iters", "num_workers", "weight_decay", "grad_clip", "learning_rate",
                     "cca_start_ratio"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, not {getattr(self, name)}")
        _check(0.0 <= self.copy_fraction <= 1.0,
               f"copy_fraction must be in [0, 1], not {self.copy_fraction}")
        _check(self.copy_fraction == 0 or self.model == "retro",
               "copy_fraction is a curriculum for RETRO: it needs model='retro'")
        _check(self.copy_tokens in COPY_TOKENS,
               f"copy_tokens must be one of {COPY_TOKENS}, not {self.copy_tokens!r}")
        _check(self.copy_shift == 0 or (self.copy_shift > 0 and self.copy_tokens == "text"),
               f"copy_shift must be >= 0, and > 0 only with copy_tokens='text', not "
               f"{self.copy_shift} with {self.copy_tokens!r}")
        _check(0.0 <= self.copy_shift_share <= 1.0,
               f"copy_shift_share must be in [0, 1], not {self.copy_shift_share}")
        _check(0.0 <= self.min_lr_ratio <= 1.0,
               f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")
        _check(self.freeze is False or self.init_from is not None,
               "freeze needs init_from (the GPT whose decoder is frozen)")
        _check(self.init_from is None or self.model == "retro",
               "init_from RETRO-fits a GPT: it needs model='retro'")
        fields = {f.name for f in dataclasses.fields(RetroConfig)}
        unknown = sorted(set(self.model_args) - fields)
        _check(not unknown, "unknown model setting(s) " + ", ".join(
            f"{key!r}{_suggest(key, fields)}" for key in unknown))
        hints = typing.get_type_hints(RetroConfig)
        self.model_args = {key: coerce(key, value, hints[key])
                           for key, value in self.model_args.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored in a checkpoint's ``train_args``."""
        return dataclasses.asdict(self)


def changed_settings(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """The RESUME_FIXED settings in which config differs from a run's stored train_args, one line
    each ("key: the run has X, now Y"); a key the run predates counts as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    before = {key: _as_json(stored.get(key, defaults.get(key))) for key in RESUME_FIXED}
    return [f"{key}: the run has {before[key]!r}, now {getattr(config, key)!r}"
            for key in RESUME_FIXED if before[key] != _as_json(getattr(config, key))]


def _as_json(value: Any) -> Any:
    """value as a JSON round trip gives it back (tuples as lists), for comparing stored values."""
    return json.loads(json.dumps(value))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RetroError(message)


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def coerce(name: str, value: Any, hint: Any) -> Any:
    """value as the annotated type hint; a str is parsed ("3,6" for tuples, "none" for None).

    Raises ValueError naming the field when the value does not fit.
    """
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    if type(None) in options and (value is None or str(value).lower() == "none"):
        return None
    for option in (o for o in options if o is not type(None)):
        try:
            return _as(option, value)
        except (TypeError, ValueError):
            continue
    expected = " or ".join(_type_name(o) for o in options)
    raise RetroError(f"{name} must be {expected}, got {value!r}")


def _as(kind: Any, value: Any) -> Any:
    """value as kind (bool, int, float, str, tuple[int, ...]); raises ValueError/TypeError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ValueError(value)
    if kind in (int, float):
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise TypeError(value)
        return kind(value)
    if kind is str:
        if not isinstance(value, (str, Path)):
            raise TypeError(value)
        return str(value)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        parts = value.strip("()[] ").split(",") if isinstance(value, str) else list(value)
        return tuple(_as(item, part.strip() if isinstance(part, str) else part)
                     for part in parts if part != "")
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        return value
    raise TypeError(value)


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "none"
    if typing.get_origin(kind) is tuple:
        return "a comma-separated list of ints"
    name = getattr(kind, "__name__", str(kind))
    return ("an " if name[0] in "aeiou" else "a ") + name


def settable_fields() -> dict[str, tuple[str, Any]]:
    """{name: ("train" | "model", type hint)} of every field a ``--key=value`` override may set."""
    train_hints = typing.get_type_hints(TrainConfig)
    model_hints = typing.get_type_hints(RetroConfig)
    dedicated = {"db", "out", "model", "preset", "model_args", "init_from", "freeze", "resume"}
    fields = {f.name: ("model", model_hints[f.name]) for f in dataclasses.fields(RetroConfig)}
    fields.update({f.name: ("train", train_hints[f.name]) for f in dataclasses.fields(TrainConfig)
                   if f.name not in dedicated})
    return fields


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """config with ``{key: value}`` overrides of TrainConfig settings and RetroConfig fields
    (values parsed as in :func:`coerce`); unknown keys raise ValueError with a suggestion."""
    fields = settable_fields()
    train_values: dict[str, Any] = {}
    model_values = dict(config.model_args)
    for key, value in overrides.items():
        if key not in fields:
            raise RetroError(f"unknown setting {key!r}{_suggest(key, fields)}")
        group, hint = fields[key]
        (train_values if group == "train" else model_values)[key] = coerce(key, value, hint)
    return dataclasses.replace(config, **train_values, model_args=model_values)

