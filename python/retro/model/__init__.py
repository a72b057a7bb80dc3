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

The rotary cross-attentions start local (cross_locality, an initialisation only): their query and
key biases begin so that every query scores one relative distance highest, by cross_locality, and
the distances around it less: CCA the token a query predicts in an aligned neighbour
(cca_locality_offset, +1), the encoder's cross-attention the decoder token of its own offset (0). Started uniform over the 2m keys (zero
biases), finding the aligned position is a saddle that the copy task sits on for hundreds of
steps at a realistic vocabulary, chunk and width; started local, the aligned token and the one
after it carry weight from the first step and copying is learned at once
(bench/results/copy_task*.json).

    model = Retro(RetroConfig.preset("tiny"))
    # training: idx (B, T), nbr_tokens (B, T // m, K, R), nbr_lens (B, T // m, K)
    logits, loss = model(idx, nbr_tokens, nbr_lens, targets)
    # generation: each call passes the neighbours of the chunks it completes
    cache = model.new_cache(batch_size)
    logits, _ = model(prompt, prompt_nbr_tokens, prompt_nbr_lens, cache=cache, last_only=True)
    logits, _ = model(next_token, cache=cache, last_only=True)  # no chunk completed: no neighbours

    python -m retro.model     # parameter counts of the presets next to the paper's

Files: config.py (RetroConfig, presets), layers.py (blocks, the four attentions, the encoder),
decoding.py (what a call attends to, the decoding cache), gpt.py (GPT, Retro, RETRO-fit).
"""

from typing import TYPE_CHECKING

from retro._lazy import lazy_names
from retro.model.config import (CROSS_POSITIONS, DECODER_FIELDS, PAPER_PARAMS, PRESETS,
                                 RetroConfig)

if TYPE_CHECKING:
    from retro.model.decoding import DecodeCache, LayerCache, NeighbourMemory
    from retro.model.gpt import GPT, Retro, count_parameters, from_gpt, parameter_table
    from retro.model.layers import ChunkedCrossAttention, Encoder

# torch-backed: imported on first use (the config alone serves `retro train --help`)
__getattr__ = lazy_names(__name__, {
    **dict.fromkeys(["DecodeCache", "LayerCache", "NeighbourMemory"], "retro.model.decoding"),
    **dict.fromkeys(["GPT", "Retro", "count_parameters", "from_gpt", "parameter_table"],
                    "retro.model.gpt"),
    **dict.fromkeys(["ChunkedCrossAttention", "Encoder"], "retro.model.layers"),
})

__all__ = ["CROSS_POSITIONS", "DECODER_FIELDS", "GPT", "PAPER_PARAMS", "PRESETS",
           "ChunkedCrossAttention", "DecodeCache", "Encoder", "LayerCache", "NeighbourMemory",
           "Retro", "RetroConfig", "count_parameters", "from_gpt", "parameter_table"]
