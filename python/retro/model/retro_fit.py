"""RETRO-fit's start: CCA's output scaled to the trained GPT's residual stream.

A fresh model's CCA writes into a residual stream as small as its own initialisation: at the demo's
shape its output's RMS is 0.30 and 0.20 of the residual stream's where it joins (layers 2 and 4,
random tokens; tests/test_model.py checks the mean, 0.25). A trained GPT's residual stream has
grown (the demo GPT's ~100x), so fresh CCA layers added to it start ~100x weaker relative to it
than in a fresh model, and Adam, which moves each weight by about the learning rate per step,
takes many steps to make up the difference: at 300 steps the demo's RETRO-fit gains 0.192 nats
from its neighbours unscaled and 0.278 scaled (docs/RESULTS.md, section 2d).

RetroConfig.cca_output_scale multiplies every CCA output by a constant. calibrate_cca_output_scale
chooses it on a batch so that CCA starts at START_RATIO of the residual stream, as in a fresh
model; its weights, initialised as a fresh model's, then learn at a fresh model's relative rate.
"""

from __future__ import annotations

import math
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
    blocks = cca_blocks(model)
    if not blocks:
        raise ValueError("the model has no CCA layers: there is no CCA output to measure")
    ratios: list[float] = []
    residual: list[torch.Tensor] = []
    hooks = []
    for block in blocks:
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
    on this batch (shapes as cca_residual_ratio's); returns the scale. Raises ValueError when
    start_ratio is not a finite number > 0, or when the batch gives no finite, non-zero ratio (no
    real neighbour in it, or NaN in the model)."""
    if not (math.isfinite(start_ratio) and start_ratio > 0):
        raise ValueError(f"start_ratio must be a finite number > 0, not {start_ratio}")
    unscaled = cca_residual_ratio(model, idx, nbr_tokens, nbr_lens) / model.config.cca_output_scale
    if not (math.isfinite(unscaled) and unscaled > 0):
        raise ValueError(f"cannot calibrate CCA's output scale on this batch: CCA output / residual "
                         f"RMS is {unscaled} (no real neighbour in the batch, or NaN in the model)")
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
