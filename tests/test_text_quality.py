"""Text-quality measures of sampled continuations against hand-computed values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retro.eval.text_quality import bleu, repetition_rate, self_bleu, zipf_coefficient


def test_repetition_rate_by_hand():
    assert repetition_rate([[1, 2, 3, 4, 5, 6]]) == 0.0  # 3 distinct 4-grams
    # 1 2 3 4 1 2 3 4: 5 4-grams, 4 distinct (1 2 3 4 repeats) -> 1/5
    assert repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(0.2)
    assert repetition_rate([[7] * 10]) == pytest.approx(1 - 1 / 7)
    assert repetition_rate([[1, 2]]) == 0.0  # no 4-gram: skipped


def test_bleu_and_self_bleu_by_hand():
    a = [1, 2, 3, 4, 5]
    assert bleu(a, [a]) == pytest.approx(1.0)
    assert bleu(a, [[9, 9, 9, 9, 9]]) == 0.0
    # unigram 4/5, bigram 3/4, trigram 2/3, 4-gram 1/2 against [1 2 3 4 9]
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu(a, [[1, 2, 3, 4, 9]]) == pytest.approx(expected)
    assert self_bleu([a, a, a]) == pytest.approx(1.0)
    assert self_bleu([[1, 2, 3, 4], [5, 6, 7, 8]]) == 0.0
    with pytest.raises(ValueError, match="at least two"):
        self_bleu([a])


@settings(max_examples=20, deadline=None)
@given(s=st.floats(0.6, 1.6), seed=st.integers(0, 1000))
def test_zipf_recovers_the_exponent_of_exact_zipf_counts(s, seed):
    ranks = np.arange(1, 301)
    counts = np.maximum(1, np.round(1e6 * ranks ** -s)).astype(int)
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(np.repeat(rng.permutation(300), counts))  # ids shuffled, order too
    assert zipf_coefficient([tokens.tolist()]) == pytest.approx(s, abs=0.05)
