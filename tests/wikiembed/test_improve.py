"""The improve loop's verdict: publish only when the paired difference clears the margin and its interval clears zero."""

from __future__ import annotations

import pytest

from wikiembed.improve import ImproveSettings, decide


def _diff(value: float, lo: float, hi: float) -> dict:
    return {"mrr": value, "mrr_ci95": [lo, hi], "recall_at_1": 0.0, "recall_at_1_ci95": [0.0, 0.0]}


@pytest.mark.parametrize(
    "diff, margin, publish, needle",
    [
        (_diff(0.05, 0.01, 0.09), 0.01, True, "better: mrr +0.050"),
        (_diff(0.05, -0.01, 0.11), 0.01, False, "reaches zero"),
        (_diff(0.005, 0.001, 0.009), 0.01, False, "below the required +0.010"),
        (_diff(-0.20, -0.30, -0.10), 0.0, False, "not better by the margin"),
        (_diff(0.0, 0.0, 0.0), 0.0, False, "reaches zero"),  # no change is not an improvement
    ],
)
def test_decide(diff, margin, publish, needle):
    got, why = decide(diff, "mrr", margin)
    assert got is publish and needle in why
    if not publish:
        assert "the old store stays published" in why


def test_settings_refuse_unknown_metrics_and_fields():
    with pytest.raises(ValueError):
        ImproveSettings(store="s", pairs="p", out="o", new_store="n", metric="accuracy")
    with pytest.raises(ValueError):
        ImproveSettings(store="s", pairs="p", out="o", new_store="n", finetune={"epoch": 1})
