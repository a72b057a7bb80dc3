"""bench/equal_recall.py: QPS interpolated at a recall on the upper envelope of a recall-QPS curve."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from equal_recall import envelope, qps_at_recall, ratios_at_recall  # noqa: E402

# an nprobe sweep: recall rises, QPS falls, and one dominated setting (0.60 at 50 QPS)
CURVE = [(0.40, 1000.0), (0.60, 400.0), (0.80, 100.0), (0.60, 50.0)]

points = st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 1e6)), min_size=1, max_size=12)
targets = st.floats(0.0, 1.0)


def test_interpolates_linearly_in_recall_and_geometrically_in_qps():
    assert qps_at_recall(CURVE, 0.60) == pytest.approx(400.0)
    assert qps_at_recall(CURVE, 0.50) == pytest.approx(math.sqrt(1000.0 * 400.0))  # halfway: geometric mean
    assert qps_at_recall(CURVE, 0.70) == pytest.approx(200.0)


def test_below_the_curve_its_fastest_setting_and_above_it_not_reached():
    assert qps_at_recall(CURVE, 0.10) == 1000.0
    assert qps_at_recall(CURVE, 0.80) == pytest.approx(100.0)
    assert qps_at_recall(CURVE, 0.81) is None
    assert qps_at_recall([], 0.5) is None


def test_the_envelope_drops_dominated_settings_and_ties():
    assert envelope(CURVE + [(0.80, 90.0), (0.40, 1000.0)]) == [(0.40, 1000.0), (0.60, 400.0), (0.80, 100.0)]
    assert envelope([(0.5, 0.0)]) == []  # no QPS measured (a row without single queries)


def test_ratios_say_where_either_curve_misses_the_target():
    faster = [(recall, 2 * qps) for recall, qps in CURVE[:2]]  # stops at recall 0.60
    rows = ratios_at_recall(faster, CURVE, targets=(0.5, 0.7))
    assert rows[0]["ratio"] == pytest.approx(2.0)
    assert rows[1] == {"recall": 0.7, "ours": None, "theirs": pytest.approx(200.0), "ratio": None}


@given(points, targets)
def test_a_curve_against_itself_is_one(curve, target):
    (row,) = ratios_at_recall(curve, curve, targets=(target,))
    assert row["ratio"] is None or row["ratio"] == pytest.approx(1.0)


@given(points, targets, st.floats(1e-3, 1e3))
def test_a_curve_scaled_by_c_is_c_times_faster(curve, target, c):
    (row,) = ratios_at_recall([(r, c * q) for r, q in curve], curve, targets=(target,))
    assert (row["ratio"] is None) == (target > max(r for r, _ in curve))
    assert row["ratio"] is None or row["ratio"] == pytest.approx(c, rel=1e-9)


@given(points, targets, targets)
def test_a_higher_recall_never_costs_less(curve, low, high):
    low, high = min(low, high), max(low, high)
    at_low, at_high = qps_at_recall(curve, low), qps_at_recall(curve, high)
    if at_high is not None:
        assert at_low is not None and at_high <= at_low * (1 + 1e-12)


@given(points, targets)
def test_the_value_lies_between_the_measured_extremes(curve, target):
    qps = qps_at_recall(curve, target)
    if qps is not None:
        assert min(q for _, q in curve) * (1 - 1e-12) <= qps <= max(q for _, q in curve) * (1 + 1e-12)
