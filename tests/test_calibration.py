"""Every verdict the report prints, simulated: coverage, false positives, equivalence, failures."""

import itertools

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ablate import anova, inference, stats


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
        out = stats.analyse(fin, factors, base, levels, design=design)
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


def test_a_complete_null_flags_something_on_the_page_in_at_most_6_percent_of_grid_studies():
    # before: effects and interactions were two Holm families: 0.105 over 400 studies (issue 13)
    rng = np.random.default_rng(13)
    reps, one, two = 400, 0, 0
    for _ in range(reps):
        fin = simulate(rng, GRID3, lambda p: 0.0, 5, normal(), list("abc"))
        out = stats.analyse(fin, list("abc"), dict(a=0, b=0, c=0), {f: [0, 1] for f in "abc"})
        flips = anova.changes_sign(
            anova.sign_changes(fin, list("abc"), dict(a=0, b=0, c=0), {f: [0, 1] for f in "abc"})
        )
        one += bool(
            out.effects.significant.any() or out.interactions.significant.any() or len(flips)
        )
        two += bool(
            (inference.holm(out.effects.p_value) < 0.05).any()
            or (inference.holm(out.interactions.p_value) < 0.05).any()
        )
    msg = (
        "page-wide false positives (effects, interactions, sign changes) over "
        f"{reps} null 2x2x2 studies: "
        f"one Holm family {one / reps:.3f}, two families (before) {two / reps:.3f}"
    )
    print(msg)
    assert one / reps <= 0.06, msg


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
    # A = 0 and BC = 2 points: each row estimates the main effect minus the other two's interaction,
    # so A's row is -2 points, and the page says so; planted in +-1 codes
    half = [p for p in GRID3 if sum(p) % 2 == 0]
    # the b x c interaction, 0.02 in level units
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


def until_halfwidth(rng, effects, noise, start, halfwidth, cap) -> np.ndarray:
    """Per-seed differences of each main effect [effects, seeds] under `run --until-halfwidth`:
    `start` seeds, then rounds for every effect alike, sized by inference.next_round from each
    effect's interval and seeds_needed, as seeds.until_halfwidth does with the report's rows."""
    planted = np.asarray(effects)[:, None]
    diffs = planted + noise(rng, (len(effects), start))
    while True:
        rows = [inference.interval(row) for row in diffs]
        widths = [(high - low) / 2 for mean, std, low, high in rows]
        needed = [inference.seeds_needed(std, halfwidth) for mean, std, low, high in rows]
        n = inference.next_round(widths, needed, diffs.shape[1], halfwidth, cap)
        if n == diffs.shape[1]:
            return diffs
        diffs = np.concatenate([diffs, planted + noise(rng, (len(effects), n - diffs.shape[1]))], 1)


NOISES = {
    "normal": lambda rng, shape: rng.normal(0, 1, shape),
    "t3": lambda rng, shape: rng.standard_t(3, shape) / np.sqrt(3),  # heavy tails, sd 1
}


def rule_rates(rng, effects, start, reps=2000) -> dict:
    """Coverage of the planted effects and how often the last (null) effect is flagged, per
    noise, under the rule with half-width 0.7 sd (about 11 seeds), at most 30 seeds."""
    rates = {}
    for name, noise in NOISES.items():
        covered = flagged = used = 0
        for _ in range(reps):
            diffs = until_halfwidth(rng, effects, noise, start, 0.7, 30)
            for row, effect in zip(diffs, effects, strict=True):
                mean, std, low, high = inference.interval(row)
                covered += low <= effect <= high
            flagged += scipy_stats.ttest_1samp(diffs[-1], 0.0).pvalue < 0.05  # estimate's t
            used += diffs.shape[1]
        rates[name] = (covered / reps / len(effects), flagged / reps, used / reps)
    return rates


def said(rates: dict) -> str:
    return "; ".join(
        f"{name}: coverage {cov:.3f}, null flagged {flag:.3f}, {seeds:.1f} seeds"
        for name, (cov, flag, seeds) in rates.items()
    )


def test_until_halfwidth_keeps_coverage_and_the_null_rate_in_a_study_of_several_effects():
    # stopping on the intervals' width, never their verdicts: three main effects (0.5 and 1 sd
    # planted, one null) share the rule, from the usual 5 seeds and from 3
    rng = np.random.default_rng(16)
    for start in (5, 3):
        rates = rule_rates(rng, [0.5, 1.0, 0.0], start)
        assert all(cov >= 0.93 and flag <= 0.06 for cov, flag, _ in rates.values()), said(rates)
        print(f"{start} seeds first: {said(rates)}")


def test_until_halfwidth_with_one_effect_deciding_alone_undercovers_as_the_readme_says():
    # the rule's known weakness: when one effect's own spread both stops the rounds and makes
    # its interval, the stops come when that spread is low. Measured so a fix shows up, and
    # quoted by the README and the report: 0.90-0.93 coverage, a null flagged 6-10%
    rng = np.random.default_rng(18)
    for start in (5, 3):
        rates = rule_rates(rng, [0.0], start)
        cov, flag, _ = rates["normal"]
        assert 0.87 <= cov <= 0.94 and 0.06 <= flag <= 0.12, said(rates)
        print(f"one effect, {start} seeds first: {said(rates)}")


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
