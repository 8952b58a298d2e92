"""The improve loop's verdict: publish only when the paired difference clears the margin and its interval clears zero."""

from __future__ import annotations

import numpy as np
import pytest

from wikiembed.errors import InputError
from wikiembed.evaluate import mean_interval, paired_difference
from wikiembed.improve import ImproveSettings, decide
from wikiembed.results import Figures


def _diff(value: float, lo: float, hi: float) -> Figures:
    zero = {"recall_at_1": 0.0, "recall_at_1_ci95": [0.0, 0.0], "recall_at_10": 0.0, "recall_at_10_ci95": [0.0, 0.0],
            "ndcg_at_10": 0.0, "ndcg_at_10_ci95": [0.0, 0.0]}
    return Figures(mrr=value, mrr_ci95=[lo, hi], **zero)


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


@pytest.mark.parametrize(
    "values, bounds",
    [([0.5], (-1.0, 1.0)), ([0.5] * 3, (-1.0, 1.0)), ([0.0] * 20, (-1.0, 1.0)), ([1.0] * 20, (0.0, 1.0)), ([0.0] * 500, (0.0, 1.0))],
)
def test_a_sample_without_spread_gets_an_interval_as_wide_as_its_size_allows(values, bounds):
    """n equal values: the share of the population that may differ is what 0 of n allows (Clopper-Pearson), at the far bound."""
    lo, hi = mean_interval(np.array(values), bounds)
    unseen = 1 - 0.025 ** (1 / len(values))
    assert lo == pytest.approx(values[0] - unseen * (values[0] - bounds[0]))
    assert hi == pytest.approx(values[0] + unseen * (bounds[1] - values[0]))
    assert bounds[0] <= lo <= values[0] <= hi <= bounds[1] and hi - lo > 0


def test_one_held_out_query_never_publishes():
    """The publish that one query made (MRR@10 +0.500 from rank 2 to rank 1) is now a keep: one value spans nearly the range."""
    difference = paired_difference((np.array([2]), np.array([0.63])), (np.array([1]), np.array([1.0])))
    assert difference.mrr == pytest.approx(0.5) and difference.n is None
    lo, hi = difference.interval("mrr")
    assert lo < -0.9 and hi > 0.98
    publish, why = decide(difference, "mrr", 0.01)
    assert publish is False and "reaches zero" in why
    # Twenty queries all unchanged: no spread, still no verdict of "no difference at all".
    same = paired_difference((np.ones(20, dtype=int), np.ones(20)), (np.ones(20, dtype=int), np.ones(20)))
    assert same.mrr_ci95[0] < -0.1 and same.mrr_ci95[1] > 0.1


def test_too_few_held_out_queries_are_refused_saying_by_how_many():
    from wikiembed.finetune import check_holdout

    with pytest.raises(InputError) as refused:
        check_holdout(1, 21, 0.05, 20, "feedback.jsonl")
    message = str(refused.value)
    assert "--pairs feedback.jsonl: 1 of its 21 queries that match the store held out (--holdout 0.05), 19 short of the 20" in message
    assert "about 379 more judged queries (400 in all at --holdout 0.05)" in message and "--min-holdout" in message
    assert "raise --holdout" not in message  # 20 held out of 21 would leave 1 to train on
    with pytest.raises(InputError, match=r"raise --holdout to 0\.2 \(keeping 80 to train on\)"):
        check_holdout(5, 100, 0.05, 20, "feedback.jsonl")
    check_holdout(20, 100, 0.2, 20, "feedback.jsonl")
    assert ImproveSettings(store="s", pairs="p", out="o", new_store="n").min_holdout == 20


def test_a_new_store_holding_someone_elses_files_is_refused_before_any_work(tmp_path):
    from wikiembed.store_location import locate

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "id": "x"}\n')
    theirs = tmp_path / "theirs"
    (theirs / "data").mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    flags = {"pairs": "--pairs", "out": "--out", "new_store": "--new-store"}
    with pytest.raises(InputError, match=r"--new-store .*theirs: a folder holding files of its own \(data, notes.txt\), "
                                         "neither empty nor a wikiembed store"):
        locate(str(tmp_path / "store")).check_paths(str(pairs), str(tmp_path / "model"), str(theirs), flags=flags)
    assert sorted(p.name for p in theirs.iterdir()) == ["data", "notes.txt"]
    # A new folder, an empty one, and a round's own store (to resume it) are fine.
    (tmp_path / "empty").mkdir()
    (tmp_path / "round" / "gens").mkdir(parents=True)
    for new in ("new", "empty", "round"):
        locate(str(tmp_path / "store")).check_paths(str(pairs), str(tmp_path / "model"), str(tmp_path / new), flags=flags)
