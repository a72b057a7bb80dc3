"""RetroConfig: the hyper-parameters of Retro and GPT, and the named presets (the paper's sizes).

Shapes and the model itself: :mod:`retro.model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from retro.errors import RetroError


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
    activation: str = "gelu"  # MLP: "gelu" (exact, retro's) or "gelu_tanh" (GPT-2's approximation)
    # retrieval
    chunk_size: int = 64  # m: the sequence is cut into chunks of m tokens; one retrieval per chunk
    n_nbrs: int = 2  # k: neighbours retrieved per chunk (the model accepts any number)
    nbr_len: int = 128  # r: tokens per neighbour, the retrieved chunk then its continuation
    pad_id: int = 50256  # <|endoftext|>: fills neighbours shorter than r (their lengths mask it)
    # 1-based decoder layers with CCA; None: every 3rd from 6 (from 9 when n_layer > 15)
    cca_layers: tuple[int, ...] | None = None
    cca_gate: bool = False  # tanh gate on each CCA output, 0 at init: training starts from the GPT
    # a constant multiplying each CCA output: 1 from scratch; a RETRO-fit sets it so that CCA
    # writes into the trained GPT's grown residual stream as into a fresh model's (retro_fit.py)
    cca_output_scale: float = 1.0
    # rotary positions in the cross-attentions: "rope" CCA and the encoder's cross-attention,
    # "cca" CCA only, "none" (checkpoints from before they existed); see the module docstring
    cross_positions: str = "rope"
    # rotary cross-attentions start local: their query and key biases are initialised so that a
    # token's initial score is this much at relative distance 0 and falls off with distance
    # (0: zero biases, attention uniform at first). Only the initialisation: see the module docstring
    cross_locality: float = 8.0
    # the heads of each cross-attention that start local (the first ones); None: all. The others
    # start uniform over the neighbour: ready to read text at any offset, as a fact sits in a
    # neighbour of another document
    cross_local_heads: int | None = None
    # the relative distance CCA's local start peaks at: 1 is the token a query predicts in an
    # aligned neighbour (C_u then C_{u+1}), 0 its own token; the encoder's cross-attention peaks at 0
    cca_locality_offset: int = 1
    # neighbour encoder
    enc_n_layer: int = 2  # bidirectional layers; the first also cross-attends to the decoder
    enc_n_embd: int | None = None  # None: n_embd; else an input projection n_embd -> enc_n_embd
    enc_n_head: int | None = None  # None: n_head
    # the encoder's input at neighbour token j adds a learned projection of token j-1's embedding:
    # a CCA query can then find "the token after mine" in a neighbour by content, at any offset
    # (an induction head whose previous-token half is built in)
    enc_previous_token: bool = False
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
        _require(self.activation in ACTIVATIONS,
                 f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
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
        _require(math.isfinite(self.cross_locality) and self.cross_locality >= 0.0,
                 f"cross_locality must be a finite number >= 0, not {self.cross_locality}")
        _require(self.cross_local_heads is None or self.cross_local_heads >= 0,
                 f"cross_local_heads must be None or >= 0, not {self.cross_local_heads}")
        _require(math.isfinite(self.cca_output_scale) and self.cca_output_scale > 0.0,
                 f"cca_output_scale must be a finite number > 0, not {self.cca_output_scale}")
        _require(0 <= self.cca_locality_offset < self.nbr_len,
                 f"cca_locality_offset must be in 0..nbr_len-1, not {self.cca_locality_offset}")
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
            raise RetroError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


CROSS_POSITIONS = ("rope", "cca", "none")
ACTIVATIONS = ("gelu", "gelu_tanh")  # nn.GELU's approximate="none" and "tanh"
# The fields that shape the decoder, which RETRO-fit keeps (the rest shape retrieval).
DECODER_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "positions",
                  "rope_base", "activation")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RetroError(message)


PRESETS: dict[str, dict] = {
    # CPU demo: the every-3rd-from-6 rule is meant for 12+ layers, so CCA at 3 and 6.
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=512, cca_layers=(3, 6)),
    # `retro demo`'s models (retro.demo.DEMO_MODEL and DEMO_RETRIEVAL, its BPE's vocabulary).
    "demo": dict(n_layer=4, n_head=4, n_embd=256, vocab_size=8192, block_size=256,
                 cca_layers=(2, 4), enc_n_embd=128, enc_n_head=2),
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
