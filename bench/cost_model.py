"""The paper's run priced from this project's measured throughputs, beside the paper's quoted costs.

The configuration (Wang et al. 2023, arXiv 2304.06762): 330B pretraining tokens, a database of
5.3B chunks of 64 tokens, the index OPQ32_256,IVF4194304_HNSW32,PQ32 searched with nprobe 4096,
k = 2 neighbours per chunk, models of 148M to 9.5B parameters. Every rate comes from a JSON in
bench/results/ written by a benchmark of this project (its machine and command are copied into
the table); every total is that rate times the paper's counts, with the scaling rule written
beside it; the paper's own costs are quoted with their source. Nothing here is a new measurement.

Writes bench/results/cost_model.json and its tables in docs/SCALING.md (bench/render.py):

    python bench/cost_model.py [--nodes 16] [--gpus-per-node 8] [--cores-per-node 96]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402  (bench/provenance.py)
import render  # noqa: E402  (bench/render.py)
import report  # noqa: E402  (bench/report.py)

RESULTS = report.RESULTS_DIR
PAPER_SOURCE = "Wang et al. 2023, arXiv 2304.06762"
INSTRUCT_SOURCE = "InstructRetro, Wang et al. 2023b, arXiv 2310.07713"

# The paper's configuration (quoted, PAPER_SOURCE).
TOKENS = 330e9
CHUNKS = 5.3e9
CHUNK_SIZE = 64
QUERIES = TOKENS / CHUNK_SIZE  # every pretraining chunk is a query
NLIST, NPROBE, PQ_M, OPQ_DIM, K = 4_194_304, 4096, 32, 256, 2
BERT_LARGE = dict(n_layer=24, width=1024)  # the paper's embedder, 1024-d
MINILM = dict(n_layer=6, width=384)  # this project's default embedder (all-MiniLM-L6-v2)
# Quoted costs: (what, value, unit, source).
QUOTED = {
    "embed": (850, "A100-hours", PAPER_SOURCE),
    "search_per_100b": (1700, "CPU-hours", INSTRUCT_SOURCE),
    "train": {  # preset: (GPT, RETRO) GPU-hours for 330B tokens
        "small": (1240, 1560), "medium": (3600, 4480), "xl": (12000, 13440),
    },
}
BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments (autocast keeps fp32)
INDEX_BYTES_PER_VECTOR = PQ_M + 8 + 4  # PQ code, int64 id, the core's per-vector L2 term (float)


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def measured_by(result: dict, threads: int | None = None) -> str:
    """"measured: `command` on machine, commit, date" of a benchmark JSON (threads: of the rows
    used, where the JSON has several)."""
    run = provenance.recorded(result)[0]
    threads = threads or run["threads"]
    where = run["device"] or f"{run['cpu']} ({run['cores']} cores), {threads} thread(s)"
    return (f"measured: `{provenance.shown_command(run['command'])}` on {where}, commit `{run['git_commit']}`, "
            f"{run['date']}")


def embedding_rows(db_build: dict) -> list[dict]:
    """Chunk and query embedding: MiniLM measured per core; BERT-large by its matmul FLOPs."""
    stages = db_build["stages"]
    source = measured_by(db_build)
    # Forward matmul FLOPs per token of a BERT-style encoder: 2 x 12 width^2 per layer.
    flops = {name: 24 * spec["n_layer"] * spec["width"] ** 2
             for name, spec in (("minilm", MINILM), ("bert", BERT_LARGE))}
    bert_over_minilm = flops["bert"] / flops["minilm"]
    rows = []
    for what, count, stage in (("embed 5.3B database chunks", CHUNKS, "embed"),
                               ("embed 5.16B query chunks", QUERIES, "queries.train")):
        rate = stages[stage]["rows_per_s"]  # chunks/s on one thread
        hours = count / rate / 3600
        rows.append(dict(stage=f"{what}, MiniLM-L6 (384-d)", unit="core-hours", hours=hours,
                         rate=f"{rate:,.0f} chunks/s per core", source=source))
        rows.append(dict(stage=f"{what}, BERT-large (1024-d)", unit="core-hours",
                         hours=hours * bert_over_minilm,
                         rate=f"{rate / bert_over_minilm:,.1f} chunks/s per core",
                         source=f"derived: MiniLM's rate / {bert_over_minilm:.1f} (matmul FLOPs "
                                "per token, 24 x layers x width^2)"))
    return rows


def index_rows(ivfpq: dict) -> list[dict]:
    """Adding and searching at the paper's sizes from the 1M-vector benchmark's 1-thread rates."""
    bench = next(r for r in ivfpq["results"] if r["name"] == "synthetic-1000k")
    n, d, nlist, pq_m = bench["n"], bench["d"], bench["nlist"], bench["pq_m"]
    build = next(b for b in bench["build"] if b["engine"] == "retro")
    add_per_core = n / build["add_seconds"] / build["threads"]
    # Adding is the coarse assignment's GEMM (2 nlist d FLOPs per vector): its rate carries over.
    coarse_flops_per_s = add_per_core * 2 * nlist * d
    paper_coarse = 2 * NLIST * OPQ_DIM  # FLOPs per vector against 4M centroids of 256-d (flat)
    one_thread = [s for s in bench["search"] if s["engine"] == "retro" and s["threads"] == 1]
    deepest = max(one_thread, key=lambda s: s["nprobe"])  # the most scan-bound point
    source = measured_by(ivfpq, threads=1)
    add_source = measured_by(ivfpq, threads=build["threads"])
    codes_per_query = n * deepest["nprobe"] / nlist
    codes_per_s = deepest["batch_qps"] * codes_per_query * pq_m / PQ_M  # PQ32 scans 32 bytes
    paper_codes = CHUNKS * NPROBE / NLIST
    search_qps = codes_per_s / paper_codes
    return [
        dict(stage="add 5.3B chunks: coarse assignment, flat 4M x 256 (no HNSW in retro)",
             unit="core-hours", hours=CHUNKS * paper_coarse / coarse_flops_per_s / 3600,
             rate=f"{coarse_flops_per_s / 1e9:,.0f} GFLOP/s per core "
                  f"({add_per_core:,.0f} adds/s at IVF{nlist})",
             source=f"{add_source}; derived: 2 x 4,194,304 x 256 FLOPs per vector at that rate"),
        dict(stage="neighbour queries of 5.16B chunks: PQ32 scan of "
                   f"{paper_codes / 1e6:.2f}M codes per query",
             unit="core-hours", hours=QUERIES / search_qps / 3600,
             rate=f"{codes_per_s / 1e6:,.0f}M codes/s per core = {search_qps:,.1f} queries/s",
             source=f"{source} (1 thread, nprobe {deepest['nprobe']}: "
                    f"{deepest['batch_qps']:,.0f} queries/s x {codes_per_query:,.0f} codes, "
                    f"x {pq_m}/{PQ_M} for 32-byte codes); derived"),
        dict(stage="neighbour queries of 5.16B chunks: coarse search, flat (no HNSW in retro)",
             unit="core-hours", hours=QUERIES * paper_coarse / coarse_flops_per_s / 3600,
             rate=f"{coarse_flops_per_s / paper_coarse:,.1f} queries/s per core",
             source="derived: as the coarse assignment above"),
    ]


def training_rows(train_cuda: dict) -> tuple[list[dict], list[dict]]:
    """GPU-hours for 330B tokens per preset and the memory per GPU, from the measured GPT-small
    MFU on the card of train_cuda.json."""
    import torch

    from retro.train.flops import training_flops_per_token
    from retro.model import GPT, PAPER_PARAMS, Retro, RetroConfig

    machine = train_cuda["machine"]
    card, peak = machine["device_name"], machine["peak_tflops"] * 1e12
    gpt = next(r for r in train_cuda["results"] if r["config"] == "gpt")
    source = measured_by(train_cuda)
    rows, memory = [], []
    for preset, (quoted_gpt, quoted_retro) in {**QUOTED["train"], "xxl": (None, None)}.items():
        config = RetroConfig.preset(preset)
        for kind, model_class, quoted in (("GPT", GPT, quoted_gpt), ("RETRO", Retro, quoted_retro)):
            flops = training_flops_per_token(config, retrieval=kind == "RETRO")
            if preset == "small" and kind == "GPT":
                hours, how = TOKENS / gpt["tokens_per_s"] / 3600, source
            else:
                hours = TOKENS * flops / (gpt["mfu"] * peak) / 3600
                how = (f"derived: {flops / 1e9:.2f} GFLOP/token (retro.train.flops) at GPT-small's "
                       f"measured {gpt['mfu']:.1%} MFU")
            rows.append(dict(stage=f"train {kind}-{preset} ({PAPER_PARAMS[preset][kind == 'GPT']:.3g} "
                                   "params quoted) on 330B tokens",
                             unit=f"{card} GPU-hours", hours=hours,
                             rate=f"{TOKENS / hours / 3600:,.0f} tokens/s per GPU", source=how,
                             quoted=None if quoted is None else f"{quoted:,} GPU-hours"))
            with torch.device("meta"):
                params = sum(p.numel() for p in model_class(config).parameters())
            memory.append(dict(model=f"{kind}-{preset}", params=params,
                               state_gb=params * BYTES_PER_PARAM / 1e9))
    activations = dict(model="GPT-small", gb=gpt["peak_memory_mb"] / 1e3,
                       batch=f"{gpt['batch_size']} x {gpt['block_size']}", source=source)
    return rows, [*memory, activations]


def storage() -> list[tuple[str, float]]:
    """(file, bytes) of the paper-scale database in this project's layout."""
    return [
        ("chunks/tokens.npy (uint16)", CHUNKS * CHUNK_SIZE * 2),
        ("embeddings.npy, 1024-d fp16 (BERT-large)", CHUNKS * 1024 * 2),
        ("embeddings.npy, 384-d fp16 (MiniLM)", CHUNKS * 384 * 2),
        ("queries/train/embeddings.npy, 1024-d fp16", QUERIES * 1024 * 2),
        ("neighbours/train/ids.npy + lengths.npy", QUERIES * K * (8 + 4)),
        (f"index: PQ{PQ_M} codes + ids + L2 terms ({INDEX_BYTES_PER_VECTOR} B/vector)",
         CHUNKS * INDEX_BYTES_PER_VECTOR),
        ("index: coarse centroids 4M x 256 fp32 + OPQ", NLIST * OPQ_DIM * 4 + OPQ_DIM * 1024 * 4),
    ]


def markdown(result: dict) -> str:
    """The tables of docs/SCALING.md (markers cost-model)."""
    cluster = result["cluster"]
    cores = cluster["nodes"] * cluster["cores_per_node"]
    gpus = cluster["nodes"] * cluster["gpus_per_node"]
    lines = [provenance.describe(result), f"Generated by `python bench/cost_model.py` from the JSONs named in each row. "
             f"Wall times assume {cluster['nodes']} nodes of {cluster['gpus_per_node']} GPUs and "
             f"{cluster['cores_per_node']} cores ({gpus} GPUs, {cores:,} cores): an assumption, "
             "not a measurement.", "",
             "### Database and neighbours (CPU rates of this project)", "",
             "| stage | rate | resource-hours | wall on the cluster | paper (quoted) | source |",
             "|---|---|---|---|---|---|"]
    quoted_embed = "{:,} {} ({})".format(*QUOTED["embed"])
    quoted_search = "{:,} {} per 100B tokens = {:,.0f} for 330B ({})".format(
        *QUOTED["search_per_100b"][:2], QUOTED["search_per_100b"][0] * 3.3,
        QUOTED["search_per_100b"][2])
    for row in result["database"]:
        quoted = (quoted_embed if "BERT-large" in row["stage"] and "database" in row["stage"]
                  else quoted_search if "scan" in row["stage"] else "")
        lines.append(f"| {row['stage']} | {row['rate']} | {row['hours']:,.0f} {row['unit']} | "
                     f"{row['hours'] / cores:,.1f} h | {quoted} | {row['source']} |")
    lines += ["", "### Pretraining on 330B tokens (GPU rate of this project)", "",
              "| stage | rate | GPU-hours | wall on the cluster | paper (quoted) | source |",
              "|---|---|---|---|---|---|"]
    for row in result["training"]:
        quoted = f"{row['quoted']} ({PAPER_SOURCE})" if row["quoted"] else "-"
        lines.append(f"| {row['stage']} | {row['rate']} | {row['hours']:,.0f} {row['unit']} | "
                     f"{row['hours'] / gpus:,.1f} h | {quoted} | {row['source']} |")
    lines += ["", "### Memory", "",
              f"| model | parameters (retro.model) | weights + gradients + AdamW ({BYTES_PER_PARAM} "
              f"B/param) | per GPU, FSDP2 over {cluster['gpus_per_node']} | per GPU, FSDP2 over "
              f"{gpus} |", "|---|---|---|---|---|"]
    activations = result["memory"][-1]
    for row in result["memory"][:-1]:
        lines.append(f"| {row['model']} | {row['params'] / 1e6:,.0f}M | {row['state_gb']:,.1f} GB "
                     f"| {row['state_gb'] / cluster['gpus_per_node']:,.1f} GB | "
                     f"{row['state_gb'] / gpus:,.2f} GB |")
    lines += ["", f"Activations are on top: {activations['model']} peaked at "
              f"{activations['gb']:.1f} GB at batch {activations['batch']} ({activations['source']});"
              " larger models are not measured.", "",
              "| database file at the paper's scale | size | per node, sharded over "
              f"{cluster['nodes']} nodes |", "|---|---|---|"]
    for name, size in result["storage"]:
        lines.append(f"| {name} | {size / 1e12:,.3f} TB | {size / cluster['nodes'] / 1e9:,.1f} GB |")
    return "\n".join(lines)


def cost_model(nodes: int = 16, gpus_per_node: int = 8, cores_per_node: int = 96) -> dict:
    """Every row of the model, from the JSONs in bench/results/ (see the module docstring)."""
    training, memory = training_rows(load("train_cuda"))
    return {
        "cluster": {"nodes": nodes, "gpus_per_node": gpus_per_node,
                    "cores_per_node": cores_per_node},
        "database": embedding_rows(load("db_build")) + index_rows(load("ivfpq_cpu")),
        "training": training,
        "memory": memory,
        "storage": storage(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cores-per-node", type=int, default=96)
    args = parser.parse_args()
    result = cost_model(args.nodes, args.gpus_per_node, args.cores_per_node)
    path = RESULTS / "cost_model.json"
    report.write_result(path, result, threads=None)  # times nothing: every rate is another JSON's
    render.write_tables(path)
    print(markdown(result))


if __name__ == "__main__":
    main()
