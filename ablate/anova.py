"""Beside the effects: blocked factorial ANOVA, main effects that change sign, failures by level."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import inference, stats, tables
from .metrics import TEST_ACC, Metric

ANOVA_COLUMNS = ["term", "df", "sum_sq", "mean_sq", "F", "p", "eta_sq", "error_df"]
SIMPLE_COLUMNS = ["factor", "level", "baseline", "setting", "n_pairs", "diff", "ci_low", "ci_high"]
SIGN_COLUMNS = ["factor", "level", "baseline", "settings"]


def _codes(col: pd.Series, levels: list) -> np.ndarray:
    """Each row's position in `levels`, -1 when absent (stats.same, one value at a time, as in
    stats.level_mask)."""

    def position(value) -> int:
        return next((i for i, listed in enumerate(levels) if stats.same(value, listed)), -1)

    return col.map(position).to_numpy(dtype=int)


def _grid(finals: pd.DataFrame, factors: list[str], levels: dict, metric: Metric) -> np.ndarray:
    """The metric as [seed, level of factor 1, ...] over the seeds with an ok cell at every
    combination: the sums of squares below are those of a balanced design only."""
    ok = finals[finals["status"] == "ok"]
    shape = tuple(len(levels[f]) for f in factors)
    combo = np.zeros(len(ok), dtype=int)  # C order, as reshape reads it; -1 for a level not listed
    for factor in factors:
        code = _codes(ok[factor], levels[factor])
        combo = np.where((combo < 0) | (code < 0), -1, combo * len(levels[factor]) + code)
    values = pd.Series(
        ok[metric.column].to_numpy(dtype=float), index=[ok["seed"].to_numpy(), combo]
    )
    values = values[combo >= 0]
    wide = values.groupby(level=[0, 1]).mean().unstack() if len(values) else pd.DataFrame()
    wide = wide.reindex(columns=range(int(np.prod(shape)))).dropna()
    return wide.to_numpy().reshape(len(wide), *shape)


def _sum_sq(y: np.ndarray, axes: tuple[int, ...]) -> float:
    """Sum of squares of the term on `axes`: its effect is the inclusion-exclusion sum of the
    means that keep each subset of them, repeated over every observation."""
    effect = 0.0
    for r in range(len(axes) + 1):
        for kept in itertools.combinations(axes, r):
            drop = tuple(i for i in range(y.ndim) if i not in kept)
            effect = effect + (-1) ** (len(axes) - r) * y.mean(axis=drop, keepdims=True)
    return float((effect**2).sum() * y.size / np.size(effect))


def anova(
    finals: pd.DataFrame, factors: list[str], levels: dict, metric: Metric = TEST_ACC
) -> tuple[pd.DataFrame, int]:
    """Seed block plus the full factorial of the factors with 2+ levels, over the seeds with
    every combination ok; the table and the number of those seeds. Each term is tested
    against its own interaction with seed (error_df = df x (seeds - 1)), as a repeated-measures
    ANOVA does: for a two-level main effect F is the paired t squared, so the table agrees
    with the effects' verdicts; one pooled residual would assume every effect is equally noisy
    across seeds (in fashion_mnist_mlp it made dropout p 1.8e-5 against the paired 0.029)."""
    factors = [f for f in factors if len(levels[f]) >= 2]
    y = _grid(finals, factors, levels, metric)
    if len(y) < 2 or not factors:
        return pd.DataFrame(columns=ANOVA_COLUMNS), len(y)
    terms = [("seed", (0,))] + [
        (":".join(factors[i - 1] for i in axes), axes)
        for r in range(1, len(factors) + 1)
        for axes in itertools.combinations(range(1, y.ndim), r)
    ]
    rows = []
    for name, axes in terms:
        dof = int(np.prod([y.shape[i] - 1 for i in axes]))
        if name == "seed":
            rows.append((name, dof, _sum_sq(y, axes), np.nan, np.nan))
            continue
        error = _sum_sq(y, (0, *axes))  # the term's interaction with seed
        error_df = dof * (len(y) - 1)
        rows.append((name, dof, _sum_sq(y, axes), error / error_df, error_df))
    total = float(((y - y.mean()) ** 2).sum())
    resid_df = (len(y) - 1) * (y[0].size - 1)  # one observation per seed and cell
    explained = sum(row[2] for row in rows)
    rows.append(("residual", resid_df, max(total - explained, 0.0), np.nan, np.nan))
    out = pd.DataFrame(rows, columns=["term", "df", "sum_sq", "error_ms", "error_df"])
    out["mean_sq"] = out["sum_sq"] / out["df"]
    with np.errstate(divide="ignore", invalid="ignore"):  # no spread across seeds: F is infinite
        out["F"] = out["mean_sq"] / out["error_ms"]
        out["p"] = scipy_stats.f.sf(out["F"], out["df"], out["error_df"])
        out["eta_sq"] = out["sum_sq"] / total
    return out[ANOVA_COLUMNS], len(y)


def sign_changes(layout: stats.Layout) -> pd.DataFrame:
    """Each level's simple effect against its factor's baseline at every setting of the other
    factors: paired by seed where both cells are ok, with a t interval that is simultaneous
    over the level's settings (Bonferroni: 95% / m each); none where there is no spread."""
    factors, levels, baselines = layout.factors, layout.levels, layout.baselines
    ok = layout.finals[layout.finals["status"] == "ok"]
    seeds, values = ok["seed"].to_numpy(), ok[layout.metric.column].to_numpy(dtype=float)
    by_seed = lambda mask: pd.Series(values[mask], index=seeds[mask])  # noqa: E731
    masks = {
        (factor, i): stats.level_mask(ok, factor, level).to_numpy()
        for factor in factors
        for i, level in enumerate(levels[factor])
    }
    rows = []
    for factor in factors:
        others = [other for other in factors if other != factor]
        base = stats.level_mask(ok, factor, baselines[factor]).to_numpy()
        settings = list(itertools.product(*(range(len(levels[other])) for other in others)))
        level_ci = 1 - (1 - inference.LEVEL) / len(settings)
        for level in stats.non_baseline(factor, levels, baselines):
            this = stats.level_mask(ok, factor, level).to_numpy()
            for setting in settings:
                pairs = list(zip(others, setting, strict=True))
                mask = np.ones(len(ok), dtype=bool)
                for other, i in pairs:
                    mask &= masks[other, i]
                diffs = (by_seed(mask & this) - by_seed(mask & base)).dropna()  # aligned on seed
                diff, _, low, high = inference.interval(diffs, level=level_ci)
                if inference.no_spread(diffs.to_numpy(), layout.resolution):
                    low = high = np.nan  # seeds that agree to the metric's resolution: no interval
                label = ", ".join(f"{other}={levels[other][i]}" for other, i in pairs)
                row = dict(factor=factor, level=level, baseline=baselines[factor], setting=label)
                rows.append(
                    {**row, "n_pairs": len(diffs), "diff": diff, "ci_low": low, "ci_high": high}
                )
    return pd.DataFrame(rows, columns=SIMPLE_COLUMNS)


def changes_sign(
    simple: pd.DataFrame, metric: Metric = TEST_ACC, interactions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The (factor, level) pairs with one setting's interval wholly above 0 and another's wholly
    below: their main effect averages simple effects of opposite sign and describes neither.
    With `interactions` (after Holm), only a pair one of whose interactions is significant: an
    effect cannot change sign unless it interacts, and the gate keeps the warning inside the one
    Holm family (ungated, it added 0.002 to the null page-wide rate, 0.055 in all: simulated)."""
    # repr keys: grouped by value, a level True would be reported as 1 (they hash alike)
    key = simple["factor"].astype(str) + "\0" + simple["level"].map(repr)
    rows = []
    for _, group in simple.groupby(key, sort=False):
        factor, level = group["factor"].iloc[0], group["level"].iloc[0]
        if interactions is not None and not interacts(interactions, factor, level):
            continue
        if (group["ci_low"] > 0).any() and (group["ci_high"] < 0).any():
            listed = "; ".join(
                f"{tables.number(row.diff, metric, True)} at {row.setting}"
                for row in group.itertuples()
            )
            rows.append(
                dict(
                    factor=group["factor"].iloc[0],
                    level=group["level"].iloc[0],
                    baseline=group["baseline"].iloc[0],
                    settings=listed,
                )
            )
    return pd.DataFrame(rows, columns=SIGN_COLUMNS)


def interacts(interactions: pd.DataFrame, factor: str, level) -> bool:
    """Whether some significant interaction row has this factor at this level on either side."""
    for row in interactions[interactions["significant"].astype(bool)].to_dict("records"):
        if (row["factor"] == factor and stats.same(row["level"], level)) or (
            row["by"] == factor and stats.same(row["by_level"], level)
        ):
            return True
    return False


FAILURE_COLUMNS = [
    "factor",
    "level",
    "n_runs",
    "n_diverged",
    "n_stalled",
    "p_fisher",
    "p_holm",
    "differs",
]
STALL = 0.02  # a run whose final accuracy is within 2 points of chance learned nothing


def failures(
    finals: pd.DataFrame,
    factors: list[str],
    levels: dict,
    classes: int | None,
    baselines: dict | None = None,
) -> pd.DataFrame:
    """Per factor and level: runs, how many diverged and how many stalled (final test_acc within
    STALL of chance; none counted when the class count is unknown). Fisher's exact test of
    failed (either) against fine across each factor's levels (3+ levels: its Monte Carlo
    version, 10^5 seeded draws), Holm across factors: where failure rates differ, effects on
    the surviving runs are biased. With `baselines` (one-at-a-time), a factor's rows are the
    cells with every other factor at its baseline, so one factor's failures are not another's."""
    chance = 1 / classes if classes else None
    diverged = finals["status"] != "ok"
    stalled = (
        ~diverged & (finals[TEST_ACC.column] <= chance + STALL)
        if chance
        else pd.Series(False, index=finals.index)
    )
    rows, tests = [], []
    for factor in factors:
        mine = pd.Series(True, index=finals.index)  # the rows that count for this factor
        for other in [other for other in factors if other != factor] if baselines else []:
            mine &= stats.level_mask(finals, other, baselines[other])
        table = []
        for level in levels[factor]:
            runs = stats.level_mask(finals, factor, level) & mine
            failed, fine = runs & (diverged | stalled), runs & ~diverged & ~stalled
            table.append([int(failed.sum()), int(fine.sum())])
            rows.append(
                dict(
                    factor=factor,
                    level=level,
                    n_runs=int(runs.sum()),
                    n_diverged=int((runs & diverged).sum()),
                    n_stalled=int((runs & stalled).sum()),
                )
            )
        tests.append(_fisher(np.array([counts for counts in table if sum(counts)])))
    out = pd.DataFrame(rows, columns=FAILURE_COLUMNS[:5])
    out["p_fisher"] = out["factor"].map(dict(zip(factors, tests, strict=True)))
    out["p_holm"] = out["factor"].map(
        dict(zip(factors, inference.holm(tests), strict=True)) if factors else {}
    )
    out["differs"] = out["p_holm"] < inference.ALPHA
    return out


def _fisher(table: np.ndarray) -> float:
    """Fisher's exact p of a levels x (failed, fine) table; 1 where nothing can differ."""
    if len(table) < 2 or table[:, 0].sum() in (0, table.sum()):
        return 1.0
    if len(table) == 2:
        return float(scipy_stats.fisher_exact(table).pvalue)
    rng = np.random.default_rng(0)  # reproducible
    draws = scipy_stats.MonteCarloMethod(n_resamples=100_000, rng=rng)
    return float(scipy_stats.fisher_exact(table, method=draws).pvalue)
