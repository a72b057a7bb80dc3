"""The ``retro`` command line: one subcommand group per module (``retro db ...`` in retro/db/cli.py).

Each group module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func(args) -> int`` on the parsed arguments. Input retro refuses (a corpus, a directory, a
setting: a :class:`retro.errors.RetroError`) ends with one ``retro: error: ...`` line and exit
status 2; any other exception is a bug or an environment problem and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from retro.errors import RetroError

COMMAND_GROUPS = (
    "retro.db.cli",
    "retro.index.cli",
    "retro.train.cli",
    "retro.train.ckpt_cli",
    "retro.train.export_cli",
    "retro.eval.cli",
    "retro.generation.cli",
    "retro.demo",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="retro", description="Retrieval-enhanced language models (RETRO)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_GROUPS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetroError as error:
        print(f"retro: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
