"""The blocked ANOVA checked by hand and against statsmodels; sign changes planted and simulated."""

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as st
from statsmodels.stats.anova import AnovaRM, anova_lm

from ablate import anova, stats
from helpers import frame


def test_a_two_by_two_grid_by_hand():
    rows = {0: [1, 2, 3, 6], 1: [2, 3, 4, 6], 2: [3, 4, 5, 9]}  # seed: (a, b) = 00, 01, 10, 11
    fin = frame(
        {
            (a, b, s): float(y[2 * a + b])
            for s, y in rows.items()
            for a, b in itertools.product([0, 1], [0, 1])
        }
    )
    out, n = anova.anova(fin, ["a", "b"], {"a": [0, 1], "b": [0, 1]})
    # grand mean 4; a's means 15/6 = 2.5 and 33/6 = 5.5: SS_a = 12 obs * 1.5**2 = 27 of a total 54.
    # b: 12 * 1**2 = 12; a:b: cell (1,1) 7 - 5.5 - 5 + 4 = 0.5, so 12 * 0.25 = 3; seed means
    # 3, 3.75, 5.25: 4 * (1 + 1/16 + 25/16) = 10.5; residual 54 - 52.5 = 1.5 on (3-1)(4-1) = 6 df.
    # Each term against its own interaction with seed: a's per-seed effects 3, 2.5, 3.5 deviate
    # 0, -0.5, 0.5, so a x seed = 4 * 0.25**2 * 2 = 0.5 on 2 df and F = 27 / 0.25 = 108: the
    # paired t of (3, 2.5, 3.5), 3 / (0.5 / sqrt(3)) = 10.39, squared
    assert n == 3 and list(out.columns) == anova.ANOVA_COLUMNS
    assert out["term"].tolist() == ["seed", "a", "b", "a:b", "residual"]
    assert out["df"].tolist() == [2, 1, 1, 1, 6]
    assert out["sum_sq"].tolist() == pytest.approx([10.5, 27, 12, 3, 1.5])
    assert out["F"].tolist()[1:4] == pytest.approx([108, 48, 12]) and out["error_df"].tolist()[
        1:4
    ] == [2, 2, 2]
    assert out["F"][1] == pytest.approx(st.ttest_1samp([3, 2.5, 3.5], 0).statistic ** 2)
    assert (
        out["p"][1] == pytest.approx(st.f.sf(108, 1, 2))
        and out[["F", "p"]].iloc[[0, -1]].isna().all().all()
    )
    assert out["eta_sq"][1] == pytest.approx(0.5) and out["eta_sq"].sum() == pytest.approx(1)


def random_grid(rng, seeds=4) -> tuple[pd.DataFrame, dict]:
    """2 x 3 x 2 with a shift per seed, main effects, one interaction and noise."""
    levels = {"a": [0, 1], "b": ["x", "y", "z"], "c": [False, True]}
    shift = rng.normal(0, 0.01, seeds)
    values = {
        (a, b, c, s): 0.9
        + 0.02 * a
        + 0.01 * "xyz".index(b)
        - 0.005 * c
        + 0.01 * a * c
        + shift[s]
        + rng.normal(0, 0.005)
        for a, b, c in itertools.product(*levels.values())
        for s in range(seeds)
    }
    return frame(values, factors=("a", "b", "c")), levels


def test_the_table_matches_statsmodels_on_a_two_by_three_by_two_grid():
    fin, levels = random_grid(np.random.default_rng(7))
    out, n = anova.anova(fin, ["a", "b", "c"], levels)
    data = fin.rename(columns={"test_acc": "y"})
    # sums of squares: the blocked OLS (balanced, so type 1, 2 and 3 agree)
    ref = anova_lm(smf.ols("y ~ C(seed) + C(a)*C(b)*C(c)", data).fit(), typ=2)
    names = {"seed": "C(seed)", "residual": "Residual"}
    ref = ref.loc[[names.get(t, ":".join(f"C({f})" for f in t.split(":"))) for t in out["term"]]]
    assert n == 4
    assert out["term"].tolist() == ["seed", "a", "b", "c", "a:b", "a:c", "b:c", "a:b:c", "residual"]
    assert out["df"].tolist() == ref["df"].tolist() == [3, 1, 2, 1, 2, 1, 2, 2, 33]
    assert out["sum_sq"].tolist() == pytest.approx(ref["sum_sq"].tolist(), rel=1e-9)
    # F and p: the repeated-measures ANOVA, each term against its interaction with seed
    rm = AnovaRM(data, "y", "seed", within=["a", "b", "c"]).fit().anova_table
    terms = out.iloc[1:-1].set_index("term")
    assert terms["F"].tolist() == pytest.approx(rm.loc[terms.index, "F Value"].tolist(), rel=1e-9)
    assert terms["error_df"].tolist() == rm.loc[terms.index, "Den DF"].tolist()
    assert terms["p"].tolist() == pytest.approx(rm.loc[terms.index, "Pr > F"].tolist(), rel=1e-9)


def test_a_diverged_cell_drops_its_seed():
    fin, levels = random_grid(np.random.default_rng(8))
    hit = (fin["a"] == 1) & (fin["b"] == "y") & fin["c"] & (fin["seed"] == 2)
    fin.loc[hit, ["status", "test_acc"]] = ["diverged", 0.1]
    out, n = anova.anova(fin, ["a", "b", "c"], levels)
    without, n_without = anova.anova(fin[fin["seed"] != 2], ["a", "b", "c"], levels)
    assert (n, n_without) == (3, 3)
    pd.testing.assert_frame_equal(out, without)
    fin.loc[fin["seed"] != 0, "status"] = "diverged"  # one complete seed left: no table
    empty, n_one = anova.anova(fin, ["a", "b", "c"], levels)
    assert n_one == 1 and empty.empty and list(empty.columns) == anova.ANOVA_COLUMNS


def test_a_simple_effect_of_each_sign_is_flagged_and_an_additive_one_is_not():
    rng = np.random.default_rng(3)  # hidden helps by 0.03 without batchnorm, hurts by 0.01 with it
    levels = {"hidden": [(32,), (64, 32)], "bn": [False, True]}
    big = {h: h == (64, 32) for h in levels["hidden"]}
    values = {
        (h, bn, s): 0.9
        + 0.03 * big[h]
        - 0.04 * big[h] * bn
        - 0.01 * bn
        + 0.01 * s
        + rng.normal(0, 1e-4)
        for h, bn in itertools.product(*levels.values())
        for s in range(5)
    }
    fin, base = frame(values, factors=("hidden", "bn")), {"hidden": (32,), "bn": False}
    simple = anova.sign_changes(stats.Layout(fin, ["hidden", "bn"], base, levels))
    assert list(simple.columns) == anova.SIMPLE_COLUMNS and simple["n_pairs"].tolist() == [5] * 4
    assert simple["setting"].tolist() == ["bn=False", "bn=True", "hidden=(32,)", "hidden=(64, 32)"]
    assert simple["diff"].tolist() == pytest.approx([0.03, -0.01, -0.01, -0.05], abs=3e-4)
    flagged = anova.changes_sign(simple)  # bn hurts at either hidden: no sign change
    assert flagged[["factor", "level"]].values.tolist() == [["hidden", (64, 32)]]
    assert flagged["settings"][0] == "+3.00 at bn=False; -1.00 at bn=True"  # points
    additive = {
        (a, b, s): 0.9 + 0.02 * a - 0.01 * b + rng.normal(0, 0.001)
        for a, b, s in itertools.product([0, 1], [0, 1], range(5))
    }
    layout = stats.Layout(frame(additive), ["a", "b"], {"a": 0, "b": 0}, {"a": [0, 1], "b": [0, 1]})
    flat = anova.sign_changes(layout)
    none = anova.changes_sign(flat)
    assert none.empty and list(none.columns) == anova.SIGN_COLUMNS


@pytest.mark.parametrize("k, reps", [(3, 300), (4, 200), (5, 100)])
@pytest.mark.slow
def test_sign_changes_are_rarely_flagged_when_effects_add_up(k, reps):
    # before: unadjusted CIs per setting flagged 2%, 7.5% and 33% of such studies at k = 3, 4, 5
    rng = np.random.default_rng(20261124 + k)
    names = "abcde"[:k]
    levels, base = {f: [0, 1] for f in names}, {f: 0 for f in names}
    flagged = 0
    for _ in range(reps):
        shift = rng.normal(0, 0.02, 5)  # pairing by seed removes it
        values = {
            (*p, s): 0.9 + 0.01 * p[0] + shift[s] + rng.normal(0, 0.01)
            for p in itertools.product([0, 1], repeat=k)
            for s in range(5)
        }
        fin = frame(values, factors=tuple(names))
        simple = anova.sign_changes(stats.Layout(fin, list(names), base, levels))
        flagged += not anova.changes_sign(simple).empty
    rate = flagged / reps
    assert rate <= 0.05, (
        f"{k} factors, additive: a sign change flagged in {rate:.3f} of {reps} studies"
    )
    print(f"{k} factors: sign change flagged in {rate:.3f} of {reps} additive studies")


def test_seeds_that_agree_exactly_show_no_sign_change():
    # xor-like: the effect is +0.25 at one setting and -0.25 at the other in every seed
    values = {
        (a, b, s): 0.5 + 0.25 * a * (1 if b else -1)
        for a, b, s in itertools.product([0, 1], [0, 1], range(3))
    }
    levels = {"a": [0, 1], "b": [0, 1]}
    layout = stats.Layout(frame(values), ["a", "b"], {"a": 0, "b": 0}, levels, resolution=0.25)
    simple = anova.sign_changes(layout)
    assert simple["ci_low"].isna().all() and anova.changes_sign(simple).empty


def test_failed_runs_counted_per_level_with_fishers_exact_test():
    # a=1: 2 of 3 seeds diverged and 1 stalled at chance; a=0: all fine
    values = {(a, "x", s): 0.9 for a in (0, 1) for s in range(6)}
    fin = frame(values)
    fin.loc[(fin["a"] == 1) & (fin["seed"] < 4), "status"] = "diverged"
    fin.loc[(fin["a"] == 1) & (fin["seed"] == 4), "test_acc"] = (
        0.11  # 10 classes: within 2 points of 0.1
    )
    out = anova.failures(fin, ["a", "b"], {"a": [0, 1], "b": ["x"]}, classes=10).set_index(
        ["factor", "level"]
    )
    assert out.loc[("a", 1), ["n_runs", "n_diverged", "n_stalled"]].tolist() == [6, 4, 1]
    assert out.loc[("a", 0), ["n_diverged", "n_stalled"]].tolist() == [0, 0]
    ref = st.fisher_exact([[0, 6], [5, 1]]).pvalue
    assert out.loc[("a", 1), "p_fisher"] == pytest.approx(ref) and out.loc[("a", 1), "differs"]
    assert out.loc[("b", "x"), "p_fisher"] == 1.0  # one level: nothing to compare


def test_one_at_a_time_failures_compare_a_level_with_the_baseline_point_only():
    # lr=10 always diverges; act=tanh never does: pooling act's rows would blame act (p 0.011)
    values = {
        (lr, act, s): 0.9
        for lr, act in ((0.1, "relu"), (10.0, "relu"), (0.1, "tanh"))
        for s in range(10)
    }
    fin = frame(values, factors=("lr", "act"))
    fin.loc[fin["lr"] == 10.0, "status"] = "diverged"
    levels, base = {"lr": [0.1, 10.0], "act": ["relu", "tanh"]}, {"lr": 0.1, "act": "relu"}
    out = anova.failures(fin, ["lr", "act"], levels, classes=10, baselines=base).set_index(
        ["factor", "level"]
    )
    assert out.loc[("act", "tanh"), "n_runs"] == 10 and out.loc[("act", "relu"), "n_runs"] == 10
    assert not out.loc[("act", "tanh"), "differs"] and out.loc[("lr", 10.0), "differs"]


def test_fishers_test_over_three_levels_is_reproducible():
    fin = frame({(a, "x", s): 0.9 for a in (0, 1, 2) for s in range(5)})
    failed = {(0, 0), (2, 0), (2, 1), (2, 2), (2, 3)}  # table [[1, 4], [0, 5], [4, 1]]
    fin.loc[[(a, s) in failed for a, s in zip(fin["a"], fin["seed"], strict=True)], "status"] = (
        "diverged"
    )
    levels = {"a": [0, 1, 2], "b": ["x"]}
    first = anova.failures(fin, ["a", "b"], levels, classes=10)["p_fisher"].iloc[0]
    assert first == anova.failures(fin, ["a", "b"], levels, classes=10)["p_fisher"].iloc[0]
    assert first == pytest.approx(
        0.0524, abs=0.004
    )  # scipy's Monte Carlo over three runs: 0.0517 to 0.0535


def test_a_sign_change_is_said_only_where_holm_finds_the_factor_interacting():
    # issue 28: ungated sign-change warnings added 0.002 to a null page's false-positive rate
    rng = np.random.default_rng(3)
    levels, base = {"a": [0, 1], "b": [0, 1]}, {"a": 0, "b": 0}
    values = {  # a helps by 3 points at b=0 and hurts by 1 at b=1
        (a, b, s): 0.9 + 0.03 * a - 0.04 * a * b + 0.01 * s + rng.normal(0, 1e-4)
        for a, b, s in itertools.product([0, 1], [0, 1], range(5))
    }
    fin = frame(values)
    layout = stats.Layout(fin, ["a", "b"], base, levels)
    simple = anova.sign_changes(layout)
    found = stats.analyse(layout).interactions
    assert found["significant"].tolist() == [True]
    assert anova.changes_sign(simple, interactions=found)["factor"].tolist() == ["a"]
    quiet = found.assign(significant=False)  # as if Holm had not flagged a:b
    assert anova.changes_sign(simple, interactions=quiet).empty
    assert anova.changes_sign(simple)["factor"].tolist() == ["a"]  # ungated: as before
