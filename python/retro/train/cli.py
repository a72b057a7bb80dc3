"""``retro train``: a thin layer over retro.train.train.

Every TrainConfig setting and RetroConfig field is an option ``--key=value`` (nanoGPT's names,
typed by the field: ``--max_iters=200 --n_layer=4 --cca_layers=2,4``). ``--resume`` continues the
run in --out with its stored settings, changed only by the options given. Under
``torchrun --nproc-per-node N -m retro train ...`` the same command trains on N ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from retro.errors import RetroError
from retro.model import PRESETS
from retro.train.config import MODELS, TrainConfig, apply_overrides, settable_fields

PREFIX = "set:"  # dest of the --key=value options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro train`` (its options need no torch; training does: retro.cli says so)."""
    parser = subparsers.add_parser(
        "train", help="train RETRO or the GPT baseline on a database", allow_abbrev=False,
        description="Train RETRO (or the GPT baseline, the same decoder) on a retrieval "
                    "database's samples and their stored neighbours.")
    parser.add_argument("--db", help="the database directory (default when resuming: the run's)")
    parser.add_argument("--model", choices=MODELS, help="default: retro")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: tiny")
    parser.add_argument("--out", required=True, help="the run directory (checkpoint, log.jsonl)")
    parser.add_argument("--init-from", metavar="PATH",
                        help="RETRO-fit: start from the decoder of this GPT run or Hugging Face "
                             "GPT-2 directory (or hub id, online)")
    parser.add_argument("--freeze", action="store_true",
                        help="with --init-from: train only CCA and the encoder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    defaults = TrainConfig(db="", out="")
    groups = {"train": parser.add_argument_group("training settings (--key=value)"),
              "model": parser.add_argument_group("model fields, RetroConfig (--key=value)")}
    for name, (group, hint) in settable_fields().items():
        default = getattr(defaults, name) if group == "train" else "preset"
        groups[group].add_argument(f"--{name}", dest=PREFIX + name, default=argparse.SUPPRESS,
                                   metavar=_metavar(hint), help=f"default: {default}")
    parser.set_defaults(func=run_train)


def _metavar(hint: typing.Any) -> str:
    names = [getattr(option, "__name__", "ints") for option in typing.get_args(hint) or (hint,)]
    return "|".join(name.upper() for name in names).replace("NONETYPE", "NONE")


def run_train(args: argparse.Namespace) -> int:
    from retro.train.checkpoint import CheckpointError
    from retro.train.distributed_checkpoint import latest_checkpoint, read_train_state
    from retro.train.loop import train

    overrides = {key.removeprefix(PREFIX): value for key, value in vars(args).items()
                 if key.startswith(PREFIX)}
    given = {key: value for key, value in
             (("db", args.db), ("model", args.model), ("preset", args.preset),
              ("init_from", args.init_from)) if value is not None}
    if args.freeze:
        given["freeze"] = True
    if args.resume:
        checkpoint = latest_checkpoint(args.out)
        if checkpoint is None:
            raise CheckpointError(f"nothing to resume: {args.out} has no checkpoint")
        stored = TrainConfig(**read_train_state(checkpoint)["train_args"])
        config = dataclasses.replace(stored, **given, out=args.out, resume=True, stop_after=None)
    else:
        if args.db is None:
            raise RetroError("--db is required (the database to train on)")
        config = TrainConfig(**given, out=args.out)
    run = train(apply_overrides(config, overrides))
    print(f"trained: {run}")
    return 0
