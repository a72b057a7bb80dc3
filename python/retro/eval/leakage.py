"""Leakage-filtered evaluation (DeepMind §4.4): bits per byte over the chunks whose longest common
token run with the neighbours they were predicted from, RET(C_{u-1}), is at most alpha * m."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retro.eval.bytes import bits_per_byte
from retro.eval.overlap import chunk_overlaps

ALPHAS = (0.125, 0.25, 0.5, 1.0)


def sample_overlaps(tokens: np.ndarray, nbr_tokens: np.ndarray, nbr_lens: np.ndarray,
                    chunk_size: int) -> np.ndarray:
    """(S, L - 1) float64: for chunks u = 1 .. L-1 of each sample, the longest run shared with
    RET(C_{u-1}) as a fraction of m. tokens (S, T + 1); nbr_tokens (S, L, k, R); nbr_lens (S, L, k)."""
    n, n_chunks = nbr_lens.shape[:2]
    chunks = tokens[:, chunk_size: n_chunks * chunk_size].reshape(n, n_chunks - 1, chunk_size)
    runs = chunk_overlaps(chunks.reshape(-1, chunk_size),
                          nbr_tokens[:, :-1].reshape(-1, *nbr_tokens.shape[2:]),
                          nbr_lens[:, :-1].reshape(-1, nbr_lens.shape[2]))
    return runs.reshape(n, n_chunks - 1) / chunk_size


def filtered_bpb(overlaps: np.ndarray, nats: dict[str, np.ndarray], n_bytes: np.ndarray,
                 alphas: tuple[float, ...] = ALPHAS) -> dict:
    """bpb of each model over the chunks u >= 1 with overlap <= alpha, and over chunk 0 apart.

    overlaps (S, L - 1); nats {model: (S, L + 1) summed nats per target group}; n_bytes (S, L + 1).
    The last group (each sample's final target) belongs to no chunk and is left out here.
    """
    n_chunks = overlaps.shape[1] + 1
    chunks: list[int] = []
    share: list[float] = []
    bpb: dict[str, list[float]] = {name: [] for name in nats}
    for alpha in alphas:
        keep = overlaps <= alpha + 1e-9  # (S, L - 1), chunks 1 .. L-1
        chunks.append(int(keep.sum()))
        share.append(float(keep.mean()) if keep.size else float("nan"))
        kept_bytes = int(n_bytes[:, 1:n_chunks][keep].sum())
        for name, v in nats.items():
            bpb[name].append(bits_per_byte(float(v[:, 1:n_chunks][keep].sum()), kept_bytes))
    return {"alphas": list(alphas), "chunks": chunks, "share": share, "bpb": bpb,
            "chunk0": {"chunks": int(overlaps.shape[0]),
                       "bpb": {name: bits_per_byte(float(v[:, 0].sum()), int(n_bytes[:, 0].sum()))
                               for name, v in nats.items()}}}


def leakage_table(leakage: dict) -> str:
    """The filtered bpb as a Markdown table, one row per alpha, then chunk 0."""
    names = list(leakage["bpb"])
    rows = ["| max overlap alpha | chunks | share | " + " | ".join(f"{n} bpb" for n in names) + " |",
            "|---" * (3 + len(names)) + "|"]
    for i, alpha in enumerate(leakage["alphas"]):
        rows.append(f"| {alpha:g} | {leakage['chunks'][i]} | {leakage['share'][i]:.3f} | "
                    + " | ".join(f"{leakage['bpb'][n][i]:.4f}" for n in names) + " |")
    chunk0 = leakage["chunk0"]
    rows.append(f"| chunk 0 (no neighbours) | {chunk0['chunks']} | - | "
                + " | ".join(f"{chunk0['bpb'][n]:.4f}" for n in names) + " |")
    return "\n".join(rows)


def plot_leakage(leakage: dict, path: str | Path, title: str = "") -> Path:
    """bpb against alpha per model (DeepMind Fig. 4 style), written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in leakage["bpb"].items():
        ax.plot(leakage["alphas"], values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(leakage["alphas"], [f"{a:g}" for a in leakage["alphas"]])
    ax.set_xlabel("max longest-common-run / chunk size (alpha)")
    ax.set_ylabel("bits per byte (chunks u >= 1)")
    ax.set_title(title or "Leakage-filtered evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
