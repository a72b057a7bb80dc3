"""retro.eval and ``retro eval``: longest common runs, bits per byte by hand, per-chunk losses,
the leakage filter, and RETRO with and without retrieval against GPT on the tiny runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_run_support import tiny_runs

from retro.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from retro.cli import main
from retro.data.tokenizer import load_tokenizer
from retro.eval import chunk_overlaps, evaluate, filtered_bpb, longest_common_run
from retro.eval.bytes import bits_per_byte, group_bytes
from retro.db.streams import TokenStream
from retro.eval.losses import chunk_losses, loss_by_position, oracle_neighbours, sample_neighbours, samples
from retro.train.run_db import open_run_db


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_runs(tmp_path_factory.getbasetemp())


def brute_force_run(a: list[int], b: list[int]) -> int:
    return max((n for i in range(len(a)) for j in range(len(b)) for n in range(1, len(a) - i + 1)
                if a[i:i + n] == b[j:j + n]), default=0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12),
       st.lists(st.integers(0, 3), min_size=1, max_size=16))
def test_longest_common_run_matches_brute_force(a, b):
    assert longest_common_run(np.array(a), np.array(b)) == brute_force_run(a, b)


def test_overlaps_count_real_neighbour_tokens_only():
    chunks = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    nbrs = np.array([[[9, 5, 6, 7, 8, 0], [5, 6, 0, 0, 0, 0]],
                     [[1, 2, 3, 4, 0, 0], [2, 3, 0, 0, 0, 0]]])
    lens = np.array([[4, 2], [2, 6]])  # chunk 0's first neighbour is cut after 5, 6, 7
    np.testing.assert_array_equal(chunk_overlaps(chunks, nbrs, lens), [3, 2])
    np.testing.assert_array_equal(chunk_overlaps(chunks, nbrs, np.zeros((2, 2))), [0, 0])


def test_bits_per_byte_by_hand():
    tokenizer = load_tokenizer("gpt2")
    hello = tokenizer.encode_batch(["héllo wörld"])[0]  # 13 UTF-8 bytes
    eod = tokenizer.eod_id
    groups = [hello, np.concatenate([hello, [eod], hello]), np.array([eod])]
    np.testing.assert_array_equal(group_bytes(tokenizer, groups), [13, 27, 1])
    # 10 tokens at ln(4) nats each over 5 bytes: 10 * 2 bits / 5 bytes
    assert bits_per_byte(10 * math.log(4), 5) == pytest.approx(4.0)


def test_chunk_losses_sum_to_the_models_loss(runs):
    model, state = load_model(runs[1])
    db = open_run_db(model, state)
    tokens = samples(db, "valid", 2)
    nbr_tokens, nbr_lens = sample_neighbours(db, "valid", 2, db.n_nbrs)
    nats = chunk_losses(model, tokens, (nbr_tokens, nbr_lens), batch_size=1)
    assert nats.shape == (2, 256 // 64 + 1) and (nats > 0).all()
    with torch.no_grad():
        x, y = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:])
        _, loss = model(x, torch.from_numpy(nbr_tokens), torch.from_numpy(nbr_lens), targets=y)
    assert nats.sum() / y.numel() == pytest.approx(float(loss), rel=1e-5)
    # group 0 holds targets 1..63, groups 1-3 64 targets each, group 4 the last target alone
    per_token = nats / np.array([63, 64, 64, 64, 1])
    assert np.all(np.abs(np.log(per_token[:, :4]) - np.log(float(loss))) < 0.2)


def test_neighbour_sources(runs):
    """real: the stored ids' tokens and stored lengths; shuffled: the same set moved to other
    chunks; oracle: each chunk's own text and continuation from the stream; none: None."""
    model, state = load_model(runs[1])
    db = open_run_db(model, state)
    tokens = samples(db, "valid", 3)
    real = sample_neighbours(db, "valid", 3, db.n_nbrs)
    ids, lengths = db.split("valid").neighbours()
    per_sample = db.block_size // db.chunk_size
    np.testing.assert_array_equal(real[1].reshape(-1, db.n_nbrs), lengths[:3 * per_sample])
    np.testing.assert_array_equal(real[0].reshape(-1, db.n_nbrs, 2 * db.chunk_size),
                                  db.chunks.neighbour_tokens(ids[:3 * per_sample]))
    shuffled = sample_neighbours(db, "valid", 3, db.n_nbrs, "shuffled")
    assert sorted(map(bytes, shuffled[0].reshape(-1, 2 * db.chunk_size))) == \
        sorted(map(bytes, real[0].reshape(-1, 2 * db.chunk_size)))
    assert not np.array_equal(shuffled[0], real[0])
    oracle_tokens, oracle_lens = sample_neighbours(db, "valid", 3, db.n_nbrs, "oracle")
    assert oracle_tokens.shape == (3, per_sample, 1, 2 * db.chunk_size)
    m = db.chunk_size
    eod, whole = db.tokenizer.eod_id, 0
    for j in range(3):
        for u in range(per_sample - 1):  # the chunk and the next one, as the sample holds them
            span = tokens[j, u * m:(u + 2) * m]
            if (span != eod).all():  # one document: nothing cut
                whole += 1
                np.testing.assert_array_equal(oracle_tokens[j, u, 0], span)
                assert oracle_lens[j, u, 0] == 2 * m
            else:  # cut at its document's end, eod after
                n = oracle_lens[j, u, 0]
                np.testing.assert_array_equal(oracle_tokens[j, u, 0, :n], span[:n])
                assert span[n] == eod and (oracle_tokens[j, u, 0, n:] == eod).all()
    assert whole > 0
    assert sample_neighbours(db, "valid", 3, db.n_nbrs, "none") is None
    with pytest.raises(ValueError, match="neighbours must be one of"):
        sample_neighbours(db, "valid", 3, db.n_nbrs, "psychic")


def test_oracle_is_cut_at_the_end_of_its_document_and_of_the_stream():
    def oracle(tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        eods = [i for i, t in enumerate(tokens) if t == 99]
        stream = TokenStream(np.array(tokens), np.array([0, *[i + 1 for i in eods]]),
                             np.arange(len(eods)), block_size=4, chunk_size=2)
        return oracle_neighbours(stream, 2, eod_id=99)  # samples of 4 tokens, chunks of 2

    tokens, lens = oracle(list(range(1, 10)))  # one document, no eod: cut by the stream's end
    assert lens.ravel().tolist() == [4, 4, 4, 3]
    assert tokens[0, 1, 0].tolist() == [3, 4, 5, 6] and tokens[1, 1, 0].tolist() == [7, 8, 9, 99]
    tokens, lens = oracle([1, 2, 3, 99, 5, 6, 7, 8, 9])  # chunk 1 ends its document
    assert lens.ravel().tolist() == [3, 1, 4, 3]
    assert tokens[0, 0, 0].tolist() == [1, 2, 3, 99] and tokens[0, 1, 0].tolist() == [3, 99, 99, 99]


def test_loss_by_position_averages_the_targets_that_read_neighbours():
    m, t = 4, 12
    nats = np.tile(np.arange(1, t + 1, dtype=np.float64), (2, 1))  # target at sample position q: q
    # offsets 0..3 over targets q = 4..12: offset 0 -> q 4, 8, 12; offset 1 -> 5, 9; ...
    np.testing.assert_allclose(loss_by_position(nats, m), [8.0, 7.0, 8.0, 9.0])


def test_filtered_bpb_by_hand():
    overlaps = np.array([[0.0, 0.3, 1.0]])  # chunks 1, 2, 3 of one sample
    nats = {"a": np.array([[1.0, 2.0, 4.0, 8.0, 16.0]]) * math.log(2)}  # bits per group
    n_bytes = np.array([[1, 2, 2, 4, 1]])
    result = filtered_bpb(overlaps, nats, n_bytes, alphas=(0.125, 0.5, 1.0))
    assert result["chunks"] == [1, 2, 3]
    assert result["bpb"]["a"] == pytest.approx([2 / 2, 6 / 4, 14 / 8])
    assert result["chunk0"]["bpb"]["a"] == pytest.approx(1.0)


def test_evaluate_retro_retro_off_and_gpt(runs):
    db_dir, retro_run, gpt_run = runs
    result = evaluate(retro_run, gpt_run=gpt_run, batch_size=2,
                      neighbours=("real", "shuffled", "oracle"))
    assert list(result["models"]) == ["retro", "retro_shuffled", "retro_oracle", "retro_no_retrieval", "gpt"]
    assert result["samples"] == 3 and result["tokens"] == 768 and result["bytes"] > 768
    for s in result["models"].values():
        assert all(math.isfinite(s[key]) and s[key] > 0 for key in ("loss", "perplexity", "bpb"))
        # untrained: about uniform over the padded vocabulary (observed loss 10.81-10.83)
        assert abs(s["loss"] - math.log(50304)) < 0.2
        assert s["perplexity"] == pytest.approx(math.exp(s["loss"]))
        assert s["bpb"] == pytest.approx(s["loss"] * result["tokens"] / math.log(2) / result["bytes"])
    # neighbours change the output (the untrained CCA is not zero)
    assert result["models"]["retro"]["loss"] != result["models"]["retro_no_retrieval"]["loss"]
    assert {name: s["neighbours"] for name, s in result["models"].items()} == {
        "retro": "real", "retro_shuffled": "shuffled", "retro_oracle": "oracle",
        "retro_no_retrieval": "none", "gpt": "none"}
    gains = result["retrieval_gain"]["retro"]
    assert set(gains) == {"real", "shuffled", "oracle"}
    for source, gain in gains.items():
        loss = result["models"][{"real": "retro"}.get(source, f"retro_{source}")]["loss"]
        assert gain["nats"] == pytest.approx(result["models"]["retro_no_retrieval"]["loss"] - loss)
        assert len(gain["per_position"]) == 64 and all(map(math.isfinite, gain["per_position"]))
    leakage = result["leakage"]
    assert leakage["chunks"][-1] == 3 * 3 and leakage["chunk0"]["chunks"] == 3
    assert all(math.isfinite(v) for values in leakage["bpb"].values() for v in values)


def test_cli_json_and_plot(runs, tmp_path, capsys):
    _, retro_run, gpt_run = runs
    plot = tmp_path / "leak.png"
    assert main(["eval", str(retro_run), "--gpt", str(gpt_run), "--json", "--plot", str(plot),
                 "--max-samples", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 2 and set(result["models"]["gpt"]) == {"loss", "perplexity", "bpb", "neighbours"}
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 5000
    assert main(["eval", str(retro_run), "--max-samples", "1", "--plot", str(plot),
                 "--neighbours", "real", "oracle"]) == 0
    out = capsys.readouterr().out
    assert "| retro_no_retrieval |" in out and "| chunk 0 (no neighbours) | 1 |" in out
    assert "| retro | oracle |" in out and "Retrieval gain" in out


def test_mismatched_database_is_refused(runs, tmp_path, capsys):
    _, retro_run, _ = runs
    state = load_checkpoint(retro_run)
    state["db"] = {**state["db"], "block_size": 512}
    save_checkpoint(tmp_path / "run", state)
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is not the database of this run" in err and "block_size: the run has 512" in err


def test_cli_text_quality(runs, tmp_path, capsys):
    """Sampled continuations for retro, retro without retrieval and gpt, measured."""
    _, retro_run, gpt_run = runs
    assert main(["eval", str(retro_run), "--gpt", str(gpt_run), "--json", "--max-samples", "1",
                 "--plot", str(tmp_path / "leak.png"), "--text-quality", "3", "--new-tokens", "12"]) == 0
    scores = json.loads(capsys.readouterr().out)["text_quality"]
    assert set(scores) == {"retro", "retro_no_retrieval", "gpt"}
    for s in scores.values():
        assert s["continuations"] == 3 and 0 <= s["repetition_rate"] <= 1 and 0 <= s["self_bleu"] <= 1
        assert math.isfinite(s["zipf_coefficient"])
