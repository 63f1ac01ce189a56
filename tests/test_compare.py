"""`ablate compare A B`: paired and Welch tests, divergence, Holm, their rates, real stores."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from ablate import compare, inference
from ablate.cli import app
from ablate.errors import AblateError
from ablate.metrics import SECONDS, TEST_ACC
from helpers import REPO, write_study

cli = CliRunner()


def test_welch_by_hand_on_three_values_each():
    # diff 1; se = sqrt(1/3 + 1/3); the 80% F(2, 2) interval of the variance ratio 1 is
    # [1/9, 9] (its cdf is x / (1 + x)); at 9, A's share of se^2 is 1/3 / (1/3 + 9/3) = 0.1 and
    # Satterthwaite's df 1 / (0.1^2 / 2 + 0.9^2 / 2) = 100/41 (at the ratio 1 itself: 4)
    row = compare.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    se = np.sqrt(2 / 3)
    assert row["diff"] == pytest.approx(1.0) and row["df"] == pytest.approx(100 / 41)
    assert row["p_value"] == pytest.approx(2 * scipy_stats.t.sf(1 / se, 100 / 41))
    half = scipy_stats.t.ppf(0.975, 100 / 41) * se
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((1 - half, 1 + half))
    assert row["test"] == "welch"


def test_welch_is_scipys_ttest_ind_statistic_at_welch_df_which_nears_satterthwaites_with_seeds():
    rng = np.random.default_rng(0)
    for n_a, n_b, scale in [(5, 5, 1.0), (3, 3, 4.0), (10, 10, 0.3), (5, 3, 4.0), (3, 2, 0.1)]:
        a, b = rng.normal(0, 1, n_a), rng.normal(0.5, scale, n_b)
        row = compare.welch(a, b)
        ref = scipy_stats.ttest_ind(b, a, equal_var=False)
        df, se = row["df"], (b.mean() - a.mean()) / ref.statistic
        assert min(n_a, n_b) - 1 <= df <= ref.df  # between Hsu's and Satterthwaite's
        assert row["p_value"] == pytest.approx(2 * scipy_stats.t.sf(abs(ref.statistic), df))
        half = scipy_stats.t.ppf(0.975, df) * se
        low, high = b.mean() - a.mean() - half, b.mean() - a.mean() + half
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-9)
    a, b = rng.normal(0, 1, 4000), rng.normal(0, 3, 2000)  # the F interval shrinks to a point
    satterthwaite = scipy_stats.ttest_ind(b, a, equal_var=False).df
    assert compare.welch(a, b)["df"] == pytest.approx(satterthwaite, rel=0.02)


def test_welch_equivalence_equals_statsmodels_two_one_sided_tests_at_welchs_df():
    from statsmodels.stats.weightstats import _tstat_generic

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 5), rng.normal(0.2, 2, 5)
    row = compare.welch(a, b, margin=1.5)
    se = np.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 5)
    diff = b.mean() - a.mean()
    above = _tstat_generic(diff, 0, se, row["df"], "larger", diff=-1.5)[1]
    below = _tstat_generic(diff, 0, se, row["df"], "smaller", diff=1.5)[1]
    assert row["p_equivalence"] == pytest.approx(max(above, below), rel=1e-9)


def test_paired_t_equals_scipys_ttest_rel_and_its_mde_is_inference_mde_and_statsmodels():
    from statsmodels.stats.power import TTestPower

    rng = np.random.default_rng(2)
    a = rng.normal(0.9, 0.02, 5)
    b = a + rng.normal(0.01, 0.005, 5)  # one seed's init and order on both machines
    row = compare.paired(a, b, margin=0.02)
    ref = scipy_stats.ttest_rel(b, a)
    assert row["test"] == "paired t" and row["df"] == 4
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ref.confidence_interval(), rel=1e-9)
    std = np.std(b - a, ddof=1)
    assert row["mde"] == pytest.approx(inference.mde(std, 5), rel=1e-9)
    assert row["mde"] == pytest.approx(TTestPower().solve_power(None, 5, 0.05, 0.8) * std, rel=1e-6)
    assert row["p_equivalence"] == pytest.approx(inference.tost(b - a, 0.02))
    # the seeds' shared part cancels: the paired interval is far narrower than Welch's
    assert row["ci_high"] - row["ci_low"] < 0.5 * np.ptp([compare.welch(a, b)[k] for k in
                                                          ("ci_low", "ci_high")])  # fmt: skip


def test_welchs_mde_is_the_shift_its_noncentral_t_detects_4_times_in_5_at_its_df():
    a, b = [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 3.0, 6.0]
    row = compare.welch(a, b)
    se = np.sqrt(np.var(a, ddof=1) / 5 + np.var(b, ddof=1) / 3)
    crit, shift = scipy_stats.t.ppf(0.975, row["df"]), row["mde"] / se
    power = scipy_stats.nct.sf(crit, row["df"], shift) + scipy_stats.nct.cdf(
        -crit, row["df"], shift
    )
    assert power == pytest.approx(0.8, abs=1e-9)
    assert np.isnan(compare.welch([0.9] * 3, [0.9] * 3, resolution=1e-4)["mde"])  # no spread


def test_paired_differences_without_spread_leave_the_decision_to_welch():
    a = np.array([0.90, 0.92, 0.94])
    assert compare.paired(a, a)["test"] == "welch" and compare.paired(a, a)["p_value"] == 1.0
    shifted = compare.paired(a, a + 0.1)  # every seed moved by the same 0.1: t would be infinite
    assert shifted["test"] == "welch" and shifted["p_value"] < 0.05  # t = 6.1 at 100/41 df


def test_no_spread_on_either_side_is_decided_by_the_exact_permutation_test():
    # 3 vs 3 values, all alike on each side: the observed split is the most extreme of C(6,3) =
    # 20, and so is its mirror: p = 2 / 20
    row = compare.welch([0.9, 0.9, 0.9], [0.91, 0.91, 0.91], resolution=1e-4)
    assert row["p_value"] == pytest.approx(0.1) and np.isnan(row["ci_low"])
    assert row["test"] == "permutation (no spread)"
    assert compare.welch([0.9] * 3, [0.9] * 3, resolution=1e-4)["p_value"] == 1.0
    assert compare.welch([0.9], [0.9, 0.8])["test"] == "n<2"


def finals(means_a, means_b, seeds=3, spread=0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two folders' final rows for one factor `lr`, seed s of point i at mean + spread * s (so
    B - A is one number for every seed: no spread, and Welch decides)."""
    frames = []
    for side, means in (("a", means_a), ("b", means_b)):
        rows = [
            dict(cell=f"{side}{i}{s}", seed=s, lr=i, status="ok", test_acc=m + spread * (s - 1))
            for i, m in enumerate(means)
            for s in range(seeds)
        ]
        frames.append(pd.DataFrame(rows))
    return frames[0], frames[1]


def test_compare_marks_a_shifted_point_differ_and_no_difference_detected_elsewhere_by_hand():
    a, b = finals([0.5, 0.6, 0.7], [0.5, 0.6, 0.8])  # point 2 moved by 10 sd
    table = compare.compare(a, b, ["lr"], resolution=1e-4)
    assert table["verdict"].tolist() == ["no difference detected"] * 2 + ["differ"]
    assert table["diff"].tolist() == pytest.approx([0, 0, 0.1])
    assert table["p_holm"].iloc[2] == pytest.approx(3 * table["p_value"].iloc[2])
    # sd 0.01 a side, 3 v 3: se 0.0082 at 100/41 df (test_welch_by_hand...); the MDE 80% power
    se = 0.01 * np.sqrt(2 / 3)
    assert table["mde"].iloc[0] == pytest.approx(compare.detectable(100 / 41) * se)
    line = compare.summary_line(table, ["lr"], TEST_ACC)
    mde = f"{100 * table['mde'].iloc[0]:.2f}"
    assert line.startswith(
        "2 of 3 points show no difference (none detected at 0.05 after Holm over the points' "
        f"means and diverged counts; differences under {mde} points would often go unseen"
    ), line
    assert "1 differ: lr=2 (+10.00 points [+7.03, +12.97])" in line, line


def test_points_with_the_same_seeds_on_both_sides_are_paired_and_others_are_not():
    a, b = finals([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    b["test_acc"] += np.tile([0.001, -0.002, 0.0005], 3)  # B - A varies by seed
    table = compare.compare(a, b, ["lr"])
    assert table["test"].tolist() == ["paired t"] * 3 and (table["df"] == 2).all()
    b.loc[b["cell"] == "b10", "status"] = "diverged"  # seed 0 of point 1: no longer pairs
    b.loc[b["cell"] == "b22", "seed"] = 7  # another seed at point 2
    table = compare.compare(a, b, ["lr"])
    assert table["test"].tolist() == ["paired t", "welch", "welch"]
    assert table["verdict"].tolist() == ["no difference detected"] * 3


def test_points_only_one_side_holds_are_listed_and_not_tested():
    a, b = finals([0.5, 0.6], [0.5])
    table = compare.compare(a, b, ["lr"])
    assert table["verdict"].tolist() == ["no difference detected", "only in A"]
    assert "1 only in A" in compare.summary_line(table, ["lr"], TEST_ACC)


def test_tuple_and_none_levels_are_points_like_any_other():
    rows = [
        dict(cell=f"{side}{i}{s}", hidden=level, status="ok", test_acc=0.9 + 0.01 * s)
        for side in "ab"
        for i, level in enumerate([(64, 32), None])
        for s in range(3)
    ]
    frame = pd.DataFrame(rows)
    frame["hidden"] = pd.Series([r["hidden"] for r in rows], dtype=object)
    a, b = frame[frame.cell.str[0] == "a"], frame[frame.cell.str[0] == "b"]
    table = compare.compare(a, b, ["hidden"])
    assert table["hidden"].tolist() == [(64, 32), None]
    assert table["verdict"].tolist() == ["no difference detected"] * 2
    line = compare.summary_line(table, ["hidden"], TEST_ACC)
    assert line.startswith("2 of 2 points show no difference"), line


def test_one_cell_diverged_on_one_side_shows_and_its_point_is_compared_on_the_rest():
    a, b = finals([0.5, 0.6], [0.5, 0.6])
    b.loc[b["cell"] == "b10", "status"] = "diverged"
    table = compare.compare(a, b, ["lr"])
    assert table["verdict"].tolist() == ["no difference detected"] * 2  # before: diverged in B
    assert table["diverged_b"].tolist() == [0, 1] and table["n_b"].tolist() == [3, 2]
    p = scipy_stats.boschloo_exact([[0, 3], [1, 2]]).pvalue  # 0 of 3 against 1 of 3
    assert table["p_diverged"].iloc[1] == pytest.approx(p) and np.isnan(table["p_diverged"][0])
    assert table["test"].iloc[1] == "welch" and table["n_a"].iloc[1] == 3
    line = compare.summary_line(table, ["lr"], TEST_ACC)
    assert "1 cell diverged (0 in A, 1 in B; see p_diverged)" in line, line


def test_boschloo_is_fishers_p_ordered_exactly_and_never_larger_than_fishers():
    # 0 of 5 against 5 of 5: of the 2^10 outcomes at a rate of 1/2 only this and its mirror are
    # as extreme, 2 / 1024; Fisher's, given the margins, 2 / C(10, 5) = 2 / 252
    assert compare.diverged_p(0, 5, 5, 0) == pytest.approx(2 / 1024)
    assert scipy_stats.fisher_exact([[0, 5], [5, 0]]).pvalue == pytest.approx(2 / 252)
    for counts in [(1, 4, 0, 5), (0, 5, 3, 2), (2, 8, 0, 5), (1, 2, 3, 0)]:
        table = [counts[:2], counts[2:]]
        p = compare.diverged_p(*counts)
        assert p == pytest.approx(scipy_stats.boschloo_exact(table).pvalue)
        assert p <= scipy_stats.fisher_exact(table).pvalue + 1e-12
    assert np.isnan(compare.diverged_p(0, 5, 0, 5)) and np.isnan(compare.diverged_p(2, 3, 0, 0))
    assert compare.diverged_p(5, 0, 3, 0) == 1.0  # every cell diverged on both sides


def diverging(rng, side: str, rate: float, points=8, seeds=5, shifted=-1, lost=0.0):
    """One folder of an identical setup: each cell diverges with chance `rate` (`lost` at point
    `shifted`), the rest land at 0.9 +- 0.01."""
    n = points * seeds
    at = np.repeat(np.arange(points), seeds)
    chance = np.where(at == shifted, lost, rate)
    frame = dict(cell=[f"{side}{i}" for i in range(n)], seed=np.tile(np.arange(seeds), points))
    frame.update(lr=at, status=np.where(rng.random(n) < chance, "diverged", "ok"))
    return pd.DataFrame(frame).assign(test_acc=0.9 + 0.01 * rng.standard_normal(n))


@pytest.mark.slow
def test_identical_setups_whose_cells_diverge_exit_1_at_most_5_percent_of_the_time():
    # 600 comparisons of 8 points x 5 seeds a side per rate; 3 standard errors of 0.05 at 600
    # is 0.027. Before (issue 28, a cell diverged on one side was a difference): 0.57, 0.80, 0.97
    rng, rates = np.random.default_rng(28), {}
    for rate in (0.01, 0.02, 0.05):
        failed = [
            compare.compare(diverging(rng, "a", rate), diverging(rng, "b", rate), ["lr"])[
                "verdict"].isin(compare.FAILED).any()
            for _ in range(600)
        ]  # fmt: skip
        rates[rate] = float(np.mean(failed))
    said = ", ".join(f"{rate:.0%} diverging: {rates[rate]:.3f}" for rate in rates)
    said = f"identical setups exit 1 in {said} (before: 0.57, 0.80, 0.97)"
    print(said)
    assert max(rates.values()) <= 0.05 + 0.027, said


@pytest.mark.slow
def test_a_point_whose_every_seed_diverged_on_one_side_is_diverged_among_eight_points():
    rng = np.random.default_rng(5)
    a, b = diverging(rng, "a", 0.0), diverging(rng, "b", 0.0, shifted=3, lost=1.0)
    table = compare.compare(a, b, ["lr"])  # 0 of 5 against 5 of 5: Boschloo 2 / 1024
    assert table["verdict"][3] == "diverged in B" and table["p_diverged"][3] == pytest.approx(
        2 / 1024)  # fmt: skip
    # Holm over 7 tested means and this count: 8 * 2 / 1024; Fisher's 8 * 2 / 252 = 0.063
    assert table["p_diverged_holm"][3] == pytest.approx(8 * 2 / 1024)
    line = compare.summary_line(table, ["lr"], TEST_ACC)
    assert "1 diverged in B: lr=3 (0 of 5 diverged in A, 5 of 5 in B)" in line, line
    found = np.mean([
        compare.compare(diverging(rng, "a", 0.01), diverging(rng, "b", 0.01, 8, 5, 3, 0.8),
                        ["lr"])["verdict"][3] == "diverged in B"
        for _ in range(200)
    ])  # fmt: skip
    print(f"a point whose cells diverge 80% of the time in B, 1% in A: diverged in B in {found}")
    assert found >= 0.3, f"diverged in B in {found} of 200 (80% against 1% of 5 cells)"


def test_without_spread_a_shift_below_the_resolution_is_no_shift_nor_a_difference():
    # accuracy on 899 test images moves in steps of 1/899: noise smaller than a step leaves
    # every seed of a point on the same value; 1,000 simulated 8-point comparisons
    rng, step, flagged = np.random.default_rng(3), 1 / 899, 0
    for _ in range(1000):
        truth = rng.uniform(0.8, 0.95, 8)
        rows = [
            compare.welch(*(np.round((truth[i] + rng.normal(0, 0.05 * step, (2, 5))) / step)
                            * step), resolution=step)
            for i in range(8)
        ]  # fmt: skip
        flagged += bool((inference.holm([row["p_value"] for row in rows]) < 0.05).any())
    assert flagged / 1000 <= 0.05, f"some point differs in {flagged / 1000:.3f} (no spread)"
    one_step = compare.welch([0.5] * 5, [0.5 + step] * 5, resolution=step)
    assert one_step["p_value"] == pytest.approx(2 / 252)  # 5 v 5: C(10, 5) = 252 splits


def simulated_differ_rate(points, n_a, n_b, sd_b, noise, studies, seed) -> tuple[float, float]:
    """Two setups with equal means: the share of studies where some point is called `differ`,
    and the share of single-point intervals that cover the true difference 0."""
    rng = np.random.default_rng(seed)
    draw = {"normal": rng.standard_normal, "t3": lambda size: rng.standard_t(3, size)}[noise]
    flagged, covered = 0, 0
    for _ in range(studies):
        rows = [compare.welch(draw(n_a), sd_b * draw(n_b)) for _ in range(points)]
        p_holm = inference.holm([row["p_value"] for row in rows])
        flagged += bool((p_holm < 0.05).any())
        covered += rows[0]["ci_low"] <= 0 <= rows[0]["ci_high"]
    return flagged / studies, covered / studies


@pytest.mark.parametrize(
    "n_a, n_b, sd_b, noise",
    [
        (5, 5, 1.0, "normal"),
        (5, 5, 2.0, "normal"),
        (3, 3, 2.0, "normal"),
        (5, 5, 1.0, "t3"),
        (5, 3, 3.0, "normal"),  # fewer seeds, more spread: Satterthwaite's df gave 0.12
        (10, 3, 3.0, "normal"),
        (3, 3, 10.0, "normal"),  # 0.09 with Satterthwaite's df (pinned before issue 28)
    ],
)
@pytest.mark.slow
def test_two_identical_setups_see_some_point_differ_at_most_5_percent_of_the_time(
    n_a, n_b, sd_b, noise
):
    # 1,000 simulated comparisons of 8 points; 3 standard errors of 0.05 at 1,000 is 0.021
    rate, coverage = simulated_differ_rate(8, n_a, n_b, sd_b, noise, 1000, seed=n_a + n_b)
    said = f"{noise}, seeds {n_a} vs {n_b}, sd ratio {sd_b}: some point differs in {rate:.3f}"
    print(f"{said}; a point's 95% interval covers 0 in {coverage:.3f}")
    assert rate <= 0.05 + 0.021, f"{said} of identical comparisons (want <= 0.05)"
    assert coverage >= 0.95 - 0.021, f"{said}; a point's 95% interval covered {coverage:.3f}"


def satterthwaite(var_a, n_a, var_b, n_b):
    share_a, share_b = var_a / n_a, var_b / n_b
    return (share_a + share_b) ** 2 / (share_a**2 / (n_a - 1) + share_b**2 / (n_b - 1))


DF_RULES = {  # the candidates; compare.welch_df is the last
    "Satterthwaite": satterthwaite,
    "Hsu if counts differ (before)": lambda va, na, vb, nb: (
        satterthwaite(va, na, vb, nb) if na == nb else np.full_like(va, min(na, nb) - 1.0)
    ),
    "min(n)-1 if fewer vary more": lambda va, na, vb, nb: np.where(
        (vb > va) if nb < na else (va > vb) if na < nb else False,
        min(na, nb) - 1.0,
        satterthwaite(va, na, vb, nb),
    ),
    "50% F interval": lambda va, na, vb, nb: compare.welch_df(va, na, vb, nb, 0.5),
    "90% F interval": lambda va, na, vb, nb: compare.welch_df(va, na, vb, nb, 0.9),
    "80% F interval (chosen)": compare.welch_df,
}
DF_CASES = [(5, 5, 1.0), (5, 5, 2.0), (5, 5, 10.0)] + [
    (n_a, n_b, sd_b)
    for n_a, n_b in [(5, 4), (5, 3), (10, 5), (3, 2)]
    for sd_b in (1.0, 2.0, 0.5, 10.0, 0.1)  # B has the fewer seeds: noisier, then quieter
]


def welch_p(a, b, rule) -> np.ndarray:
    """Welch's two-sided p over the last axis, at a rule's df."""
    var_a, var_b = a.var(-1, ddof=1), b.var(-1, ddof=1)
    t = (b.mean(-1) - a.mean(-1)) / np.sqrt(var_a / a.shape[-1] + var_b / b.shape[-1])
    return 2 * scipy_stats.t.sf(np.abs(t), rule(var_a, a.shape[-1], var_b, b.shape[-1]))


def holm_rejects_first(p: np.ndarray) -> np.ndarray:
    """Per row of p (studies x points): does Holm at 0.05 reject column 0?"""
    m = p.shape[1]
    ordered = np.sort(p, axis=1)
    passed = np.cumprod(ordered <= 0.05 / (m - np.arange(m)), axis=1)  # step-down
    rank = (p < p[:, :1]).sum(axis=1)  # of column 0
    return passed[np.arange(len(p)), rank].astype(bool)


def test_holm_rejects_first_is_inference_holm():
    p = np.random.default_rng(0).uniform(0, 0.02, (300, 8))
    expected = [inference.holm(row)[0] < 0.05 for row in p]
    assert holm_rejects_first(p).tolist() == expected


@pytest.mark.slow
def test_welch_df_is_chosen_by_simulation_and_keeps_identical_setups_at_5_percent():
    # 20,000 studies of 8 points a case, Holm: some point differs (identical setups); then one
    # point shifted by 2 sd (root mean square of the two sides'): flagged before Holm at 0.05
    # (issue 28's measure: Hsu's 0.77 5v5, 0.47 5v4, 0.21 5v3) and after Holm over the 8 points
    rng, studies = np.random.default_rng(28), 20_000
    rates = {name: [] for name in DF_RULES}
    lines = [f"{'seeds, B sd':12}" + "".join(f"{name[:30]:>31}" for name in DF_RULES)]
    for n_a, n_b, sd_b in DF_CASES:
        a = rng.standard_normal((studies, 8, n_a))
        b = sd_b * rng.standard_normal((studies, 8, n_b))
        moved = b.copy()
        moved[:, 0] += 2 * np.sqrt((1 + sd_b**2) / 2)
        line = f"{f'{n_a}v{n_b}, {sd_b}':12}"
        for name, rule in DF_RULES.items():
            null = (welch_p(a, b, rule).min(axis=1) * 8 < 0.05).mean()  # Holm's first step
            p_moved = welch_p(a, moved, rule)
            power = ((p_moved[:, 0] < 0.05).mean(), holm_rejects_first(p_moved).mean())
            rates[name].append((null, *power))
            line += f"{null:>21.3f} {power[0]:.2f} {power[1]:.2f}"
        lines.append(line)
    worst = {name: max(r[0] for r in rows) for name, rows in rates.items()}
    power = {name: np.mean([r[2] for r in rows]) for name, rows in rates.items()}
    lines.append("worst identical-setup rate, mean power after Holm: " + "; ".join(
        f"{name} {worst[name]:.3f}, {power[name]:.3f}" for name in DF_RULES))  # fmt: skip
    print("\n".join(["identical-setup rate, power before Holm, after Holm:", *lines]))
    # 3 standard errors of 0.05 at 20,000 is 0.005; the chosen rule has the most power of those
    # that keep every case under it
    valid = [name for name in DF_RULES if worst[name] <= 0.05 + 0.005]
    chosen = "80% F interval (chosen)"
    assert chosen in valid, lines[-1]
    assert power[chosen] == max(power[name] for name in valid), lines[-1]


@pytest.mark.slow
def test_equivalent_is_said_at_most_5_percent_of_the_time_when_the_shift_is_the_margin():
    rng = np.random.default_rng(7)
    said = np.mean(
        [compare.welch(rng.normal(0, 1, 5), rng.normal(1, 2, 5), margin=1.0)["p_equivalence"]
         < 0.05 for _ in range(2000)]
    )  # fmt: skip
    print(f"equivalent in {said:.3f} of 2000 at a true shift = margin")
    assert said <= 0.05 + 0.015, f"equivalent in {said:.3f} of 2000 at a true shift = margin"


def run_tiny(tmp_path, out: str, *extra: str) -> None:
    study = write_study(tmp_path, seeds=4, epochs=3)  # spread about 4 points
    result = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / out), *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir):
    """The tiny study run twice with --deterministic, into two folders."""
    tmp = tmp_path_factory.mktemp("compare")
    run_tiny(tmp, "a", "--deterministic")
    run_tiny(tmp, "b", "--deterministic")
    return tmp


@pytest.mark.slow
def test_two_deterministic_runs_show_no_difference_with_every_cell_identical(two_runs):
    a, b = two_runs / "a" / "tiny", two_runs / "b" / "tiny"
    result = cli.invoke(app, ["compare", str(a), str(b), "--out", str(two_runs / "cmp")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4 of 4 points show no difference" in text, text
    assert "16 of 16 shared cells identical" in text and " agree" not in text, text
    table = pd.read_csv(two_runs / "cmp" / "compare.csv")
    added = [*compare.DISAGREE, "p_disagree_holm"]  # both stored their test predictions
    assert list(table.columns) == ["activation", "dropout", *compare.COLUMNS, *added]
    assert (table["diff"] == 0).all() and (table["identical_cells"] == 4).all()
    assert "a run of A and one of B disagree on" in text and "0 of 4 points beyond" in text


def copy_with(folder, out, change) -> None:
    """A copy of a results folder whose Parquet rows went through change(table)."""
    out.mkdir()
    for file in folder.iterdir():
        if file.suffix == ".parquet":
            stored = pq.read_table(file)
            table = change(stored.to_pandas())
            changed = pa.Table.from_pandas(table, schema=stored.schema, preserve_index=False)
            pq.write_table(changed, out / file.name)
        elif file.is_file():
            (out / file.name).write_bytes(file.read_bytes())


def test_a_point_moved_in_the_stored_parquet_differs_and_exits_1(two_runs, tmp_path):
    def move(table):  # as a broken kernel on another machine would
        table.loc[(table["activation"] == "relu") & (table["dropout"] == 0.25), "test_acc"] -= 0.3
        return table

    moved = tmp_path / "moved"
    copy_with(two_runs / "b" / "tiny", moved, move)
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(moved)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "3 of 4 points show no difference" in text, text
    assert "activation=relu, dropout=0.25 (-30.00" in text, text
    assert (moved / "_compare" / "compare.csv").is_file()


def test_cells_diverged_on_one_side_only_exit_1_and_are_named(two_runs, tmp_path):
    def diverge(table):
        at = (table["activation"] == "sigmoid") & (table["dropout"] == 0.0)
        table.loc[at, "status"] = "diverged"
        return table

    copy_with(two_runs / "b" / "tiny", tmp_path / "lost", diverge)
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(tmp_path / "lost")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "1 diverged in B: activation=sigmoid, dropout=0.0" in text, text


@pytest.mark.slow
def test_another_studys_folder_is_one_line_and_exit_2(two_runs, tmp_path):
    run_tiny(tmp_path, "other", "--set", "lr=0.1")
    other = tmp_path / "other" / "tiny"
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(other)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "base lr 0.05 in A, 0.1 in B" in result.output
    assert not (other / "_compare").exists()


@pytest.mark.slow
def test_runs_in_another_precision_are_compared_and_the_line_says_so(two_runs, tmp_path):
    run_tiny(tmp_path, "bf16", "--set", "precision=bf16")  # fp32 vs bf16: the case
    result = cli.invoke(
        app, ["compare", str(two_runs / "a" / "tiny"), str(tmp_path / "bf16" / "tiny")]
    )
    assert result.exit_code in (0, 1), result.output
    text = " ".join(result.output.split())
    assert 'runs differ in precision "fp32" in A, "bf16" in B: ' in text, text
    table = pd.read_csv(tmp_path / "bf16" / "tiny" / "_compare" / "compare.csv")
    assert (table["shared_cells"] == 0).all() and (table["n_b"] == 4).all()


def test_mistakes_are_one_line_each(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    for args, said in [
        ([a, str(tmp_path / "none")], "no such results directory"),
        ([a, a, "--margin", "0"], "--margin 0"),
        ([a, b, "--out", str(two_runs / "a" / "tiny" / "_manifest.json")], "cannot write"),
    ]:
        result = cli.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and said in result.output, result.output
        assert result.output.count("\n") == 1, result.output
    for metric in ("seconds", "seed"):  # --metric's choices are metrics.OUTCOMES: click refuses
        result = cli.invoke(app, ["compare", a, a, "--metric", metric])
        assert result.exit_code == 2 and f"'{metric}' is not one of" in result.output, result.output


def test_compare_refuses_a_metric_that_is_no_per_cell_outcome_as_the_report_does(two_runs):
    a, b = two_runs / "a" / "tiny", two_runs / "b" / "tiny"
    with pytest.raises(AblateError, match="^--metric: 'seconds' is not a per-cell outcome"):
        compare.run(a, b, SECONDS)


@pytest.mark.slow
def test_compare_never_imports_torch(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    code = (
        "import sys; from typer.testing import CliRunner; from ablate.cli import app; "
        f"r = CliRunner().invoke(app, ['compare', {a!r}, {b!r}, '--out', {str(tmp_path)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compare_out_keeps_a_users_compare_csv_as_report_out_does(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    users = tmp_path / "u"
    users.mkdir()
    (users / "compare.csv").write_text("my own comparison")
    result = cli.invoke(app, ["compare", a, b, "--out", str(users)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "not empty and not a comparison folder ablate wrote" in result.output
    assert (users / "compare.csv").read_text() == "my own comparison"
    ours = tmp_path / "cmp"  # a folder ablate wrote, whose compare.csv the user then edited
    assert cli.invoke(app, ["compare", a, b, "--out", str(ours)]).exit_code == 0
    (ours / "compare.csv").write_text("edited by hand")
    result = cli.invoke(app, ["compare", a, b, "--out", str(ours)])
    assert result.exit_code == 2 and "compare.csv: not a file ablate wrote" in result.output
    assert (ours / "compare.csv").read_text() == "edited by hand"


def test_a_huge_margin_and_one_folder_on_both_sides_are_one_line_each(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    for args, said in [
        ([a, b, "--margin", "1e300"], "--margin 1e+300: expected a positive, finite"),
        ([a, b, "--margin", "inf"], "--margin inf"),
        ([a, a], "one folder on both sides"),  # before: no difference anywhere, exit 0
        ([a, f"{a}/../tiny"], "one folder on both sides"),
    ]:
        result = cli.invoke(app, ["compare", *args, "--out", str(tmp_path / "c")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert result.output.count("\n") == 1 and len(result.output) < 300, result.output
    assert not (tmp_path / "c").exists()


def test_a_cell_whose_final_epoch_swung_is_named_and_last_k_compares_its_last_epochs(tmp_path):
    # issue 28: a rerun of digits_mlp ended one ReLU + batchnorm cell at 39.2% (93.4% committed)
    # and compare still said every point agrees
    import shutil

    folder = tmp_path / "b"
    shutil.copytree(REPO / "results" / "digits_mlp", folder, ignore=shutil.ignore_patterns("_*"))
    shutil.copy(REPO / "results" / "digits_mlp" / "_manifest.json", folder)
    file = folder / "geb569831f6419f5e.parquet"  # relu with batchnorm, seeds 0-4
    original = pq.read_table(file)
    rows = original.to_pandas()
    rows.loc[(rows["seed"] == 0) & (rows["epoch"] == 30), "test_acc"] = 0.392
    pq.write_table(pa.Table.from_pandas(rows, schema=original.schema, preserve_index=False), file)
    a = str(REPO / "results" / "digits_mlp")
    r = cli.invoke(app, ["compare", a, str(folder), "--out", str(tmp_path / "c")])
    said = " ".join(r.stdout.split())
    assert "1 cell of B end far from their last 5 epochs" in said, r.output
    assert "activation=relu, batchnorm=True seed 0: 39.20 against" in said
    assert "--final last-5 compares the mean of each cell's last 5 epochs" in said
    r = cli.invoke(
        app, ["compare", a, str(folder), "--out", str(tmp_path / "k"), "--final", "last-5"]
    )
    said = " ".join(r.stdout.split())
    assert "compared as the mean of the last 5 epochs" in said, r.output
    table = pd.read_csv(tmp_path / "k" / "compare.csv")
    at = table[(table["activation"] == "relu") & table["batchnorm"]].iloc[0]
    before = rows[(rows["epoch"] > 25) & (rows["seed"] == 0)]["test_acc"].mean()
    assert at["diff"] == pytest.approx((0.392 - 0.934) / 5 / 5, abs=2e-3) and before < 0.85


@pytest.mark.slow
def test_two_runs_with_stored_predictions_say_how_often_they_disagree_on_which_examples(tmp_path):
    from ablate import examples, predictions

    base = ["run", "studies/digits_mlp.py", "--set", "epochs=3"]
    assert cli.invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    more = ["--set", "precision=fp64", "--out", str(tmp_path / "b")]
    assert cli.invoke(app, [*base, *more]).exit_code == 0
    a, b = tmp_path / "a" / "digits_mlp", tmp_path / "b" / "digits_mlp"
    r = cli.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "c")])
    said = " ".join(r.stdout.split())
    assert "test examples: a run of A and one of B disagree on" in said, r.output
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert {"disagree_between", "p_disagree", "p_disagree_holm"} <= set(table.columns)
    labels, preds_a = predictions.read_predictions(a)
    preds_b = predictions.read_predictions(b)[1]
    hits_a, hits_b = examples.correct(preds_a, labels), examples.correct(preds_b, labels)
    first = table.iloc[0]
    cells = lambda hits, folder: [  # noqa: E731
        c for c in hits.index if c in set(pd.read_parquet(folder).query(
            f"activation == '{first['activation']}' and batchnorm == {first['batchnorm']}")["cell"])
    ]  # fmt: skip
    runs_a, runs_b = hits_a.loc[cells(hits_a, a)], hits_b.loc[cells(hits_b, b)]
    by_hand = np.mean([(ra != rb).mean() for ra in runs_a.to_numpy() for rb in runs_b.to_numpy()])
    assert first["disagree_between"] == pytest.approx(by_hand)

    r = cli.invoke(app, ["compare", str(REPO / "results" / "digits_mlp"), str(b)])
    assert "test examples" not in r.stdout  # the committed run stored no predictions
