"""retro.train.flops against torch's FLOP counter on the models themselves: the weight matmuls
exactly (aten mm/addmm of a forward pass), and the RETRO attention products exactly on the *_ref path
(aten bmm), whose CCA is dense over all T queries."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from retro.train.flops import forward_flops, training_flops_per_token
from retro.model import GPT, Retro, RetroConfig

_SPEC = importlib.util.spec_from_file_location(
    "bench_train", Path(__file__).resolve().parents[1] / "bench" / "train.py")
bench_train = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_train"] = bench_train  # dataclasses look their module up
_SPEC.loader.exec_module(bench_train)

CONFIG = dict(vocab_size=512, block_size=256, n_layer=4, n_head=4, n_embd=64, chunk_size=32,
              n_nbrs=3, nbr_len=48, cca_layers=(2, 4), pad_id=0)


def counted(model: torch.nn.Module, config: RetroConfig, retrieval: bool) -> dict[str, int]:
    """aten op -> FLOPs of one forward pass over one seeded sequence of block_size tokens."""
    batch = bench_train.synthetic_batch(config, 1, torch.device("cpu"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if retrieval:
            model(batch.idx, batch.nbr_tokens, batch.nbr_lens, targets=batch.targets)
        else:
            model(batch.idx, targets=batch.targets)
    return {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("enc_n_embd, enc_previous_token", [(None, False), (32, False),
                                                              (None, True), (32, True)])
def test_weight_matmuls_match_the_flop_counter(enc_n_embd, enc_previous_token):
    config = RetroConfig(**CONFIG, enc_n_embd=enc_n_embd, enc_previous_token=enc_previous_token)
    for cls, retrieval in ((GPT, False), (Retro, True)):
        flops = forward_flops(config, retrieval)
        ops = counted(cls(config), config, retrieval)
        matmuls = sum(n for part, n in flops.items() if not part.endswith("attention"))
        assert ops.get("mm", 0) + ops.get("addmm", 0) == matmuls, cls.__name__


def test_retro_attention_matches_the_reference_path():
    config = RetroConfig(**CONFIG)
    with bench_train.reference_ops():
        ops = counted(Retro(config), config, retrieval=True)
    flops = forward_flops(config, retrieval=True)
    m, k, r = config.chunk_size, config.n_nbrs, config.nbr_len
    dense_cca = len(config.retro_layers) * 4 * config.n_embd * (m - 1) * k * r  # tokens 0 .. m-2
    # the decoder's SDPA on the CPU is not counted by FlopCounterMode: bmm is RETRO's alone
    assert ops["bmm"] == flops["cca_attention"] + dense_cca + flops["encoder_attention"]


def test_retro_small_costs_about_1_6_gpt_small():
    config = RetroConfig.preset("small")
    gpt = training_flops_per_token(config, retrieval=False)
    # 6 N + 6 n_layer C T of nanoGPT's 124M model: the 39% MFU at 455k tokens/s
    assert abs(gpt / 0.8547e9 - 1) < 1e-3
    assert 1.5 < training_flops_per_token(config, retrieval=True) / gpt < 1.7  # observed 1.585
