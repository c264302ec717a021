"""magnet.eval.metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from magnet.eval import metrics


def test_rankdata_averages_ties() -> None:
    assert metrics.rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert metrics.rankdata([3, 3, 3]).tolist() == [2, 2, 2]


def test_spearman_with_ties_by_hand() -> None:
    # ranks x = [1, 2.5, 2.5, 4, 5], y = [2, 1, 3.5, 3.5, 5]; deviations from 3:
    # dx = [-2, -.5, -.5, 1, 2], dy = [-1, -2, .5, .5, 2]; sum dx dy = 7.25;
    # sum dx^2 = sum dy^2 = 9.5
    rho = metrics.spearman([1, 2, 2, 3, 4], [2, 1, 3, 3, 5])
    assert rho == pytest.approx(7.25 / 9.5, abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert rho == pytest.approx(scipy_stats.spearmanr([1, 2, 2, 3, 4], [2, 1, 3, 3, 5])[0])


def test_pearson_by_hand() -> None:
    # dx = [-1, 0, 1], dy = [-4/3, -1/3, 5/3]: r = 3 / sqrt(2 * 42/9)
    assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        metrics.pearson([1, 2], [1, 2, 3])


def test_iob1_to_iob2() -> None:
    tags = ["I-PER", "I-PER", "B-PER", "I-LOC", "O", "I-LOC", "I-ORG"]
    assert metrics.iob1_to_iob2(tags) == ["B-PER", "I-PER", "B-PER", "B-LOC", "O", "B-LOC",
                                          "B-ORG"]


def test_get_entities_seqeval_conventions() -> None:
    assert metrics.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1),
                                                                       ("LOC", 3, 3)]
    # I- after O starts a chunk; a type change ends one
    assert metrics.get_entities(["O", "I-PER", "I-LOC", "I-LOC"]) == [("PER", 1, 1),
                                                                       ("LOC", 2, 3)]
    assert metrics.get_entities(["S-X", "B-Y", "E-Y"]) == [("X", 0, 0), ("Y", 1, 2)]


def test_entity_scores_partial_matches_by_hand() -> None:
    # sentence 1 gold (IOB1) -> PER(0,1) LOC(3,3) LOC(4,4) ORG(6,6)
    gold1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O", "I-ORG"]
    # predicted: PER(0,0) (boundary wrong), LOC(3,3) ok, LOC(4,4) ok, MISC(6,6) (type wrong)
    pred1 = ["I-PER", "O", "O", "I-LOC", "B-LOC", "O", "I-MISC"]
    sc = metrics.entity_scores([gold1], [pred1], scheme="iob1")
    assert (sc["correct"], sc["predicted"], sc["true"]) == (2, 4, 4)
    assert sc["f1"] == pytest.approx(0.5)
    # a spurious chunk in a second sentence: P = 2/5, R = 2/4
    sc = metrics.entity_scores([gold1, ["O", "O"]], [pred1, ["I-PER", "I-PER"]], scheme="iob1")
    assert sc["precision"] == pytest.approx(0.4) and sc["recall"] == pytest.approx(0.5)
    assert sc["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert metrics.entity_scores([["O"]], [["O"]])["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.entity_scores([["O", "O"]], [["O"]])


def test_accuracy_and_perplexity() -> None:
    assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 0.75
    assert metrics.perplexity(3 * math.log(10.0), 3) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)


def test_repetition_on_crafted_text() -> None:
    text = "The cat sat. The dog ran. The cat sat. The cat sat."
    assert metrics.split_sentences(text) == ["The cat sat.", "The dog ran.", "The cat sat.",
                                             "The cat sat."]
    assert metrics.repeated_sentence_share(text) == 0.5
    # 12 words -> 9 four-grams, of which "The cat sat. The" occurs twice: 8 unique
    assert metrics.repeated_ngram_share(text) == pytest.approx(1 / 9)
    assert metrics.repeated_ngram_share("too short") is None
    assert metrics.repeated_sentence_share("   ") is None
    assert metrics.split_sentences('He said "no." Then\nleft  now') == ['He said "no."', "Then",
                                                                         "left now"]
    sc = metrics.repetition_scores([text, "a b c d", "x"])
    assert sc["repeated_4gram_share"] == pytest.approx((1 / 9 + 0.0) / 2)
    assert sc["repeated_sentence_share"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert sc["ngram_scored"] == 2 and sc["sentence_scored"] == 3


def test_rankdata_matches_argsort_without_ties() -> None:
    x = np.random.default_rng(0).normal(size=50)
    assert np.array_equal(metrics.rankdata(x), np.argsort(np.argsort(x)) + 1.0)


def test_repetition_scores_over_no_continuation_are_none() -> None:
    # a continuation of fewer than 4 words has no 4-gram share, one without text no sentence
    sc = metrics.repetition_scores(["a b", ""])
    assert sc["repeated_4gram_share"] is None and sc["ngram_scored"] == 0
    assert sc["repeated_sentence_share"] == 0.0 and sc["sentence_scored"] == 1
    assert metrics.repetition_scores([])["repeated_sentence_share"] is None


def test_correlations_follow_scipy_on_odd_input() -> None:
    # scipy.stats.spearmanr / pearsonr (nan_policy="propagate"): a NaN gives NaN
    x, y = [1.0, 2.0, math.nan, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert math.isnan(metrics.spearman(x, y)) and math.isnan(metrics.spearman(y, x))
    assert math.isnan(metrics.pearson(x, y))
    assert np.isnan(metrics.rankdata(x)).all()
    assert math.isnan(metrics.pearson([1.0, math.inf, 3.0], [1.0, 2.0, 3.0]))
    # extreme magnitudes neither overflow nor underflow
    assert metrics.pearson([1e200, 2e200, 3e200], [1, 2, 3]) == pytest.approx(1.0)
    assert metrics.pearson([1e-200, 2e-200, 4e-200], [1, 2, 4]) == pytest.approx(1.0)
    assert metrics.pearson([1e308, -1e308, 1e308], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.pearson([3e200, 2e200, 1e200], [1, 2, 3]) == pytest.approx(-1.0)
    assert -1.0 <= metrics.pearson([1, 2, 3], [2, 4, 6]) <= 1.0


def test_rankdata_ties_repeated_infinities() -> None:
    # equal infinities are one tie group (their difference, inf - inf, is NaN, not 0)
    x = [math.inf, math.inf, 1.0, -math.inf, -math.inf]
    assert metrics.rankdata(x).tolist() == [4.5, 4.5, 3.0, 1.5, 1.5]
    # ranks y = [4, 1, 2, 5, 3]; dx = [1.5, 1.5, 0, -1.5, -1.5], dy = [1, -2, -1, 2, 0]:
    # sum dx dy = -4.5, sum dx^2 = 9, sum dy^2 = 10 (scipy's spearmanr gives the same)
    rho = metrics.spearman(x, [0.5, 0.1, 0.2, 0.9, 0.3])
    assert rho == pytest.approx(-4.5 / math.sqrt(90), abs=1e-12)


def test_spearman_of_fewer_than_two_pairs_is_nan() -> None:
    # scipy.stats.spearmanr returns NaN for one pair (and none); pearsonr raises
    assert math.isnan(metrics.spearman([1.0], [2.0]))
    assert math.isnan(metrics.spearman([], []))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        metrics.pearson([1.0], [2.0])
    with pytest.raises(ValueError, match="one length"):
        metrics.spearman([1.0], [1.0, 2.0])


@pytest.mark.parametrize(("opening", "closing"), [("\u201c", "\u201d"), ("\u2018", "\u2019"),
                                                  ("\u00ab", "\u00bb")])
def test_sentences_end_after_a_curly_closing_quote(opening: str, closing: str) -> None:
    text = f"He said {opening}Stop.{closing} He said {opening}Stop.{closing}"
    once = f"He said {opening}Stop.{closing}"
    assert metrics.split_sentences(text) == [once, once]
    assert metrics.repeated_sentence_share(text) == 0.5
