"""``retro db build|info|show|query``: a thin layer over retro.db."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retro.data.edits import load_edits, parse_edit
from retro.db.build import BuildConfig, build_db
from retro.db.database import open_db
from retro.db.embed import PRECISIONS
from retro.db.info import RECALL_SAMPLE, neighbour_recall, show_query, summary
from retro.db.query_set import query_db

DEFAULTS = BuildConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro db`` and its subcommands."""
    db = subparsers.add_parser("db", help="build and inspect the retrieval database")
    commands = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")

    build = commands.add_parser(
        "build", help="corpus -> chunks -> embeddings -> index -> neighbours",
        description="Build (or resume) a retrieval database. Under `torchrun --nproc-per-node N -m "
                    "retro db build ...` the N ranks split tokenizing, embedding, index encoding "
                    "and neighbour search by range (with --index-shards S >= N each rank searches "
                    "its own shards); the files are those of a one-process build.")
    build.add_argument("--corpus", nargs="+", default=list(DEFAULTS.corpus),
                       help="'default' (Wikipedia leads), 'factbook' (or 'factbook:government,"
                            "geography' for some sections), 'kjv', or .txt/.jsonl/.parquet "
                            "files and directories (default: %(default)s)")
    build.add_argument("--out", type=Path, required=True, help="database directory (resumed if it exists)")
    build.add_argument("--tokenizer", default=DEFAULTS.tokenizer, help="'gpt2' or a tokenizer.json")
    build.add_argument("--embedder", default=DEFAULTS.embedder,
                       help="'default' (all-MiniLM-L6-v2, shipped, offline), a sentence-transformers/HF "
                            "model directory, or a Hugging Face hub id 'org/name' (fetched when "
                            "online)")
    build.add_argument("--index", default=DEFAULTS.index,
                       help="'auto' (chosen from the number of chunks), 'Flat', 'IVF<nlist>,PQ<pq_m>' "
                            "or with an OPQ rotation 'OPQ<m>[_<d>],IVF<nlist>,PQ<pq_m>'")
    build.add_argument("--nprobe", type=int, default=None, help="lists visited per query")
    build.add_argument("--index-shards", type=int, default=DEFAULTS.index_shards,
                       help="store the IVF-PQ index as S shards of chunk-id ranges "
                            "(index.shards/); under torchrun with S >= ranks each rank loads and "
                            "searches only its own (default: one file, index.ivfpq)")
    build.add_argument("--n-nbrs", type=int, default=DEFAULTS.n_nbrs, help="neighbours per query chunk")
    build.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size, help="tokens per chunk")
    build.add_argument("--block-size", type=int, default=DEFAULTS.block_size,
                       help="tokens per training sample, a multiple of the chunk size")
    build.add_argument("--valid-fraction", type=float, default=DEFAULTS.valid_fraction,
                       help="share of documents held out for validation")
    build.add_argument("--seed", type=int, default=DEFAULTS.seed)
    build.add_argument("--text-field", default=DEFAULTS.text_field, help="text field of .jsonl/.parquet")
    build.add_argument("--block", type=int, default=DEFAULTS.block,
                       help="rows per resumable block of the embedding and neighbour stages")
    build.add_argument("--valid-in-db", action="store_true",
                       help="knowledge in the database (DeepMind's Wikipedia setting): add the valid "
                            "documents' chunks to the database; default: strict, train documents only")
    build.add_argument("--align-documents", action="store_true",
                       help="start every document on a chunk (eod padding in the streams): query "
                            "chunks are database chunks, embedded once and retrieved aligned")
    build.add_argument("--edits", default=None, metavar="capitals|FILE.json",
                       help="whole-word replacements made in the database's (train) documents: "
                            "'capitals' (world capitals swapped among countries) or a JSON {old: new}")
    build.add_argument("--edit", action="append", default=[], metavar="OLD=NEW",
                       help="one replacement, e.g. --edit Paris=Lyon (repeatable)")
    build.add_argument("--reuse-embeddings", type=Path, default=None, metavar="DIR",
                       help="take the embeddings of the chunks and query chunks that the database "
                            "DIR (same tokenizer, chunk size, embedder) already embedded")
    build.add_argument("--embed-precision", choices=PRECISIONS, default=None,
                       help="the embedder's precision (int8: faster on CPUs, neighbours further "
                            "from fp32's; see docs/PERFORMANCE.md); default: bf16 where the CPU "
                            "or GPU has it natively, else fp32; a resumed build keeps its own")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(func=run_build)

    info = commands.add_parser("info", help="counts, parameters, timings, sizes and neighbour recall")
    info.add_argument("dir", type=Path)
    info.add_argument("--recall-sample", type=int, default=RECALL_SAMPLE,
                      help="query chunks per split checked against exact search (0: skip)")
    info.add_argument("--json", action="store_true", help="print the manifest and recall as JSON")
    info.set_defaults(func=run_info)

    show = commands.add_parser("show", help="a query chunk and its neighbours as text")
    show.add_argument("dir", type=Path)
    show.add_argument("--query", type=int, required=True, help="query chunk number")
    show.add_argument("--split", default="train")
    show.set_defaults(func=run_show)

    query = commands.add_parser("query", help="neighbours for another corpus against a database")
    query.add_argument("dir", type=Path, help="the database")
    query.add_argument("--corpus", nargs="+", required=True)
    query.add_argument("--out", type=Path, required=True, help="the query set's directory")
    query.add_argument("--name", default="eval", help="the query set's split name")
    query.add_argument("--block-size", type=int, default=None, help="default: the database's")
    query.add_argument("--embedder", default=None, help="default: the database's")
    query.add_argument("--text-field", default=DEFAULTS.text_field)
    query.add_argument("--no-progress", action="store_true")
    query.set_defaults(func=run_query)


def run_build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        corpus=tuple(args.corpus), text_field=args.text_field, tokenizer=args.tokenizer,
        embedder=args.embedder, index=args.index, nprobe=args.nprobe,
        index_shards=args.index_shards, n_nbrs=args.n_nbrs,
        chunk_size=args.chunk_size, block_size=args.block_size,
        valid_fraction=args.valid_fraction, seed=args.seed, block=args.block,
        valid_in_db=args.valid_in_db, align_documents=args.align_documents,
        reuse_embeddings=str(args.reuse_embeddings) if args.reuse_embeddings else None,
        embed_precision=args.embed_precision,
        edits=(load_edits(args.edits) if args.edits else ()) + tuple(map(parse_edit, args.edit)),
    )
    db = build_db(args.out, config, progress=not args.no_progress)
    print(summary(db.manifest))
    return 0


def run_info(args: argparse.Namespace) -> int:
    db = open_db(args.dir)
    recall = {
        split: neighbour_recall(db, split, args.recall_sample)
        for split in db.splits
        if args.recall_sample > 0
    }
    if args.json:
        print(json.dumps({"manifest": db.manifest.to_json(), "recall": recall}, indent=2))
        return 0
    print(summary(db.manifest))
    for split, value in recall.items():
        print(f"recall@{db.n_nbrs} of the stored {split} neighbours vs exact search "
              f"({min(args.recall_sample, db.manifest.counts[f'{split}_queries'])} queries): {value:.4f}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(show_query(open_db(args.dir), args.split, args.query))
    return 0


def run_query(args: argparse.Namespace) -> int:
    query_set = query_db(
        args.dir, args.corpus, args.out, name=args.name, text_field=args.text_field,
        block_size=args.block_size, embedder=args.embedder, progress=not args.no_progress,
    )
    print(summary(query_set.manifest))
    return 0
