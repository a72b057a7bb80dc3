"""The ``retro`` command line: one subcommand group per module (``retro db ...`` in retro/db/cli.py).

Each group module exposes ``add_parser(subparsers)``, which registers its parser and sets
``func(args) -> int`` on the parsed arguments. Input retro refuses (a corpus, a directory, a
setting: a :class:`retro.errors.RetroError`) ends with one ``retro: error: ...`` line and exit
status 2, and so does a command that needs torch where torch is not installed (the line says how
to install it); any other exception is a bug or an environment problem and keeps its traceback.

The group modules import torch (and the embedder) inside their commands only: ``retro --version``
and every ``--help`` need neither (tests/test_cli_help.py). Every option's help shows its default
and, where a metavar hides them, its choices.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from retro.errors import RetroError

DISTRIBUTION = "retro-lm"  # the name on PyPI; "retro" there is another project

# a help that already gives its default: "default: ...", "(default when resuming: ...)", %(default)s
SPOKEN_DEFAULT = re.compile(r"default[^:()'\n]*:|%\(default\)")

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
    parser.add_argument("--version", action="version", version=version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_GROUPS:
        importlib.import_module(module).add_parser(subparsers)
    show_defaults(parser)
    return parser


def version() -> str:
    """``retro-lm 0.1.0 (commit 0123456789ab)``: the distribution, its version, the commit built."""
    from retro import __version__

    try:
        from retro._build_info import GIT_COMMIT
    except ImportError:  # built without CMake writing it (never in a wheel)
        GIT_COMMIT = ""
    return f"{DISTRIBUTION} {__version__}" + (f" (commit {GIT_COMMIT})" if GIT_COMMIT else "")


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Adds "(default: ...)" to every option whose help does not already speak of its default,
    and "(choices: ...)" where a metavar hides them, in parser and all its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                show_defaults(subparser)
            continue
        if action.help == argparse.SUPPRESS or isinstance(
            action, (argparse._HelpAction, argparse._VersionAction)
        ):
            continue
        notes = []
        if action.choices is not None and action.metavar is not None:
            notes.append("choices: " + ", ".join(map(str, action.choices)))
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        if shown and not SPOKEN_DEFAULT.search(action.help or ""):
            value = action.default
            if isinstance(value, (list, tuple)):
                value = " ".join(map(str, value))
            notes.append(f"default: {value}")
        if notes:
            note = "; ".join(notes).replace("%", "%%")
            action.help = f"{action.help} ({note})" if action.help else note


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetroError as error:
        print(f"retro: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if not is_torch_missing(error):
            raise
        print(f"retro: error: retro {args.command} needs torch ({error}): "
              f"pip install '{DISTRIBUTION}[torch]'", file=sys.stderr)
        return 2


def is_torch_missing(error: ModuleNotFoundError) -> bool:
    """True if error is torch (or one of its modules) not being installed; the commands import it
    on first use (retro._lazy, imports inside the commands), so it is missed only once they run."""
    return (error.name or "").partition(".")[0] == "torch"


if __name__ == "__main__":
    sys.exit(main())
