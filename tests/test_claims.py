"""Claims judged by the interval their kind calls for, checked by hand and by simulation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from test_stats import frame

from ablate import claims


def test_prediction_interval_by_hand():
    # mean 0.91, s 0.01, t(0.975, 2) = 4.302653, sqrt(1 + 1/3) = 1.154701: half-width 0.049683
    lo, hi = claims.prediction([0.90, 0.92, 0.91])
    assert (lo, hi) == pytest.approx((0.91 - 0.049683, 0.91 + 0.049683), abs=1e-6)
    assert np.isnan(claims.prediction([0.9])).all()


def test_a_point_claim_is_judged_by_the_prediction_interval_and_a_mean_claim_by_the_ci():
    # CI of the mean [0.885, 0.935]; prediction interval of one run [0.860, 0.960]
    fin = frame({(0, "x", s): y for s, y in enumerate([0.90, 0.92, 0.91])})
    asked = [
        {"where": {"a": 0}, "value": 0.95, "kind": "point"},
        {"where": {"a": 0}, "value": 0.95, "kind": "mean"},
        {"where": {"a": 0}, "value": 0.97, "kind": "point"},
        {"where": {"a": 0}, "value": 0.92, "kind": "mean"},
    ]
    out = claims.claims(fin, asked, ["a", "b"])
    assert out["inside"].tolist() == [True, False, False, True]
    assert out["judged_by"].tolist() == ["prediction", "ci", "prediction", "ci"]
    assert out.loc[0, "pi_low"] == pytest.approx(0.860317, abs=1e-6) and out.loc[
        0, "ci_high"
    ] == pytest.approx(0.934841, abs=1e-6)


def test_a_bound_holds_only_when_every_run_keeps_to_its_side():
    fin = frame({(0, "x", s): y for s, y in enumerate([0.90, 0.92, 0.91])})
    bounds = [
        (0.92, "at_most", True, 3),
        (0.915, "at_most", False, 2),
        (0.90, "at_least", True, 3),
        (0.905, "at_least", False, 2),
    ]
    out = claims.claims(
        fin, [{"where": {"a": 0}, "value": v, "kind": k} for v, k, _, _ in bounds], ["a", "b"]
    )
    assert out["inside"].tolist() == [h for _, _, h, _ in bounds]
    assert out["runs_within"].tolist() == [n for _, _, _, n in bounds]


def test_a_claim_with_an_epoch_reads_that_epoch_of_longer_cells():
    early = frame({(0, "x", s): y for s, y in enumerate([0.80, 0.82, 0.81])})
    late = early.assign(epoch=2, test_acc=early["test_acc"] + 0.1)
    df = pd.concat([early, late], ignore_index=True)
    out = claims.claims(
        df,
        [
            {"where": {"a": 0}, "value": 0.81, "epoch": 1, "kind": "mean"},
            {"where": {"a": 0}, "value": 0.81, "kind": "mean"},
        ],
        ["a", "b"],
    )
    assert out["mean"].tolist() == pytest.approx([0.81, 0.91]) and out["inside"].tolist() == [
        True,
        False,
    ]
    assert out["epoch"].tolist()[0] == 1


def test_a_faithful_rerun_lands_inside_the_prediction_interval_95_percent_of_the_time():
    # the claim is one more run of the same recipe; before, `inside` used the CI of the mean
    rng = np.random.default_rng(20261125)
    lines = []
    for n in (3, 5, 10, 20):
        runs = rng.normal(0.97, 0.002, (4000, n))
        claim = rng.normal(0.97, 0.002, 4000)
        by_pi = np.mean([claims.holds("point", c, r) for c, r in zip(claim, runs, strict=True)])
        by_ci = np.mean([claims.holds("mean", c, r) for c, r in zip(claim, runs, strict=True)])
        lines.append(
            f"n={n}: inside the prediction interval {by_pi:.3f} (the CI of the mean: {by_ci:.3f})"
        )
        assert 0.935 <= by_pi <= 0.965, "; ".join(lines)
    print("; ".join(lines))


def test_the_ci_of_the_mean_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    rates = []
    for n in (3, 5, 10):
        runs = rng.normal(0.5, 0.1, (4000, n))
        rates.append(np.mean([claims.holds("mean", 0.5, r) for r in runs]))
    assert all(0.935 <= r <= 0.965 for r in rates), f"coverage at n=3, 5, 10: {rates}"
    # scipy's t interval agrees with the one used here
    ref = st.t.interval(0.95, 4, loc=np.mean(runs[0][:5]), scale=st.sem(runs[0][:5]))
    assert claims.holds("mean", ref[0] + 1e-9, runs[0][:5]) and not claims.holds(
        "mean", ref[0] - 1e-9, runs[0][:5]
    )


def test_runs_without_spread_judge_a_claim_to_the_metrics_resolution_and_one_run_says_nothing():
    fin = frame({(0, "x", s): 1.0 for s in range(4)})  # xor: 4 test points, every run 100%
    asked = [{"where": {"a": 0}, "value": v} for v in (1.0, 0.99, 0.7)]
    out = claims.claims(fin, asked, ["a", "b"], resolution=0.25)
    assert out["inside"].tolist() == [True, True, False] and out["note"][0].startswith("no spread")
    one = claims.claims(frame({(0, "x", 0): 0.9}), [{"where": {"a": 0}, "value": 0.9}], ["a", "b"])
    assert one["inside"].tolist() == [None] and one["note"][0] == "n=1: no interval to judge by"


def test_a_claim_without_a_source_is_labelled_by_its_where_not_a_pandas_method():
    from ablate import console

    df = frame({("relu", s): 0.90 + s / 100 for s in range(3)}, factors=["activation"])
    table = claims.claims(df, [dict(where=dict(activation="relu"), value=0.9)], ["activation"])
    row = table.iloc[0]
    assert row["source"] == row["where"] == "activation=relu"  # the claims chart's label
    line = console.claim_line(row)
    assert line.startswith("claim activation=relu: ") and "bound method" not in line
