"""The test set as a sample of examples: per-example correctness, McNemar, two-source intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import stats
from .errors import AblateError
from .inference import LEVEL, no_spread
from .metrics import Metric

METHOD = "seeds t(n-1) + examples t(N-1), in quadrature"
SPREAD = "ci_low_examples ci_high_examples var_seeds var_examples share_examples".split()
COLUMNS = ["n_seeds", "n_examples", "diff", *SPREAD, "method"]


def correct(predictions: dict, labels) -> pd.DataFrame:
    """Cells x examples, True where the cell's predicted class is the label."""
    if labels is None:
        raise AblateError("no test labels stored beside the predictions: nothing to score")
    labels = np.asarray(labels)
    wrong = [cell for cell, p in predictions.items() if len(p) != len(labels)]
    if wrong:
        raise AblateError(
            f"cell {wrong[0]} stored {len(predictions[wrong[0]])} predictions for "
            f"{len(labels)} test labels"
        )
    rows = [np.asarray(p) == labels for p in predictions.values()]
    matrix = np.vstack(rows) if rows else np.zeros((0, len(labels)), bool)
    return pd.DataFrame(matrix, index=pd.Index(list(predictions), name="cell"))


def mcnemar(correct_a, correct_b) -> dict:
    """Two cells scored on one test set: n_ab (right in A only), n_ba (in B only), McNemar's
    exact two-sided p (binomial on the discordant pairs) and the share of examples on which
    they disagree. It compares two trained models, not two recipes: on two runs of one recipe
    p < 0.05 in 0.025-0.045 of pairs, but in 0.15 at N = 10,000 once each run has a luck of
    0.085 points on the whole test set, a real difference between the two models (simulated)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n_ab, n_ba = int((a & ~b).sum()), int((~a & b).sum())
    discordant = n_ab + n_ba
    p = scipy_stats.binomtest(n_ab, discordant, 0.5).pvalue if discordant else 1.0
    return dict(n_ab=n_ab, n_ba=n_ba, p_value=float(p), disagree=discordant / max(len(a), 1))


def decompose(table, resolution: float = 0.0, level: float = LEVEL) -> dict:
    """Seeds x examples -> the mean and its variance from the two crossed sources (two-way
    random-effects ANOVA, one value a cell). var_seeds is s^2 / n of the per-seed means, what
    the seed-only interval uses; var_examples is (MS_examples - MS_residual) / (n N), unbiased
    for the test set's part (var_i of per-example means / N counts the seed x example noise
    twice: it is in s^2 / n already). The interval adds each source's half-width at its own
    df in quadrature (Banerjee 1961's conservative rule): t(n - 1) on the seeds, t(N - 1) on
    the examples. Simulated (tests/test_examples.py, 3-10 seeds, N 500-10,000): coverage
    0.953-0.980 and a null flagged in 0.037 of studies (0.053 at most), where a Satterthwaite t
    on the sum flagged 0.058 (0.068 at 3 seeds: a seed variance low by chance buys a high df)
    and the seed-only interval up to 0.26."""
    table = np.asarray(table, float)
    n, N = table.shape
    by_seed = table.mean(axis=1) if N else np.full(n, np.nan)
    by_example = table.mean(axis=0) if n else np.full(N, np.nan)
    mean = float(by_seed.mean()) if n else np.nan
    out = dict(n_seeds=n, n_examples=N, diff=mean, method=METHOD)
    if n < 2 or N < 2 or no_spread(by_seed, resolution):
        return {**out, **dict.fromkeys(SPREAD, np.nan)}
    ss_seeds = N * float(((by_seed - mean) ** 2).sum())
    ss_examples = n * float(((by_example - mean) ** 2).sum())
    ss_residual = max(float(((table - mean) ** 2).sum()) - ss_seeds - ss_examples, 0.0)
    var_seeds = ss_seeds / (n - 1) / (n * N)
    var_examples = max(ss_examples / (N - 1) - ss_residual / ((n - 1) * (N - 1)), 0.0) / (n * N)
    quantile = scipy_stats.t.ppf(0.5 + level / 2, [n - 1, N - 1])
    half = float(np.sqrt(quantile[0] ** 2 * var_seeds + quantile[1] ** 2 * var_examples))
    total = var_seeds + var_examples
    return {
        **out,
        "ci_low_examples": mean - half,
        "ci_high_examples": mean + half,
        "var_seeds": var_seeds,
        "var_examples": var_examples,
        "share_examples": var_examples / total if total > 0 else np.nan,
    }


def _weights(finals: pd.DataFrame, factors: list[str], factor: str, level, baseline):
    """Seeds x ok cells: the weights whose product with the cells' metric is
    stats.paired_diffs (matched designs): per seed, level minus baseline per setting of the
    other factors (settings matched by repr), averaged as stats._per_seed averages."""
    ok = finals[finals["status"] == "ok"]
    match = pd.Series("", index=ok.index)
    for other in [f for f in factors if f != factor]:
        match = match + "|" + ok[other].map(repr)
    sign = np.where(stats.level_mask(ok, factor, level), 1.0, 0.0)
    sign -= np.where(stats.level_mask(ok, factor, baseline), 1.0, 0.0)
    frame = pd.DataFrame({"match": match, "seed": ok["seed"], "sign": sign, "at": range(len(ok))})
    frame = frame[frame["sign"] != 0]
    size = frame.groupby(["match", "seed", "sign"])["sign"].transform("size")
    both = frame.groupby(["match", "seed"])["sign"].transform("nunique") == 2
    frame, size = frame[both], size[both]
    row = frame.groupby(["match", "seed"]).ngroup().to_numpy()
    keys = frame.groupby(["match", "seed"]).size().index  # ngroup's order
    paired = np.zeros((len(keys), len(ok)))
    paired[row, frame["at"].to_numpy()] = (frame["sign"] / size).to_numpy()
    return stats._per_seed(pd.DataFrame(paired, index=keys, columns=ok["cell"]))


INDICATOR = Metric("_one", "one cell's indicator")  # _fitted_weights' probe column


def _fitted_weights(finals: pd.DataFrame, factors: list[str], factor: str, level, baseline):
    """Seeds x ok cells for a fractional design: stats._fitted is linear in the metric, so
    its value on each ok cell's indicator is that cell's weight (one fit a cell: small)."""
    ok = finals[finals["status"] == "ok"]
    probes = {
        cell: stats._fitted(ok.assign(_one=(ok["cell"] == cell).astype(float)), factors, factor,
                            level, baseline, INDICATOR)
        for cell in ok["cell"]
    }  # fmt: skip
    return pd.DataFrame(probes, columns=list(ok["cell"])).fillna(0.0)


def per_example(
    finals, correct_cells, factors, factor, level, baseline, matched: bool = True
) -> pd.DataFrame | None:
    """Seeds x examples: each seed's paired difference in correctness (level - baseline,
    matched and averaged as stats.paired_diffs; `matched=False`: fitted per seed, as it does
    for a fractional design), per example; its row means are stats.paired_diffs on the
    accuracy. None where a cell it needs has no predictions."""
    weigh = _weights if matched else _fitted_weights
    w = weigh(finals, factors, factor, level, baseline)
    used = w.columns[(w != 0).any(axis=0).to_numpy()]
    if not used.isin(correct_cells.index).all():
        return None
    matrix = correct_cells.loc[used].to_numpy(dtype=float)
    return pd.DataFrame(w[used].to_numpy() @ matrix, index=w.index, columns=correct_cells.columns)


def effects(
    finals: pd.DataFrame,
    correct_cells: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    matched: bool = True,
    resolution: float = 0.0,
) -> pd.DataFrame:
    """stats.effects' rows (`matched=False` for a fractional design, as there) with an interval
    that counts the test set as a sample of examples beside the seeds, and each source's share
    of the effect's variance. `diff` equals stats.effects' on the accuracy these predictions
    score; NaN where a cell the row needs has no stored predictions."""
    rows = []
    for factor in factors:
        baseline = baselines[factor]
        for level in stats.non_baseline(factor, levels, baselines):
            row = dict(factor=factor, level=level, baseline=baseline)
            args = (finals, correct_cells, factors, factor, level, baseline, matched)
            table = per_example(*args)
            rows.append({**row, **_decomposed(table, resolution)})
    return pd.DataFrame(rows, columns=["factor", "level", "baseline", *COLUMNS])


def summary(
    finals: pd.DataFrame, correct_cells: pd.DataFrame, factors: list[str], resolution: float = 0.0
) -> pd.DataFrame:
    """Per design point, the rows of stats.summary in its order: the mean accuracy over ok
    seeds, with the same two-source interval (the examples' part is the binomial-like var_i of
    per-example correctness averaged over seeds)."""
    keys, rows = stats.points(finals, factors), []
    for point in dict.fromkeys(keys):
        at_point = finals[[k == point for k in keys]]
        cells = at_point["cell"][at_point["status"] == "ok"]
        have = cells.isin(correct_cells.index).all()
        table = correct_cells.loc[cells].to_numpy(float) if have else None
        rows.append({**dict(zip(factors, point, strict=True)), **_decomposed(table, resolution)})
    return pd.DataFrame(rows, columns=[*factors, *COLUMNS])


def _decomposed(table, resolution: float) -> dict:
    """decompose's columns, or NaN ones where there is no table (predictions missing)."""
    if table is None:
        return {**dict.fromkeys(COLUMNS, np.nan), "method": "no stored predictions"}
    return decompose(np.asarray(table, float), resolution)


def disagreement(runs_a, runs_b, permutations: int = 9999) -> dict:
    """Runs of two setups scored on one test set (rows runs, columns examples): the mean share
    of examples on which a run of A and a run of B disagree (`between`), the same within A and
    within B, and a permutation p (the runs' sides relabelled: exact up to `permutations`
    splits, else that many drawn, seed 0) that between exceeds the mean of the two withins:
    do the setups differ in which examples they get right, beyond how their seeds differ? Needs
    2 runs a side; exact when the runs are independent (no seed shared across sides)."""
    a, b = np.asarray(runs_a, float), np.asarray(runs_b, float)
    n_a, n_b = len(a), len(b)
    out = dict(between=np.nan, within_a=np.nan, within_b=np.nan, p_value=np.nan)
    if n_a < 2 or n_b < 2:
        return out
    runs = np.vstack([a, b])
    pairwise = (runs @ (1 - runs).T + (1 - runs) @ runs.T) / runs.shape[1]
    sides = _splits(n_a + n_b, n_a, permutations)
    between = np.einsum("kr,rs,ks->k", sides, pairwise, 1 - sides) / (n_a * n_b)
    within_a = np.einsum("kr,rs,ks->k", sides, pairwise, sides) / (n_a * (n_a - 1))
    within_b = np.einsum("kr,rs,ks->k", 1 - sides, pairwise, 1 - sides) / (n_b * (n_b - 1))
    excess = between - (within_a + within_b) / 2
    p = float((excess >= excess[0] - 1e-12).mean())  # row 0: the observed split
    return dict(between=between[0], within_a=within_a[0], within_b=within_b[0], p_value=p)


def _splits(n_runs: int, n_a: int, permutations: int) -> np.ndarray:
    """Boolean rows over runs, True on side A, the observed split first: every split (the
    first combination is the observed one), or it and `permutations` drawn ones, seed 0."""
    observed = np.arange(n_runs) < n_a
    if math.comb(n_runs, n_a) <= permutations + 1:
        chosen = itertools.combinations(range(n_runs), n_a)
        return np.vstack([np.isin(np.arange(n_runs), c) for c in chosen]).astype(float)
    rng = np.random.default_rng(0)
    drawn = [rng.permutation(observed) for _ in range(permutations)]
    return np.vstack([observed, *drawn]).astype(float)
