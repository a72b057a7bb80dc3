"""``retro db build`` under torchrun on 2 gloo ranks: the files are byte-identical to the
one-process reference database (tokenized, encoded into the index, embedded and searched by range),
also with the index as 2 shards that each rank adds to and searches alone; blocks written before a
rank died are kept by the rerun."""

from __future__ import annotations

import json

from support import torchrun
from test_db_support import SHARDS, CONFIG, corpus_dir, data_files, reference_db, sharded_db

from retro.cli import main
from retro.db.index_build import ENCODED_FILES
from retro.db.stages import EMBEDDINGS_FILE, FAIL_AT, neighbour_files

RANKS = 2
RUN_TIMEOUT_S = 300  # a rank stuck in a collective fails the test instead of stalling the suite


def build_args(out, base) -> list[str]:
    """retro db build's flags for test_db_support's CONFIG and corpus."""
    return ["db", "build", "--corpus", str(corpus_dir(base)), "--out", str(out),
            "--index", CONFIG.index, "--nprobe", str(CONFIG.nprobe),
            "--block-size", str(CONFIG.block_size), "--valid-fraction", str(CONFIG.valid_fraction),
            "--seed", str(CONFIG.seed), "--block", str(CONFIG.block), "--no-progress"]


def assert_same_database(out, reference) -> None:
    """Every file byte for byte, and the manifest's checksums and counts."""
    assert data_files(out) == data_files(reference)
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert ours["files"] == theirs["files"] and ours["counts"] == theirs["counts"]
    assert ours["components"] == theirs["components"]


def test_two_ranks_build_the_one_process_database(tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    reference = reference_db(base)
    out = tmp_path / "db"
    status, output = torchrun(build_args(out, base), RANKS, RUN_TIMEOUT_S)
    assert status == 0, output[-6000:]
    assert_same_database(out, reference)
    # the blocked stages ran on both ranks: each wrote blocks and removed its records at the end
    assert not list(out.rglob("*.done-*.json")) and not list(out.rglob("*.partial"))


def test_blocks_of_a_dead_rank_are_kept_by_the_rerun(tmp_path, tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    reference = reference_db(base)
    out = tmp_path / "db"
    # rank 0 dies once it stored chunk block 0 (its range is blocks 0-1 of 3; rank 1's is 2)
    status, output = torchrun(build_args(out, base), RANKS, RUN_TIMEOUT_S,
                              env={FAIL_AT: "embed:0"})
    assert status != 0 and "injected failure at 'embed:0'" in output, output[-6000:]
    done = json.loads((out / f"{EMBEDDINGS_FILE}.done-0.json").read_text())["blocks"]
    assert done == [[0, 1]]
    assert not (out / EMBEDDINGS_FILE).exists()
    # one process finishes the build; the failure point still set proves it skips block 0
    monkeypatch.setenv(FAIL_AT, "embed:0")
    assert main(build_args(out, base)) == 0
    assert_same_database(out, reference)


def test_two_ranks_with_a_shard_each_build_the_one_process_sharded_database(tmp_path,
                                                                           tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    out = tmp_path / "db"
    status, output = torchrun([*build_args(out, base), "--index-shards", str(SHARDS)], RANKS,
                              RUN_TIMEOUT_S)
    assert status == 0, output[-6000:]
    assert_same_database(out, sharded_db(base))
    # searched as shards by the two ranks together, the neighbours are the one index file's
    for split in ("train", "valid"):
        for path in neighbour_files(split).values():
            assert (out / path).read_bytes() == (reference_db(base) / path).read_bytes()


def test_ranks_killed_in_the_sharded_stages_are_resumed(tmp_path, tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    out = tmp_path / "db"
    args = [*build_args(out, base), "--index-shards", str(SHARDS)]
    fail_at = "index:1,neighbours.train:0"
    # rank 1 dies once it stored index encoding block 1 of 2 (rank 0's range is block 0)
    status, output = torchrun(args, RANKS, RUN_TIMEOUT_S, env={FAIL_AT: fail_at})
    assert status != 0 and "injected failure at 'index:1'" in output, output[-6000:]
    done = out / (ENCODED_FILES["lists"] + ".done-1.json")
    assert json.loads(done.read_text())["blocks"] == [[1, 2]]
    # the rerun skips that block; then rank 0 dies once it stored neighbour block 0, which both
    # ranks searched together (each its own shard)
    status, output = torchrun(args, RANKS, RUN_TIMEOUT_S, env={FAIL_AT: fail_at})
    assert status != 0 and "injected failure at 'neighbours.train:0'" in output, output[-6000:]
    assert "'index:1'" not in output
    ids = out / neighbour_files("train")["ids"]
    assert json.loads((ids.parent / f"{ids.name}.done-0.json").read_text())["blocks"] == [[0, 1]]
    # one process finishes, searching both shards itself, past both stored blocks
    monkeypatch.setenv(FAIL_AT, fail_at)
    assert main(args) == 0
    assert_same_database(out, sharded_db(base))
