"""``retro ckpt convert RUN --to canonical|dcp``: between a run's ckpt.pt and its DCP checkpoint."""

from __future__ import annotations

import argparse

FORMATS = ("canonical", "dcp")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro ckpt`` and its subcommand ``convert``."""
    ckpt = subparsers.add_parser("ckpt", help="convert training checkpoints (needs torch)")
    commands = ckpt.add_subparsers(dest="ckpt_command", required=True, metavar="SUBCOMMAND")
    convert = commands.add_parser(
        "convert", help="RUN/ckpt.pt <-> RUN/dcp/step-N (torch.distributed.checkpoint)",
        description="Convert a run's latest DCP checkpoint (written under torchrun) to the "
                    "canonical RUN/ckpt.pt, or RUN/ckpt.pt to a DCP checkpoint; either resumes on "
                    "any world size.")
    convert.add_argument("run", help="the run directory")
    convert.add_argument("--to", choices=FORMATS, required=True, help="the format to write")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from retro.train.distributed_checkpoint import canonical_to_dcp, dcp_to_canonical

    path = dcp_to_canonical(args.run) if args.to == "canonical" else canonical_to_dcp(args.run)
    print(f"wrote {path}")
    return 0
