"""Claims judged by the interval their kind calls for, checked by hand and by simulation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ablate import claims
from ablate.metrics import TEST_ACC, TEST_LOSS
from helpers import frame


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def bimodal(rng, reps, n, sd, low_share=0.2):
    """Runs near 97% (sd in points) of which low_share land 1 point low: a bad basin."""
    return 0.97 + rng.normal(0, sd / 100, (reps, n)) - (rng.random((reps, n)) < low_share) / 100


def test_the_gap_statistic_by_hand():
    # sorted 0, 0.1, 1: at the gap 0.9 the sides {0, 0.1} and {1} pool ss 0.005 over 1 df
    assert claims.gap_statistic([1.0, 0.0, 0.1])[0] == pytest.approx(0.9 / np.sqrt(0.005))
    # runs in steps of the resolution spread at least as rounding does: sd 0.25 / sqrt(12)
    steps = claims.gap_statistic([1.0, 1.0, 1.0, 0.75], resolution=0.25)[0]
    assert steps == pytest.approx(0.25 / (0.25 / np.sqrt(12)))
    assert not len(claims.outliers([1.0, 1.0, 1.0, 0.75], resolution=0.25))
    assert claims.gap_critical(3) > claims.gap_critical(10) > 0  # fewer runs, wider gaps


def test_runs_far_below_the_rest_are_named_beside_the_verdict():
    # before: no outliers column and an empty note; two runs of ten sit a point below the rest
    runs = [0.970, 0.971, 0.969, 0.960, 0.972, 0.970, 0.959, 0.971, 0.970, 0.969]
    fin = frame({(0, "x", s): y for s, y in enumerate(runs)})
    asked = [
        {"where": {"a": 0}, "value": 0.96},
        {"where": {"a": 0}, "value": 0.96, "kind": "mean"},
        {"where": {"a": 0}, "value": 0.975, "kind": "at_most"},
    ]
    out = claims.claims(fin, asked, ["a", "b"])
    assert out["outliers"].tolist()[:2] == [2, 2] and pd.isna(out["outliers"][2])
    assert out["note"][0] == (
        "2 of 10 runs lie far below the rest (seeds 3, 6): a bimodal outcome or an outlier; "
        "the interval assumes one normal spread"
    )
    assert "the CI of the mean assumes one normal spread" in out["note"][1] and not out["note"][2]
    assert list(out.columns[:16]) == claims.COLUMNS[:16] and out.columns[-1] == "outliers"
    plain = claims.claims(frame({(0, "x", s): 0.97 + s / 1000 for s in range(5)}), asked, ["a"])
    assert plain["outliers"].tolist()[:2] == [0, 0] and plain["note"][0] == ""


def test_a_run_outside_the_prediction_interval_widens_it_and_39_runs_use_order_statistics():
    # mean 0.1, s 0.316, t(0.975, 9) 2.262, sqrt(1.1): the t interval [-0.65, 0.85] leaves out 1
    ten = [0.0] * 9 + [1.0]
    assert claims.judged_interval(ten)[1:] == (1.0, "prediction, widened to the runs")
    assert claims.holds("point", 0.95, ten) and not claims.holds("point", 1.01, ten)
    many = np.arange(79.0)  # 79 runs: (x_(2), x_(78)) holds a new run with 76/80 = 0.95
    assert claims.judged_interval(many[:39]) == (0.0, 38.0, "order statistics")
    assert claims.judged_interval(many) == (1.0, 77.0, "order statistics")
    assert claims.judged_interval(many[:38])[2] == "prediction"


@pytest.mark.slow
def test_the_outlier_flag_is_false_in_at_most_5_percent_of_normal_runs_and_finds_a_bad_basin():
    rng = np.random.default_rng(2806)
    false, found, found_seen, lines = {}, {}, {}, []
    for n in range(3, 11):
        false[n] = np.mean([len(claims.outliers(r)) > 0 for r in rng.normal(0, 1, (4000, n))])
        for sd in (0.1, 0.2):
            low = rng.random((2000, n)) < 0.2
            runs = 0.97 + rng.normal(0, sd / 100, (2000, n)) - low / 100
            flagged = np.array([len(claims.outliers(r)) > 0 for r in runs])
            found[n, sd], found_seen[n, sd] = flagged.mean(), flagged[low.any(axis=1)].mean()
        lines.append(
            f"n={n}: false flags {false[n]:.3f}; bimodal found {found[n, 0.1]:.2f} at sd 0.1 "
            f"({found_seen[n, 0.1]:.2f} where a low run was drawn), {found[n, 0.2]:.2f} at sd 0.2 "
            f"({found_seen[n, 0.2]:.2f})"
        )
    print("\n" + "\n".join(lines))
    assert all(rate <= 0.05 for rate in false.values()), lines
    assert found[10, 0.1] >= 0.8 and found_seen[10, 0.1] >= 0.9, lines


@pytest.mark.slow
def test_coverage_of_a_new_run_and_the_mean_under_bimodal_runs_before_and_after():
    # before: the t prediction interval whatever the runs; after: widened to the runs below 39,
    # order statistics from 39 on. The CI of the mean is unchanged: its note says the runs split
    rng = np.random.default_rng(2812)
    lines, after_at = [], {}
    for n in (2, 3, 5, 8, 10, 20, 40):
        runs, new = bimodal(rng, 2000, n, 0.1), bimodal(rng, 2000, 1, 0.1)[:, 0]
        flagged = np.array([len(claims.outliers(r)) > 0 for r in runs])
        before = np.array(
            [lo <= y <= hi for y, (lo, hi) in zip(new, map(claims.prediction, runs), strict=True)]
        )
        after = np.array([claims.holds("point", y, r) for y, r in zip(new, runs, strict=True)])
        mean = np.array([claims.holds("mean", 0.97 - 0.002, r) for r in runs])
        after_at[n] = after.mean()
        lines.append(
            f"n={n}: flagged {flagged.mean():.2f}; a new run inside {before.mean():.3f} before, "
            f"{after.mean():.3f} after (none flagged: {before[~flagged].mean():.3f}, "
            f"{after[~flagged].mean():.3f}); the CI (unchanged) holds the mean {mean.mean():.3f} "
            f"(none flagged: {mean[~flagged].mean():.3f})"
        )
        assert after.mean() >= before.mean() - 0.002, lines
    print("\n" + "\n".join(lines))
    assert after_at[40] >= 0.94 and after_at[20] >= 0.94, lines


def test_order_statistics_hold_a_new_run_95_percent_of_the_time_whatever_the_shape():
    # before, the t prediction interval at 39 runs: 0.944 normal, 0.945 exponential, 0.919 bimodal
    rng = np.random.default_rng(39)
    lines = []
    for name, draw in (
        ("normal", lambda size: rng.normal(0, 1, size)),
        ("exponential", lambda size: rng.exponential(1, size)),
        ("bimodal sd 0.1", lambda size: bimodal(rng, size[0], size[1], 0.1)),
    ):
        samples = draw((4000, 40))
        inside = np.mean([claims.holds("point", s[-1], s[:-1]) for s in samples])
        lines.append(f"{name}: {inside:.3f} (39 runs; exact 38/40 = 0.95)")
        assert 0.94 <= inside <= 0.96, lines
    print("; ".join(lines))


def test_an_interval_of_accuracy_never_passes_100_percent_and_says_it_was_clipped():
    # before: a claim's interval ended at 101.07% (an MNIST-1D CNN); runs at 98.5-100%
    fin = frame({(0, "x", s): y for s, y in enumerate([0.999, 0.995, 0.985, 1.0, 0.99])})
    out = claims.claims(fin, [{"where": {"a": 0}, "value": 1.0}], ["a", "b"])
    assert out.loc[0, "pi_high"] == 1.0 and out.loc[0, "ci_high"] == 1.0 and out.loc[0, "inside"]
    assert out.loc[0, "note"] == "interval clipped to [0, 100]%"
    assert claims.clipped(-0.5, 2.0, TEST_LOSS) == (-0.5, 2.0, False)  # not a fraction


@pytest.mark.slow
def test_clipping_keeps_coverage_near_100_percent_where_a_logit_interval_loses_it():
    # runs on 1000 test images near 99.5%: clipping leaves coverage as it was; an interval on
    # the logit scale (runs of 100% moved half a sample in) covers less and is wider
    rng = np.random.default_rng(1000)
    lines = []
    for n in (3, 5, 10):
        samples = rng.binomial(1000, 0.995, (3000, n + 1)) / 1000
        cut = [claims.clipped(*claims.prediction(s[:-1]), TEST_ACC) for s in samples]
        high = max(hi for _, hi, _ in cut)
        by_clip = np.mean([lo <= s[-1] <= hi for (lo, hi, _), s in zip(cut, samples, strict=True)])
        z = np.log(np.clip(samples, 5e-4, 1 - 5e-4) / (1 - np.clip(samples, 5e-4, 1 - 5e-4)))
        logit = [claims.prediction(row[:-1]) for row in z]
        by_logit = np.mean([lo <= r[-1] <= hi for (lo, hi), r in zip(logit, z, strict=True)])
        lines.append(f"n={n}: clipped {by_clip:.3f} (highest end {high:.4f}), logit {by_logit:.3f}")
        assert high <= 1.0 and 0.935 <= by_clip <= 0.965 and by_logit < by_clip, lines
    print("; ".join(lines))


def test_the_terminal_names_the_interval_and_prints_an_outlier_note_under_the_claim():
    from ablate import console

    runs = [0.970, 0.971, 0.969, 0.960, 0.972, 0.970, 0.959, 0.971, 0.970, 0.969]
    fin = frame({(0, "x", s): y for s, y in enumerate(runs)})
    row = claims.claims(fin, [{"where": {"a": 0}, "value": 0.96}], ["a", "b"]).iloc[0]
    first, second = console.claim_line(row).split("\n")
    assert "95% prediction interval of one run [95.71, 97.91]" in first and "no spread" not in first
    assert second.strip().startswith("2 of 10 runs lie far below the rest (seeds 3, 6)")
