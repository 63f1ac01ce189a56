"""Published numbers against the runs: one run by a prediction interval, a mean by its CI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .inference import LEVEL, interval, no_spread
from .stats import final, hashable
from .study import JSON_DEFAULTS

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
]
# kind -> the interval it is judged by: a tutorial's number is one run, so a faithful rerun
# lands inside the CI of a mean only 68% of the time with 5 seeds, 35% with 20 (simulated)
JUDGED_BY = {"point": "prediction", "mean": "ci", "at_most": "runs", "at_least": "runs"}


def prediction(x) -> tuple[float, float]:
    """95% prediction interval for one new run: mean +- t(0.975, n-1) * s * sqrt(1 + 1/n)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return np.nan, np.nan
    t_quantile = scipy_stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1)
    half = t_quantile * x.std(ddof=1) * np.sqrt(1 + 1 / len(x))
    return float(x.mean() - half), float(x.mean() + half)


def within(kind: str, value: float, runs) -> int:
    """How many runs respect a bound (at_most: at or below it; at_least: at or above)."""
    runs = np.asarray(runs, dtype=float)
    return int((runs <= value).sum() if kind == "at_most" else (runs >= value).sum())


def holds(kind: str, value: float, runs, resolution: float = 0.0):
    """point: inside the prediction interval of one run; mean: inside the CI of the mean; a
    bound: every run keeps to its side (1 run is enough to say so of 1). None where the runs
    cannot say: one run of a point or mean claim. Runs that agree to within the metric's
    resolution (accuracy: one test sample) have no interval: the claim is inside when it
    lies within that resolution of them."""
    runs = np.asarray(runs, dtype=float)
    if kind in ("at_most", "at_least"):
        return len(runs) > 0 and within(kind, value, runs) == len(runs)
    if len(runs) < 2:
        return None
    if no_spread(runs, resolution):
        return bool(abs(value - runs.mean()) < max(resolution, 1e-12))
    low, high = prediction(runs) if kind == "point" else interval(runs)[2:]
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


def select(df: pd.DataFrame, claim: dict, factors: list[str]) -> pd.Series:
    """The metric of the ok runs a claim's `where` selects: final, or at the claim's epoch."""
    rows = final(df) if claim.get("epoch") is None else df[df["epoch"] == claim["epoch"]]
    # old rows lack the keys added since: they ran at the defaults
    configs = rows["config"].map(lambda config: {**JSON_DEFAULTS, **json.loads(config)})
    mask = pd.Series(True, index=rows.index)
    for key, wanted in claim["where"].items():
        column = rows[key] if key in factors else configs.map(lambda cfg, key=key: cfg.get(key))
        mask &= column.map(lambda v, wanted=hashable(wanted): hashable(v) == wanted).astype(bool)
    return rows[mask & (rows["status"] == "ok")][claim.get("metric", "test_acc")]


def claims(
    df: pd.DataFrame, claim_list: list[dict], factors: list[str], resolution: float = 0.0
) -> pd.DataFrame:
    """Each claim beside the runs its `where` selects: their mean, CI of the mean, prediction
    interval of one run, how many respect a bound, and the verdict its kind calls for."""
    rows = []
    for claim in claim_list:
        runs = select(df, claim, factors)
        mean, _, ci_low, ci_high = interval(runs)
        predicted = prediction(runs)
        if no_spread(runs.to_numpy(dtype=float), resolution):  # no interval, as for effects
            ci_low = ci_high = np.nan
            predicted = (np.nan, np.nan)
        kind, value = claim.get("kind", "point"), claim["value"]
        bound = kind in ("at_most", "at_least")
        where = ", ".join(f"{k}={hashable(v)}" for k, v in claim["where"].items())
        rows.append(
            dict(
                where=where,
                claimed=value,
                mean=mean,
                ci_low=ci_low,
                ci_high=ci_high,
                pi_low=predicted[0],
                pi_high=predicted[1],
                n_seeds=len(runs),
                runs_within=within(kind, value, runs) if bound else np.nan,
                judged_by=JUDGED_BY[kind],
                inside=holds(kind, value, runs, resolution),
                # the label the terminal and the claims chart show: a row's .where is pandas' method
                source=claim.get("source") or where,
                metric=claim.get("metric", "test_acc"),
                epoch=claim.get("epoch"),
                kind=kind,
                note=_note(kind, runs, resolution),
            )
        )
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["runs_within"] = out["runs_within"].astype("Int64")  # a count, blank where no bound
    return out
