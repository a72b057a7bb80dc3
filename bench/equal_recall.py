"""QPS at equal recall: two engines compared where both reach the same recall@10, not at the same knob.

An engine's curve is the (recall, QPS) points of its settings (nprobe, k_factor). Its upper envelope
keeps the points no other point beats in both; between two envelope points QPS is interpolated
linearly in recall and logarithmically in QPS (QPS falls about geometrically as nprobe doubles).
Below the envelope's lowest recall the fastest point already reaches the target (no
extrapolation); above its highest the target is not reached (None).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

RECALL_TARGETS = (0.5, 0.7, 0.9)

Point = tuple[float, float]  # (recall, QPS)


def envelope(points: Iterable[Point]) -> list[Point]:
    """The points no other point matches or beats in both recall and QPS, by increasing recall
    (so by decreasing QPS); points without a positive QPS are left out."""
    front: list[Point] = []
    for recall, qps in sorted((p for p in points if p[1] > 0), key=lambda p: (-p[0], -p[1])):
        if not front or qps > front[-1][1]:
            front.append((recall, qps))
    return front[::-1]


def qps_at_recall(points: Iterable[Point], target: float) -> float | None:
    """The curve's QPS at recall target (see the module docstring); None if it never gets there."""
    front = envelope(points)
    if not front or target > front[-1][0]:
        return None
    if target <= front[0][0]:
        return front[0][1]
    for low, high in zip(front, front[1:]):
        if low[0] < target <= high[0]:
            return log_interpolate(low, high, target)
    raise AssertionError("unreachable: the envelope's recalls increase from front[0] to front[-1]")


def log_interpolate(low: Point, high: Point, recall: float) -> float:
    """QPS at recall between two points (low[0] < high[0]): linear in recall, geometric in QPS."""
    w = (recall - low[0]) / (high[0] - low[0])
    return math.exp((1 - w) * math.log(low[1]) + w * math.log(high[1]))


def ratios_at_recall(ours: Iterable[Point], theirs: Iterable[Point],
                     targets: Iterable[float] = RECALL_TARGETS) -> list[dict]:
    """Per target: both curves' interpolated QPS and ours / theirs (None where either misses it)."""
    ours, theirs = list(ours), list(theirs)
    rows = []
    for target in targets:
        a, b = qps_at_recall(ours, target), qps_at_recall(theirs, target)
        rows.append({"recall": target, "ours": a, "theirs": b, "ratio": a / b if a and b else None})
    return rows
