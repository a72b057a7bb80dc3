"""``retro ckpt convert RUN --to canonical|dcp``: between a run's canonical checkpoint
(ckpt.safetensors) and its DCP checkpoint, or from a legacy ckpt.pt to ckpt.safetensors."""

from __future__ import annotations

import argparse

FORMATS = ("canonical", "dcp")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro ckpt`` and its subcommand ``convert``."""
    ckpt = subparsers.add_parser("ckpt", help="convert training checkpoints (needs torch)")
    commands = ckpt.add_subparsers(dest="ckpt_command", required=True, metavar="SUBCOMMAND")
    convert = commands.add_parser(
        "convert", help="RUN/ckpt.safetensors <-> RUN/dcp/step-N (torch.distributed.checkpoint)",
        description="Convert a run's latest DCP checkpoint (written under torchrun) to the "
                    "canonical RUN/ckpt.safetensors, or that to a DCP checkpoint; either resumes "
                    "on any world size. --to canonical on a run with only a legacy ckpt.pt "
                    "rewrites it as ckpt.safetensors.")
    convert.add_argument("run", help="the run directory")
    convert.add_argument("--to", choices=FORMATS, required=True, help="the format to write")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="read a legacy ckpt.pt with the full unpickler, which runs any code "
                              "it holds: only for a file you made yourself")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from retro.train.distributed_checkpoint import canonical_to_dcp, to_canonical

    path = (to_canonical(args.run, args.trust_pickle) if args.to == "canonical"
            else canonical_to_dcp(args.run))
    print(f"wrote {path}")
    return 0
