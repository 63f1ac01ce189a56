"""Published numbers against the runs: one run by a prediction interval, a mean by its CI."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .inference import LEVEL, interval, no_spread
from .keys import JSON_DEFAULTS
from .metrics import TEST_ACC, Metric, lookup
from .stats import final, hashable

COLUMNS = [
    "where",
    "claimed",
    "mean",
    "ci_low",
    "ci_high",
    "pi_low",
    "pi_high",
    "n_seeds",
    "runs_within",
    "judged_by",
    "inside",
    "source",
    "metric",
    "epoch",
    "kind",
    "note",
    "outliers",
]
# kind -> the interval it is judged by: a tutorial's number is one run, so a faithful rerun
# lands inside the CI of a mean only 68% of the time with 5 seeds, 35% with 20 (simulated)
JUDGED_BY = {"point": "prediction", "mean": "ci", "at_most": "runs", "at_least": "runs"}
# [min, max] of n runs holds a new run with probability (n - 1)/(n + 1), whatever their
# distribution: 0.95 from 39 runs on
ORDER_STATISTICS_FROM = 39
# runs flagged as far apart under normal runs: 4%, so that a re-simulated rate stays under 5%
FLAG_RATE = 0.04
# a point claim's judged_by as the terminal and the claims chart say it
POINT_INTERVALS = {
    "prediction": "prediction interval",
    "prediction, widened to the runs": "prediction interval, widened to the runs",
    "order statistics": "interval of order statistics",
}


def prediction(x) -> tuple[float, float]:
    """95% prediction interval for one new run: mean +- t(0.975, n-1) * s * sqrt(1 + 1/n)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return np.nan, np.nan
    t_quantile = scipy_stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1)
    half = t_quantile * x.std(ddof=1) * np.sqrt(1 + 1 / len(x))
    return float(x.mean() - half), float(x.mean() + half)


def judged_interval(runs) -> tuple[float, float, str]:
    """The interval a point claim is judged by, and its name: from 39 runs on, order statistics
    (x_(k), x_(n+1-k)), which hold a new run with probability (n+1-2k)/(n+1) >= 95% of any
    distribution; below, the prediction interval widened to take in every run (a claim a run
    reached is not outside; under normal runs this moves coverage by < 0.001, simulated)."""
    x = np.sort(np.asarray(runs, dtype=float))
    n = len(x)
    if n >= ORDER_STATISTICS_FROM:
        rank = int((n + 1) * (1 - LEVEL) / 2 + 1e-9)  # 1e-9: 40 * 0.025 is 1, not 0.99..
        return float(x[rank - 1]), float(x[n - rank]), "order statistics"
    low, high = prediction(x)
    if n >= 2 and (x[0] < low or x[-1] > high):
        return float(min(low, x[0])), float(max(high, x[-1])), "prediction, widened to the runs"
    return low, high, "prediction"


def _gap_ratios(sorted_runs: np.ndarray, resolution: float) -> np.ndarray:
    """Per row of sorted runs, per place to split them: the gap there over the pooled sd of the
    two sides (n - 2 df)."""
    n = sorted_runs.shape[1]
    centred = sorted_runs - sorted_runs.mean(axis=1, keepdims=True)  # sums of squares cancel less
    sums, squares = np.cumsum(centred, axis=1), np.cumsum(centred**2, axis=1)
    below = np.arange(1, n)
    ss_low = squares[:, :-1] - sums[:, :-1] ** 2 / below
    high_sum, high_squares = sums[:, -1:] - sums[:, :-1], squares[:, -1:] - squares[:, :-1]
    ss_high = high_squares - high_sum**2 / (n - below)
    pooled = np.sqrt(np.maximum(ss_low + ss_high, 0) / (n - 2))
    # runs that move in steps of the metric's resolution spread at least as rounding does
    pooled = np.maximum(pooled, resolution / np.sqrt(12))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diff(sorted_runs, axis=1) / pooled


def gap_statistic(samples, resolution: float = 0.0) -> np.ndarray:
    """Per row of samples (n >= 3 runs each): the widest gap between sorted runs over the pooled
    sd of the two sides it splits, the largest over the n - 1 places to split."""
    sorted_runs = np.sort(np.atleast_2d(np.asarray(samples, dtype=float)), axis=1)
    return np.nanmax(_gap_ratios(sorted_runs, resolution), axis=1)


@functools.cache
def gap_critical(n: int) -> float:
    """The gap statistic that normal runs pass FLAG_RATE of the time, simulated (seeded by n)."""
    # 50,000 samples (the rate's Monte Carlo sd 0.001) up to 100 runs, then 5 million numbers
    reps = max(5_000, min(50_000, 5 * 10**6 // n))
    rng = np.random.default_rng(n)
    null = np.concatenate([gap_statistic(rng.normal(size=(reps // 10, n))) for _ in range(10)])
    return float(np.quantile(null, 1 - FLAG_RATE))


def outliers(runs, resolution: float = 0.0) -> np.ndarray:
    """Positions of the runs on the smaller side of the widest gap (the lower side at a tie)
    where the gap statistic passes its critical value; none below 3 runs. Chosen by simulation
    over the modified z-score (its fixed 3.5 flags 12-29% of normal samples at 3-10 runs) and
    Dixon's ratio (two low runs mask each other): the most detections at a 4% false-flag rate
    in a mixture with 20% of runs 1 point low (tests/test_claims.py prints the rates)."""
    x = np.asarray(runs, dtype=float)
    n = len(x)
    if n < 3 or no_spread(x, resolution):
        return np.array([], dtype=int)
    order = np.argsort(x, kind="stable")
    ratios = _gap_ratios(x[order][None, :], resolution)[0]
    if not np.nanmax(ratios) > gap_critical(n):
        return np.array([], dtype=int)
    split = int(np.nanargmax(ratios)) + 1
    return np.sort(order[:split] if split <= n - split else order[split:])


def within(kind: str, value: float, runs) -> int:
    """How many runs respect a bound (at_most: at or below it; at_least: at or above)."""
    runs = np.asarray(runs, dtype=float)
    return int((runs <= value).sum() if kind == "at_most" else (runs >= value).sum())


def holds(kind: str, value: float, runs, resolution: float = 0.0):
    """point: inside the interval `judged_interval` gives for one run; mean: inside the CI of
    the mean; a bound: every run keeps to its side (1 run is enough to say so of 1). None where
    the runs cannot say: one run of a point or mean claim. Runs that agree to within the
    metric's resolution (accuracy: one test sample) have no interval: the claim is inside when
    it lies within that resolution of them."""
    runs = np.asarray(runs, dtype=float)
    if kind in ("at_most", "at_least"):
        return len(runs) > 0 and within(kind, value, runs) == len(runs)
    if len(runs) < 2:
        return None
    if no_spread(runs, resolution):
        return bool(abs(value - runs.mean()) < max(resolution, 1e-12))
    low, high = judged_interval(runs)[:2] if kind == "point" else interval(runs)[2:]
    return bool(low <= value <= high)


def _note(kind: str, runs, resolution: float) -> str:
    if kind not in ("point", "mean"):
        return ""
    if len(runs) < 2:
        return f"n={len(runs)}: no interval to judge by"
    if no_spread(np.asarray(runs, dtype=float), resolution):
        return (
            f"no spread: every run gives {np.mean(runs):.4g}; inside when within the metric's "
            "resolution"
        )
    return ""


def _outlier_note(runs: np.ndarray, flagged: np.ndarray, seeds, judged_by: str) -> str:
    """'2 of 10 runs lie far below the rest (seeds 3, 7): ...', and what that does to the
    interval the claim is judged by."""
    side = "below" if runs[flagged].mean() < np.delete(runs, flagged).mean() else "above"
    many = len(flagged) > 1
    named = ", ".join(str(seeds[i]) for i in flagged) if seeds is not None else ""
    named = f" (seed{'s' * many} {named})" if named else ""
    shape = {
        "order statistics": "the order statistics assume no shape",
        "ci": "the CI of the mean assumes one normal spread",
    }.get(judged_by, "the interval assumes one normal spread")
    return (
        f"{len(flagged)} of {len(runs)} runs {'lie' if many else 'lies'} far {side} the rest"
        f"{named}: a bimodal outcome or an outlier; {shape}"
    )


def clipped(low: float, high: float, metric: Metric) -> tuple[float, float, bool]:
    """An interval of a fraction (accuracy) cut to [0, 1], and whether that moved it. Chosen
    over a logit-scale interval by simulation: coverage is the unclipped interval's (0.94-0.96
    near 100%), where the logit interval's falls to 0.78 once runs reach 100% exactly."""
    if not metric.fraction or np.isnan(low):
        return low, high, False
    return max(low, 0.0), min(high, 1.0), low < 0 or high > 1


def measured(claim: dict) -> Metric:
    """The metric a claim (as the manifest records it) is about: test accuracy unless it says."""
    where = f"claim {claim.get('source') or claim.get('where')}"
    return lookup(claim.get("metric", TEST_ACC.column), where)


def select(df: pd.DataFrame, claim: dict, factors: list[str]) -> pd.Series:
    """The metric of the ok runs a claim's `where` selects: final, or at the claim's epoch."""
    rows = final(df) if claim.get("epoch") is None else df[df["epoch"] == claim["epoch"]]
    # old rows lack the keys added since: they ran at the defaults
    configs = rows["config"].map(lambda config: {**JSON_DEFAULTS, **json.loads(config)})
    mask = pd.Series(True, index=rows.index)
    for key, wanted in claim["where"].items():
        column = rows[key] if key in factors else configs.map(lambda cfg, key=key: cfg.get(key))
        mask &= column.map(lambda v, wanted=hashable(wanted): hashable(v) == wanted).astype(bool)
    return rows[mask & (rows["status"] == "ok")][measured(claim).column]


def claims(
    df: pd.DataFrame, claim_list: list[dict], factors: list[str], resolution: float = 0.0
) -> pd.DataFrame:
    """Each claim beside the runs its `where` selects: their mean, CI of the mean, the interval
    one run is judged by, how many respect a bound, the verdict its kind calls for, and how many
    runs lie far from the rest (a point or mean claim's, 3 runs or more)."""
    out = pd.DataFrame([_row(df, claim, factors, resolution) for claim in claim_list])
    out = out.reindex(columns=COLUMNS)
    out["runs_within"] = out["runs_within"].astype("Int64")  # a count, blank where no bound
    out["outliers"] = out["outliers"].astype("Int64")  # blank where not looked for
    return out


def _row(df: pd.DataFrame, claim: dict, factors: list[str], resolution: float) -> dict:
    runs = select(df, claim, factors)
    values = runs.to_numpy(dtype=float)
    kind, value = claim.get("kind", "point"), claim["value"]
    spans, judged_by, cut = _intervals(values, kind, measured(claim), resolution)
    looked = kind in ("point", "mean") and len(values) >= 3 and not no_spread(values, resolution)
    flagged = outliers(values, resolution) if looked else np.array([], dtype=int)
    seeds = df.loc[runs.index, "seed"].tolist() if "seed" in df else None
    notes = [_note(kind, values, resolution)]
    if len(flagged):
        notes.append(_outlier_note(values, flagged, seeds, judged_by))
    if cut:
        notes.append("interval clipped to [0, 100]%")
    where = ", ".join(f"{k}={hashable(v)}" for k, v in claim["where"].items())
    row = dict(where=where, claimed=value, **spans, n_seeds=len(values), judged_by=judged_by)
    bound = kind in ("at_most", "at_least")
    row.update(runs_within=within(kind, value, values) if bound else np.nan)
    row.update(inside=holds(kind, value, values, resolution), kind=kind, epoch=claim.get("epoch"))
    # the label the terminal and the claims chart show: a row's .where is pandas' method
    row.update(source=claim.get("source") or where, metric=measured(claim).column)
    row.update(note="; ".join(note for note in notes if note))
    row.update(outliers=len(flagged) if looked else np.nan)
    return row


def _intervals(values: np.ndarray, kind: str, metric: Metric, resolution: float) -> tuple:
    """(mean, ci_low, ci_high, pi_low, pi_high as columns; the interval the claim's kind is
    judged by; whether clipping a fraction's to [0, 1] moved one). No interval without spread,
    as for effects."""
    mean, _, ci_low, ci_high = interval(values)
    pi_low, pi_high, judged_by = judged_interval(values)
    if no_spread(values, resolution):
        ci_low = ci_high = pi_low = pi_high = np.nan
        judged_by = "prediction"
    judged_by = judged_by if kind == "point" else JUDGED_BY[kind]
    ci_low, ci_high, ci_cut = clipped(ci_low, ci_high, metric)
    pi_low, pi_high, pi_cut = clipped(pi_low, pi_high, metric)
    spans = dict(mean=mean, ci_low=ci_low, ci_high=ci_high, pi_low=pi_low, pi_high=pi_high)
    return spans, judged_by, ci_cut or pi_cut
