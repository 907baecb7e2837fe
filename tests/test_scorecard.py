"""Scorecard scaling, bands and reason codes (SPEC §4)."""
from __future__ import annotations

import numpy as np
import pytest

from nightscore.config import BandSpec, ScorecardSpec
from nightscore.scorecard import needs_reasons, pd_to_score, reason_codes, score_to_band

SPEC = ScorecardSpec()


def test_base_score_at_base_odds() -> None:
    assert pd_to_score(np.array([1 / 51]), SPEC).tolist() == [600]


def test_doubling_the_odds_adds_pdo_points() -> None:
    # odds 50:1 -> 100:1 -> 200:1; and halving to 25:1
    pds = np.array([1 / 51, 1 / 101, 1 / 201, 1 / 26])
    assert pd_to_score(pds, SPEC).tolist() == [600, 620, 640, 580]


def test_scores_are_int64_and_clipped() -> None:
    scores = pd_to_score(np.array([0.0, 1e-9, 0.999999, 1.0]), SPEC)
    assert scores.dtype == np.int64
    assert scores.tolist() == [850, 850, 300, 300]


def test_custom_scaling() -> None:
    spec = ScorecardSpec(base_score=500, base_odds=10, pdo=40, min_score=0, max_score=1000)
    assert pd_to_score(np.array([1 / 11, 1 / 21]), spec).tolist() == [500, 540]


def test_score_is_monotone_non_increasing_in_pd() -> None:
    pds = np.linspace(0, 1, 10_001)
    scores = pd_to_score(pds, SPEC)
    assert np.all(np.diff(scores) <= 0)
    assert scores.min() >= SPEC.min_score and scores.max() <= SPEC.max_score


def test_non_finite_pd_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pd_to_score(np.array([0.1, np.nan]), SPEC)


def test_band_cut_offs() -> None:
    scores = np.array([850, 720, 719, 660, 659, 600, 599, 540, 539, 300])
    assert score_to_band(scores, SPEC).tolist() == ["A", "A", "B", "B", "C", "C", "D", "D", "E", "E"]


def test_score_below_every_band_falls_in_the_worst() -> None:
    spec = ScorecardSpec(min_score=0, bands=[BandSpec(name="good", min_score=500), BandSpec(name="bad", min_score=400)], reason_band="bad")
    assert score_to_band(np.array([10, 450, 900]), spec).tolist() == ["bad", "bad", "good"]


def test_needs_reasons_at_or_below_reason_band() -> None:
    bands = np.array(["A", "B", "C", "D", "E"])
    assert needs_reasons(bands, SPEC).tolist() == [False, False, True, True, True]
    spec = ScorecardSpec(reason_band="A")
    assert needs_reasons(bands, spec).all()


FIELDS = ["income", "utilisation", "late", "region", "balance"]
TEXTS = {"income": "Low income", "utilisation": "High utilisation", "late": "Late payments", "balance": "Low income"}


def test_reason_codes_order_and_limit() -> None:
    contrib = np.array([[0.1, 0.5, 0.3, 9.0, -1.0]])  # region has no reason text
    out = reason_codes(contrib, FIELDS, TEXTS, np.array([True]), max_reasons=2)
    assert out == [["High utilisation", "Late payments"]]
    out = reason_codes(contrib, FIELDS, TEXTS, np.array([True]), max_reasons=10)
    assert out == [["High utilisation", "Late payments", "Low income"]]


def test_reason_codes_only_adverse_and_deduplicated() -> None:
    contrib = np.array(
        [
            [0.2, -0.5, 0.0, 1.0, 0.4],  # income and balance share a text: once, ranked by the stronger
            [-0.1, -0.2, -0.3, 5.0, -0.4],  # nothing adverse
        ]
    )
    out = reason_codes(contrib, FIELDS, TEXTS, np.array([True, True]), max_reasons=4)
    assert out == [["Low income"], []]


def test_reason_codes_respect_mask() -> None:
    contrib = np.array([[1.0, 2.0, 3.0, 0.0, 0.0]] * 3)
    out = reason_codes(contrib, FIELDS, TEXTS, np.array([False, True, False]), max_reasons=1)
    assert out == [[], ["Late payments"], []]


def test_reason_codes_empty_inputs() -> None:
    assert reason_codes(np.zeros((0, len(FIELDS))), FIELDS, TEXTS, np.zeros(0, bool), 3) == []
    assert reason_codes(np.ones((2, 1)), ["x"], {}, np.array([True, True]), 3) == [[], []]


def test_reason_codes_shape_checks() -> None:
    with pytest.raises(ValueError, match="contrib"):
        reason_codes(np.ones((2, 3)), FIELDS, TEXTS, np.array([True, True]), 3)
    with pytest.raises(ValueError, match="mask"):
        reason_codes(np.ones((2, len(FIELDS))), FIELDS, TEXTS, np.array([True]), 3)
