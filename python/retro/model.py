"""RETRO, the retrieval-enhanced transformer, in one file (in nanoGPT's spirit).

Wang et al. 2023, "Shall We Pretrain Autoregressive Language Models with Retrieval?" (NVIDIA's
Megatron RETRO) and Borgeaud et al. 2022 (DeepMind's RETRO). Shapes: B batch, T decoder tokens,
C decoder width (n_embd), m chunk_size, L chunks, K neighbours per chunk, R tokens per neighbour
(nbr_len), D encoder width (enc_n_embd), H heads, Dh head width.

The decoder is GPT-2: pre-LayerNorm blocks, learned or rotary positions, tied embeddings. The
decoder layers in `cca_layers` add a chunked cross-attention (CCA) sublayer between self-attention
and MLP. The neighbours retrieved for chunk u, RET(C_u), are encoded by a small bidirectional
encoder that shares the token embedding; its first layer cross-attends to the decoder states of
chunk u taken at the input of the first CCA layer. Causal shift: the token at position p >= m-1
attends to RET(C_u) for u = (p - (m-1)) // m, i.e. the last token of chunk u and the first m-1
tokens of chunk u+1 see RET(C_u); tokens 0 .. m-2 see nothing, and no token sees neighbours that
were retrieved with text that comes after it.

Positions in the cross-attentions (cross_positions="rope", the default; retro.ops.rotary): CCA
rotates queries and keys by positions counted from the start of chunk u. The query at position p
sits at p - u*m (m-1 .. 2m-2); key j of a neighbour sits at j (the retrieved chunk at 0 .. m-1,
its continuation at m .. 2m-1). So a neighbour that is C_u followed by C_{u+1} holds each query's
own token at relative distance 0 and the token it must predict at +1: copying is one fixed
relative offset, which a content-only attention cannot find (a copy task stays at chance without
it). The encoder's cross-attention likewise puts neighbour token j at j and the decoder state of
offset i in chunk u at i. Checkpoints written before these positions existed load with
cross_positions="none".

    model = Retro(RetroConfig.preset("tiny"))
    # training: idx (B, T), nbr_tokens (B, T // m, K, R), nbr_lens (B, T // m, K)
    logits, loss = model(idx, nbr_tokens, nbr_lens, targets)
    # generation: each call passes the neighbours of the chunks it completes
    cache = model.new_cache(batch_size)
    logits, _ = model(prompt, prompt_nbr_tokens, prompt_nbr_lens, cache=cache, last_only=True)
    logits, _ = model(next_token, cache=cache, last_only=True)  # no chunk completed: no neighbours

    python -m retro.model     # parameter counts of the presets next to the paper's
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from retro import ops
from retro.ops.rotary import apply_rope

_INDEX_DTYPES = (torch.int64, torch.int32)
# The fields that shape the decoder, which RETRO-fit keeps.
_DECODER_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "positions",
                   "rope_base")


@dataclass
class RetroConfig:
    """Hyper-parameters of Retro and GPT (flat, nanoGPT style); defaults: the paper's 'small'."""

    # decoder (GPT-2)
    vocab_size: int = 50304  # GPT-2's 50257 tokens padded up to a multiple of 64
    block_size: int = 2048  # longest sequence (the paper trains on 2048 tokens)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # embeddings, residual branches, decoder self-attention probabilities
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    positions: str = "learned"  # "learned" (GPT-2) or "rope" (rotary, in both self-attentions)
    rope_base: float = 10000.0  # rotary frequency base (self-attentions and cross_positions)
    # retrieval
    chunk_size: int = 64  # m: the sequence is cut into chunks of m tokens; one retrieval per chunk
    n_nbrs: int = 2  # k: neighbours retrieved per chunk (the model accepts any number)
    nbr_len: int = 128  # r: tokens per neighbour, the retrieved chunk then its continuation
    pad_id: int = 50256  # <|endoftext|>: fills neighbours shorter than r (their lengths mask it)
    # 1-based decoder layers with CCA; None: every 3rd from 6 (from 9 when n_layer > 15)
    cca_layers: tuple[int, ...] | None = None
    cca_gate: bool = False  # tanh gate on each CCA output, 0 at init: training starts from the GPT
    # rotary positions in the cross-attentions: "rope" CCA and the encoder's cross-attention,
    # "cca" CCA only, "none" (checkpoints from before they existed); see the module docstring
    cross_positions: str = "rope"
    # neighbour encoder
    enc_n_layer: int = 2  # bidirectional layers; the first also cross-attends to the decoder
    enc_n_embd: int | None = None  # None: n_embd; else an input projection n_embd -> enc_n_embd
    enc_n_head: int | None = None  # None: n_head
    # training: recompute each block's activations in the backward pass (memory for compute)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.cca_layers is not None:
            self.cca_layers = tuple(int(layer) for layer in self.cca_layers)  # from JSON: a list
        sizes = (self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd,
                 self.chunk_size, self.n_nbrs, self.nbr_len, self.enc_n_layer, self.enc_width,
                 self.enc_heads)
        _require(min(sizes) > 0, "sizes, layer and head counts must be positive")
        _require(self.n_embd % self.n_head == 0,
                 f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        _require(self.enc_width % self.enc_heads == 0,
                 f"enc_n_embd ({self.enc_width}) must be a multiple of enc_n_head "
                 f"({self.enc_heads})")
        _require(self.positions in ("learned", "rope"),
                 f"positions must be 'learned' or 'rope', not {self.positions!r}")
        _require(self.cross_positions in CROSS_POSITIONS,
                 f"cross_positions must be one of {CROSS_POSITIONS}, not {self.cross_positions!r}")
        head_widths = (self.n_embd // self.n_head, self.enc_width // self.enc_heads)
        rotary = self.positions == "rope" or self.cross_positions != "none"
        _require(not rotary or all(w % 2 == 0 for w in head_widths),
                 f"rotary positions need even head widths, not {head_widths}")
        _require(self.positions != "learned" or self.nbr_len <= self.block_size,
                 f"learned positions: nbr_len ({self.nbr_len}) must be <= block_size "
                 f"({self.block_size})")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), not {self.dropout}")
        layers = self.retro_layers
        _require(len(layers) > 0 and list(layers) == sorted(set(layers))
                 and 1 <= layers[0] and layers[-1] <= self.n_layer,
                 f"cca_layers must be increasing 1-based layers in 1..{self.n_layer}, not {layers}")

    @property
    def retro_layers(self) -> tuple[int, ...]:
        """1-based decoder layers with CCA: cca_layers, or every 3rd from 6 (9 if n_layer > 15)."""
        if self.cca_layers is not None:
            return self.cca_layers
        return tuple(range(9 if self.n_layer > 15 else 6, self.n_layer + 1, 3))

    @property
    def enc_width(self) -> int:
        """The encoder's width D: enc_n_embd, or n_embd."""
        return self.n_embd if self.enc_n_embd is None else self.enc_n_embd

    @property
    def enc_heads(self) -> int:
        """The encoder's heads: enc_n_head, or n_head."""
        return self.n_head if self.enc_n_head is None else self.enc_n_head

    @classmethod
    def from_saved(cls, fields: dict) -> RetroConfig:
        """The config stored in a checkpoint (dataclasses.asdict); one saved before
        cross_positions existed was trained without positions in its cross-attentions."""
        return cls(**{"cross_positions": "none", **fields})

    @classmethod
    def preset(cls, name: str, **overrides) -> RetroConfig:
        """A named configuration (see PRESETS) with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


CROSS_POSITIONS = ("rope", "cca", "none")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


PRESETS: dict[str, dict] = {
    # CPU demo: the every-3rd-from-6 rule is meant for 12+ layers, so CCA at 3 and 6.
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=512, cca_layers=(3, 6)),
    # The paper's models (Wang et al. 2023), trained on 2048-token sequences.
    "small": dict(n_layer=12, n_head=12, n_embd=768),
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "xl": dict(n_layer=24, n_head=32, n_embd=2048),
    "xxl": dict(n_layer=40, n_head=64, n_embd=4096),
}

# Parameter counts the paper gives for RETRO and for the GPT of the same decoder.
PAPER_PARAMS: dict[str, tuple[float, float]] = {
    "small": (148e6, 126e6),
    "medium": (410e6, 357e6),
    "xl": (1.5e9, 1.3e9),
    "xxl": (9.5e9, 8.3e9),
}


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
        self.gelu = nn.GELU()
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
    x += attn(ln_1(x)); then, with cross-attention, x += [tanh(gate) *] cross(ln_cross(x));
    then x += mlp(ln_2(x)). The two stacks differ only in the attention modules they plug in."""

    def __init__(self, config: RetroConfig, n_embd: int, attn: Attention,
                 cross: Attention | None = None, gated: bool = False) -> None:
        super().__init__()
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
        if self.c_in is not None:
            x = self.c_in(x)
        context = self.ln_context(context)
        for block in self.h:
            x = run_block(block, self.recompute, x, (nbr_lens,),
                          None if block.cross is None else (context, nbr_lens))
        return self.ln_f(x)


@dataclass
class NeighbourMemory:
    """What the CCA layers of one forward call attend to. The visible chunks are the last complete
    chunk of earlier calls (cached, if it has neighbours), then the chunks this call completes."""

    encoded: torch.Tensor | None  # (B, L_new, K, R, D) encoded neighbours of the new chunks
    lens: torch.Tensor  # (B, L_vis, K) int32: real tokens per neighbour of each visible chunk
    q_offset: int  # position of the call's first token from the first visible chunk's start
    use_cache: bool  # the first visible chunk is the one in LayerCache.nbr_k / nbr_v
    n_new: int  # chunks this call completes (the last of them replaces the cached chunk)
    attends: torch.Tensor  # (B, T, 1) 1 where the token has a real neighbour key, else 0


@dataclass
class LayerCache:
    """One decoder layer's state between incremental decoding calls."""

    k: torch.Tensor  # (B, H, max_len, Dh) self-attention keys (rotated under rope), < pos filled
    v: torch.Tensor  # (B, H, max_len, Dh)
    nbr_k: torch.Tensor | None = None  # (B, 1, K, R, H, Dh) CCA keys of the last complete chunk
    nbr_v: torch.Tensor | None = None


@dataclass
class DecodeCache:
    """Incremental decoding state (from `model.new_cache`); each forward call advances it by T."""

    layers: list[LayerCache]
    # (B, pos % m, C): the current chunk's decoder states so far, at the first CCA layer's input
    chunk_states: torch.Tensor
    pos: int = 0  # tokens consumed so far
    # (B, 1, K) int32 neighbour lengths of the last complete chunk; None: it has no neighbours
    nbr_lens: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.layers[0].k.shape[2]

    def repeat(self, n: int) -> DecodeCache:
        """A cache of B * n sequences, each of the B repeated n times in a row (rows b*n .. b*n+n-1
        are copies of sequence b): several continuations of one decoded prefix."""
        def rep(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat_interleave(n, dim=0)

        layers = [LayerCache(rep(c.k), rep(c.v), rep(c.nbr_k), rep(c.nbr_v)) for c in self.layers]
        return DecodeCache(layers, rep(self.chunk_states), self.pos, rep(self.nbr_lens))


def _attends(lens: torch.Tensor, n_tokens: int, q_offset: int, chunk_size: int,
             dtype: torch.dtype) -> torch.Tensor:
    """(B, T, 1): 1 where the token at q_offset + t has a chunk in lens (B, L, K) with real keys."""
    positions = torch.arange(n_tokens, device=lens.device) + q_offset
    chunk = torch.div(positions - (chunk_size - 1), chunk_size, rounding_mode="floor")  # (T,)
    n_chunks = lens.shape[1]
    inside = (chunk >= 0) & (chunk < n_chunks)
    has_key = (lens > 0).any(-1)  # (B, L)
    return (has_key[:, chunk.clamp(0, n_chunks - 1)] & inside).unsqueeze(-1).to(dtype)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


# ------------------------------------------------------------------------------------------------
# The models


class GPT(nn.Module):
    """GPT-2 decoder, RETRO's baseline: Retro without CCA and encoder (same parameter names)."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        self.config = config
        cca = self._cca_layers()
        self.first_cca = cca[0] if cca else None  # 0-based; the encoder reads this layer's input
        embeddings = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.positions == "learned":
            embeddings["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **embeddings,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(
                Block(config, config.n_embd, CausalSelfAttention(config),
                      ChunkedCrossAttention(config) if i in cca else None, gated=config.cca_gate)
                for i in range(config.n_layer)
            ),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.encoder = Encoder(config) if cca else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _cca_layers(self) -> tuple[int, ...]:
        """0-based decoder layers with CCA: none in GPT."""
        return ()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                last_only: bool = False, cache: DecodeCache | None = None, *,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab) ((B, 1, vocab) with last_only) and the mean
        cross-entropy against targets (B, T) (-1 = ignore), or None. With a cache (new_cache),
        idx continues the tokens given so far. return_logits=False (with targets) returns
        (None, loss): a compiled training step then never writes the logits out."""
        return self._forward(idx, None, None, targets, last_only, cache, return_logits)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecodeCache:
        """An empty decoding state for up to max_len (default block_size) tokens per sequence, on
        the model's device and in its dtype."""
        config = self.config
        max_len = config.block_size if max_len is None else max_len
        if max_len < 1 or (config.positions == "learned" and max_len > config.block_size):
            raise ValueError(f"max_len must be in 1..block_size ({config.block_size}), "
                             f"not {max_len}")
        p = self.lm_head.weight
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        layers = [LayerCache(p.new_zeros(shape), p.new_zeros(shape)) for _ in range(config.n_layer)]
        return DecodeCache(layers, chunk_states=p.new_zeros(batch_size, 0, config.n_embd))

    def _forward(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None,
                 nbr_lens: torch.Tensor | None, targets: torch.Tensor | None, last_only: bool,
                 cache: DecodeCache | None,
                 return_logits: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The decoder, shared by GPT and Retro; arguments as in Retro.forward."""
        if not return_logits and targets is None:
            raise ValueError("return_logits=False returns the loss only: it needs targets")
        self._check_tokens(idx, targets, last_only, cache)
        nbr_lens = self._check_neighbours(idx, nbr_tokens, nbr_lens, cache)
        pos = 0 if cache is None else cache.pos
        x = self._embed(idx, pos)  # (B, T, C)
        memory = None
        for i, block in enumerate(self.transformer.h):
            layer_cache = None if cache is None else cache.layers[i]
            if i == self.first_cca:
                memory = self._neighbour_memory(x, nbr_tokens, nbr_lens, cache)
            cross_args = None if memory is None or block.cross is None else (memory, layer_cache)
            x = run_block(block, self.config.activation_checkpointing, x, (pos, layer_cache),
                          cross_args)
        if cache is not None:
            cache.pos += idx.shape[1]
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten().long(), ignore_index=-1)
        return (logits if return_logits else None), loss

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """Token (+ learned position) embeddings of idx (..., N) at positions start .. start+N-1
        -> (..., N, C)."""
        x = self.transformer.wte(idx)
        if self.config.positions == "learned":
            positions = torch.arange(start, start + idx.shape[-1], device=idx.device)
            x = x + self.transformer.wpe(positions)
        return self.transformer.drop(x)

    def _neighbour_memory(self, x: torch.Tensor, nbr_tokens: torch.Tensor | None,
                          nbr_lens: torch.Tensor | None,
                          cache: DecodeCache | None) -> NeighbourMemory | None:
        """Encodes the neighbours of the chunks this call completes (each chunk's once) and
        gathers what the CCA layers attend to; None when no token has anything to attend to.

        x (B, T, C): decoder states at the first CCA layer's input, positions pos .. pos+T-1.
        """
        m, t = self.config.chunk_size, x.shape[1]
        pos = 0 if cache is None else cache.pos
        first = pos // m  # the chunk of the call's first token
        n_new = (pos + t) // m - first  # chunks completed by this call
        # decoder states from the start of chunk `first`: (B, pos % m + T, C)
        context = x if cache is None else torch.cat([cache.chunk_states, x], dim=1)
        use_cache = cache is not None and cache.nbr_lens is not None
        lens = [cache.nbr_lens] if use_cache else []
        encoded = None
        if nbr_tokens is not None and n_new > 0:
            nbrs = self._embed(nbr_tokens, 0)  # (B, L_new, K, R, C)
            encoded = self.encoder(nbrs, nbr_lens, context)  # (B, L_new, K, R, D)
            lens.append(nbr_lens)
        if cache is not None:
            cache.chunk_states = context[:, n_new * m:]
            if n_new > 0:
                cache.nbr_lens = None if encoded is None else nbr_lens[:, -1:]
        if not lens:
            return None
        lens = lens[0] if len(lens) == 1 else torch.cat(lens, dim=1)  # (B, L_vis, K)
        q_offset = pos - (first - int(use_cache)) * m
        return NeighbourMemory(encoded, lens, q_offset, use_cache, n_new,
                               _attends(lens, t, q_offset, m, x.dtype))

    def _check_tokens(self, idx: torch.Tensor, targets: torch.Tensor | None, last_only: bool,
                      cache: DecodeCache | None) -> None:
        """Raises ValueError unless idx and targets are (B, T) token ids that fit the model."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in _INDEX_DTYPES \
                or idx.shape[1] == 0:
            raise ValueError("idx must be a (B, T) int64 or int32 tensor of token ids with T >= 1, "
                             f"got {_describe(idx)}")
        b, t = idx.shape
        pos = 0 if cache is None else cache.pos
        if cache is not None and (pos + t > cache.max_len or cache.layers[0].k.shape[0] != b):
            raise ValueError(f"the cache holds {cache.layers[0].k.shape[0]} sequences of up to "
                             f"{cache.max_len} tokens: {pos} given so far, then idx "
                             f"{tuple(idx.shape)}")
        if self.config.positions == "learned" and pos + t > self.config.block_size:
            raise ValueError(f"sequence of {pos + t} tokens is longer than block_size "
                             f"{self.config.block_size}")
        if targets is None:
            return
        if last_only:
            raise ValueError("targets need the logits of every position: pass last_only=False")
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape \
                or targets.dtype not in _INDEX_DTYPES:
            raise ValueError(f"targets must be an int64 or int32 tensor of idx's shape "
                             f"{tuple(idx.shape)}, got {_describe(targets)}")

    def _check_neighbours(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None,
                          nbr_lens: torch.Tensor | None,
                          cache: DecodeCache | None) -> torch.Tensor | None:
        """Raises ValueError unless nbr_tokens and nbr_lens match idx (see Retro.forward);
        returns nbr_lens as int32 (B, L, K) (all R when not given), or None."""
        if nbr_tokens is None:
            if nbr_lens is not None:
                raise ValueError("nbr_lens given without nbr_tokens")
            return None
        (b, t), m = idx.shape, self.config.chunk_size
        pos = 0 if cache is None else cache.pos
        n_chunks = (pos + t) // m - pos // m
        if not isinstance(nbr_tokens, torch.Tensor) or nbr_tokens.dim() != 4 \
                or nbr_tokens.dtype not in _INDEX_DTYPES:
            raise ValueError("nbr_tokens must be a (B, L, K, R) int64 or int32 tensor of token "
                             f"ids, got {_describe(nbr_tokens)}")
        if nbr_tokens.shape[:2] != (b, n_chunks) or min(nbr_tokens.shape[2:]) == 0:
            raise ValueError(f"nbr_tokens must be (B, L, K, R) = ({b}, {n_chunks}, K >= 1, R >= 1) "
                             f"(T={t} tokens from position {pos} complete {n_chunks} chunks of "
                             f"chunk_size {m}), got {tuple(nbr_tokens.shape)}")
        if nbr_tokens.device != idx.device:
            raise ValueError(f"nbr_tokens is on {nbr_tokens.device} but idx on {idx.device}")
        n_nbrs, nbr_len = nbr_tokens.shape[2:]
        if self.config.positions == "learned" and nbr_len > self.config.block_size:
            raise ValueError(f"neighbours of R={nbr_len} tokens are longer than block_size "
                             f"{self.config.block_size}")
        if cache is not None and cache.nbr_lens is not None:
            cached = tuple(cache.layers[self.first_cca].nbr_k.shape[2:4])
            if (n_nbrs, nbr_len) != cached:
                raise ValueError(f"neighbours must keep their shape (K, R) = {cached} during one "
                                 f"decoding, got {(n_nbrs, nbr_len)}")
        if nbr_lens is None:
            return torch.full((b, n_chunks, n_nbrs), nbr_len, dtype=torch.int32, device=idx.device)
        if not isinstance(nbr_lens, torch.Tensor) or nbr_lens.shape != (b, n_chunks, n_nbrs) \
                or nbr_lens.dtype not in _INDEX_DTYPES or nbr_lens.device != idx.device:
            raise ValueError(f"nbr_lens must be an int32 or int64 tensor (B, L, K) = "
                             f"{(b, n_chunks, n_nbrs)} on {idx.device}, like nbr_tokens "
                             f"{tuple(nbr_tokens.shape)}; got {_describe(nbr_lens)}")
        return nbr_lens.to(torch.int32)


class Retro(GPT):
    """RETRO: the GPT decoder with CCA in config.retro_layers, and the neighbour encoder."""

    def _cca_layers(self) -> tuple[int, ...]:
        return tuple(layer - 1 for layer in self.config.retro_layers)

    def forward(self, idx: torch.Tensor, nbr_tokens: torch.Tensor | None = None,
                nbr_lens: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                last_only: bool = False, cache: DecodeCache | None = None, *,
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits and loss of idx given the neighbours of its chunks.

        idx (B, T) int64/int32 token ids at positions pos .. pos+T-1 (pos = 0, or cache.pos).
        nbr_tokens (B, L, K, R) int64/int32: the K neighbours (R tokens each, padded with pad_id)
            of each chunk this call completes, L = (pos+T) // m - pos // m (without a cache,
            T // m). None: no neighbours, and the logits are exactly the GPT decoder's.
        nbr_lens (B, L, K) int32/int64: real tokens of each neighbour, a prefix (0 = none);
            None: all R real.
        targets (B, T) token ids (-1 = ignore) -> loss, the mean cross-entropy; None -> None.
        last_only: logits (B, 1, vocab) of the last position only (generation).
        cache: a DecodeCache from new_cache; the call continues the tokens given so far at O(T)
            decoder work (a chunk's neighbours are encoded once, by the call that completes it).
        return_logits: False (with targets) -> (None, loss), for training steps.
        Returns logits (B, T, vocab) and loss.
        """
        return self._forward(idx, nbr_tokens, nbr_lens, targets, last_only, cache, return_logits)

    @classmethod
    def from_gpt(cls, gpt: GPT | dict | str | os.PathLike, freeze: bool = True,
                 **retro_fields) -> Retro:
        """RETRO-fit (DeepMind §4.2): a Retro whose decoder is `gpt`'s, with fresh CCA and encoder.

        gpt: a GPT, a checkpoint {"model": state_dict, "config": dict of RetroConfig fields}, or
        the path of one saved with torch.save. retro_fields override the retrieval fields of its
        config (chunk_size, cca_layers, enc_*, ...), never the decoder's. freeze: the decoder's
        parameters (its token embedding, which the encoder shares, included) get
        requires_grad=False, so that only CCA and the encoder train.
        """
        if isinstance(gpt, (str, os.PathLike)):
            gpt = torch.load(gpt, map_location="cpu", weights_only=True)
        if isinstance(gpt, GPT) and not isinstance(gpt, Retro):
            config, state = gpt.config, gpt.state_dict()
        elif isinstance(gpt, dict) and {"model", "config"} <= gpt.keys():
            config = RetroConfig.from_saved(gpt["config"])
            # torch.compile's wrapper prefixes every name
            state = {k.removeprefix("_orig_mod."): v for k, v in gpt["model"].items()}
        else:
            raise ValueError("from_gpt needs a GPT, a checkpoint dict with 'model' and 'config', "
                             f"or its path; got {_describe(gpt)}")
        decoder_fields = set(_DECODER_FIELDS) & retro_fields.keys()
        if decoder_fields:
            raise ValueError(f"from_gpt cannot change the decoder's {sorted(decoder_fields)}")
        # the CCA and encoder are new: the current default positions unless retro_fields say
        config = replace(config, **{"cross_positions": RetroConfig.cross_positions, **retro_fields})
        like = state["lm_head.weight"]
        with torch.device(like.device):
            model = cls(config).to(like.dtype)
        with torch.device("meta"):
            decoder_keys = set(GPT(config).state_dict())
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or decoder_keys & set(missing):
            raise ValueError(f"not a GPT state of this config: unexpected {sorted(unexpected)}, "
                             f"missing {sorted(decoder_keys & set(missing))}")
        for name, p in model.named_parameters():
            p.requires_grad_(not (freeze and name in decoder_keys))
        return model


from_gpt = Retro.from_gpt


def count_parameters(name: str) -> tuple[int, int]:
    """(Retro, GPT) parameter counts of preset `name`, built on the meta device (no memory)."""
    config = RetroConfig.preset(name)
    with torch.device("meta"):
        return tuple(sum(p.numel() for p in cls(config).parameters()) for cls in (Retro, GPT))


def parameter_table() -> str:
    """The paper presets' parameter counts next to the paper's, as a Markdown table."""
    rows = ["| preset | RETRO | paper | ratio | GPT | paper | ratio |",
            "|---|---|---|---|---|---|---|"]
    for name, (paper_retro, paper_gpt) in PAPER_PARAMS.items():
        retro, gpt = count_parameters(name)
        rows.append(f"| {name} | {retro / 1e6:,.1f}M | {paper_retro / 1e6:,.0f}M "
                    f"| {retro / paper_retro:.3f} | {gpt / 1e6:,.1f}M | {paper_gpt / 1e6:,.0f}M "
                    f"| {gpt / paper_gpt:.3f} |")
    return "\n".join(rows)


__all__ = ["GPT", "PAPER_PARAMS", "PRESETS", "DecodeCache", "Retro", "RetroConfig",
           "count_parameters", "from_gpt", "parameter_table"]

if __name__ == "__main__":
    print(parameter_table())
