"""RETRO-fit's start: CCA's output scaled to the trained GPT's residual stream.

A fresh model's CCA writes into a residual stream as small as its own initialisation: at the demo's
shape its output's RMS is 0.20-0.31 of the residual stream's where it joins (layers 2 and 4, random
tokens). A trained GPT's residual stream has grown (the demo GPT's, ~100x), so fresh CCA layers
added to it start ~100x smaller relative to it than they would in a fresh model, and Adam, which
moves each weight by about the learning rate per step, needs hundreds of steps to make up the
difference: the RETRO-fit does not read its neighbours (docs/RESULTS.md, section 2c).

RetroConfig.cca_output_scale multiplies every CCA output by a constant. calibrate_cca_output_scale
chooses it on a batch so that CCA starts at START_RATIO of the residual stream, as in a fresh
model; its weights, initialised as a fresh model's, then learn at a fresh model's relative rate.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from retro.model.gpt import Retro
from retro.model.layers import Block, ChunkedCrossAttention

START_RATIO = 0.25  # CCA output RMS / residual RMS that a RETRO-fit starts at (a fresh model's)


def cca_residual_ratio(model: Retro, idx: torch.Tensor, nbr_tokens: torch.Tensor,
                       nbr_lens: torch.Tensor) -> float:
    """RMS of the CCA outputs (times cca_output_scale) over the RMS of the residual stream they are
    added to, averaged over the CCA layers, on one batch: idx (B, T), nbr_tokens (B, L, K, R),
    nbr_lens (B, L, K)."""
    ratios: list[float] = []
    residual: list[torch.Tensor] = []
    hooks = []
    for block in cca_blocks(model):
        assert block.ln_cross is not None and block.cross is not None  # what cca_blocks picks
        hooks.append(block.ln_cross.register_forward_pre_hook(
            lambda module, args: residual.append(_rms(args[0]))))
        hooks.append(block.cross.register_forward_hook(
            lambda module, args, out, scale=block.cross_scale:
                ratios.append(float(scale * _rms(out) / residual[-1]))))
    try:
        with torch.no_grad():
            model(idx, nbr_tokens, nbr_lens, last_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(ratios) / len(ratios)


def calibrate_cca_output_scale(model: Retro, idx: torch.Tensor, nbr_tokens: torch.Tensor,
                               nbr_lens: torch.Tensor, start_ratio: float = START_RATIO) -> float:
    """Sets model's cca_output_scale so that its CCA outputs are start_ratio of the residual stream
    on this batch (shapes as cca_residual_ratio's); returns the scale."""
    unscaled = cca_residual_ratio(model, idx, nbr_tokens, nbr_lens) / model.config.cca_output_scale
    scale = start_ratio / unscaled
    model.config = replace(model.config, cca_output_scale=scale)
    for block in cca_blocks(model):
        block.cross_scale = scale
    return scale


def cca_blocks(model: Retro) -> list[Block]:
    """The decoder blocks with CCA (the encoder's blocks cross-attend too, to the decoder)."""
    return [module for module in model.modules()
            if isinstance(module, Block) and isinstance(module.cross, ChunkedCrossAttention)]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).mean().sqrt()
