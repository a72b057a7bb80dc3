"""Evaluation: loss, perplexity and bits per byte with and without retrieval, leakage-filtered
(DeepMind §4.4); CLI ``retro eval``."""

from typing import TYPE_CHECKING

from retro._lazy import lazy_names
from retro.eval.leakage import ALPHAS, filtered_bpb, leakage_table, plot_leakage
from retro.eval.overlap import chunk_overlaps, longest_common_run

if TYPE_CHECKING:
    from retro.eval.comparison import evaluate, evaluate_models, results_table

# torch-backed: imported on first use, so that `retro eval --help` needs no torch
__getattr__ = lazy_names(__name__, dict.fromkeys(
    ["evaluate", "evaluate_models", "results_table"], "retro.eval.comparison"))

__all__ = ["ALPHAS", "chunk_overlaps", "evaluate", "evaluate_models", "filtered_bpb",
           "leakage_table", "longest_common_run", "plot_leakage", "results_table"]
