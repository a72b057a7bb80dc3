"""The sentence embedder on the CPU: chunks/s and quality of each way of running it, on real text.

The text is that of a built database (the demo's: `retro demo` writes runs/demo/db): its first
--chunks chunks and its first --queries valid query chunks, decoded as the build decodes them. Each
mode embeds the chunks in the build's blocks of 1024, the modes interleaved block by block (a load
that comes and goes hits them alike), then the queries. The anchor is the embedder as it was before
issue 21: fp32, each block one sentence-transformers `encode` call (its own order, by characters).

    fp32 (encode order)  the anchor
    fp32                 Embedder(precision="fp32"): batches ordered by token count
    int8                 Embedder(precision="int8"): dynamically quantized Linear layers, same order
    fp32 + torch.compile fp32 with the transformer compiled (inductor, dynamic shapes; warmed up)
    bf16                 Embedder(precision="bf16"): only where the CPU has native bf16

Quality, each against the anchor: the cosine of every chunk's and query's embedding (mean, min) and
the overlap of each query's exact top-10 chunks (inner product over the chunks) with the anchor's.
A mode passes with a mean cosine >= 0.99 and a top-10 overlap >= 0.95. As a check, the anchor is
compared with the embeddings stored in the database (the same when it was built in fp32).

    python bench/embedder.py --db runs/demo/db --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

MIN_MEAN_COSINE = 0.99
MIN_TOP10_OVERLAP = 0.95
TOP = 10
ANCHOR = "fp32 (encode order)"
Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, dim) float32 unit vectors


def anchor_mode() -> Embed:
    """The embedder before issue 21: one encode call per block, sentence-transformers' order."""
    import torch

    from retro.db.embed import BATCH_SIZE, DEFAULT_NAME, load_model

    model = load_model(DEFAULT_NAME, "cpu")

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            vectors = model.encode(texts, batch_size=BATCH_SIZE, convert_to_tensor=True,
                                   show_progress_bar=False)
        return torch.nn.functional.normalize(vectors.float(), dim=1).numpy()

    return embed


def embedder_mode(precision: str, compiled: bool = False) -> Embed:
    """Embedder(precision).embed as float32; compiled: its transformer through torch.compile."""
    import torch

    from retro.db.embed import Embedder

    embedder = Embedder("default", device="cpu", precision=precision)
    if compiled:
        embedder.model = copy.deepcopy(embedder.model)  # the cached model stays as it is
        embedder.model[0].auto_model = torch.compile(embedder.model[0].auto_model, dynamic=True)
    return lambda texts: embedder.embed(texts).astype(np.float32)


def modes(names: list[str]) -> dict[str, Embed]:
    makers: dict[str, Callable[[], Embed]] = {
        ANCHOR: anchor_mode,
        "fp32": lambda: embedder_mode("fp32"),
        "int8": lambda: embedder_mode("int8"),
        "fp32 + torch.compile": lambda: embedder_mode("fp32", compiled=True),
        "bf16": lambda: embedder_mode("bf16"),
    }
    return {name: makers[name]() for name in names}


def default_modes() -> list[str]:
    from retro.machine import cpu_has_native_bf16

    return [ANCHOR, "fp32", "int8", "fp32 + torch.compile", *(["bf16"] if cpu_has_native_bf16() else [])]


def top_k(chunks: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(n_queries, k) ids of the exact top-k chunks by inner product."""
    scores = queries @ chunks.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(ids: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of each row of reference (n, k) that the same row of ids holds."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, reference)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("runs/demo/db"), help="a built database (read only)")
    parser.add_argument("--chunks", type=int, default=8192, help="its first chunks, embedded and searched")
    parser.add_argument("--queries", type=int, default=1744, help="its first valid query chunks (>= 1000)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    parser.add_argument("--modes", nargs="+", default=None, help="default: every mode this CPU runs well")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/embedder_avx2.json (embedder_bf16.json with native bf16)")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from retro.db import open_db
    from retro.db.embed import BLOCK, Embedder
    from retro.machine import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    db = open_db(args.db)
    tokenizer = db.tokenizer
    n_chunks = min(args.chunks, len(db))
    queries = db.split("valid").stream
    n_queries = min(args.queries, queries.n_queries)
    chunk_texts = tokenizer.texts_without_eod(np.asarray(db.chunks.tokens[:n_chunks]))
    query_texts = tokenizer.texts_without_eod(queries.query_tokens(0, n_queries))
    counter = Embedder("default", device="cpu", precision="fp32")
    wordpieces = np.concatenate([counter.token_counts(chunk_texts[s : s + BLOCK]) for s in range(0, n_chunks, BLOCK)])

    names = args.modes or default_modes()
    embedders = modes(names)
    for embed in embedders.values():  # one-time work (torch.compile) out of the timings
        embed(chunk_texts[:256])

    load_before = provenance.load_average()
    seconds = dict.fromkeys(names, 0.0)
    chunk_vectors: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_chunks, BLOCK):
        block = chunk_texts[start : start + BLOCK]
        for name, embed in embedders.items():
            began = time.perf_counter()
            chunk_vectors[name].append(embed(block))
            seconds[name] += time.perf_counter() - began
        print(f"{start + len(block)} chunks: " + ", ".join(
            f"{name} {(start + len(block)) / seconds[name]:.1f}/s" for name in names), flush=True)
    chunks = {name: np.concatenate(parts) for name, parts in chunk_vectors.items()}
    query_vectors = {name: np.concatenate([embed(query_texts[s : s + BLOCK]) for s in range(0, n_queries, BLOCK)])
                     for name, embed in embedders.items()}

    reference, reference_queries = chunks[ANCHOR], query_vectors[ANCHOR]
    reference_top = top_k(reference, reference_queries, TOP)
    stored = np.asarray(db.embeddings[:n_chunks], dtype=np.float32)
    rows = []
    for name in names:
        cosines = np.concatenate([np.sum(chunks[name] * reference, axis=1),
                                  np.sum(query_vectors[name] * reference_queries, axis=1)])
        top10 = overlap(top_k(chunks[name], query_vectors[name], TOP), reference_top)
        rows.append({
            "mode": name, "seconds": seconds[name], "chunks_per_s": n_chunks / seconds[name],
            "ratio": seconds[ANCHOR] / seconds[name],
            "mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()), "top10_overlap": top10,
            "passes": bool(cosines.mean() >= MIN_MEAN_COSINE and top10 >= MIN_TOP10_OVERLAP),
        })
    stored_cosine = np.sum(stored * reference, axis=1)
    result = {
        "db": str(args.db), "db_precision": db.manifest.components["embedder"]["precision"],
        "chunks": n_chunks, "queries": n_queries, "block": BLOCK,
        "wordpieces": {"mean": float(wordpieces.mean()), "max": int(wordpieces.max())},
        "padding": padding_ratios(wordpieces, [len(text) for text in chunk_texts], BLOCK),
        "anchor_vs_stored_cosine": {"mean": float(stored_cosine.mean()), "min": float(stored_cosine.min())},
        "native_bf16": cpu_has_native_bf16(),
        "thresholds": {"mean_cosine": MIN_MEAN_COSINE, "top10_overlap": MIN_TOP10_OVERLAP},
        "rows": rows,
    }
    out = args.out or report.RESULTS_DIR / ("embedder_bf16.json" if cpu_has_native_bf16() else "embedder_avx2.json")
    record = report.write_result(out, result, threads=args.threads, load_before=load_before)
    print(markdown(record))
    print(f"results in {out}; tables rewritten: {', '.join(render.write_tables(out)) or 'none'}")


def padding_ratios(wordpieces: np.ndarray, characters: list[int], block: int) -> dict[str, float]:
    """Tokens run (each batch padded to its longest text) / real tokens, per order within blocks:
    by characters (sentence-transformers' encode) and by token count (Embedder)."""
    from retro.db.embed import BATCH_SIZE, length_sorted_batches

    def padded(lengths_for_order: np.ndarray) -> int:
        total = 0
        for start in range(0, len(wordpieces), block):
            counts = wordpieces[start : start + block]
            for batch in length_sorted_batches(lengths_for_order[start : start + block], BATCH_SIZE):
                total += int(counts[batch].max()) * len(batch)
        return total

    real = int(wordpieces.sum())
    return {"characters": padded(np.asarray(characters)) / real, "tokens": padded(wordpieces) / real}


def markdown(result: dict) -> str:
    """The table of docs/PERFORMANCE.md."""
    padding, thresholds = result["padding"], result["thresholds"]
    lines = [
        provenance.describe(result),
        f"Text of `{result['db']}` (built in {result['db_precision']}): its first {result['chunks']:,} "
        f"chunks, in blocks of {result['block']}, and {result['queries']:,} valid query chunks; "
        f"{result['wordpieces']['mean']:.1f} model tokens per chunk on average, "
        f"{result['wordpieces']['max']} at most. Tokens run per real token: "
        f"{padding['characters']:.3f} in encode's order, {padding['tokens']:.3f} ordered by tokens. "
        f"The anchor against the database's stored embeddings: mean cosine "
        f"{result['anchor_vs_stored_cosine']['mean']:.5f}, min {result['anchor_vs_stored_cosine']['min']:.5f}.",
        "",
        "| mode | chunks/s | ratio to anchor | mean cosine | min cosine | top-10 overlap | passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['mode']} | {row['chunks_per_s']:.1f} | {row['ratio']:.2f}x | "
                     f"{row['mean_cosine']:.5f} | {row['min_cosine']:.4f} | {row['top10_overlap']:.4f} | "
                     f"{'yes' if row['passes'] else 'no'} |")
    lines += ["", f"Passes: mean cosine >= {thresholds['mean_cosine']} and top-10 overlap >= "
              f"{thresholds['top10_overlap']} against the anchor (fp32 in encode's order)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
