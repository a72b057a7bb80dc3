"""Evaluation: loss, perplexity and bits per byte with and without retrieval, leakage-filtered
(DeepMind §4.4); CLI ``retro eval``."""

from retro.eval.evaluate import evaluate, evaluate_models, results_table
from retro.eval.leakage import ALPHAS, filtered_bpb, leakage_table, plot_leakage
from retro.eval.overlap import chunk_overlaps, longest_common_run

__all__ = ["ALPHAS", "chunk_overlaps", "evaluate", "evaluate_models", "filtered_bpb",
           "leakage_table", "longest_common_run", "plot_leakage", "results_table"]
