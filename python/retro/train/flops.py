"""Model FLOPs of GPT and RETRO training, counted from the config: every matmul of the decoder,
the neighbour encoder, chunked cross-attention (CCA) and the attention products.

One multiply-add is 2 FLOPs. For one sequence of T tokens (C = n_embd, D = enc_width, V =
vocab_size, m = chunk_size, L = T // m chunks, K = n_nbrs, R = nbr_len, N = L K R neighbour
tokens), the forward pass costs:

- weight matmuls: 2 x (weights of the Linear layer) x (tokens it runs on). Decoder blocks
  12 C^2 each on T tokens, lm_head C V on T; CCA's q and out projections (2 C^2) on T, its k and v
  (2 C D) on the N neighbour tokens; encoder blocks 12 D^2 each on N, the first block's
  cross-attention q and out (2 D^2) on N and k, v (2 C D) on the T decoder states; the encoder's
  input projection C D on N when D != C, and its previous-token projection C D on N
  (enc_previous_token). Biases, LayerNorms and embedding look-ups are not matmuls.
- attention: 4 x width x (query-key pairs), for q k^T and p v. Causal self-attention T (T + 1) / 2
  pairs per layer (PaLM's 6 N + 12 n_layer C T counts T^2; the causal half is what a flash kernel
  computes, and how the issue's nanoGPT MFU is counted); CCA (T - m + 1) K R per layer (tokens
  0 .. m-2 attend to nothing); encoder self-attention L K R^2 per layer; its cross-attention N m.
  Padding keys of short neighbours are counted like real ones (the model's shapes are dense).

Training = 3 x forward (the backward pass costs two forwards); recomputation is not model FLOPs.

    training_flops_per_token(RetroConfig.preset("small"), retrieval=True)   # ~1.3e9
"""

from __future__ import annotations

from retro.model import RetroConfig

# The paper's extra GPU-hours of RETRO over its GPT at 'small' size (Wang et al. 2023).
PAPER_SMALL_OVERHEAD: float = 0.258


def forward_flops(config: RetroConfig, retrieval: bool, seq_len: int | None = None) -> dict[str, int]:
    """FLOPs of one forward pass over one sequence of seq_len (default block_size) tokens, by part.

    retrieval: RETRO with the neighbours of every complete chunk (False: the GPT decoder alone).
    Parts: decoder_matmul, decoder_attention, lm_head, and with retrieval cca_matmul,
    cca_attention, encoder_matmul, encoder_attention.
    """
    t = config.block_size if seq_len is None else seq_len
    c, v = config.n_embd, config.vocab_size
    parts = {
        "decoder_matmul": 2 * config.n_layer * 12 * c * c * t,
        "decoder_attention": config.n_layer * 4 * c * t * (t + 1) // 2,
        "lm_head": 2 * c * v * t,
    }
    if not retrieval:
        return parts
    m, k, r, d = config.chunk_size, config.n_nbrs, config.nbr_len, config.enc_width
    n_chunks = t // m
    n_nbr_tokens = n_chunks * k * r
    n_cca = len(config.retro_layers)
    attending = max(0, min(t, n_chunks * m + m - 1) - (m - 1))  # tokens with a chunk to attend to
    encoder_input = 2 * c * d * n_nbr_tokens * ((d != c) + config.enc_previous_token)
    cross_kv = 2 * 2 * c * d * t  # the first encoder block's keys and values of the decoder states
    return {
        **parts,
        "cca_matmul": n_cca * 2 * (2 * c * c * t + 2 * d * c * n_nbr_tokens),
        "cca_attention": n_cca * 4 * c * attending * k * r,
        "encoder_matmul": (encoder_input + 2 * config.enc_n_layer * 12 * d * d * n_nbr_tokens
                           + 2 * 2 * d * d * n_nbr_tokens + cross_kv),
        "encoder_attention": (config.enc_n_layer * 4 * d * n_chunks * k * r * r
                              + 4 * d * n_nbr_tokens * m),
    }


def training_flops_per_token(config: RetroConfig, retrieval: bool,
                             seq_len: int | None = None) -> float:
    """Model FLOPs of one training step (forward and backward) per decoder token."""
    t = config.block_size if seq_len is None else seq_len
    return 3 * sum(forward_flops(config, retrieval, t).values()) / t


__all__ = ["PAPER_SMALL_OVERHEAD", "forward_flops", "training_flops_per_token"]
