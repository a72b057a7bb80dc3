"""retro.generate and ``retro generate``: the KV-cached path equals full forwards, one retrieval per
completed chunk, the window slides by whole chunks past block_size, bad inputs fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run_support import tiny_runs

from retro.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from retro.cli import main
from retro.db import DatabaseError, open_db
from retro.generation import GenerationStats, generate, sample_next
from retro.train.run_db import open_run_db


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_runs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def retro_and_db(runs):
    model, state = load_model(runs[1])
    return model, open_run_db(model, state)


def prompt_of(db, n_tokens: int) -> np.ndarray:
    """The first n_tokens of the valid stream (real text)."""
    return np.asarray(db.split("valid").stream.tokens[:n_tokens], dtype=np.int64)


@pytest.mark.parametrize("kind", ["retro", "gpt"])
def test_cached_generation_equals_full_forwards_past_block_size(runs, kind):
    model, state = load_model(runs[1] if kind == "retro" else runs[2])
    db = open_run_db(model, state)
    prompt = prompt_of(db, 100)  # padded to 128 = 2 chunks; 200 more tokens pass block_size 256
    stats = [GenerationStats(), GenerationStats()]
    cached = list(generate(model, db, prompt, 200, temperature=0, stats=stats[0]))
    full = list(generate(model, db, prompt, 200, temperature=0, stats=stats[1], use_cache=False))
    assert cached == full and len(cached) == 200
    assert stats[0].n_pad == 28 and stats[0].slides == stats[1].slides == 2  # 328 tokens, 256 fit


def test_one_retrieval_per_completed_chunk(retro_and_db, monkeypatch):
    model, db = retro_and_db
    calls = []
    retrieve = db.retrieve
    monkeypatch.setattr(db, "retrieve", lambda tokens, **kw: calls.append(tokens) or
                        retrieve(tokens, **kw))
    encoded = []
    hook = model.encoder.register_forward_hook(lambda mod, args, out: encoded.append(args[0].shape[1]))
    stats = GenerationStats()
    try:
        out = list(generate(model, db, prompt_of(db, 100), 200, temperature=0, stats=stats))
    finally:
        hook.remove()
    tokens = np.concatenate([np.full(28, db.eod_id), prompt_of(db, 100), out])
    # the prompt's 2 chunks at once, then chunks 2, 3, 4 as their last tokens are sampled (the
    # chunk completed by the very last token is never fed, so it is not retrieved)
    assert [len(c) for c in calls] == [2, 1, 1, 1]
    assert [r.first_chunk for r in stats.retrievals] == [0, 2, 3, 4]
    for record in stats.retrievals:
        chunk = record.first_chunk
        np.testing.assert_array_equal(record.queries, tokens[chunk * 64:(chunk + len(record.queries)) * 64]
                                      .reshape(-1, 64))
    # each new chunk encoded once by the call completing it (chunks 0-1, 2, 3, 4); each slide (at
    # tokens 257 and 321) re-encodes the 3 complete chunks of the new window, retrieving nothing
    assert encoded == [2, 1, 1, 3, 1, 3]
    assert stats.generated_chunk_ms > 0 and 0 < stats.retrieval_share < 1


def test_retrieval_off_and_gpt_never_retrieve(runs, retro_and_db, monkeypatch):
    model, db = retro_and_db
    monkeypatch.setattr(db, "retrieve", lambda *a, **k: pytest.fail("retrieved"))
    assert len(list(generate(model, db, prompt_of(db, 10), 70, retrieval=False))) == 70
    gpt, _ = load_model(runs[2])
    assert len(list(generate(gpt, db, prompt_of(db, 10), 70, seed=0))) == 70


def test_sampling_is_seeded_and_stays_in_the_nucleus():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
    draws = {sample_next(logits, 1.0, top_p=0.5, generator=torch.Generator().manual_seed(s))
             for s in range(50)}
    assert draws == {1, 2}  # p(1) = 0.47 < 0.5, so token 2 (0.43) is needed too
    assert {sample_next(logits, 1.0, top_k=1, generator=torch.Generator().manual_seed(s))
            for s in range(10)} == {1}
    assert sample_next(logits, 0) == 1
    a = [sample_next(logits, 1.0, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert a[0] == a[1]


def test_bad_inputs(retro_and_db, runs, tmp_path):
    model, db = retro_and_db
    with pytest.raises(ValueError, match="prompt is empty"):
        next(generate(model, db, [], 5))
    with pytest.raises(ValueError, match="more than the model's block_size"):
        next(generate(model, db, prompt_of(db, 257), 5))
    with pytest.raises(ValueError, match="token ids must be in"):
        next(generate(model, db, [60000], 5))
    with pytest.raises(ValueError, match="temperature"):
        next(generate(model, db, [1, 2], 5, temperature=-1))
    state = load_checkpoint(runs[1])
    state["db"] = {**state["db"], "chunk_size": 32, "embedder": "other-embedder"}
    save_checkpoint(tmp_path / "run", state)
    with pytest.raises(DatabaseError, match="chunk_size: the run has 32.*\n.*embedder"):
        open_run_db(model, load_checkpoint(tmp_path / "run"))


def test_cli(runs, capsys):
    db_dir, retro_run, _ = runs
    text = "Volcano magma eruption lava crater ash. " * 4
    assert main(["generate", str(retro_run), "--prompt", text, "--max-new-tokens", "80",
                 "--seed", "1", "--show-neighbours"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(text) and "--- chunk 0:" in out and "neighbour 1 (chunk" in out
    assert "[80 tokens in" in err and "generated chunks at" in err and "% of the time]" in err
    assert main(["generate", str(retro_run), "--db", str(db_dir), "--prompt", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert main(["generate", str(retro_run), "--prompt", "x " * 300]) == 2
    assert "more than the model's block_size (256)" in capsys.readouterr().err
    assert main(["generate", str(db_dir), "--prompt", "x"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
