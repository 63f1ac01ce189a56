"""Statistics checked by hand and against scipy, and the intervals' calibration by simulation."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ablate import inference, stats
from helpers import frame


def test_interval_is_student_t_and_says_nothing_for_one_seed():
    mean, std, lo, hi = inference.interval([1.0, 2.0, 3.0])
    # by hand: t(0.975, 2) = 4.302653; 4.302653 * 1 / sqrt(3) = 2.484138
    assert (mean, std) == (2.0, 1.0)
    assert lo == pytest.approx(2 - 2.484138, abs=1e-6) and hi == pytest.approx(
        2 + 2.484138, abs=1e-6
    )
    assert (lo, hi) == pytest.approx(st.t.interval(0.95, 2, loc=2, scale=st.sem([1, 2, 3])))
    m, s, lo1, hi1 = inference.interval([0.9])
    assert m == 0.9 and np.isnan(s) and np.isnan(lo1) and np.isnan(hi1)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert inference.holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    out = inference.holm([0.5, np.nan, 0.01])
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


def two_by_two() -> pd.DataFrame:
    """a adds 0.02 when b=x (0.023 for seed 1) and 0.04 when b=y, plus a shift per seed."""
    values = {}
    for seed, noise in zip([0, 1, 2], [0.0, 0.01, -0.01], strict=True):
        values[(0, "x", seed)] = 0.90 + noise
        values[(1, "x", seed)] = 0.92 + noise + (0.003 if seed == 1 else 0)
        values[(0, "y", seed)] = 0.80 + noise
        values[(1, "y", seed)] = 0.84 + noise
    return frame(values)


def test_grid_effect_is_the_main_effect_paired_by_seed():
    fin = two_by_two()  # main effect of a: 0.03 for every seed, 0.0315 for seed 1
    d = stats.paired_diffs(fin, ["a", "b"], "a", 1, 0)
    # per seed: mean(0.02, 0.04) = 0.03; seed 1: mean(0.023, 0.04) = 0.0315
    assert d.tolist() == pytest.approx([0.03, 0.0315, 0.03])
    eff = stats.effects(fin, ["a", "b"], {"a": 0, "b": "x"}, {"a": [0, 1], "b": ["x", "y"]})
    row = eff.set_index("factor").loc["a"]
    assert row["n_pairs"] == 3 and row["diff"] == pytest.approx(0.0305)
    # cross-check against scipy on the same per-seed numbers
    ref = st.ttest_1samp([0.03, 0.0315, 0.03], 0)
    assert row["p_value"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    b = eff.set_index("factor").loc["b"]
    assert b["diff"] == pytest.approx(((0.80 - 0.90) + (0.84 - 0.92)) / 2, abs=0.002)
    assert list(eff.columns[:11]) == [
        "factor",
        "level",
        "baseline",
        "metric",
        "n_pairs",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
        "p_signflip",
        "p_holm",
    ]


def test_a_fractional_effect_is_the_difference_of_half_means_per_seed():
    # the half of a 2^3 grid with an even number of factors moved; y additive in a, b, c plus a
    # seed shift
    half = [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    values = {
        (a, b, c, s): 0.9 + 0.02 * a - 0.01 * b + 0.005 * c + 0.01 * s
        for a, b, c in half
        for s in range(3)
    }
    fin = frame(values, factors=("a", "b", "c"))
    levels, base = {f: [0, 1] for f in "abc"}, {f: 0 for f in "abc"}
    eff = stats.effects(fin, list("abc"), base, levels, matched=False).set_index("factor")
    assert eff["diff"].tolist() == pytest.approx([0.02, -0.01, 0.005]) and eff[
        "n_pairs"
    ].tolist() == [3, 3, 3]
    assert stats.paired_diffs(
        fin, list("abc"), "a", 1, 0
    ).empty  # matched pairs do not exist in a half
    full = frame(
        {
            (a, b, c, s): 0.9 + 0.02 * a + 0.01 * s + 0.003 * a * b
            for a in (0, 1)
            for b in (0, 1)
            for c in (0, 1)
            for s in range(3)
        },
        factors=("a", "b", "c"),
    )
    matched = stats.paired_diffs(
        full, list("abc"), "a", 1, 0
    )  # on a full grid the two estimators agree
    assert matched.tolist() == pytest.approx(
        stats.paired_diffs(full, list("abc"), "a", 1, 0, matched=False).tolist()
    )


def test_a_fractional_effect_survives_a_diverged_cell_and_carries_its_alias():
    half = [p for p in itertools.product([0, 1], repeat=4) if sum(p) % 2 == 0]  # 8 of 16, I = ABCD
    values = {(*p, s): 0.9 + 0.02 * p[0] - 0.01 * p[1] + 0.01 * s for p in half for s in range(3)}
    fin = frame(values, factors=tuple("abcd"))
    fin.loc[(fin["a"] == 1) & (fin["b"] == 1) & (fin["c"] == 0) & (fin["seed"] == 0), "status"] = (
        "diverged"
    )
    levels, base = {f: [0, 1] for f in "abcd"}, {f: 0 for f in "abcd"}
    eff = stats.effects(fin, list("abcd"), base, levels, matched=False).set_index("factor")
    assert eff["diff"].tolist() == pytest.approx(
        [0.02, -0.01, 0, 0], abs=1e-12
    )  # a mean difference gives 0.0175
    assert eff["n_pairs"].tolist() == [3, 3, 3, 3]
    # three factors: A is aliased with BC; a planted b*c moves A's estimate, as the README says
    three = [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    fin3 = frame(
        {
            (*p, s): 0.9 + 0.02 * p[0] + 0.01 * p[1] * p[2] + 0.01 * s
            for p in three
            for s in range(3)
        },
        factors=tuple("abc"),
    )
    a = stats.paired_diffs(fin3, list("abc"), "a", 1, 0, matched=False)
    assert a.tolist() == pytest.approx([0.015] * 3)  # 0.02 on the full grid


def test_a_diverged_point_makes_no_false_interaction():
    rng = np.random.default_rng(
        1
    )  # only a=2 x b interacts (+0.03); every seed's (0, 1, 1) cell diverged
    values = {
        (a, b, c, s): 0.9
        + 0.01 * a
        + 0.02 * b
        + 0.005 * c
        + 0.03 * (a == 2) * b
        + 0.01 * s
        + rng.normal(0, 1e-4)
        for a, b, c, s in itertools.product([0, 1, 2], [0, 1], [0, 1], range(5))
    }
    fin = frame(values, factors=("a", "b", "c"))
    fin.loc[(fin["a"] == 0) & (fin["b"] == 1) & (fin["c"] == 1), "status"] = "diverged"
    levels = {"a": [0, 1, 2], "b": [0, 1], "c": [0, 1]}
    out = stats.interactions(stats.Layout(fin, ["a", "b", "c"], {"a": 0, "b": 0, "c": 0}, levels))
    found = out[out["significant"]][["factor", "level", "by"]].values.tolist()
    assert found == [["a", 2, "b"]], out
    r = out[(out["factor"] == "a") & (out["level"] == 2) & (out["by"] == "b")].iloc[0]
    assert r["diff"] == pytest.approx(0.03, abs=3e-4) and r["at_level"] - r[
        "at_baseline"
    ] == pytest.approx(r["diff"])


def test_interaction_is_the_difference_of_simple_effects_per_seed():
    levels = {"a": [0, 1], "b": ["x", "y"]}
    out = stats.interactions(stats.Layout(two_by_two(), ["a", "b"], {"a": 0, "b": "x"}, levels))
    assert len(out) == 1 and list(out.columns) == stats.INTERACTION_COLUMNS
    r = out.iloc[0]
    assert (r["factor"], r["level"], r["by"], r["by_level"], r["n_pairs"]) == ("a", 1, "b", "y", 3)
    assert r["at_baseline"] == pytest.approx(0.021) and r["at_level"] == pytest.approx(0.04)
    ref = st.ttest_1samp([0.02, 0.017, 0.02], 0)  # per seed: 0.04 - 0.02, 0.04 - 0.023, 0.04 - 0.02
    assert r["diff"] == pytest.approx(0.019) and r["p_value"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high)) and r["significant"]


def test_no_interaction_when_effects_add_up():
    rng = np.random.default_rng(0)  # y = 0.9 + 0.02 a + 0.01 b + seed shift + noise: additive
    values = {
        (a, b, s): 0.9 + 0.02 * a + 0.01 * b + 0.01 * s + rng.normal(0, 0.001)
        for a, b, s in itertools.product([0, 1], [0, 1], range(5))
    }
    layout = stats.Layout(frame(values), ["a", "b"], {"a": 0, "b": 0}, {"a": [0, 1], "b": [0, 1]})
    r = stats.interactions(layout).iloc[0]
    assert r["ci_low"] < 0 < r["ci_high"] and not r["significant"]
    assert r["at_baseline"] == pytest.approx(0.02, abs=0.002) and r["at_level"] == pytest.approx(
        0.02, abs=0.002
    )


def test_one_at_a_time_effect_equals_scipy_paired_t_test():
    base = [0.91, 0.93, 0.92, 0.90, 0.94]
    relu = [0.95, 0.96, 0.96, 0.93, 0.97]
    bn = [0.92, 0.93, 0.95, 0.91, 0.95]
    values = {}
    for s in range(5):
        values[("sigmoid", False, s)] = base[s]
        values[("relu", False, s)] = relu[s]
        values[("sigmoid", True, s)] = bn[s]
    fin = frame(values, factors=("act", "bn"))
    eff = stats.effects(
        fin,
        ["act", "bn"],
        {"act": "sigmoid", "bn": False},
        {"act": ["sigmoid", "relu"], "bn": [False, True]},
    ).set_index("factor")
    for f, ys in (("act", relu), ("bn", bn)):
        ref = st.ttest_rel(ys, base)
        ci = ref.confidence_interval(0.95)
        assert eff.loc[f, "p_value"] == pytest.approx(ref.pvalue)
        assert (eff.loc[f, "ci_low"], eff.loc[f, "ci_high"]) == pytest.approx((ci.low, ci.high))
        assert eff.loc[f, "n_pairs"] == 5
    flips = st.permutation_test(
        (np.subtract(relu, base),), np.mean, permutation_type="samples", n_resamples=np.inf
    )
    assert eff.loc["act", "p_signflip"] == pytest.approx(flips.pvalue)


def test_summary_counts_seeds_and_keeps_diverged_cells_out_of_the_mean():
    fin = frame({(0, "x", 0): 0.9, (0, "x", 1): 0.8, (0, "x", 2): 0.1})
    fin.loc[2, "status"] = "diverged"
    s = stats.summary(fin, ["a", "b"])
    assert (
        s.loc[0, "n_seeds"] == 2
        and s.loc[0, "n_diverged"] == 1
        and s.loc[0, "mean"] == pytest.approx(0.85)
    )


def one_factor(per_seed: dict) -> pd.DataFrame:
    """a=0 and a=1 per seed: {seed: (y at 0, y at 1)}."""
    return frame({(a, "x", seed): ys[a] for seed, ys in per_seed.items() for a in (0, 1)})


LEVELS, BASE = {"a": [0, 1], "b": ["x"]}, {"a": 0, "b": "x"}


def test_no_spread_is_not_evidence_and_only_the_exact_sign_flip_decides():
    # before: per-seed differences (0.25, 0.25) gave [0.25, 0.25], p = 0, significant
    row = stats.effects(
        one_factor({0: (0.5, 0.75), 1: (0.6, 0.85)}), ["a", "b"], BASE, LEVELS, resolution=1e-4
    ).iloc[0]
    assert row["no_spread"] and np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    assert (
        row["p_value"] == pytest.approx(0.5)
        and not row["significant"]
        and row["test"].startswith("sign-flip")
    )
    # a spread of half a test sample (resolution 1e-4) is no spread either
    half = stats.effects(
        one_factor({0: (0.5, 0.75), 1: (0.6, 0.85005)}), ["a", "b"], BASE, LEVELS, resolution=1e-4
    ).iloc[0]
    assert half["no_spread"] and half["p_value"] == pytest.approx(0.5)
    # six seeds all +0.01: the exact sign-flip p is 2 / 2**6 = 0.03125, significant; five:
    # 0.0625, not
    six = stats.effects(
        one_factor({s: (0.9, 0.91) for s in range(6)}), ["a", "b"], BASE, LEVELS, resolution=1e-4
    )
    five = stats.effects(
        one_factor({s: (0.9, 0.91) for s in range(5)}), ["a", "b"], BASE, LEVELS, resolution=1e-4
    )
    assert six.loc[0, "p_value"] == pytest.approx(2 / 64) and six.loc[0, "significant"]
    assert five.loc[0, "p_value"] == pytest.approx(2 / 32) and not five.loc[0, "significant"]
    fin = one_factor({0: (0.5, 0.75), 1: (0.6, 0.85)})
    note = stats.analyse(stats.Layout(fin, ["a", "b"], BASE, LEVELS, resolution=1e-4)).effects
    note = note.loc[0, "note"]
    assert note.startswith("no spread")


def test_the_alias_sign_of_a_half_fraction_is_minus_for_odd_k_and_plus_for_even_k():
    # +-1 codes; the half keeps an even number of factors away from baseline, so
    # x_a x_b ... = (-1)^k
    for k, sign in ((3, "-"), (4, "+")):
        names = "abcd"[:k]
        half = [p for p in itertools.product([0, 1], repeat=k) if sum(p) % 2 == 0]
        # b x c (x d): 0.01 in level units
        code = lambda p: np.prod([2 * v - 1 for v in p[1:]])  # noqa: E731
        fin = frame(
            {(*p, s): 0.9 + 0.005 * code(p) + 0.01 * s for p in half for s in range(3)},
            factors=tuple(names),
        )
        layout = stats.Layout(fin, list(names), {f: 0 for f in names}, {f: [0, 1] for f in names})
        out = stats.analyse(layout, design="fractional")
        a = out.effects.set_index("factor").loc["a"]
        assert a["alias"] == sign + ":".join(names[1:]), out.effects
        assert a["diff"] == pytest.approx(
            0.01 if sign == "+" else -0.01
        )  # A = 0: the estimate is +-BC(D)
        assert ("minus" if sign == "-" else "plus") in a["note"] and out.half_k == k


def test_effects_and_interactions_are_one_holm_family():
    levels = {"a": [0, 1], "b": ["x", "y"]}
    out = stats.analyse(stats.Layout(two_by_two(), ["a", "b"], {"a": 0, "b": "x"}, levels))
    p = [*out.effects["p_value"], *out.interactions["p_value"]]
    assert out.family == 3
    assert [*out.effects["p_holm"], *out.interactions["p_holm"]] == pytest.approx(
        inference.holm(p).tolist()
    )


def test_mde_agrees_with_statsmodels_and_seeds_needed_by_hand():
    from statsmodels.stats.power import TTestPower

    for n in (2, 3, 5, 10):  # standardised: the detectable difference in units of the spread
        assert inference.mde(1.0, n) == pytest.approx(
            TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8), rel=1e-4
        )
    assert inference.mde(0.01, 5) == pytest.approx(0.01 * inference.mde(1.0, 5))
    # s = 0.01, half-width 0.005: n = 18 gives t(0.975, 17) * 0.01 / sqrt(18)
    # = 2.1098 * 0.002357 = 0.004973
    assert inference.seeds_needed(0.01, 0.005) == 18
    assert st.t.ppf(0.975, 16) * 0.01 / np.sqrt(17) > 0.005
    assert np.isnan(inference.mde(0.0, 5)) and np.isnan(inference.mde(0.01, 1))


def test_equivalence_is_two_one_sided_t_tests_as_statsmodels_computes_them():
    from statsmodels.stats.weightstats import ttost_paired

    d = np.array([0.001, -0.002, 0.0005, 0.0015, -0.001])
    ref = ttost_paired(d, np.zeros(5), -0.005, 0.005)[0]
    assert inference.tost(d, 0.005) == pytest.approx(ref)
    fin = one_factor({s: (0.9, 0.9 + x) for s, x in enumerate(d)})
    row = stats.effects(fin, ["a", "b"], BASE, LEVELS, margin=0.005).iloc[0]
    assert (
        row["equivalent"] and row["p_equivalence"] == pytest.approx(ref) and not row["significant"]
    )
    assert not stats.effects(fin, ["a", "b"], BASE, LEVELS, margin=0.001).loc[0, "equivalent"]


def test_a_tie_of_seeds_that_lost_different_settings_keeps_one_estimand():
    # a adds 0.01 at b=0 and 0.05 at b=1; seed 0 lost (a=1, b=1), seeds 1 and 2 lost (a=1, b=0)
    values = {
        (a, b, s): 0.9 + a * (0.01 if b == 0 else 0.05)
        for a in (0, 1)
        for b in (0, 1)
        for s in range(3)
    }
    fin = frame(values)
    fin.loc[(fin["a"] == 1) & (fin["b"] == 1) & (fin["seed"] == 0), "status"] = "diverged"
    fin.loc[(fin["a"] == 1) & (fin["b"] == 0) & (fin["seed"] > 0), "status"] = "diverged"
    d = stats.paired_diffs(fin, ["a", "b"], "a", 1, 0)
    assert d.empty or np.ptp(d.to_numpy()) == 0, (
        d
    )  # never 0.01 for one seed and 0.05 for the others


def test_a_none_level_read_back_as_nan_still_pairs():
    # Parquet stores a column of None and ints as floats: train_subset=None reads back as NaN
    fin = frame(
        {(a, "x", s): 0.9 + 0.01 * (a == 5) + 0.001 * s for a in (None, 5) for s in range(3)}
    )
    fin["a"] = fin["a"].astype(float)
    row = stats.effects(fin, ["a", "b"], {"a": None, "b": "x"}, {"a": [None, 5], "b": ["x"]}).iloc[
        0
    ]
    assert row["n_pairs"] == 3 and row["diff"] == pytest.approx(0.01)


def test_a_pinned_factor_is_no_part_of_a_fractional_alias():
    half = [p for p in itertools.product([0, 1], repeat=3) if sum(p) % 2 == 0]
    fin = frame(
        {(*p, 7, s): 0.9 + 0.01 * p[0] + 0.001 * s * (1 + p[1]) for p in half for s in range(3)},
        factors=tuple("abcd"),
    )
    levels = {"a": [0, 1], "b": [0, 1], "c": [0, 1], "d": [7]}
    layout = stats.Layout(fin, list("abcd"), {"a": 0, "b": 0, "c": 0, "d": 7}, levels)
    out = stats.analyse(layout, design="fractional")
    assert out.effects.set_index("factor").loc["a", "alias"] == "-b:c" and out.half_k == 3


def test_steins_interval_takes_the_first_stages_sd_and_df_over_every_seed():
    # seeds 0-2 the first stage (sd 0.2, mean 0.1), 1-6 all of them (mean 0.2): by hand,
    # the half-width is t(0.975, 2) * 0.2 / sqrt(7) = 4.303 * 0.0756 = 0.3253
    diffs = np.array([0.1, 0.3, -0.1, 0.5, 0.4, 0.2, 0.0])
    first = np.arange(7) < 3
    out = inference.estimate(diffs, 0.0, 0.5, 0.7, first_stage=first)
    scale = 0.2 / np.sqrt(7)
    assert out["ci_low"] == pytest.approx(0.2 - st.t.ppf(0.975, 2) * scale, abs=1e-12)
    assert out["ci_high"] == pytest.approx(0.2 + 0.3253, abs=1e-4)
    assert out["p_value"] == pytest.approx(2 * st.t.sf(0.2 / scale, 2), rel=1e-12)
    lower, upper = st.t.sf((0.2 + 0.5) / scale, 2), st.t.cdf((0.2 - 0.5) / scale, 2)
    assert out["p_equivalence"] == pytest.approx(max(lower, upper), rel=1e-12)
    assert out["test"] == "paired t, Stein two-stage" and out["n_pairs"] == 7
    # mde: the test's power is noncentral t on the first stage's df, shift mde * sqrt(7) / sd
    sd, crit = diffs.std(ddof=1), st.t.ppf(0.975, 2)
    shift = out["mde"] * np.sqrt(7) / sd
    assert st.nct.sf(crit, 2, shift) + st.nct.cdf(-crit, 2, shift) == pytest.approx(0.8)


def test_without_a_second_stage_or_a_first_stage_spread_the_estimate_is_todays():
    diffs = np.array([0.1, 0.3, -0.1, 0.5, 0.4])
    today = inference.estimate(diffs, 0.0, 0.5, 0.7)
    # no mask, a mask of every seed (Stein's interval is then the t interval), one seed first,
    # and a first stage without spread (two equal differences) all read as today
    for first in (None, np.ones(5, bool), np.arange(5) < 1):
        assert inference.estimate(diffs, 0.0, 0.5, 0.7, first) == today
    flat = np.array([0.1, 0.1, 0.3, -0.1])
    assert inference.estimate(flat, 0.01, None, 0.7, np.arange(4) < 2) == inference.estimate(
        flat, 0.01, None, 0.7
    )


def test_a_half_fractions_alias_note_gives_the_aliased_interaction_in_the_pages_units():
    # issue 28: A's row of the 2^(3-1) half is A - 1/2 x the b:c diff that interactions.csv
    # would print; plant a b:c diff of +2 points (coefficient 0.005 in +-1 codes): A = -1 point
    half = [p for p in itertools.product([0, 1], repeat=3) if sum(p) % 2 == 0]
    code = lambda v: 2 * v - 1  # noqa: E731
    values = {
        (*p, s): 0.9 + 0.005 * code(p[1]) * code(p[2]) + 0.01 * s for p in half for s in (0, 1)
    }
    fin = frame(values, factors=("a", "b", "c"))
    levels = {f: [0, 1] for f in "abc"}
    out = stats.analyse(stats.Layout(fin, list("abc"), dict(a=0, b=0, c=0), levels), "fractional")
    row = out.effects.set_index("factor").loc["a"]
    assert row["diff"] == pytest.approx(-0.01) and row["alias"] == "-b:c"
    assert row["note"].startswith(
        "estimates the main effect minus 1/2 x the b:c interaction's diff"
    )
    assert stats.alias_note("+b:c:d").startswith("estimates the main effect plus 1/4 x the b:c:d")
    assert (
        stats.alias_note("-b")
        == "estimates the main effect minus b's main effect (aliased in the half)"
    )


def test_p_greater_is_the_share_of_seeds_above_zero_with_a_clopper_pearson_interval():
    from statsmodels.stats.proportion import proportion_confint

    p, low, high = inference.greater([0.01, 0.02, -0.01, 0.0, 0.03])  # 3 above, a tie, 1 below
    assert p == pytest.approx(3.5 / 5)
    assert low == pytest.approx(proportion_confint(3, 5, method="beta")[0])  # the tie below
    assert high == pytest.approx(proportion_confint(4, 5, method="beta")[1])  # the tie above
    assert inference.greater([1.0, 2.0]) == (1.0, pytest.approx(st.beta.ppf(0.025, 2, 1)), 1.0)
    row = stats.effects(frame({(a, "x", s): 0.9 + 0.01 * a * s for a in (0, 1) for s in range(4)}),
                        ["a", "b"], BASE, LEVELS).iloc[0]  # fmt: skip
    assert row["p_greater"] == pytest.approx(3.5 / 4)  # seed 0 ties


@pytest.mark.slow
def test_p_greaters_interval_covers_at_least_95_percent_at_3_to_10_seeds():
    # exact by construction (Clopper-Pearson); simulated so the table's claim is measured
    rng, reps, said = np.random.default_rng(31), 4000, []
    for n in (3, 5, 10):
        for shift in (0.0, 0.5, 1.5):
            truth = st.norm.sf(-shift)  # P(d > 0) for d ~ N(shift, 1)
            d = rng.normal(shift, 1, (reps, n))
            bounds = np.array([inference.greater(row)[1:] for row in d])
            covered = np.mean((bounds[:, 0] <= truth) & (truth <= bounds[:, 1]))
            said.append(f"n={n}, P {truth:.2f}: {covered:.3f}")
    print("P(level > baseline), Clopper-Pearson coverage: " + "; ".join(said))
    assert all(float(s.split(": ")[1]) >= 0.95 for s in said), said
