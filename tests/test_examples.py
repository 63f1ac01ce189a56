"""Per-example correctness, McNemar, and the two-source interval's calibration by simulation."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from ablate import examples, inference, stats
from ablate.errors import AblateError


def wilson(hits: int, n: int) -> tuple[float, float]:
    low, high = proportion_confint(hits, n, alpha=0.05, method="wilson")
    return float(low), float(high)


def test_correct_marks_where_each_cell_predicts_the_label():
    out = examples.correct({"c0": np.array([1, 2, 3]), "c1": np.array([1, 0, 0])}, [1, 2, 0])
    assert out.index.tolist() == ["c0", "c1"]
    assert out.to_numpy().tolist() == [[True, True, False], [True, False, True]]


def test_correct_refuses_missing_labels_and_a_wrong_count_in_one_line():
    with pytest.raises(AblateError, match="no test labels"):
        examples.correct({"c0": np.array([1])}, None)
    with pytest.raises(AblateError, match="cell c1 stored 1 predictions for 2 test labels"):
        examples.correct({"c0": np.array([1, 2]), "c1": np.array([1])}, [1, 2])


def test_mcnemar_counts_the_discordant_pairs_and_agrees_with_statsmodels_exact():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 0, 1, 0], bool)
    out = examples.mcnemar(a, b)
    # by hand: 3 right in A only, 1 in B only; P(X <= 1 | 4, 1/2) = 5/16, two-sided 10/16
    assert (out["n_ab"], out["n_ba"], out["disagree"]) == (3, 1, 0.5)
    assert out["p_value"] == pytest.approx(0.625)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.random((2, 300)) < rng.uniform(0.5, 0.99, (2, 1))
        out = examples.mcnemar(a, b)
        table = [[(a & b).sum(), out["n_ab"]], [out["n_ba"], (~a & ~b).sum()]]
        assert out["p_value"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert examples.mcnemar(a, a) == dict(n_ab=0, n_ba=0, p_value=1.0, disagree=0.0)


def test_decompose_matches_a_two_way_anova_and_sums_the_two_sources():
    table = np.array([[1, 0, 1, 1, 0], [1, 0, 1, 0, 0], [1, 1, 1, 1, 0]], float)
    out = examples.decompose(table)
    n, N = table.shape
    long = pd.DataFrame(
        [(s, i, table[s, i]) for s in range(n) for i in range(N)], columns=["s", "i", "y"]
    )
    ms = anova_lm(smf.ols("y ~ C(s) + C(i)", long).fit())["mean_sq"]
    assert out["diff"] == pytest.approx(table.mean())
    assert out["var_seeds"] == pytest.approx(ms["C(s)"] / (n * N))
    assert out["var_seeds"] == pytest.approx(table.mean(axis=1).var(ddof=1) / n)
    want = max(ms["C(i)"] - ms["Residual"], 0) / (n * N)
    assert out["var_examples"] == pytest.approx(want)
    total = out["var_seeds"] + out["var_examples"]
    assert out["share_examples"] == pytest.approx(out["var_examples"] / total)
    seeds, examples_ = scipy_stats.t.ppf(0.975, [n - 1, N - 1])
    half = np.sqrt(seeds**2 * out["var_seeds"] + examples_**2 * out["var_examples"])
    assert out["var_examples"] > 0
    assert out["ci_high_examples"] - out["diff"] == pytest.approx(half)


def test_decompose_says_nothing_for_one_seed_or_seeds_that_do_not_vary():
    assert np.isnan(examples.decompose(np.ones((1, 4)))["ci_low_examples"])
    flat = examples.decompose(np.array([[1, 0, 1, 1], [0, 1, 1, 1]], float), resolution=0.25)
    assert flat["diff"] == 0.75 and np.isnan(flat["ci_low_examples"])


def cells(rng, points, factors, n_seeds, n_examples, statuses=None):
    """finals shaped like stats.final's and a correctness frame, from random predictions."""
    rows, hits = [], {}
    for point, seed in itertools.product(points, range(n_seeds)):
        cell = json.dumps([*point, seed])
        hits[cell] = rng.random(n_examples) < 0.6 + 0.1 * sum(point)
        status = (statuses or {}).get((point, seed), "ok")
        levels = dict(zip(factors, point, strict=True))
        acc = float(hits[cell].mean())
        rows.append(dict(cell=cell, seed=seed, **levels, status=status, test_acc=acc))
    return pd.DataFrame(rows), pd.DataFrame(hits).T.rename_axis("cell")


@pytest.mark.parametrize(
    "points, statuses",
    [
        (list(itertools.product([0, 1], [0, 1])), None),
        (list(itertools.product([0, 1, 2], [0, 1])), {((1, 1), 2): "diverged"}),
        ([(0, 0), (1, 0), (0, 1), (0, 2)], {((0, 0), 3): "diverged"}),  # one at a time
        (list(itertools.product([0, 1], [0, 1])), {((0, 1), 0): "diverged"}),
    ],
)
def test_an_effects_diff_over_examples_equals_stats_effects_on_the_same_finals(points, statuses):
    factors = ["a", "b"]
    levels = {f: sorted({p[i] for p in points}) for i, f in enumerate(factors)}
    base = {"a": 0, "b": 0}
    finals, hits = cells(np.random.default_rng(1), points, factors, 4, 50, statuses)
    seed_only = stats.effects(finals, factors, base, levels)
    ours = examples.effects(finals, hits, factors, base, levels)
    assert np.allclose(ours["diff"], seed_only["diff"], rtol=0, atol=1e-12)
    for row in seed_only.itertuples():
        paired = stats.paired_diffs(finals, factors, row.factor, row.level, row.baseline)
        table = examples.per_example(finals, hits, factors, row.factor, row.level, row.baseline)
        assert np.allclose(table.mean(axis=1), paired, rtol=0, atol=1e-12)
        assert table.index.tolist() == paired.index.tolist()


def test_a_half_fractions_rows_over_examples_equal_stats_effects_fitted_per_seed():
    half = [p for p in itertools.product([0, 1], repeat=3) if sum(p) % 2 == 0]
    factors, levels, base = list("abc"), {f: [0, 1] for f in "abc"}, dict(a=0, b=0, c=0)
    finals, hits = cells(np.random.default_rng(3), half, factors, 4, 30, {((1, 1, 0), 2): "x"})
    seed_only = stats.effects(finals, factors, base, levels, matched=False)
    ours = examples.effects(finals, hits, factors, base, levels, matched=False)
    assert np.allclose(ours["diff"], seed_only["diff"], rtol=0, atol=1e-12)


def test_a_row_without_stored_predictions_is_nan_and_the_others_stand():
    points = list(itertools.product([0, 1], [0, 1]))
    finals, hits = cells(np.random.default_rng(2), points, ["a", "b"], 3, 40)
    # b = 1 at a = 0 lost its predictions: a's row needs them (matched at b = 1), so does b's
    dropped = hits.drop(index=[json.dumps([0, 1, s]) for s in range(3)])
    out = examples.effects(
        finals, dropped, ["a", "b"], {"a": 0, "b": 0}, {"a": [0, 1], "b": [0, 1]}
    )
    assert out["diff"].isna().all() and (out["method"] == "no stored predictions").all()
    point = examples.summary(finals, dropped, ["a", "b"])
    assert point["diff"].isna().tolist() == [False, True, False, False]
    assert point[["a", "b"]].equals(stats.summary(finals, ["a", "b"])[["a", "b"]])
    assert point.loc[0, "diff"] == pytest.approx(finals["test_acc"][:3].mean(), abs=1e-12)


# --- simulation: a population of examples, each with a difficulty and its own effect ---------
# correct = (z_i + level x delta_i + g_cell + e_cell,i > 0): z_i ~ N(MU, TAU) a difficulty,
# delta_i ~ N(delta, OMEGA) the level's effect on example i, g_cell ~ N(0, luck) a run's luck
# on the whole test set, e ~ N(0, SIGMA_E) its luck per example (SHARED of it common to one
# seed's cells). The population accuracy is Phi(MU / base) = 97.5% at the baseline (base: the
# sd of z + g + e) and Phi((MU + delta) / level) at the level (level: with delta_i's too). A
# cell's accuracy varies over seeds by 0.13 points at N = 10,000, 0.09 of it from e alone
TAU, OMEGA, SIGMA_G, SIGMA_E, SHARED = 2.0, 0.5, 0.03, 0.5, 0.5
MU = 1.96 * np.sqrt(TAU**2 + SIGMA_G**2 + SIGMA_E**2)


def sds(luck: float) -> tuple[float, float]:
    base = np.sqrt(TAU**2 + luck**2 + SIGMA_E**2)
    return base, np.hypot(base, OMEGA)


def truth(delta: float, luck: float = SIGMA_G) -> float:
    """The level's population effect: over examples, and over seeds."""
    base, level = sds(luck)
    return float(scipy_stats.norm.cdf((MU + delta) / level) - scipy_stats.norm.cdf(MU / base))


def null(luck: float = SIGMA_G) -> float:
    """The delta whose population effect is 0: it helps some examples and hurts as many."""
    base, level = sds(luck)
    return MU * (level / base - 1)


def draw(rng, reps, n_seeds, n_examples, delta, codes=(0, 1), luck=SIGMA_G):
    """Correctness [reps, len(codes), seeds, examples] of each level code's cells, one test set
    a study: the examples are drawn from the population once, the runs per cell."""
    shape = (reps, len(codes), n_seeds, n_examples)
    z = rng.normal(MU, TAU, (reps, 1, 1, n_examples)).astype(np.float32)
    effect = rng.normal(delta, OMEGA, (reps, 1, 1, n_examples)).astype(np.float32)
    shared = rng.standard_normal((reps, 1, n_seeds, n_examples), dtype=np.float32)
    own = rng.standard_normal(shape, dtype=np.float32)
    g = rng.normal(0, luck, (reps, len(codes), n_seeds, 1)).astype(np.float32)
    e = SIGMA_E * (np.sqrt(SHARED) * shared + np.sqrt(1 - SHARED) * own)
    return z + np.asarray(codes, np.float32)[:, None, None] * effect + g + e > 0


def satterthwaite(table: np.ndarray) -> float:
    """The rejected half-width: t on the summed variance, Satterthwaite's df from the three
    mean squares (seeds n - 1, examples N - 1, residual (n - 1)(N - 1))."""
    n, N = table.shape
    by_seed, by_example = table.mean(axis=1), table.mean(axis=0)
    seeds = by_seed.var(ddof=1) / n, n - 1
    examples_ = by_example.var(ddof=1) / N, N - 1
    residual = table - by_seed[:, None] - by_example + table.mean()
    residual = (residual**2).sum() / ((n - 1) * (N - 1)) / (n * N), (n - 1) * (N - 1)
    total = seeds[0] + max(examples_[0] - residual[0], 0)
    terms = (seeds, examples_, residual) if examples_[0] > residual[0] else (seeds,)
    df = total**2 / sum(v**2 / d for v, d in terms) if total > 0 else n - 1
    return float(scipy_stats.t.ppf(0.975, df) * np.sqrt(total))


def two_way_bootstrap(rng, table: np.ndarray, reps: int = 400) -> tuple[float, float]:
    """Bouthillier et al. 2021's interval: resample seeds and examples, each with replacement,
    the mean's 2.5% and 97.5% quantiles (the mean of a resample is u' table v / (n N), u and v
    the resampled counts)."""
    n, N = table.shape
    seeds = rng.multinomial(n, np.full(n, 1 / n), reps)
    picks = rng.integers(0, N, (reps, N)) + N * np.arange(reps)[:, None]
    counts = np.bincount(picks.ravel(), minlength=reps * N).reshape(reps, N)
    means = ((seeds @ table) * counts).sum(axis=1) / (n * N)
    return tuple(np.quantile(means, [0.025, 0.975]))


def rates(rng, delta, n_seeds, n_examples, reps, boot=False, luck=SIGMA_G) -> dict:
    """Over `reps` studies of one two-level factor, how often each interval covers the
    population effect: the seed-only one (inference.interval on the per-seed differences,
    stats.effects' interval), ours (examples.decompose), Satterthwaite's, the uncorrected sum
    (var_i of per-example means / N plus s^2 / n, t(n - 1)) and with `boot` the two-way
    bootstrap; and the test set's mean share of the variance."""
    want, hits, shares = truth(delta, luck), dict.fromkeys(("seeds", "ours", "satt", "sum")), []
    hits = {k: 0 for k in (*hits, "boot")}
    for start in range(0, reps, 20):
        studies = draw(rng, min(20, reps - start), n_seeds, n_examples, delta, luck=luck)
        for table in studies[:, 1].astype(float) - studies[:, 0]:
            _, _, low, high = inference.interval(table.mean(axis=1))
            hits["seeds"] += low <= want <= high
            out = examples.decompose(table)
            hits["ours"] += out["ci_low_examples"] <= want <= out["ci_high_examples"]
            shares.append(out["share_examples"])
            miss = abs(out["diff"] - want)
            hits["satt"] += miss <= satterthwaite(table)
            plain = table.mean(axis=0).var(ddof=1) / n_examples + out["var_seeds"]
            hits["sum"] += miss <= scipy_stats.t.ppf(0.975, n_seeds - 1) * np.sqrt(plain)
            if boot:
                low, high = two_way_bootstrap(rng, table)
                hits["boot"] += low <= want <= high
    return {**{k: v / reps for k, v in hits.items()}, "share": float(np.nanmean(shares))}


CONFIGS = list(itertools.product((500, 2000, 10_000), (3, 5, 10)))


@pytest.mark.slow
def test_seeds_and_examples_cover_the_population_effect_where_seeds_alone_do_not():
    # every interval printed before held the test set fixed: it covers the effect on this
    # test set, not on the population of examples it was drawn from
    rng, reps, said, ours, seed_only = np.random.default_rng(28), 600, [], [], []
    for n_examples, n_seeds in CONFIGS:
        got = rates(rng, null() + 0.2, n_seeds, n_examples, reps)
        said.append(
            f"N={n_examples}, {n_seeds} seeds: seed-only {got['seeds']:.3f}, ours "
            f"{got['ours']:.3f} (Satterthwaite {got['satt']:.3f}, uncorrected sum "
            f"{got['sum']:.3f}); test set's share {got['share']:.2f}"
        )
        ours.append(got["ours"])
        seed_only.append(got["seeds"])
    msg = f"coverage of the population effect {truth(null() + 0.2):.4f}, {reps} studies each: "
    print(msg + "; ".join(said))
    assert min(ours) >= 0.93 and min(seed_only) < 0.85, msg + "; ".join(said)


@pytest.mark.slow
def test_a_null_effect_is_flagged_by_seeds_and_examples_in_at_most_5_percent_of_studies():
    # the level helps some examples and hurts as many: 0 on the population, not on a test set
    rng, reps, said, flagged = np.random.default_rng(29), 600, [], []
    for n_examples, n_seeds in CONFIGS:
        got = rates(rng, null(), n_seeds, n_examples, reps)
        flagged.append(1 - got["ours"])
        said.append(
            f"N={n_examples}, {n_seeds} seeds: ours {1 - got['ours']:.3f}, seed-only "
            f"{1 - got['seeds']:.3f}, Satterthwaite {1 - got['satt']:.3f}"
        )
    pooled = float(np.mean(flagged))
    low, high = wilson(round(pooled * reps * len(CONFIGS)), reps * len(CONFIGS))
    msg = f"null effect, {reps} studies each, flagged: pooled {pooled:.3f} [{low:.3f}, {high:.3f}]"
    print(msg + "; " + "; ".join(said))
    assert pooled <= 0.05 and max(flagged) <= 0.06, msg + "; " + "; ".join(said)


@pytest.mark.slow
def test_a_design_points_accuracy_is_covered_with_the_test_set_counted():
    # summary.csv's interval of a point's mean accuracy, against the population's 97.5%: the
    # test set's binomial-like noise is most of its variance. At N = 500 (12 errors expected)
    # the examples' part is a Wald interval of a proportion and falls a little short: 0.938 of
    # 2,000 studies at 10 seeds
    rng, reps, said, ours, seed_only = np.random.default_rng(34), 400, [], [], []
    for n_examples, n_seeds in CONFIGS:
        hits = {"seeds": 0, "ours": 0}
        shares = []
        for _ in range(0, reps, 50):
            for table in draw(rng, 50, n_seeds, n_examples, 0.0, codes=(0,))[:, 0]:
                _, _, low, high = inference.interval(table.mean(axis=1))
                hits["seeds"] += low <= 0.975 <= high
                out = examples.decompose(table.astype(float))
                hits["ours"] += out["ci_low_examples"] <= 0.975 <= out["ci_high_examples"]
                shares.append(out["share_examples"])
        said.append(
            f"N={n_examples}, {n_seeds} seeds: seed-only {hits['seeds'] / reps:.3f}, ours "
            f"{hits['ours'] / reps:.3f}; test set's share {np.nanmean(shares):.2f}"
        )
        ours.append(hits["ours"] / reps)
        seed_only.append(hits["seeds"] / reps)
    msg = f"coverage of a point's population accuracy, {reps} studies each: " + "; ".join(said)
    print(msg)
    assert min(ours) >= 0.92 and max(seed_only) < 0.9, msg


@pytest.mark.slow
def test_the_two_way_bootstrap_under_covers_where_a_runs_luck_dominates_and_ours_holds():
    # Bouthillier et al. 2021's bootstrap over seeds and examples: where the seeds' spread is
    # mostly per-example churn (the population above) it counts that churn twice and covers
    # more than 95%; where a run-wide luck dominates (sd 0.3 on the logit)
    # it resamples 3-10 seeds, and under-covers as inference.py's seed bootstrap does
    # (a cell's accuracy then varies over seeds by 0.9 points)
    rng, reps, said, ours, boot = np.random.default_rng(33), 200, [], [], {}
    for luck, n_seeds in itertools.product((SIGMA_G, 0.3), (3, 5, 10)):
        got = rates(rng, null(luck) + 0.2, n_seeds, 2000, reps, boot=True, luck=luck)
        said.append(
            f"luck sd {luck}, {n_seeds} seeds: bootstrap {got['boot']:.3f}, ours "
            f"{got['ours']:.3f}, seed-only {got['seeds']:.3f}; test set's share "
            f"{got['share']:.2f}"
        )
        ours.append(got["ours"])
        boot[luck, n_seeds] = got["boot"]
    msg = f"coverage at N=2000, {reps} studies each: " + "; ".join(said)
    print(msg)
    assert min(ours) >= 0.93 and boot[0.3, 3] < 0.9, msg


@pytest.mark.slow
def test_mcnemar_rarely_flags_two_runs_of_one_recipe_and_says_what_it_compares():
    # two seeds of one recipe on one test set. Without a run-wide luck the two models have one
    # population accuracy and McNemar holds its 5%; with it (the luck the seed-paired
    # intervals see) the two models do differ, and a large test set finds it: McNemar compares
    # trained models, never recipes
    rng, reps, said, pure = np.random.default_rng(30), 1000, [], []
    for n_examples in (500, 2000, 10_000):
        rate = {}
        for luck in (0.0, SIGMA_G, 0.3):
            hits = draw(rng, reps, 2, n_examples, 0.0, codes=(0,), luck=luck)[:, 0]
            p = [examples.mcnemar(a, b)["p_value"] for a, b in hits]
            rate[luck] = float(np.mean(np.asarray(p) < 0.05))
        pure.append(rate[0.0])
        said.append(f"N={n_examples}: " + ", ".join(f"luck {k}: {v:.3f}" for k, v in rate.items()))
    msg = f"McNemar p < 0.05 on two runs of one recipe, {reps} pairs each: " + "; ".join(said)
    print(msg)
    assert max(pure) <= 0.05, msg


def grid_study(rng, n_seeds: int, n_examples: int, delta: float):
    """A 2x2 study, finals shaped like stats.final's and correctness per cell: factor a with
    the level effect delta, factor b with none."""
    hits = draw(rng, 1, n_seeds, n_examples, delta, codes=(0, 1, 0, 1))[0]
    rows, by_cell = [], {}
    for k, (a, b) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        for seed in range(n_seeds):
            cell = json.dumps([a, b, seed])
            by_cell[cell] = hits[k, seed]
            acc = float(hits[k, seed].mean())
            rows.append(dict(cell=cell, seed=seed, a=a, b=b, status="ok", test_acc=acc))
    return pd.DataFrame(rows), pd.DataFrame(by_cell).T.rename_axis("cell")


@pytest.mark.slow
def test_a_grids_effect_rows_cover_through_the_report_functions():
    # what the report would print: stats.effects' seed-only row beside examples.effects'
    rng, reps, n_seeds, n_examples = np.random.default_rng(31), 200, 5, 2000
    want = np.array([truth(null() + 0.2), 0.0])  # a's effect, b's (none, on no example)
    levels, base = {"a": [0, 1], "b": [0, 1]}, {"a": 0, "b": 0}
    seed_only, ours, shares = np.zeros(2), np.zeros(2), np.zeros(2)
    for _ in range(reps):
        finals, hits = grid_study(rng, n_seeds, n_examples, null() + 0.2)
        rows = stats.effects(finals, ["a", "b"], base, levels)
        both = examples.effects(finals, hits, ["a", "b"], base, levels)
        assert np.allclose(both["diff"], rows["diff"], rtol=0, atol=1e-12)
        seed_only += (rows["ci_low"] <= want) & (want <= rows["ci_high"])
        ours += (both["ci_low_examples"] <= want) & (want <= both["ci_high_examples"])
        shares += both["share_examples"].to_numpy() / reps
    msg = (
        f"2x2 grid, {n_seeds} seeds, N={n_examples}, {reps} studies, coverage of a's and b's "
        f"population effects: seed-only {(seed_only / reps).round(3).tolist()}, ours "
        f"{(ours / reps).round(3).tolist()} (test set's share {shares.round(2).tolist()})"
    )
    print(msg)
    assert (ours / reps >= 0.93).all() and seed_only[0] / reps < 0.9, msg


def test_disagreement_by_hand_and_its_exact_permutation_p():
    a = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
    b = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], bool)
    out = examples.disagreement(a, b)
    # 6 splits of 4 runs: the observed and its mirror have excess 1 - 0, the 4 others
    # 0.5 - 1: p = 2/6
    assert (out["between"], out["within_a"], out["within_b"]) == (1.0, 0.0, 0.0)
    assert out["p_value"] == pytest.approx(1 / 3)
    assert np.isnan(examples.disagreement(a[:1], b)["p_value"])


@pytest.mark.slow
def test_disagreement_holds_5_percent_on_one_recipe_and_finds_a_change_of_examples():
    # 5 v 5 runs, N = 2000: the same recipe on both sides (its seeds' own churn), and a side
    # whose level helps some examples and hurts as many (the population accuracy unchanged)
    rng, reps, said = np.random.default_rng(32), 300, {}
    for name, codes in (("one recipe", (0, 0)), ("same accuracy, other examples", (0, 1))):
        hits = draw(rng, reps, 10, 2000, null(), codes=codes)  # seeds 0-4 on A, 5-9 on B
        p = [examples.disagreement(h[0, :5], h[1, 5:])["p_value"] for h in hits]
        said[name] = float(np.mean(np.asarray(p) < 0.05))
    msg = f"disagreement p < 0.05, {reps} studies of 5 v 5 runs, N=2000: {said}"
    print(msg)
    assert said["one recipe"] <= 0.05 and said["same accuracy, other examples"] >= 0.8, msg
