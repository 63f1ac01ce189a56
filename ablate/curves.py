"""Learning curves tested, not eyeballed: area under the curve, epochs to a threshold (no torch).

The report's effects read one value per cell (its final epoch). Two recipes can end level and
differ in how they got there, so here each cell's curve is reduced to two more values and the
effects machinery (paired by seed, matched on the other factors) runs on each:
- **area**: the mean of the metric over every epoch the cell ran, the area under its test
  curve divided by the epochs (a cell that diverged has no area);
- **epochs to T**: the first epoch at which the cell reaches T (at or above it for a metric
  where higher is better, at or below otherwise). T is the worst design point's mean final
  value, so that every point reaches it on average; a cell that never does counts as
  epochs + 1 (censored: the difference is then a bound, and the table says how many).
The rows are one Holm family of their own (the effects' family is not widened by them), so a
study where nothing acts shows a significant curve row in at most 5% of studies
(tests/test_calibration.py). A design point is **still climbing** where the slope of its
cells' last CLIMB epochs is above 0 by a one-sided t test over seeds, Holm over the points:
its final value is not yet a plateau.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .inference import ALPHA, holm
from .metrics import Metric
from .stats import effects, level_mask, points

CLIMB = 5  # epochs whose slope says whether a curve still climbs
COLUMNS = [
    "measure", "factor", "level", "baseline", "n_pairs", "diff", "ci_low", "ci_high", "p_value",
    "p_holm", "significant", "censored",
]  # fmt: skip
# the two values a cell's curve is reduced to, as metrics of per_cell's columns
EPOCHS_TO = Metric("epochs_to", "epochs to the threshold", higher=False)


def area(metric: Metric) -> Metric:
    """A cell's mean of `metric` over its epochs: per_cell's `area` column."""
    return replace(metric, column="area", label=f"mean {metric.label} over the epochs")


def per_cell(df: pd.DataFrame, metric: Metric, threshold: float) -> pd.DataFrame:
    """One row per ok cell with every epoch it ran: its seed, factor levels (the final row's
    columns), `area` and `epochs_to` (epochs + 1 where it never reaches `threshold`)."""
    ok = df[df["status"] == "ok"].sort_values("epoch", kind="stable")
    last = ok.groupby("cell", sort=False).tail(1).set_index("cell")
    by_cell = ok.groupby("cell", sort=False)
    values = ok[metric.column]
    area = by_cell[metric.column].mean()
    reached = ok[values >= threshold] if metric.higher else ok[values <= threshold]
    first = reached.groupby("cell")["epoch"].min()
    epochs = by_cell["epoch"].max()
    out = last.assign(area=area, epochs_to=first.reindex(last.index).fillna(epochs + 1))
    return out.reset_index()


def threshold(final: pd.DataFrame, factors: list[str], metric: Metric) -> float:
    """The worst design point's mean final value over its ok cells."""
    ok = final[final["status"] == "ok"]
    keys = points(ok, factors)
    means = ok[metric.column].groupby(pd.Series(keys, index=ok.index).map(repr)).mean()
    return float(means.min() if metric.higher else means.max())


def table(
    df: pd.DataFrame,
    final: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    metric: Metric,
    matched: bool = True,
) -> tuple[pd.DataFrame, float]:
    """Per effect, the difference in area and in epochs to the threshold, paired by seed, with
    95% t intervals and one Holm family over both measures; and the threshold."""
    level_t = threshold(final, factors, metric)
    cells = per_cell(df, metric, level_t)
    horizon = float(cells["epoch"].max()) if len(cells) else np.nan
    rows = []
    for measure, measured in (("area", area(metric)), ("epochs to threshold", EPOCHS_TO)):
        found = effects(cells, factors, baselines, levels, measured, matched)
        for row in found.to_dict("records"):
            censored = _censored(cells, row, measured is EPOCHS_TO, horizon)
            rows.append({**{k: row[k] for k in COLUMNS if k in row}, "measure": measure,
                         "censored": censored})  # fmt: skip
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    out["significant"] = out["p_holm"] < ALPHA
    return out, level_t


def _censored(cells: pd.DataFrame, row: dict, epochs: bool, horizon: float) -> int:
    """Cells at the row's level or baseline that never reached the threshold."""
    if not epochs:
        return 0
    factor = row["factor"]
    mine = level_mask(cells, factor, row["level"]) | level_mask(cells, factor, row["baseline"])
    return int((cells.loc[mine, "epochs_to"] > horizon).sum())


def climbing(df: pd.DataFrame, factors: list[str], metric: Metric) -> pd.DataFrame:
    """Per design point: the mean over seeds of each ok cell's least-squares slope over its
    last CLIMB epochs (metric per epoch, signed so that above 0 is improving), a one-sided t
    test that it is above 0, Holm over the points, and `still_climbing`."""
    ok = df[df["status"] == "ok"].sort_values("epoch", kind="stable")
    tails = ok.groupby("cell", sort=False).tail(CLIMB)
    slopes, keys = {}, {}
    for cell, rows in tails.groupby("cell", sort=False):
        if len(rows) == CLIMB:
            values = rows[metric.column].astype(float)
            slopes[cell] = metric.sign * np.polyfit(rows["epoch"], values, 1)[0]
            keys[cell] = points(rows.tail(1), factors)[0]
    out = []
    for point in dict.fromkeys(keys.values()):
        values = np.array([slopes[c] for c, k in keys.items() if k == point])
        p = np.nan
        if len(values) >= 2 and np.std(values) > 0:
            p = float(scipy_stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)
        row = dict(zip(factors, point, strict=True))
        out.append({**row, "n": len(values), "slope": values.mean(), "p_value": p})
    frame = pd.DataFrame(out, columns=[*factors, "n", "slope", "p_value"])
    frame["p_holm"] = holm(frame["p_value"]) if len(frame) else []
    frame["still_climbing"] = frame["p_holm"] < ALPHA
    return frame
