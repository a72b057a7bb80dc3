"""The command line's error contract: retro's own errors (RetroError and its kinds) end with one
``retro: error:`` line and status 2, and so does a command run without torch installed; anything
else is a bug and keeps its traceback."""

import subprocess
import sys

import pytest

import retro
import retro.cli
import retro.index.cli
from retro.data import CorpusError
from retro.db import DatabaseError
from retro.errors import RetroError


def failing_with(error):
    def run(args):
        raise error
    return run


@pytest.mark.parametrize("error", [RetroError("bad --shards"), CorpusError("bad corpus"),
                                   DatabaseError("bad database")])
def test_retro_errors_end_with_one_line(monkeypatch, capsys, error):
    monkeypatch.setattr(retro.index.cli, "run_shard", failing_with(error))
    assert retro.cli.main(["index", "shard", "in.ivfpq", "out", "--shards", "2"]) == 2
    assert capsys.readouterr().err == f"retro: error: {error}\n"


@pytest.mark.parametrize("error", [KeyError("nlist"), IndexError("list index out of range"),
                                   ValueError("operands could not be broadcast"),
                                   FileNotFoundError("index.lists.npy")])
def test_other_errors_keep_their_traceback(monkeypatch, error):
    monkeypatch.setattr(retro.index.cli, "run_shard", failing_with(error))
    with pytest.raises(type(error)):
        retro.cli.main(["index", "shard", "in.ivfpq", "out", "--shards", "2"])


def test_the_error_kinds_are_retro_errors_and_value_errors():
    from retro.train.checkpoint import CheckpointError

    from retro.errors import IndexFileError

    for kind in (CorpusError, DatabaseError, CheckpointError, IndexFileError):
        assert issubclass(kind, RetroError) and issubclass(kind, ValueError)


def test_a_foreign_index_file_ends_with_one_line(tmp_path, capsys):
    from retro.errors import IndexFileError

    foreign = tmp_path / "in.ivfpq"
    foreign.write_bytes(b"PK\x03\x04 this is a zip file, not an index" * 8)
    with pytest.raises(IndexFileError, match="not a retro index file"):
        retro.IvfPqIndex.load(foreign)
    assert retro.cli.main(["index", "shard", str(foreign), str(tmp_path / "out"),
                           "--shards", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retro: error: ") and "not a retro index file" in err
    assert err.count("\n") == 1


# retro's command line where torch is not installed: every import of it fails as a missing module's
WITHOUT_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
from retro.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["train", "--db", "db", "--out", "run"],
                                     ["eval", "run"], ["generate", "run", "--prompt", "The"]])
def test_a_command_without_torch_says_how_to_install_it(command):
    """One line, status 2, no traceback (the command fails on its import of torch, before it
    looks at its arguments)."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *command], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"retro: error: retro {command[0]} needs torch (No module named "
                             "'torch'): pip install 'retro-lm[torch]'\n")
