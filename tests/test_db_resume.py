"""An interrupted build resumes and gives byte-identical files; damaged files are rebuilt."""

from __future__ import annotations

import json
import shutil

import pytest
from test_db_support import CONFIG, corpus_dir, data_files, reference_db

from retro.db import build_db
from retro.db.stages import FAIL_AT, InjectedFailure

# Each stage after its outputs are written (before the manifest records them), and blocks in the
# middle of the blocked stages (3 blocks of 128 rows each for the chunks and train queries).
FAIL_POINTS = [
    "tokenize", "chunks", "embed:0", "embed:1", "embed", "index", "queries.train:1",
    "queries.valid", "neighbours.train:0", "neighbours.train", "neighbours.valid:0",
]


def build(out, base):
    return build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), progress=False, log=lambda _: None)


@pytest.mark.parametrize("point", FAIL_POINTS)
def test_resume_after_a_failure_gives_identical_files(point, tmp_path, tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    reference = reference_db(base)
    out = tmp_path / "db"
    monkeypatch.setenv(FAIL_AT, point)
    with pytest.raises(InjectedFailure):
        build(out, base)
    monkeypatch.delenv(FAIL_AT)
    build(out, base)
    assert data_files(out) == data_files(reference)
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert ours["files"] == theirs["files"] and ours["counts"] == theirs["counts"]


def test_a_damaged_file_is_rebuilt_and_the_rest_kept(tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    reference = reference_db(base)
    out = tmp_path / "db"
    shutil.copytree(reference, out)
    with open(out / "embeddings.npy", "r+b") as file:  # flip one byte of the first embedding
        file.seek(200)
        byte = file.read(1)
        file.seek(200)
        file.write(bytes([byte[0] ^ 0xFF]))
    (out / "neighbours" / "valid" / "ids.npy").unlink()
    lines = []
    build_db(out, CONFIG, corpus=(str(corpus_dir(base)),), progress=False, log=lines.append)
    assert data_files(out) == data_files(reference)
    # Only the damaged stages ran again: the embeddings' stage wrote the same bytes, so the index
    # and the queries stayed complete.
    assert lines == [
        "tokenize: complete, skipped", "chunks: complete, skipped", "index: complete, skipped",
        "queries.train: complete, skipped", "queries.valid: complete, skipped",
        "neighbours.train: complete, skipped",
    ]
