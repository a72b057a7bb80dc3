"""The copy curriculum (retro.train.copy_curriculum): which samples it replaces, what a copy
sample holds, and that training with it runs and resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_db_support import reference_db

from retro.train import TrainConfig
from retro.train.checkpoint import CheckpointError
from retro.train.copy_curriculum import CopyCurriculum, copy_sample
from retro.train.data import SampleDataset

K = 2


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> SampleDataset:
    return SampleDataset(reference_db(tmp_path_factory.getbasetemp()), "train", True)


def test_a_copy_sample_is_predictable_from_its_one_right_neighbour():
    rng = np.random.default_rng(3)
    pool = np.array([0, 0, 7, 0, 3, 5, 0, 11, 13, 0, 2], dtype=np.uint16)  # eod 0
    m, T = 5, 15
    for _ in range(20):
        idx, targets, nbr_tokens, nbr_lens = copy_sample(rng, pool, 0, T, m, K)
        assert idx.shape == targets.shape == (T,) and nbr_tokens.shape == (T // m, K, 2 * m)
        assert (nbr_lens == 2 * m).all() and not (nbr_tokens == 0).any() and not (idx == 0).any()
        assert (targets[:m - 1] == -1).all() and (targets[m - 1:] > 0).all()
        assert (idx[1:] == targets[:-1])[m - 1:].all()
        for u in range(T // m):
            # the target of position p (chunk u's last token onwards) is the neighbour's token
            # at p + 1 - u*m of the slot that holds chunk u then chunk u + 1
            slots = [s for s in range(K)
                     if (nbr_tokens[u, s, :m] == idx[u * m:(u + 1) * m]).all()]
            assert slots
            stop = min(T, (u + 2) * m - 1)
            positions = np.arange(max(m - 1, u * m), stop)
            assert any((nbr_tokens[u, s][positions + 1 - u * m] == targets[positions]).all()
                       for s in slots)


def test_without_distractors_every_slot_holds_the_right_neighbour():
    rng = np.random.default_rng(5)
    pool = np.arange(1, 50, dtype=np.int64)
    m, T = 4, 12
    idx, _, nbr_tokens, _ = copy_sample(rng, pool, 0, T, m, K, distractors=False)
    for u in range(T // m):
        for slot in range(K):
            assert (nbr_tokens[u, slot, :m] == idx[u * m:(u + 1) * m]).all()


def test_uniform_copy_tokens_cover_the_ids_not_the_streams_distribution(samples):
    stream = CopyCurriculum(samples, 1.0, seed=2, k=K)
    uniform = CopyCurriculum(samples, 1.0, seed=2, k=K, tokens="uniform")
    tokens = np.asarray(samples.stream.tokens)
    assert len(uniform.pool) == tokens.max() + 1 and (np.diff(uniform.pool) == 1).all()
    assert np.array_equal(stream.pool, tokens)  # the default draws from the stream itself
    idx = np.concatenate([uniform[j][0] for j in range(20)])
    assert len(np.unique(idx)) > len(np.unique(tokens)) * 0.5  # spread over the vocabulary
    with pytest.raises(ValueError, match="copy tokens must be one of"):
        CopyCurriculum(samples, 1.0, seed=2, k=K, tokens="zipf")
    with pytest.raises(ValueError, match="copy_tokens must be one of"):
        TrainConfig(db="db", out="run", copy_fraction=0.5, copy_tokens="zipf")


def test_the_curriculum_replaces_a_seeded_share_of_samples(samples):
    m = samples.stream.chunk_size
    none = CopyCurriculum(samples, 0.0, seed=1, k=K)
    every = CopyCurriculum(samples, 1.0, seed=1, k=K)
    some = CopyCurriculum(samples, 0.5, seed=1, k=K)
    replaced = 0
    for j in range(len(samples)):
        real = samples[j]
        for a, b in zip(none[j], real):
            np.testing.assert_array_equal(a, b)
        copy = every[j]
        assert (copy[1][:m - 1] == -1).all() and not any(
            np.array_equal(a, b) for a, b in zip(copy[:2], real[:2]))
        for a, b in zip(every[j], copy):  # (seed, j) alone decide
            np.testing.assert_array_equal(a, b)
        replaced += not np.array_equal(some[j][0], real[0])
    assert 0.2 < replaced / len(samples) < 0.8
    with pytest.raises(ValueError, match="fraction"):
        CopyCurriculum(samples, 1.5, seed=1, k=K)


def test_training_with_the_curriculum(tmp_path, samples):
    from retro.train import train

    config = TrainConfig(db=str(samples.db_dir), out=str(tmp_path / "run"), copy_fraction=0.5,
                         max_iters=2, batch_size=2, eval_batches=1, eval_interval=2,
                         checkpoint_interval=2, progress=False, threads=1,
                         model_args=dict(n_layer=2, n_embd=32, n_head=2, cca_layers=(2,),
                                         block_size=samples.stream.block_size))
    from retro.train.checkpoint import load_checkpoint

    train(config)
    assert load_checkpoint(tmp_path / "run")["step"] == 2
    # the curriculum decides the data: a run resumes only with its own fraction
    longer = dataclasses.replace(config, max_iters=3, resume=True)
    with pytest.raises(CheckpointError, match="copy_fraction: the run has 0.5, now 0.25"):
        train(dataclasses.replace(longer, copy_fraction=0.25))
    train(longer)  # its model_args (cca_layers a tuple, stored as a list) compare equal
    assert load_checkpoint(tmp_path / "run")["step"] == 3
    with pytest.raises(ValueError, match="copy_fraction"):
        TrainConfig(db="db", out="run", model="gpt", copy_fraction=0.5)


def test_a_text_copy_sample_reads_its_own_continuation(samples):
    """copy_tokens="text": the real sample, with its own chunk and continuation (cut at its
    document's end, as the chunk store cuts a neighbour) in one slot of each chunk and its
    retrieved neighbours in the others."""
    text = CopyCurriculum(samples, 1.0, seed=4, k=K, tokens="text")
    m, eod = samples.stream.chunk_size, samples.eod_id
    for j in range(min(len(samples), 12)):
        idx, targets, nbr_tokens, nbr_lens = text[j]
        real = samples[j]
        np.testing.assert_array_equal(idx, real[0])
        np.testing.assert_array_equal(targets, real[1])
        sample = np.asarray(samples.stream.sample(j), dtype=np.int64)  # (T + 1,)
        for u in range(len(nbr_lens)):
            chunk = sample[u * m:(u + 1) * m]
            own_len = int(np.argmax(chunk == eod)) if (chunk == eod).any() else m
            own = [s for s in range(K) if nbr_lens[u, s] >= own_len
                   and (nbr_tokens[u, s, :own_len] == chunk[:own_len]).all()
                   and (nbr_tokens[u, s, nbr_lens[u, s]:] == eod).all()]
            assert own, f"sample {j} chunk {u}: no slot holds its own text"
            others = [s for s in range(K) if s not in own]
            for s in others:  # the retrieved neighbours, untouched
                np.testing.assert_array_equal(nbr_tokens[u, s], real[2][u, s])
            if own_len == m and (u + 2) * m <= len(sample):  # its document goes on: copyable
                s = own[0]
                nxt = sample[(u + 1) * m:(u + 2) * m]
                n = int(nbr_lens[u, s]) - m
                assert n == (int(np.argmax(nxt == eod)) if (nxt == eod).any() else m)
                np.testing.assert_array_equal(nbr_tokens[u, s, m:m + n], nxt[:n])


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_shifted_text_copy_samples_hold_their_own_text_at_another_offset(samples, share):
    """copy_shift: chunk u's own-text neighbour is the 2m tokens from u * m + s on, s in
    0 .. shift drawn per chunk, cut at the first eod (TokenStream.own_neighbours' shifts); with
    copy_shift_share 0.5 about half the chunks stay aligned (s = 0)."""
    shift = 5
    text = CopyCurriculum(samples, 1.0, seed=4, k=K, tokens="text", shift=shift,
                          shift_share=share)
    stream, m, eod = samples.stream, samples.stream.chunk_size, samples.eod_id
    drawn: set[int] = set()
    aligned = chunks = 0
    for j in range(min(len(samples), 12)):
        _, _, nbr_tokens, nbr_lens = text[j]
        n_chunks = len(nbr_lens)
        span = np.full((n_chunks + 2) * m, eod, dtype=np.int64)
        tail = np.asarray(stream.tokens[j * stream.block_size:][:len(span)])
        span[:len(tail)] = tail
        for u in range(n_chunks):
            found = set()
            for s in range(shift + 1):
                window = span[u * m + s:u * m + s + 2 * m]
                cut = int(np.argmax(window == eod)) if (window == eod).any() else 2 * m
                expected = np.where(np.arange(2 * m) < cut, window, eod)
                found |= {s for slot in range(K) if nbr_lens[u, slot] == cut
                          and (nbr_tokens[u, slot] == expected).all()}
            assert found, f"sample {j} chunk {u}: no slot holds its own text at offset 0..{shift}"
            drawn |= found
            aligned += found == {0}
            chunks += 1
    assert drawn == set(range(shift + 1))  # every offset occurs
    if share < 1.0:
        assert 0.25 <= aligned / chunks <= 0.75, (aligned, chunks)


def test_own_neighbours_shifted_by_zero_are_the_aligned_ones_and_bad_shifts_are_refused(samples):
    stream, eod = samples.stream, samples.eod_id
    n_chunks = stream.chunks_per_sample
    for j in range(min(len(samples), 5)):
        aligned = stream.own_neighbours(j, eod)
        zero = stream.own_neighbours(j, eod, np.zeros(n_chunks, dtype=np.int64))
        for a, b in zip(aligned, zero):
            np.testing.assert_array_equal(a, b)
    for bad in (np.full(n_chunks, -1), np.full(n_chunks, stream.chunk_size + 1),
                np.zeros(n_chunks + 1, dtype=np.int64), np.full(n_chunks, 1.5)):
        with pytest.raises(ValueError, match="shifts must be"):
            stream.own_neighbours(0, eod, bad)
    with pytest.raises(ValueError, match="copy shift"):
        CopyCurriculum(samples, 0.5, seed=4, k=K, tokens="stream", shift=3)
    with pytest.raises(ValueError, match="copy_shift"):
        TrainConfig(db="db", out="run", copy_fraction=0.5, copy_shift=3)  # copy_tokens "stream"
    with pytest.raises(ValueError, match="shift's share"):
        CopyCurriculum(samples, 0.5, seed=4, k=K, tokens="text", shift=3, shift_share=1.5)
    with pytest.raises(ValueError, match="copy_shift_share"):
        TrainConfig(db="db", out="run", copy_fraction=0.5, copy_tokens="text", copy_shift=3,
                    copy_shift_share=-0.1)
