"""AdamW with weight decay on 2-D weights only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from retro.train.config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices and embeddings decay, biases, LayerNorms and
    gates do not (GPT-2/nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             fused=device.type == "cuda")


def learning_rate(step: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup over warmup_iters, then
    cosine from learning_rate down to min_lr_ratio * learning_rate at lr_decay_iters, then flat."""
    peak = config.learning_rate
    floor = peak * config.min_lr_ratio
    decay_end = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return peak * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_end:
        return floor
    progress = (step - config.warmup_iters) / max(1, decay_end - config.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
