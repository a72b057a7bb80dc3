"""``retro --version`` and every command's ``--help`` run without importing torch (the command
modules import it inside their commands), and the help shows defaults and choices."""

import argparse
import importlib.metadata
import re
import subprocess
import sys

import pytest

import retro
from retro.cli import DISTRIBUTION, build_parser, show_defaults, version


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command path of parser: (), ("db",), ("db", "build"), ..."""
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from commands(subparser, (*prefix, name))


ALL_COMMANDS = list(commands(build_parser()))

# One fresh interpreter runs them all (one per command would take ~0.2 s each): for each, the
# modules torch-related that are loaded once its help printed.
PROBE = """
import sys
from retro.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sentence_transformers"))
    print("LOADED", " ".join(argv), "|", ",".join(loaded), file=sys.stderr)
"""


def test_help_and_version_import_no_torch():
    argvs = [["--version"]] + [[*command, "--help"] for command in ALL_COMMANDS]
    result = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("LOADED")]
    assert len(lines) == len(argvs)
    assert all(line.endswith("| ") for line in lines), lines
    assert f"usage: retro db build" in result.stdout


def test_every_command_is_covered():
    assert {("db", "build"), ("eval",), ("generate",), ("train",), ("demo",)} <= set(ALL_COMMANDS)


def test_version_names_the_distribution(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    printed = capsys.readouterr().out.strip()
    assert printed == version()
    assert printed.startswith(f"{DISTRIBUTION} {retro.__version__}")
    assert importlib.metadata.version(DISTRIBUTION) == retro.__version__


def test_help_shows_defaults_and_hidden_choices():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--mode", choices=["a", "b"], default="a", metavar="MODE", help="the mode")
    parser.add_argument("--items", nargs="+", default=["x", "y"], help="items")
    parser.add_argument("--seed", type=int, default=None, help="a seed")
    parser.add_argument("--out", default="dir", help="where (default: the run's)")
    parser.add_argument("--rate", default="5%", help="a share")
    parser.add_argument("--quiet", action="store_true", help="less output")
    show_defaults(parser)
    text = " ".join(parser.format_help().split())
    assert "--n N default: 4" in text
    assert "the mode (choices: a, b; default: a)" in text
    assert "items (default: x y)" in text
    assert "a seed --out" in text  # no default shown for None
    assert "where (default: the run's) --rate" in text  # not said twice
    assert "a share (default: 5%)" in text
    assert "less output" in text and "default: False" not in text


def test_db_build_help_shows_its_defaults():
    db = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    build_help = db.choices["db"]._actions[-1].choices["build"].format_help()
    assert "(default: default)" in " ".join(build_help.split())  # --embedder


def test_no_command_gives_a_default_twice():
    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in set(action.choices.values()):
                    yield from parsers(sub)

    twice = re.compile(r"\(default: ([^)]*)\) \(default: \1\)")
    for parser in parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        assert not twice.search(text), (parser.prog, twice.search(text).group(0))
