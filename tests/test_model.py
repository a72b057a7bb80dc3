"""The RETRO model: causality by perturbation, GPT equivalence, incremental decoding, torch.compile,
the presets' parameter counts, RETRO-fit and input checks, on seeded tiny float64 models."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from retro.errors import RetroError
from retro.model import GPT, PAPER_PARAMS, Retro, RetroConfig, count_parameters, from_gpt
from retro.model.retro_fit import START_RATIO, calibrate_cca_output_scale, cca_residual_ratio

M, K, R = 4, 2, 6  # chunk_size, neighbours per chunk, tokens per neighbour (R != 2 * M on purpose)

# learned positions; rotary positions with the CCA gate and an encoder narrower than the decoder
VARIANTS = {
    "learned": {},
    "rope-gate-narrow-encoder": dict(positions="rope", cca_gate=True, enc_n_embd=8, enc_n_head=2),
    "no-cross-positions": dict(cross_positions="none"),
    "cca-positions-only": dict(cross_positions="cca"),
    "scaled-cca": dict(cca_output_scale=3.0),
    "previous-token-one-local-head": dict(enc_previous_token=True, cross_local_heads=1),
}


def make_config(**overrides) -> RetroConfig:
    """4 layers of width 16, CCA in layers 2 and 4 (so layer 1 runs before the encoder)."""
    fields = dict(vocab_size=97, block_size=64, n_layer=4, n_head=2, n_embd=16, chunk_size=M,
                  n_nbrs=K, nbr_len=R, cca_layers=(2, 4))
    return RetroConfig(**{**fields, **overrides})


def make_model(cls: type[GPT] = Retro, seed: int = 0, open_gates: bool = True,
               dtype: torch.dtype = torch.float64, **overrides) -> GPT:
    """A model in eval mode; open_gates sets CCA gates to 0.5 so that neighbours matter."""
    torch.manual_seed(seed)
    model = cls(make_config(**overrides)).to(dtype).eval()
    if open_gates:
        with torch.no_grad():
            for block in model.transformer.h:
                if block.gate is not None:
                    block.gate.fill_(0.5)
    return model


def make_batch(config: RetroConfig, b: int = 2, t: int = 24, seed: int = 1):
    """idx (b, t), nbr_tokens (b, t // M, K, R), nbr_lens (b, t // M, K) with short neighbours,
    a missing one and a chunk with none."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (b, t), generator=g)
    n_chunks = t // config.chunk_size
    nbr_tokens = torch.randint(0, config.vocab_size, (b, n_chunks, K, R), generator=g)
    nbr_lens = torch.randint(1, R + 1, (b, n_chunks, K), generator=g, dtype=torch.int32)
    nbr_lens[0, 1] = 0  # chunk 1 of sequence 0: nothing retrieved
    nbr_lens[1, 2, 1] = 0  # chunk 2 of sequence 1: one neighbour only
    return idx, nbr_tokens, nbr_lens


def logits(model: GPT, *args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*args, **kwargs)[0]


def split_calls(model: GPT, idx, nbr_tokens, nbr_lens, sizes: list[int],
                no_nbrs: frozenset[int] = frozenset()) -> torch.Tensor:
    """Logits of idx fed through a decode cache in calls of `sizes` tokens, each with the neighbours
    of the chunks it completes (none for the chunks in no_nbrs)."""
    cache, pos, out = model.new_cache(idx.shape[0]), 0, []
    for t in sizes:
        chunks = range(pos // M, (pos + t) // M)  # the chunks this call completes
        nbrs = {}
        if isinstance(model, Retro) and chunks and no_nbrs.isdisjoint(chunks):
            nbrs = dict(nbr_tokens=nbr_tokens[:, chunks.start:chunks.stop],
                        nbr_lens=nbr_lens[:, chunks.start:chunks.stop])
        assert no_nbrs.isdisjoint(chunks) or set(chunks) <= no_nbrs
        out.append(logits(model, idx[:, pos:pos + t], cache=cache, **nbrs))
        pos += t
    assert cache.pos == idx.shape[1]
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------------------------------
# Causality


@pytest.mark.parametrize("variant", VARIANTS)
def test_neighbours_of_chunk_u_reach_only_tokens_from_its_last(variant):
    model = make_model(**VARIANTS[variant])
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    base = logits(model, idx, nbr_tokens, nbr_lens)
    for u in range(nbr_tokens.shape[1]):
        tokens, lens = nbr_tokens.clone(), nbr_lens.clone()
        tokens[:, u] = (tokens[:, u] + 1) % model.config.vocab_size
        lens[:, u] = R  # also turns missing neighbours into real ones
        out = logits(model, idx, tokens, lens)
        first = (u + 1) * M - 1  # the last token of chunk u is the first to see RET(C_u)
        assert torch.equal(out[:, :first], base[:, :first])
        # every token attending to chunk u changes (observed max |diff| per token >= 7e-4)
        assert ((out[:, first:first + M] - base[:, first:first + M]).abs().amax(-1) > 1e-9).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_j_reaches_only_positions_from_j(variant):
    model = make_model(**VARIANTS[variant])
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    base = logits(model, idx, nbr_tokens, nbr_lens)
    for j in (0, 2, 3, 4, 11, 22, 23):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1) % model.config.vocab_size
        out = logits(model, changed, nbr_tokens, nbr_lens)
        assert torch.equal(out[:, :j], base[:, :j])
        # observed max |diff| at position j >= 0.18
        assert ((out[:, j] - base[:, j]).abs().amax(-1) > 1e-9).all()


# ------------------------------------------------------------------------------------------------
# Retro without retrieval is its GPT


def gpt_and_retro(**overrides) -> tuple[GPT, Retro]:
    """A GPT and a Retro (different seeds) whose decoders hold the GPT's weights."""
    gpt = make_model(GPT, seed=1, **overrides)
    retro = make_model(Retro, seed=2, open_gates=False, **overrides)
    missing, unexpected = retro.load_state_dict(gpt.state_dict(), strict=False)
    assert not unexpected and all(".cross." in k or ".ln_cross." in k or k.startswith("encoder.")
                                  or k.endswith(".gate") for k in missing)
    return gpt, retro


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_neighbours_retro_is_exactly_gpt(variant):
    gpt, retro = gpt_and_retro(**VARIANTS[variant])
    idx, nbr_tokens, nbr_lens = make_batch(gpt.config, t=22)
    assert torch.equal(logits(retro, idx), logits(gpt, idx))
    # no real neighbour anywhere: CCA adds nothing, not even its output bias
    assert torch.equal(logits(retro, idx, nbr_tokens, torch.zeros_like(nbr_lens)), logits(gpt, idx))
    _, loss_gpt = gpt(idx, targets=idx)
    _, loss_retro = retro(idx, targets=idx)
    assert torch.equal(loss_gpt, loss_retro)


def test_closed_gate_is_exactly_gpt_and_open_gate_is_not():
    gpt, retro = gpt_and_retro(cca_gate=True)  # gates start at 0
    idx, nbr_tokens, nbr_lens = make_batch(gpt.config)
    assert torch.equal(logits(retro, idx, nbr_tokens, nbr_lens), logits(gpt, idx))
    with torch.no_grad():
        retro.transformer.h[3].gate.fill_(0.1)
    assert not torch.allclose(logits(retro, idx, nbr_tokens, nbr_lens), logits(gpt, idx))


def test_cca_output_scale_multiplies_each_cca_output():
    scaled, plain = make_model(cca_output_scale=3.0), make_model()
    with torch.no_grad():  # the same as scaling CCA's output projection, bias included
        for block in plain.transformer.h:
            if block.cross is not None:
                block.cross.c_proj.weight.mul_(3.0)
                block.cross.c_proj.bias.mul_(3.0)
    idx, nbr_tokens, nbr_lens = make_batch(plain.config)
    torch.testing.assert_close(logits(scaled, idx, nbr_tokens, nbr_lens),
                               logits(plain, idx, nbr_tokens, nbr_lens), rtol=0, atol=1e-12)
    assert not torch.allclose(logits(scaled, idx, nbr_tokens, nbr_lens),
                              logits(make_model(), idx, nbr_tokens, nbr_lens))
    assert torch.equal(logits(scaled, idx), logits(make_model(), idx))  # no neighbours: no CCA
    with pytest.raises(RetroError, match="cca_output_scale must be a finite number > 0"):
        make_config(cca_output_scale=0.0)


@pytest.mark.parametrize("cca_layers", [(3,), (2, 4)])
def test_calibration_starts_cca_at_the_asked_share_of_the_residual_stream(cca_layers):
    model = make_model(cca_layers=cca_layers)
    batch = make_batch(model.config)
    before = cca_residual_ratio(model, *batch)
    scale = calibrate_cca_output_scale(model, *batch, start_ratio=0.25)
    assert model.config.cca_output_scale == scale
    after = cca_residual_ratio(model, *batch)
    if len(cca_layers) == 1:
        assert math.isclose(scale, 0.25 / before, rel_tol=1e-12)
        assert math.isclose(after, 0.25, rel_tol=1e-9)
    else:  # a later layer's residual holds the earlier layers' scaled outputs
        assert abs(math.log(after / 0.25)) < abs(math.log(before / 0.25))
    # in effect, and what a model built with the scale computes
    built = make_model(cca_layers=cca_layers, cca_output_scale=scale)
    torch.testing.assert_close(logits(model, *batch), logits(built, *batch), rtol=0, atol=0)


def test_calibration_refuses_what_it_cannot_measure():
    model = make_model()
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    with pytest.raises(ValueError, match="no real neighbour in the batch"):
        calibrate_cca_output_scale(model, idx, nbr_tokens, torch.zeros_like(nbr_lens), 0.25)
    for ratio in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="start_ratio must be a finite number > 0"):
            calibrate_cca_output_scale(model, idx, nbr_tokens, nbr_lens, ratio)
    with pytest.raises(ValueError, match="no CCA layers"):
        cca_residual_ratio(make_model(GPT), idx, nbr_tokens, nbr_lens)
    assert model.config.cca_output_scale == 1.0  # nothing was set


def test_the_default_start_ratio_is_a_fresh_models():
    """START_RATIO (TrainConfig.cca_start_ratio's default) is what a freshly initialised model of
    the demo's shape has on random tokens: 0.30 at layer 2 and 0.20 at layer 4, mean 0.25."""
    torch.manual_seed(0)
    config = RetroConfig(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256,
                         cca_layers=(2, 4), enc_n_embd=128, enc_n_head=2, chunk_size=64,
                         nbr_len=128, pad_id=0)
    model = Retro(config).eval()
    idx = torch.randint(0, 8192, (4, 256))
    nbr_tokens = torch.randint(0, 8192, (4, 4, 2, 128))
    ratio = cca_residual_ratio(model, idx, nbr_tokens, torch.full((4, 4, 2), 128))
    assert abs(ratio - START_RATIO) < 0.05, ratio


# ------------------------------------------------------------------------------------------------
# Incremental decoding


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_matches_the_full_forward(variant):
    model = make_model(**VARIANTS[variant])
    idx, nbr_tokens, nbr_lens = make_batch(model.config, t=23)  # 5 complete chunks and 3 tokens
    full = logits(model, idx, nbr_tokens, nbr_lens)
    # a prompt ending mid-chunk, single steps, and calls completing 0, 1 and 2 chunks
    cached = split_calls(model, idx, nbr_tokens, nbr_lens, [6, 1, 1, 5, 1, 1, 1, 7])
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-12)  # observed max |diff| 1.7e-16
    steps = split_calls(model, idx, nbr_tokens, nbr_lens, [1] * 23)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


def test_cached_chunks_without_neighbours_match_zero_lengths():
    model = make_model()
    idx, nbr_tokens, nbr_lens = make_batch(model.config, t=23)
    lens = nbr_lens.clone()
    lens[:, 0] = lens[:, 3] = 0
    full = logits(model, idx, nbr_tokens, lens)
    sizes = [3, 1, 5, 1, 1, 2, 6, 4]  # calls 2 and 7 complete chunks 0 and 3
    cached = split_calls(model, idx, nbr_tokens, nbr_lens, sizes, no_nbrs=frozenset({0, 3}))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-12)


def test_last_only_and_gpt_cache():
    gpt = make_model(GPT)
    idx, _, _ = make_batch(gpt.config, t=13)
    full = logits(gpt, idx)
    cached = split_calls(gpt, idx, None, None, [5, 1, 7])
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(logits(gpt, idx, last_only=True), full[:, -1:], rtol=0, atol=1e-12)


def test_encoder_runs_once_per_chunk():
    model = make_model()
    idx, nbr_tokens, nbr_lens = make_batch(model.config, t=16)
    calls = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    split_calls(model, idx, nbr_tokens, nbr_lens, [1] * 16)
    assert calls == [1, 1, 1, 1]  # one chunk at a time, when its last token arrives


# ------------------------------------------------------------------------------------------------
# Training and torch.compile


def test_backward_reaches_every_parameter():
    model = make_model(**VARIANTS["rope-gate-narrow-encoder"], dropout=0.1).train()
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1
    _, loss = model(idx, nbr_tokens, nbr_lens, targets=targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [GPT, Retro])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(cls):
    results = []
    for recompute in (False, True):
        model = make_model(cls, dropout=0.1, activation_checkpointing=recompute,
                           **VARIANTS["rope-gate-narrow-encoder"]).train()
        idx, nbr_tokens, nbr_lens = make_batch(model.config)
        neighbours = (nbr_tokens, nbr_lens) if cls is Retro else ()
        torch.manual_seed(3)  # the same dropout masks; recomputation replays them
        _, loss = model(idx, *neighbours, targets=idx)
        loss.backward()
        results.append((loss, {name: p.grad for name, p in model.named_parameters()}))
    (loss, grads), (loss_r, grads_r) = results
    torch.testing.assert_close(loss_r, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_r[name], grad, rtol=1e-12, atol=1e-14, msg=name)


def _compile_available() -> str | None:
    """None if torch.compile works on this build, else why not."""
    if not torch._dynamo.is_dynamo_supported():
        return "dynamo does not support this Python"
    try:
        torch.compile(lambda x: x * 2 + 1, fullgraph=True)(torch.ones(3))
    except Exception as error:  # e.g. no C++ compiler for inductor
        return f"torch.compile is unavailable here: {error!r:.200}"
    finally:
        torch._dynamo.reset()
    return None


# inductor itself calls the deprecated torch.jit.script_method (torch 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_fullgraph_matches_eager():
    reason = _compile_available()
    if reason:
        pytest.skip(reason)
    model = make_model(dtype=torch.float32, **VARIANTS["rope-gate-narrow-encoder"])
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    compiled = torch.compile(model, fullgraph=True)
    try:
        logits_c, loss_c = compiled(idx, nbr_tokens, nbr_lens, targets=idx)
        loss_c.backward()
        grads_c = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        logits_e, loss_e = model(idx, nbr_tokens, nbr_lens, targets=idx)
        loss_e.backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(logits_c, logits_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for grad_c, p in zip(grads_c, model.parameters()):
        torch.testing.assert_close(grad_c, p.grad, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Configuration, presets, RETRO-fit


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_preset_parameter_counts_match_the_paper(name):
    retro, gpt = count_parameters(name)
    paper_retro, paper_gpt = PAPER_PARAMS[name]
    # observed ratios: RETRO 1.006 1.001 1.023 0.998, GPT 0.994 0.997 1.012 0.996
    assert abs(retro / paper_retro - 1) < 0.03 and abs(gpt / paper_gpt - 1) < 0.03


def test_cca_layer_rule():
    assert RetroConfig.preset("tiny").retro_layers == (3, 6)
    assert RetroConfig.preset("small").retro_layers == (6, 9, 12)
    assert RetroConfig.preset("medium").retro_layers == (9, 12, 15, 18, 21, 24)
    assert RetroConfig.preset("xxl").retro_layers == tuple(range(9, 40, 3))
    assert RetroConfig(cca_layers=[2, 5]).cca_layers == (2, 5)  # a list from JSON becomes a tuple
    model = make_model()
    assert [block.cross is not None for block in model.transformer.h] == [False, True, False, True]


def test_from_gpt_freezes_exactly_the_decoder(tmp_path):
    gpt = make_model(GPT)
    checkpoint = {"model": gpt.state_dict(), "config": dataclasses.asdict(gpt.config)}
    torch.save(checkpoint, tmp_path / "gpt.pt")
    idx, nbr_tokens, nbr_lens = make_batch(gpt.config)
    for source in (gpt, checkpoint, tmp_path / "gpt.pt", str(tmp_path / "gpt.pt")):
        retro = from_gpt(source)
        names = {name for name, _ in retro.named_parameters()}
        new = {name for name in names if name.startswith("encoder.") or ".cross." in name
               or ".ln_cross." in name or name.endswith(".gate")}
        assert new and {name for name, p in retro.named_parameters() if p.requires_grad} == new
        assert torch.equal(logits(retro, idx), logits(gpt, idx))
        _, loss = retro(idx, nbr_tokens, nbr_lens, targets=idx)
        loss.backward()
        assert all((p.grad is not None) == (name in new) for name, p in retro.named_parameters())
    assert all(p.requires_grad for p in from_gpt(gpt, freeze=False).parameters())
    assert from_gpt(gpt, cca_layers=(3,), enc_n_layer=1).config.retro_layers == (3,)
    with pytest.raises(ValueError, match="cannot change the decoder"):
        from_gpt(gpt, n_layer=3)
    with pytest.raises(ValueError, match="needs a GPT"):
        from_gpt(make_model(Retro))


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    good = dict(idx=idx, nbr_tokens=nbr_tokens, nbr_lens=nbr_lens)
    cases = [
        (dict(idx=idx.double()), "idx must be"),
        (dict(idx=idx[0]), "idx must be"),
        (dict(idx=idx[:, :0], nbr_tokens=None, nbr_lens=None), "idx must be"),
        (dict(nbr_tokens=nbr_tokens[:, :-1], nbr_lens=nbr_lens[:, :-1]),
         r"nbr_tokens must be \(B, L, K, R\) = \(2, 6"),
        (dict(nbr_tokens=nbr_tokens[:1]), "nbr_tokens must be"),
        (dict(nbr_tokens=nbr_tokens[0]), "nbr_tokens must be"),
        (dict(nbr_tokens=nbr_tokens.float()), "nbr_tokens must be"),
        (dict(nbr_lens=nbr_lens[..., :1]), "nbr_lens must be"),
        (dict(nbr_lens=nbr_lens.float()), "nbr_lens must be"),
        (dict(nbr_lens=nbr_lens.bool()), "nbr_lens must be"),
        (dict(nbr_tokens=None), "nbr_lens given without nbr_tokens"),
        (dict(targets=idx[:, :-1]), "targets must be"),
        (dict(targets=idx.float()), "targets must be"),
        (dict(targets=idx, last_only=True), "last_only=False"),
        (dict(idx=torch.zeros(2, 65, dtype=torch.long), nbr_tokens=None, nbr_lens=None),
         "longer than block_size"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            model(**{**good, **change})
    long_nbrs = torch.zeros(2, 6, K, 65, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(idx, long_nbrs)


def test_bad_cache_use_and_configs_raise_clear_errors():
    model = make_model()
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    cache = model.new_cache(2, max_len=8)
    with pytest.raises(ValueError, match="the cache holds 2 sequences of up to 8"):
        model(idx[:1, :4], cache=cache)
    model(idx[:, :4], nbr_tokens[:, :1], nbr_lens[:, :1], cache=cache)
    with pytest.raises(ValueError, match=r"keep their shape \(K, R\)"):
        model(idx[:, 4:8], nbr_tokens[:, 1:2, :1], nbr_lens[:, 1:2, :1], cache=cache)
    with pytest.raises(ValueError, match="the cache holds"):
        model(idx[:, 4:9], cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model.new_cache(1, max_len=65)
    bad_configs = [
        (dict(n_embd=10, n_head=3), "multiple of n_head"),
        (dict(cca_layers=(0, 2)), "cca_layers"),
        (dict(cca_layers=(4, 2)), "cca_layers"),
        (dict(cca_layers=(5,)), "cca_layers"),
        (dict(positions="alibi"), "positions"),
        (dict(nbr_len=65), "nbr_len"),
        (dict(enc_n_embd=12, enc_n_head=5), "enc_n_embd"),
        (dict(chunk_size=0), "positive"),
    ]
    for change, match in bad_configs:
        with pytest.raises(ValueError, match=match):
            make_config(**change)
    with pytest.raises(ValueError, match="unknown preset"):
        RetroConfig.preset("huge")


@pytest.mark.parametrize("cls", [GPT, Retro])
def test_loss_only_forward_gives_the_same_loss(cls):
    model = make_model(cls, **VARIANTS["rope-gate-narrow-encoder"]).eval()
    idx, nbr_tokens, nbr_lens = make_batch(model.config)
    neighbours = (nbr_tokens, nbr_lens) if cls is Retro else ()
    logits, loss = model(idx, *neighbours, targets=idx)
    none, loss_only = model(idx, *neighbours, targets=idx, return_logits=False)
    assert logits is not None and none is None
    torch.testing.assert_close(loss_only, loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs targets"):
        model(idx, *neighbours, return_logits=False)


def test_configs_saved_before_cross_positions_load_without_them():
    """A checkpoint's config from before cross_positions existed was trained without them; a new
    config defaults to rotary CCA and encoder cross-attention; RETRO-fit gives the new CCA the
    default whatever the GPT's config says."""
    saved = dataclasses.asdict(make_config())
    del saved["cross_positions"]
    assert RetroConfig.from_saved(saved).cross_positions == "none"
    assert RetroConfig.from_saved({**saved, "cross_positions": "cca"}).cross_positions == "cca"
    assert make_config().cross_positions == "rope"
    gpt = GPT(RetroConfig.from_saved(saved))
    assert from_gpt(gpt).config.cross_positions == "rope"
    assert from_gpt(gpt, cross_positions="none").config.cross_positions == "none"
    with pytest.raises(ValueError, match="cross_positions must be one of"):
        make_config(cross_positions="alibi")
    with pytest.raises(ValueError, match="even head widths"):
        make_config(n_head=16)  # head width 1


def test_cross_positions_change_the_logits_and_none_matches_a_position_free_cca():
    """Rotary cross-attentions give other logits than position-free ones on the same weights;
    without rotary positions (cross_positions="none") the model is the position-free one."""
    idx, nbr_tokens, nbr_lens = make_batch(make_config())
    outs = {}
    for positions in ("rope", "cca", "none"):
        outs[positions] = logits(make_model(cross_positions=positions), idx, nbr_tokens, nbr_lens)
    assert not torch.allclose(outs["rope"], outs["none"])
    assert not torch.allclose(outs["rope"], outs["cca"])
    assert not torch.allclose(outs["cca"], outs["none"])


@pytest.mark.parametrize("locality, offset", [(8.0, 1), (3.0, 0), (8.0, 4)])
def test_rotary_cross_attentions_start_local(locality, offset):
    """With content-free projections, a rotary cross-attention's initial score is cross_locality
    at one relative distance (CCA: cca_locality_offset, the encoder's cross-attention: 0) and
    lower at every other distance; 0 and position-free ones start at zero biases."""
    from retro.ops.rotary import apply_rope

    model = make_model(cross_locality=locality, cca_locality_offset=offset, enc_n_embd=8,
                       enc_n_head=2)
    attentions = {offset: model.transformer.h[1].cross, 0: model.encoder.h[0].cross}
    for offset, attention in attentions.items():
        h = attention.n_head
        q = attention.c_q.bias.view(1, 1, h, -1).expand(1, 12, h, -1)  # (1, N, H, Dh)
        k = attention.c_k.bias.view(1, 1, h, -1).expand(1, 12, h, -1)
        base = attention.rope_base
        q = apply_rope(q, torch.full((12,), 5), base)
        k = apply_rope(k, torch.arange(12), base)
        scores = torch.einsum("bnhd,bnhd->nh", q, k) / q.shape[-1] ** 0.5  # (12 keys, H)
        peak = 5 + offset  # the query sits at 5
        torch.testing.assert_close(scores[peak], torch.full((h,), locality, dtype=scores.dtype))
        assert (scores[torch.arange(12) != peak] < locality - 1e-6).all()
    for config in (dict(cross_locality=0.0), dict(cross_positions="none")):
        model = make_model(**config)
        assert not model.transformer.h[1].cross.c_q.bias.any()
    with pytest.raises(ValueError, match="cross_locality"):
        make_config(cross_locality=float("nan"))
    with pytest.raises(ValueError, match="cca_locality_offset"):
        make_config(cca_locality_offset=-1)


def test_cross_local_heads_start_only_the_first_heads_local():
    """cross_local_heads=1: head 0 of each cross-attention gets the local biases of the default
    (all heads), every other head zero biases (uniform at first); a negative count is refused."""
    every = make_model(enc_n_embd=8, enc_n_head=2)
    one = make_model(cross_local_heads=1, enc_n_embd=8, enc_n_head=2)
    for name in ("transformer.h.1.cross", "encoder.h.0.cross"):
        full, part = every.get_submodule(name), one.get_submodule(name)
        dh = part.c_q.out_features // part.n_head
        assert part.n_head > 1
        for bias in ("c_q", "c_k"):
            b_full, b_part = getattr(full, bias).bias, getattr(part, bias).bias
            torch.testing.assert_close(b_part[:dh], b_full[:dh])
            assert b_full[dh:].any() and not b_part[dh:].any()
    with pytest.raises(ValueError, match="cross_local_heads"):
        make_config(cross_local_heads=-1)


def test_encoder_previous_token_feature_adds_token_j_minus_1_at_j():
    """enc_previous_token: the encoder's input at neighbour token j gains c_previous(embedding of
    token j - 1) (nothing at token 0); with c_previous zeroed the model is the one without it."""
    torch.manual_seed(0)
    with_feature = make_model(enc_previous_token=True, enc_n_embd=8, enc_n_head=2)
    plain = make_model(enc_n_embd=8, enc_n_head=2)
    missing, unexpected = plain.load_state_dict(with_feature.state_dict(), strict=False)
    assert missing == [] and unexpected == ["encoder.c_previous.weight"]
    idx, nbr_tokens, nbr_lens = make_batch(make_config())
    assert not torch.allclose(logits(with_feature, idx, nbr_tokens, nbr_lens),
                              logits(plain, idx, nbr_tokens, nbr_lens))
    with torch.no_grad():
        with_feature.encoder.c_previous.weight.zero_()
    torch.testing.assert_close(logits(with_feature, idx, nbr_tokens, nbr_lens),
                               logits(plain, idx, nbr_tokens, nbr_lens))
    encoder = with_feature.encoder
    dtype = encoder.c_in.weight.dtype
    x = torch.randn(1, 2, 1, 5, with_feature.config.n_embd, dtype=dtype)  # (B, L, K, R, C)
    context = torch.randn(1, 2 * with_feature.config.chunk_size, with_feature.config.n_embd,
                          dtype=dtype)
    seen = []
    encoder.h[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        encoder.c_previous.weight.normal_()
        encoder(x, torch.full((1, 2, 1), 5, dtype=torch.int32), context)
        expected = encoder.c_in(x)
        expected[..., 1:, :] += x[..., :-1, :] @ encoder.c_previous.weight.T
    torch.testing.assert_close(seen[0], expected)
