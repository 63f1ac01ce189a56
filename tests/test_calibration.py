"""Every verdict the report prints, simulated: coverage, false positives, equivalence, failures."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from ablate import anova, curves, inference, seeds, stats
from ablate.metrics import TEST_ACC

pytestmark = pytest.mark.slow  # Monte Carlo: thousands of simulated studies a test


def simulate(rng, points, truth, seeds, noise, factors) -> pd.DataFrame:
    """One row per cell: truth(point), plus a shift per seed (pairing removes it), plus
    noise(rng, point)."""
    shift = rng.normal(0, 0.02, seeds)
    rows = [
        (s, *p, 0.9 + truth(p) + shift[s] + noise(rng, p)) for p in points for s in range(seeds)
    ]
    fin = pd.DataFrame(rows, columns=["seed", *factors, "test_acc"])
    return fin.assign(status="ok", cell=np.arange(len(fin)).astype(str))


def normal(sd=0.01):
    return lambda rng, p: rng.normal(0, sd)


def run(rng, reps, points, truth, estimand, seeds, noise, factors, design="grid"):
    """Coverage of the planted estimands by each row's 95% CI, and the page-wide rate of studies
    where any row whose estimand is 0 (effects and interactions) is flagged significant."""
    levels = {f: sorted({p[i] for p in points}) for i, f in enumerate(factors)}
    base = {f: 0 for f in factors}
    covered = rows = false_pages = 0
    for _ in range(reps):
        fin = simulate(rng, points, truth, seeds, noise, factors)
        out = stats.analyse(stats.Layout(fin, factors, base, levels), design=design)
        eff = out.effects
        want = np.array([estimand(r.factor, r.level) for r in eff.itertuples()])
        covered += int(((eff.ci_low <= want) & (want <= eff.ci_high)).sum())
        rows += len(eff)
        flagged = eff.significant & (want == 0)
        false_pages += bool(
            flagged.any() or out.interactions.significant.any()
        )  # additive truth: no interaction
    return covered / rows, false_pages / reps


GRID3 = list(itertools.product([0, 1], repeat=3))


def wilson(hits: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of a simulated rate: what the simulation itself can resolve."""
    low, high = proportion_confint(hits, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def null_page(rng, k: int, unadjusted: bool) -> dict:
    """What the page of a complete-null 2^k study with 5 seeds shows: a finding (a significant
    row, or a sign-change warning as the report gates it), the footnote of rows whose own CI
    excludes 0; with `unadjusted`, also an ANOVA p below 0.05 and an ungated sign change on a
    page without a significant row (what the gate removes)."""
    factors, grid = list("abcd")[:k], list(itertools.product([0, 1], repeat=k))
    base, levels = {f: 0 for f in factors}, {f: [0, 1] for f in factors}
    fin = simulate(rng, grid, lambda p: 0.0, 5, normal(), factors)
    layout = stats.Layout(fin, factors, base, levels)
    out = stats.analyse(layout)
    significant = bool(out.effects.significant.any() or out.interactions.significant.any())
    page = dict(
        finding=significant, footnote=bool(stats.unconfirmed(out.effects, out.interactions))
    )
    simple = None
    if out.interactions.significant.any() or unadjusted:  # the gate needs an interaction
        simple = anova.sign_changes(layout)
        page["finding"] |= bool(len(anova.changes_sign(simple, interactions=out.interactions)))
    if unadjusted:
        page["sign_only"] = bool(len(anova.changes_sign(simple))) and not significant
        page["anova"] = bool((anova.anova(fin, factors, levels)[0]["p"].dropna() < 0.05).any())
    return page


def test_a_complete_null_page_shows_a_finding_in_at_most_5_percent_of_studies():
    # issue 28: 0.055 [0.050, 0.060] of 7,000 before, 0.053 from significance, the rest from
    # sign-change warnings; dagger marks on 22% (2^3) and 43% (2^4) of null pages, an ANOVA
    # p < 0.05 on 30% and 58%. Now a sign change is said only where Holm finds the factor
    # interacting, and the footnote and the ANOVA's p (labelled unadjusted) are no findings.
    # Before issue 13, effects and interactions were two Holm families: 0.105 of 400 studies
    rng, said = np.random.default_rng(28), []
    for k, reps, extra in ((3, 1000, 200), (4, 200, 200)):
        pages = [null_page(rng, k, i < extra) for i in range(reps)]
        hits = sum(p["finding"] for p in pages)
        low, high = wilson(hits, reps)

        def rate(key: str, pages=pages) -> float:
            return float(np.mean([p[key] for p in pages if key in p]))

        said.append(
            f"2^{k} x 5 seeds, {reps} null studies: a finding on {hits / reps:.3f} [{low:.3f}, "
            f"{high:.3f}] of pages (ungated sign changes would add {rate('sign_only'):.3f}); no "
            f"findings: the footnote on {rate('footnote'):.2f}, an unadjusted ANOVA p < 0.05 "
            f"on {rate('anova'):.2f}"
        )
        # Holm's rate for 6 independent tests is 0.049: no simulation may show it above 0.05
        # beyond what its studies resolve (the Wilson interval's lower end)
        assert low <= 0.05 and hits / reps <= 0.06, said[-1]
    print("; ".join(said))


def test_grid_with_planted_effects_covers_95_percent_and_keeps_nulls_quiet_at_5_seeds():
    planted = dict(a=0.02, b=-0.01, c=0.0)
    coverage, fwer = run(
        np.random.default_rng(1),
        300,
        GRID3,
        lambda p: np.dot(p, list(planted.values())),
        lambda f, level: planted[f],
        5,
        normal(),
        list("abc"),
    )
    msg = f"grid 2x2x2, 5 seeds: coverage {coverage:.3f}, page-wide false positives {fwer:.3f}"
    print(msg)
    assert 0.93 <= coverage <= 0.97 and fwer <= 0.06, msg


def test_one_at_a_time_covers_and_keeps_nulls_quiet():
    points = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    planted = dict(a=0.02, b=0.0, c=0.0)
    coverage, fwer = run(
        np.random.default_rng(2),
        300,
        points,
        lambda p: np.dot(p, list(planted.values())),
        lambda f, level: planted[f],
        5,
        normal(),
        list("abc"),
        design="one_at_a_time",
    )
    msg = f"one-at-a-time, 5 seeds: coverage {coverage:.3f}, page-wide false positives {fwer:.3f}"
    print(msg)
    assert 0.93 <= coverage <= 0.97 and fwer <= 0.06, msg


def test_a_three_factor_half_fraction_covers_its_aliased_estimand():
    # A = 0 and a b:c interaction whose diff (interactions.csv's: b's effect at c's level minus
    # at c's baseline) is 4 points: A's row estimates A minus 1/2 x that diff, -2 points, as its
    # note says (issue 28: the README's "BC +1 -> A -1" held only in +-1 codes)
    half = [p for p in GRID3 if sum(p) % 2 == 0]
    # +-1 codes: a coefficient of 0.01, so the diff is 4 x 0.01
    bc = lambda p: 0.01 * (2 * p[1] - 1) * (2 * p[2] - 1)  # noqa: E731
    estimand = {"a": -0.02, "b": 0.0, "c": 0.0}  # B's alias is -AC = 0, C's is -AB = 0
    coverage, fwer = run(
        np.random.default_rng(3),
        300,
        half,
        bc,
        lambda f, level: estimand[f],
        5,
        normal(),
        list("abc"),
        design="fractional",
    )
    msg = (
        f"half of 2^3 with BC = 2 points, 5 seeds: coverage of main - alias {coverage:.3f}, "
        f"page-wide false positives {fwer:.3f}"
    )
    print(msg)
    assert 0.93 <= coverage <= 0.97 and fwer <= 0.06, msg


def test_a_three_level_factor_with_3_seeds_covers_and_keeps_nulls_quiet():
    points = list(itertools.product([0, 1, 2], [0, 1]))
    truth = {0: 0.0, 1: 0.015, 2: 0.0}
    coverage, fwer = run(
        np.random.default_rng(4),
        300,
        points,
        lambda p: truth[p[0]],
        lambda f, level: truth[level] if f == "a" else 0.0,
        3,
        normal(),
        ["a", "b"],
    )
    msg = f"3x2 grid, 3 seeds: coverage {coverage:.3f}, page-wide false positives {fwer:.3f}"
    print(msg)
    assert 0.93 <= coverage <= 0.97 and fwer <= 0.06, msg


def test_ten_seeds_with_heteroscedastic_noise_cover_and_keep_nulls_quiet():
    # the spread is four times larger wherever a = 1 (a regulariser that makes runs erratic)
    planted = dict(a=0.0, b=0.01, c=0.0)
    noisy = lambda rng, p: rng.normal(0, 0.02 if p[0] else 0.005)  # noqa: E731
    coverage, fwer = run(
        np.random.default_rng(5),
        300,
        GRID3,
        lambda p: np.dot(p, list(planted.values())),
        lambda f, level: planted[f],
        10,
        noisy,
        list("abc"),
    )
    msg = (
        f"grid 2x2x2, 10 seeds, sd 0.005 vs 0.02: coverage {coverage:.3f}, "
        f"page-wide false positives {fwer:.3f}"
    )
    print(msg)
    assert 0.93 <= coverage <= 0.97 and fwer <= 0.06, msg


def test_bimodal_noise_keeps_coverage_and_nulls_quiet_at_5_seeds():
    # one run in five lands 3 points low (a bad basin), independently per cell
    bimodal = lambda rng, p: rng.normal(0, 0.005) - 0.03 * (rng.random() < 0.2)  # noqa: E731
    planted = dict(a=0.01, b=0.0, c=0.0)
    coverage, fwer = run(
        np.random.default_rng(6),
        300,
        GRID3,
        lambda p: np.dot(p, list(planted.values())),
        lambda f, level: planted[f],
        5,
        bimodal,
        list("abc"),
    )
    msg = (
        f"grid 2x2x2, 5 seeds, bimodal noise: coverage {coverage:.3f}, "
        f"page-wide false positives {fwer:.3f}"
    )
    print(msg)
    assert 0.92 <= coverage <= 0.98 and fwer <= 0.06, msg


def test_equivalence_is_rarely_claimed_at_the_margin_and_often_at_zero():
    rng = np.random.default_rng(8)
    margin, reps = 0.005, 2000
    at_margin = np.mean(
        [inference.tost(rng.normal(margin, 0.004, 10), margin) < 0.05 for _ in range(reps)]
    )
    at_zero = np.mean(
        [inference.tost(rng.normal(0, 0.004, 10), margin) < 0.05 for _ in range(reps)]
    )
    msg = (
        "10 seeds, sd 0.004, margin 0.005: equivalent when the truth is the margin "
        f"{at_margin:.3f}, "
        f"when it is 0 {at_zero:.3f}"
    )
    print(msg)
    assert at_margin <= 0.055 and at_zero >= 0.5, msg


def test_failure_warnings_are_rare_when_failure_rates_are_equal():
    # every run fails with probability 0.2, whatever its level: Fisher + Holm across factors
    rng, reps, warned = np.random.default_rng(9), 400, 0
    levels = {f: [0, 1] for f in "abc"}
    for _ in range(reps):
        fin = simulate(rng, GRID3, lambda p: 0.0, 5, normal(), list("abc"))
        fin.loc[rng.random(len(fin)) < 0.2, "status"] = "diverged"
        warned += bool(anova.failures(fin, list("abc"), levels, classes=10)["differs"].any())
    rate = warned / reps
    assert rate <= 0.05, (
        f"a failure warning in {rate:.3f} of {reps} studies with equal failure rates"
    )
    print(f"failure warnings with equal rates: {rate:.3f}")


def test_equivalence_over_a_table_at_the_margin_is_claimed_in_at_most_5_percent_of_studies():
    # three effects, each exactly at the margin: Holm keeps page-wide false equivalence <= 5%
    rng, reps, claimed = np.random.default_rng(10), 300, 0
    for _ in range(reps):
        fin = simulate(rng, GRID3, lambda p: 0.005 * sum(p), 10, normal(0.004), list("abc"))
        eff = stats.effects(
            fin, list("abc"), dict(a=0, b=0, c=0), {f: [0, 1] for f in "abc"}, margin=0.005
        )
        claimed += bool(eff.equivalent.any())
    rate = claimed / reps
    assert rate <= 0.05, (
        f"equivalence claimed for some row at the margin in {rate:.3f} of {reps} studies"
    )
    print(f"page-wide false equivalence at the margin: {rate:.3f}")


NOISES = {
    "normal": lambda rng, shape: rng.normal(0, 1, shape),
    "t3": lambda rng, shape: rng.standard_t(3, shape) / np.sqrt(3),  # heavy tails, sd 1
}
GRID = [[-0.5, 0.5, -0.5, 0.5], [-0.5, -0.5, 0.5, 0.5], [1, -1, -1, 1]]  # cells 00 10 01 11
ONE_AT_A_TIME = [[-1, 1, 0, 0], [-1, 0, 1, 0], [-1, 0, 0, 1]]  # cells base a b c
# name: (each cell's noise sd, each row's contrast of the cells per seed, each row's planted
# value, how many leading rows decide the rule: the main effects); a design of independent
# rows is one cell per row. Each main effect's differences have sd about 1.
DESIGNS = {
    "3 effects, equal sd": ([1, 1, 1], np.eye(3), [0.5, 1.0, 0.0], 3),
    "null at 1.5x sd": ([1, 1, 1.5], np.eye(3), [0.5, 1.0, 0.0], 3),
    "null at 2x sd": ([1, 1, 2], np.eye(3), [0.5, 1.0, 0.0], 3),
    "2x2 grid": ([1, 1, 1, 1], GRID, [0.5, 0.0, 0.0], 2),
    "2x2 grid, one cell 1.5x": ([1, 1, 1, 1.5], GRID, [0.5, 0.0, 0.0], 2),
    "one-at-a-time": ([0.71] * 4, ONE_AT_A_TIME, [0.5, 1.0, 0.0], 3),
    "one effect alone": ([1], np.eye(1), [0.0], 1),
}
HALF, CAP = 0.7, 30  # the rule's half-width, 0.7 sd (about 16 seeds from 5), and --max-seeds
T_975 = scipy_stats.t.ppf(0.975, np.arange(1, 100_000)) / np.sqrt(np.arange(2, 100_001))


def per_seed(rng, design, noise, reps) -> tuple:
    """Each row's per-seed differences [reps, rows, CAP] from cells drawn with the design's
    spreads (rows that share cells share their draws), the planted values, the main rows."""
    sds, contrasts, planted, mains = design
    cells = noise(rng, (reps, len(sds), CAP)) * np.asarray(sds)[:, None]
    planted = np.asarray(planted, float)
    return np.einsum("rc,ncs->nrs", contrasts, cells) + planted[:, None], planted, mains


def steins_rule(diffs, start, mains) -> tuple:
    """The rule as seeds.until_halfwidth runs it: `start` seeds, one more round to
    inference.stein_total from their sds; each row's mean, Stein half-width and p, seeds."""
    std_first = diffs[..., :start].std(axis=2, ddof=1)
    n = inference.stein_total(std_first[:, :mains], start, HALF, CAP)
    mean = np.cumsum(diffs, axis=2)[np.arange(len(diffs)), :, n - 1] / n[:, None]
    half, p = inference.stein(mean, std_first, start, n[:, None])
    return mean, half, p, n


def todays_rule(diffs, start, mains) -> tuple:
    """The rule before issue 28, for the record: rounds of half as many again at least, to what
    the widest main effect needs at its observed sd (seeds_needed), until every main effect's
    t interval is within HALF or CAP seeds; each row's mean, t half-width and p, seeds."""
    sums, squares = np.cumsum(diffs, axis=2), np.cumsum(diffs**2, axis=2)
    rows, n = np.arange(len(diffs)), np.full(len(diffs), start)
    while True:
        mean = sums[rows, :, n - 1] / n[:, None]
        std = np.sqrt((squares[rows, :, n - 1] - n[:, None] * mean**2) / (n[:, None] - 1))
        half = T_975[n - 2][:, None] * std
        wide = half[:, :mains] > HALF
        needed = np.searchsorted(-T_975, -HALF / std[:, :mains]) + 2  # seeds_needed's count
        wanted = np.max(np.where(wide, needed, 0), axis=1)
        more = np.minimum(CAP, np.maximum(n + np.maximum(1, n // 2), wanted))
        step = wide.any(axis=1) & (n < CAP)
        if not step.any():
            p = 2 * scipy_stats.t.sf(np.abs(mean) * np.sqrt(n[:, None]) / std, n[:, None] - 1)
            return mean, half, p, n
        n = np.where(step, more, n)


def rule_rates(rng, design, start, rule, reps=20_000) -> dict:
    """Per noise: coverage of the planted values by every row's interval, the share of null rows
    flagged (p < 0.05), the mean seeds, and the share of studies whose main effects all reached
    HALF."""
    rates = {}
    for name, noise in NOISES.items():
        diffs, planted, mains = per_seed(rng, DESIGNS[design], noise, reps)
        mean, half, p, n = rule(diffs, start, mains)
        covered = np.abs(mean - planted) <= half
        flagged = (p < 0.05)[:, planted == 0]
        reached = (half[:, :mains] <= HALF * (1 + 1e-9)).all(axis=1)
        rates[name] = (covered.mean(), flagged.mean(), n.mean(), reached.mean())
    return rates


def said(rates: dict) -> str:
    return "; ".join(
        f"{name} coverage {cov:.3f}, null flagged {flag:.3f}, {seeds:.1f} seeds, "
        f"within H {reached:.2f}"
        for name, (cov, flag, seeds, reached) in rates.items()
    )


STARTS = [(design, start) for design in DESIGNS for start in (5, 3)] + [("one effect alone", 2)]


def test_until_halfwidth_steins_rule_covers_95_percent_in_every_design():
    # the interval after the data-dependent stop: Stein's, from the first stage's sd and df,
    # exact under normal noise. Before (today's rounds): the grid, a noisier null,
    # one-at-a-time and one effect alone fell to 0.87-0.94, a null flagged up to 0.13 (issue
    # 28). With t3 differences a first stage of 3-5 heavy-tailed draws often gives a low sd:
    # 0.915-0.925 where three independent effects share the rule, 0.93-0.95 elsewhere
    rng, lines, failed = np.random.default_rng(28), [], []
    for design, start in STARTS:
        before = rule_rates(rng, design, start, todays_rule, reps=4000)
        after = rule_rates(rng, design, start, steins_rule)
        lines.append(f"{design}, {start} seeds first:\n  before {said(before)}")
        lines.append(f"  after  {said(after)}")
        (cov, flag, _, _), (cov_t3, flag_t3, _, _) = after["normal"], after["t3"]
        if not (cov >= 0.945 and flag <= 0.055 and cov_t3 >= 0.91 and flag_t3 <= 0.09):
            failed.append(lines[-1])
    print("\n".join(lines))
    assert not failed, "\n".join(failed)


def test_the_simulated_rule_reads_as_estimate_reports_its_rows():
    # steins_rule's numbers are inference.estimate's with the first stage marked
    rng = np.random.default_rng(29)
    diffs, _, mains = per_seed(rng, DESIGNS["2x2 grid, one cell 1.5x"], NOISES["normal"], 40)
    mean, half, p, n = steins_rule(diffs, 3, mains)
    for study in range(len(diffs)):
        mask = np.arange(n[study]) < 3
        for row in range(diffs.shape[1]):
            got = inference.estimate(diffs[study, row, : n[study]], 0.0, None, HALF, mask)
            want = (mean[study, row] - half[study, row], mean[study, row] + half[study, row])
            assert np.allclose((got["ci_low"], got["ci_high"]), want, rtol=0, atol=1e-12)
            assert np.isclose(got["p_value"], p[study, row], rtol=1e-9, atol=1e-15)
            if n[study] > 3:
                assert got["test"] == "paired t, Stein two-stage"


def test_todays_rule_undercovered_where_one_effect_decides_alone():
    # for the record: rounds sized by the observed spread stop when that spread happens to be
    # low; the README and the report quoted 0.90-0.92 from 5 seeds. Stein's rule replaces it
    rng = np.random.default_rng(18)
    for start in (5, 3, 2):
        rates = rule_rates(rng, "one effect alone", start, todays_rule, reps=4000)
        cov, flag, _, _ = rates["normal"]
        print(f"today's rule, one effect, {start} seeds first: {said(rates)}")
        assert cov <= 0.94 and flag >= 0.06, said(rates)


def test_adding_seeds_until_p_is_below_5_percent_flags_a_null_far_more_often():
    # the tempting rule that --until-halfwidth is not: from 3 seeds, one more until p < 0.05
    # or 10 seeds; the README quotes this rate
    rng = np.random.default_rng(17)
    reps, flagged = 4000, 0
    for _ in range(reps):
        diffs = rng.normal(0, 1, 3)
        while scipy_stats.ttest_1samp(diffs, 0.0).pvalue >= 0.05 and len(diffs) < 10:
            diffs = np.append(diffs, rng.normal(0, 1))
        flagged += scipy_stats.ttest_1samp(diffs, 0.0).pvalue < 0.05
    rate = flagged / reps
    assert 0.12 <= rate <= 0.20, f"optional stopping on p flagged a null in {rate:.3f} of studies"
    print(f"optional stopping on p: a null flagged in {rate:.3f} of {reps} studies, not 0.05")


def reaches(rng, n, halfwidth, pilot=()) -> bool:
    """Whether a study of n new seeds (or the pilot's seeds and new ones to n) gets a 95% t
    interval within +-halfwidth; sd 1."""
    drawn = np.append(pilot, rng.normal(0, 1, max(0, n - len(pilot))))
    n = len(drawn)
    return T_975[n - 2] * drawn.std(ddof=1) <= halfwidth


COUNTS = ("seeds_needed", "seeds_80", "seeds_upper", "seeds_stein")


def test_plans_counts_reach_the_halfwidth_as_often_as_the_plan_says():
    # plan's counts from a pilot of n0 seeds (sd 1, half-width 0.5: 18 seeds at the true sd):
    # before issue 28 it offered the observed-sd count (reached by about half of new studies)
    # and the upper one (about 95%); the 80% count is new, and --until-halfwidth's (Stein's)
    # interval is within it every time
    rng, reps, half, lines = np.random.default_rng(9), 2000, 0.5, []
    for n0 in (3, 5, 10):
        found, reached, extended = {name: [] for name in COUNTS}, dict.fromkeys(COUNTS, 0), 0
        for _ in range(reps):
            pilot = rng.normal(0, 1, n0)
            planned = seeds.counts(pilot.std(ddof=1), n0, half)
            for name in COUNTS:
                n = int(min(planned[name], 100_000))
                found[name].append(n)
                if name == "seeds_stein":  # its interval: the pilot's sd and df over n seeds
                    reached[name] += inference.stein(0.0, pilot.std(ddof=1), n0, n)[0] <= half
                else:
                    reached[name] += reaches(rng, n, half)
            extended += reaches(rng, found["seeds_80"][-1], half, pilot)
        rate = {name: reached[name] / reps for name in COUNTS}
        lines.append(
            f"pilot of {n0}, {reps} studies: "
            + ", ".join(
                f"{name} reached {rate[name]:.3f} (median {np.median(found[name]):.0f} seeds)"
                for name in COUNTS
            )
            + f"; seeds_80 extending the pilot (not new seeds) {extended / reps:.3f}"
        )
        ok = 0.77 <= rate["seeds_80"] <= 0.85 and rate["seeds_upper"] >= 0.94
        assert ok and rate["seeds_stein"] == 1 and rate["seeds_needed"] < 0.6, lines[-1]
    print("\n".join(lines))


def curve_rows(rng, effects: dict, seeds, epochs, jitter, collapse: float = 0.0, rise: float = 0.0):
    """Tidy rows of a 2x2 grid whose test accuracy climbs to 0.9 + the planted effects, with a
    per-seed offset, AR(1) epoch-to-epoch jitter (rho 0.5), `rise` per epoch still added at the
    end (a curve that has not plateaued) and, with probability `collapse` per cell, a final
    epoch 50 points low (an unstable recipe's late swing)."""
    rows, t = [], np.arange(1, epochs + 1)
    shift = rng.normal(0, 0.01, seeds)
    for a, b in itertools.product([0, 1], [0, 1]):
        for s in range(seeds):
            ar = np.zeros(epochs)
            for e in range(1, epochs):
                ar[e] = 0.5 * ar[e - 1] + rng.normal(0, jitter)
            y = 0.9 + effects["a"] * a + effects["b"] * b + shift[s] - 0.3 * np.exp(-t / 3) + ar
            y = y + rise * t
            if rng.random() < collapse:
                y[-1] -= 0.5
            cell = f"{a}{b}{s}"
            rows += [(cell, s, a, b, e, v) for e, v in zip(t, y, strict=True)]
    df = pd.DataFrame(rows, columns=["cell", "seed", "a", "b", "epoch", "test_acc"])
    return df.assign(status="ok")


def test_the_mean_of_the_last_k_epochs_keeps_coverage_and_nulls_quiet_and_swings_are_rare():
    # issue 28: --final last-k analyses each cell's mean over its last k epochs; its intervals
    # cover the planted effect (the curves differ by it at every late epoch) like the final
    # epoch's, and a collapse of the final epoch is flagged while smooth curves are not
    rng, reps, effects = np.random.default_rng(11), 200, dict(a=0.01, b=0.0)
    levels, base = {"a": [0, 1], "b": [0, 1]}, {"a": 0, "b": 0}
    covered = rows = nulls = flagged = 0
    for _ in range(reps):
        df = curve_rows(rng, effects, 5, 30, 0.004)
        fin = stats.final(df, 5, TEST_ACC)
        out = stats.analyse(stats.Layout(fin, ["a", "b"], base, levels))
        want = np.array([effects[f] for f in out.effects["factor"]])
        covered += int(((out.effects.ci_low <= want) & (want <= out.effects.ci_high)).sum())
        rows += len(want)
        nulls += bool(
            out.effects.significant[want == 0].any() or out.interactions.significant.any()
        )
        flagged += bool(len(stats.swings(df, TEST_ACC)))
    found = sum(
        bool(len(stats.swings(curve_rows(rng, effects, 5, 30, 0.004, collapse=0.1), TEST_ACC)))
        for _ in range(100)
    )
    said = (
        f"last-5 mean, 2x2 x 5 seeds, {reps} studies: coverage {covered / rows:.3f}, page-wide "
        f"false positives {nulls / reps:.3f}; a swing flagged on {flagged / reps:.3f} of smooth "
        f"studies and on {found / 100:.2f} of studies where each cell collapses with p 0.1 "
        f"(one or more collapses in {1 - 0.9**20:.2f})"
    )
    print(said)
    assert 0.93 <= covered / rows <= 0.97 and nulls / reps <= 0.06, said
    assert flagged / reps <= 0.02 and found / 100 >= 0.8, said


def test_the_curves_tests_keep_a_null_quiet_cover_the_area_and_find_a_curve_still_climbing():
    # issue 28: learning curves tested, not eyeballed. A null 2x2 study: no significant curve
    # row and no point still climbing in more than 5% of studies; a planted +1 point lifts the
    # whole curve, so the area's difference is that point; a curve still rising 0.3 points an
    # epoch at the end is found climbing
    rng, reps, levels, base = np.random.default_rng(12), 200, {"a": [0, 1], "b": [0, 1]}, {}
    base = {"a": 0, "b": 0}
    quiet = climbing = covered = rows = 0
    for planted in (0.0, 0.01):
        for _ in range(reps):
            df = curve_rows(rng, dict(a=planted, b=0.0), 5, 30, 0.004)
            table, _ = curves.table(df, stats.final(df), ["a", "b"], base, levels, TEST_ACC)
            area = table[table["measure"] == "area"]
            want = np.where(area["factor"] == "a", planted, 0.0)
            covered += int(((area.ci_low <= want) & (want <= area.ci_high)).sum())
            rows += len(area)
            if planted == 0:
                quiet += bool(table.significant.any())
                climbing += bool(curves.climbing(df, ["a", "b"], TEST_ACC).still_climbing.any())
    rising = [  # each point's share found climbing, jitter sd 0.4 point (AR(1), rho 0.5)
        curves.climbing(curve_rows(rng, dict(a=0.0, b=0.0), 5, 30, 0.004, rise=0.003),
                        ["a", "b"], TEST_ACC).still_climbing.mean()
        for _ in range(50)
    ]  # fmt: skip
    said = (
        f"curves, 2x2 x 5 seeds, {reps} null studies: a significant curve row in "
        f"{quiet / reps:.3f}, a point still climbing in {climbing / reps:.3f}; the area's 95% "
        f"intervals cover {covered / rows:.3f} (null and +1 point); a point of a curve still "
        f"rising 0.3 points an epoch found climbing in {np.mean(rising):.2f} (50 studies)"
    )
    print(said)
    # one Holm family each: neither may show a null above 0.05 beyond what 200 studies resolve
    assert wilson(quiet, reps)[0] <= 0.05 and wilson(climbing, reps)[0] <= 0.05, said
    assert 0.93 <= covered / rows <= 0.97 and np.mean(rising) >= 0.8, said
