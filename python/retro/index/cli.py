"""``retro index shard``: a thin layer over retro.index.sharding."""

from __future__ import annotations

import argparse
from pathlib import Path

from retro.errors import RetroError
from retro.index.ivf_pq import IvfPqIndex
from retro.index.sharding import read_manifest, shard_index


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``retro index`` and its subcommands."""
    index = subparsers.add_parser("index", help="work with IVF-PQ index files")
    commands = index.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")
    shard = commands.add_parser(
        "shard",
        help="split an index file into shards of equal-count id ranges (retro.index.sharding)",
    )
    shard.add_argument("index", type=Path, help="an index file written by IvfPqIndex.save")
    shard.add_argument("out", type=Path, help="the shard directory (shard files + shards.json)")
    shard.add_argument("--shards", type=int, required=True, help="number of shards S >= 1")
    shard.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise RetroError(f"--shards must be >= 1, got {args.shards}")
    if not args.index.is_file():
        raise RetroError(f"{args.index}: no such index file")
    index = IvfPqIndex.load(args.index, mmap=True)
    shard_index(index, args.shards, args.out)
    for entry in read_manifest(args.out)["shards"]:
        print(f"{args.out / entry['file']}: {entry['ntotal']:,} vectors, "
              f"ids {entry['id_lo']} .. {entry['id_hi']}")
    return 0
