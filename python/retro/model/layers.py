"""The layers of RETRO: GPT-2's MLP and pre-LayerNorm block, the four attentions (the decoder's
causal self-attention, chunked cross-attention, the encoder's self- and cross-attention) and the
neighbour encoder. Shapes as in :mod:`retro.model`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from retro import ops
from retro.model.config import RetroConfig
from retro.model.decoding import LayerCache, NeighbourMemory
from retro.ops.rotary import apply_rope


# ------------------------------------------------------------------------------------------------
# Building blocks, shared by the decoder and the encoder


def _rope_base(config: RetroConfig, rotary: bool) -> float:
    """The rotary base of an attention with positions (rotary), else 0 (none)."""
    return config.rope_base if rotary else 0.0


def run_block(block: nn.Module, recompute: bool, *args) -> torch.Tensor:
    """block(*args); with recompute, while training with gradients, its activations are not kept
    but recomputed in the backward pass (non-reentrant: same dropout masks, torch.compile-able)."""
    if recompute and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class MLP(nn.Module):
    """GPT-2's feed-forward: (..., n_embd) -> (..., n_embd) through 4 * n_embd and GELU."""

    def __init__(self, config: RetroConfig, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Attention(nn.Module):
    """Multi-head attention's projections around one attention op (the subclasses' forward).

    Queries come from the stream x (..., N, n_embd), keys and values from a context (..., M,
    context_embd) (x itself for self-attention); the output goes back to (..., N, n_embd).
    """

    def __init__(self, config: RetroConfig, n_embd: int, n_head: int,
                 context_embd: int | None = None, rope_base: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_q = nn.Linear(n_embd, n_embd, bias=config.bias)
        # separate k and v projections: each output is contiguous, as the attention kernels take it
        self.c_k = nn.Linear(context_embd or n_embd, n_embd, bias=config.bias)
        self.c_v = nn.Linear(context_embd or n_embd, n_embd, bias=config.bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rope_base = rope_base  # > 0: rotary positions (0: none)
        self.chunk_size = config.chunk_size

    def start_local(self, score: float, offset: int = 0, heads: int | None = None) -> None:
        """Initialises the query and key biases of a rotary attention so that, whatever the
        content, a query's initial score is `score` for the key at relative distance `offset`
        (key position minus query position) and falls off with distance from it: the query bias
        is rotate-half pairs (b, 0), the key bias the same rotated back by `offset` (score = b^2 *
        sum_i cos(theta_i * (distance - offset)) / sqrt(Dh), at most b^2 * Dh / 2 / sqrt(Dh)).
        Without it the biases start at 0 and a cross-attention starts uniform over its 2m keys:
        finding the one aligned position then takes a long plateau
        (bench/results/copy_task*.json). Only the first `heads` heads start local (None: all);
        the others keep zero biases. No effect without rotary positions, biases or with score
        0."""
        if not self.rope_base or self.c_q.bias is None or score <= 0:
            return
        dh = self.c_q.out_features // self.n_head
        value = math.sqrt(2.0 * score / math.sqrt(dh))
        per_head = torch.cat([torch.full((dh // 2,), value), torch.zeros(dh // 2)])
        key = apply_rope(per_head.view(1, 1, dh), torch.tensor([-offset]), self.rope_base)
        local = self.n_head if heads is None else min(heads, self.n_head)
        with torch.no_grad():
            self.c_q.bias[:local * dh].copy_(per_head.repeat(local))
            self.c_k.bias[:local * dh].copy_(key.flatten().repeat(local))

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., N, n_embd) -> queries (..., N, H, Dh)."""
        return self.c_q(x).unflatten(-1, (self.n_head, -1))

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (..., M, context_embd) -> keys, values (..., M, H, Dh)."""
        return (self.c_k(context).unflatten(-1, (self.n_head, -1)),
                self.c_v(context).unflatten(-1, (self.n_head, -1)))

    def rotate(self, q: torch.Tensor, k: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary positions start, start+1, ... along dim -3 of q, k (..., N, H, Dh) (if rotary)."""
        if not self.rope_base:
            return q, k
        positions = torch.arange(start, start + q.shape[-3], device=q.device)
        return apply_rope(q, positions, self.rope_base), apply_rope(k, positions, self.rope_base)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output (..., N, H, Dh) -> (..., N, n_embd)."""
        return self.resid_dropout(self.c_proj(y.flatten(-2)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block, shared by the decoder and the encoder:
    x += attn(ln_1(x)); then, with cross-attention, x += [tanh(gate) *] cross_scale *
    cross(ln_cross(x)); then x += mlp(ln_2(x)). The two stacks differ only in the attention modules
    they plug in."""

    def __init__(self, config: RetroConfig, n_embd: int, attn: Attention,
                 cross: Attention | None = None, gated: bool = False,
                 cross_scale: float = 1.0) -> None:
        super().__init__()
        self.cross_scale = cross_scale  # a constant (RetroConfig.cca_output_scale), not trained
        self.ln_1 = nn.LayerNorm(n_embd, bias=config.bias)
        self.attn = attn
        self.ln_cross = None if cross is None else nn.LayerNorm(n_embd, bias=config.bias)
        self.cross = cross
        self.gate = nn.Parameter(torch.zeros(())) if cross is not None and gated else None
        self.ln_2 = nn.LayerNorm(n_embd, bias=config.bias)
        self.mlp = MLP(config, n_embd)

    def forward(self, x: torch.Tensor, attn_args: tuple = (),
                cross_args: tuple | None = None) -> torch.Tensor:
        """x (..., N, n_embd) -> same; cross_args None skips the cross-attention sublayer."""
        x = x + self.attn(self.ln_1(x), *attn_args)
        if cross_args is not None:
            y = self.cross(self.ln_cross(x), *cross_args)
            if self.cross_scale != 1.0:
                y = y * self.cross_scale
            x = x + (y if self.gate is None else torch.tanh(self.gate) * y)
        return x + self.mlp(self.ln_2(x))


# ------------------------------------------------------------------------------------------------
# The four attentions


class CausalSelfAttention(Attention):
    """The decoder's causal self-attention (torch SDPA), with an optional KV cache."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__(config, config.n_embd, config.n_head,
                         rope_base=_rope_base(config, config.positions == "rope"))
        self.attn_dropout = config.dropout

    def forward(self, x: torch.Tensor, pos: int, cache: LayerCache | None) -> torch.Tensor:
        """x (B, T, C) at positions pos .. pos+T-1 -> (B, T, C). With a cache, also attends to the
        cached keys of positions < pos and stores its own."""
        t = x.shape[1]
        q, (k, v) = self.project_q(x), self.project_kv(x)  # (B, T, H, Dh)
        q, k = self.rotate(q, k, pos)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, Dh)
        if cache is not None:
            cache.k[:, :, pos:pos + t], cache.v[:, :, pos:pos + t] = k, v
            k, v = cache.k[:, :, :pos + t], cache.v[:, :, :pos + t]  # (B, H, pos+T, Dh)
        dropout = self.attn_dropout if self.training else 0.0
        if pos == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # query i (position pos+i) sees keys 0 .. pos+i
            mask = torch.ones(t, pos + t, dtype=torch.bool, device=x.device).tril(pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.output(y.transpose(1, 2))  # (B, T, H, Dh) -> (B, T, C)


class ChunkedCrossAttention(Attention):
    """CCA: decoder token p attends to the encoded neighbours of chunk (p - (m-1)) // m.

    Queries from the decoder (width C), keys and values from the encoder output (width D).
    """

    def __init__(self, config: RetroConfig) -> None:
        super().__init__(config, config.n_embd, config.n_head, context_embd=config.enc_width,
                         rope_base=_rope_base(config, config.cross_positions != "none"))

    def forward(self, x: torch.Tensor, memory: NeighbourMemory,
                cache: LayerCache | None) -> torch.Tensor:
        """x (B, T, C) normalised decoder states -> (B, T, C), exactly 0 where memory.attends is 0.

        With a cache, the keys of the last complete chunk carry over between calls: it is the only
        chunk that later tokens can attend to.
        """
        keys, values = [], []
        if memory.use_cache:
            keys.append(cache.nbr_k)
            values.append(cache.nbr_v)
        if memory.encoded is not None:
            k, v = self.project_kv(memory.encoded)  # (B, L_new, K, R, H, Dh)
            keys.append(k)
            values.append(v)
        if cache is not None and memory.n_new > 0:
            new = memory.encoded is not None
            cache.nbr_k = keys[-1][:, -1:].clone() if new else None  # (B, 1, K, R, H, Dh)
            cache.nbr_v = values[-1][:, -1:].clone() if new else None
        k = keys[0] if len(keys) == 1 else torch.cat(keys, dim=1)  # (B, L_vis, K, R, H, Dh)
        v = values[0] if len(values) == 1 else torch.cat(values, dim=1)
        y = ops.chunked_cross_attention(self.project_q(x), k, v, memory.lens,
                                        chunk_size=self.chunk_size,
                                        q_offset=memory.q_offset,
                                        rope_base=self.rope_base)  # (B, T, H, Dh)
        # Megatron's rule: tokens without neighbours get no CCA output, not even c_proj's bias
        # (without a bias their rows are already exactly 0: the op writes zeros there).
        out = self.output(y)
        return out if self.c_proj.bias is None else out * memory.attends


class NeighbourSelfAttention(Attention):
    """The encoder's self-attention: bidirectional within each neighbour, over its real tokens."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__(config, config.enc_width, config.enc_heads,
                         rope_base=_rope_base(config, config.positions == "rope"))

    def forward(self, x: torch.Tensor, nbr_lens: torch.Tensor) -> torch.Tensor:
        """x (B, L, K, R, D), nbr_lens (B, L, K) int32 -> (B, L, K, R, D)."""
        q, (k, v) = self.project_q(x), self.project_kv(x)  # (B, L, K, R, H, Dh)
        return self.output(ops.neighbour_self_attention(q, k, v, nbr_lens,
                                                        rope_base=self.rope_base))


class NeighbourCrossAttention(Attention):
    """The encoder's cross-attention: neighbours of chunk l attend to chunk l's decoder states."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__(config, config.enc_width, config.enc_heads, context_embd=config.n_embd,
                         rope_base=_rope_base(config, config.cross_positions == "rope"))

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                nbr_lens: torch.Tensor) -> torch.Tensor:
        """x (B, L, K, R, D) neighbour tokens; context (B, Tc, C) decoder states, chunk l at
        positions l*m .. l*m+m-1; nbr_lens (B, L, K) int32 -> (B, L, K, R, D)."""
        k, v = self.project_kv(context)  # (B, Tc, H, Dh)
        y = ops.neighbour_cross_attention(self.project_q(x), k, v, nbr_lens,
                                          chunk_size=self.chunk_size, rope_base=self.rope_base)
        return self.output(y)


# ------------------------------------------------------------------------------------------------
# Encoder, decoding state


class Encoder(nn.Module):
    """RETRO's neighbour encoder: enc_n_layer bidirectional blocks over each neighbour; the first
    also cross-attends to the decoder states of the chunk the neighbour was retrieved for."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        width = config.enc_width
        self.recompute = config.activation_checkpointing
        self.c_in = None
        if width != config.n_embd:
            self.c_in = nn.Linear(config.n_embd, width, bias=config.bias)
        # RetroConfig.enc_previous_token: token j-1's embedding, projected, added at token j
        self.c_previous = (nn.Linear(config.n_embd, width, bias=False)
                           if config.enc_previous_token else None)
        self.ln_context = nn.LayerNorm(config.n_embd, bias=config.bias)  # on the residual stream
        self.h = nn.ModuleList(
            Block(config, width, NeighbourSelfAttention(config),
                  NeighbourCrossAttention(config) if i == 0 else None)
            for i in range(config.enc_n_layer)
        )
        self.ln_f = nn.LayerNorm(width, bias=config.bias)

    def forward(self, x: torch.Tensor, nbr_lens: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """x (B, L, K, R, C) embedded neighbour tokens; nbr_lens (B, L, K) int32; context
        (B, Tc, C) decoder states with chunk l at positions l*m .. l*m+m-1 -> (B, L, K, R, D)."""
        before = F.pad(x[..., :-1, :], (0, 0, 1, 0)) if self.c_previous is not None else None
        if self.c_in is not None:
            x = self.c_in(x)
        if self.c_previous is not None:
            x = x + self.c_previous(before)  # token j-1 at j, nothing before token 0
        context = self.ln_context(context)
        for block in self.h:
            x = run_block(block, self.recompute, x, (nbr_lens,),
                          None if block.cross is None else (context, nbr_lens))
        return self.ln_f(x)
