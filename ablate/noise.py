"""Where the seed-to-seed noise comes from: each stream's variance, interval and share (no torch).

`ablate noise STUDY` trains the study's base point with N seeds varying one random stream at a
time (init, order, dropout, flip), the others held at seed 0, plus N varying them all. The
variance of the final metric over a stream's seeds is what that stream alone contributes; its
95% interval is chi-square on n - 1 degrees of freedom (exact under normal noise). Where the
streams act independently and additively their variances sum to the all-streams variance; a
sum well away from it says they interact.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import charts
from .study import STREAMS

COLUMNS = ["stream", "variance", "share", "ci_low", "ci_high", "n", "sd"]
ALL = "all"  # the cells that vary every stream: ordinary cells of those seeds


def decompose(final: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Per stream (init, order, dropout, flip, then all): the variance of the final `metric` over
    its seeds that did not diverge, its 95% chi-square interval, its share of all streams'."""
    ok = final[final["status"] == "ok"]
    rows = []
    for stream, values in ok.groupby("stream", sort=False)[metric]:
        n = len(values)
        var = float(values.var(ddof=1)) if n >= 2 else np.nan
        low, high = interval(var, n)
        rows.append(dict(stream=stream, variance=var, ci_low=low, ci_high=high, n=n))
    rank = {stream: i for i, stream in enumerate([*STREAMS, ALL])}  # the streams' own order
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table = table.sort_values("stream", key=lambda s: s.map(rank), kind="stable", ignore_index=True)
    everything = table.loc[table.stream == ALL, "variance"]
    total = float(everything.iloc[0]) if len(everything) else np.nan
    table["share"] = table["variance"] / total if total > 0 else np.nan
    table["sd"] = np.sqrt(table["variance"])
    return table


def interval(variance: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The variance's interval from n normal draws: (n - 1) s^2 / chi2 quantiles."""
    if not n >= 2 or not np.isfinite(variance):
        return np.nan, np.nan
    tail = (1 - level) / 2
    df = n - 1
    chi2 = scipy_stats.chi2
    return df * variance / chi2.ppf(1 - tail, df), df * variance / chi2.ppf(tail, df)


def adds_up(table: pd.DataFrame) -> str:
    """Whether the single streams' variances sum to the all-streams variance, in words."""
    single = table[table.stream != ALL]
    everything = table[table.stream == ALL]
    if not len(single) or not len(everything) or everything.variance.isna().all():
        return "no all-streams cells to compare the streams with"
    total, row = float(single.variance.sum()), everything.iloc[0]
    said = f"the single streams' variances sum to {total / row.variance:.0%} of all streams' "
    if row.ci_low <= total <= row.ci_high:
        return said + "(inside its 95% interval: consistent with streams that simply add)"
    said += "(outside its 95% interval: the shares do not add up"
    if (
        len(single) > 1
        and (single.ci_low <= row.variance).all()
        and (row.variance <= single.ci_high).all()
    ):
        return said + (
            "; each stream alone gives about the whole spread, as if training amplified any one "
            "perturbation into all of the seed-to-seed noise, so no stream dominates)"
        )
    return said + "; the streams interact, each changing what the others' draws do)"


def chart(table: pd.DataFrame, metric: str, out: Path) -> None:
    """Each stream's variance with its 95% interval, its share of all streams' as a label."""
    fig, ax = charts.figure(figsize=(8, charts._height(len(table))))
    rows = table.iloc[::-1].reset_index(drop=True)
    for i, row in rows.iterrows():
        if pd.notna(row.ci_low):
            ax.plot([row.ci_low, row.ci_high], [i, i], color="black")
        ax.plot(row.variance, i, "o", color="black", markerfacecolor="white")
        if pd.notna(row.share) and row.stream != ALL:
            ax.annotate(
                f"{row.share:.0%}", (row.variance, i), xytext=(0, 6), textcoords="offset points"
            )
    ax.set_yticks(range(len(rows)), [f"{r.stream}  (n={r.n})" for r in rows.itertuples()])
    ax.set(
        xlabel=f"variance of final {metric} over seeds: 95% chi-square interval; label: share "
        "of the all-streams variance"
    )
    charts._save(fig, out, "noise")


def page(table: pd.DataFrame, design, metric: str, results: Path, folder: Path) -> str:
    """The noise report's HTML page, the chart inlined (no timestamp)."""
    from .page import CSS, _img, _runs, _table

    name = escape(design.study or "noise")
    return "\n".join(
        [
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{name}: ablate noise"
            f"</title><style>{CSS}</style><h1>{name}</h1>",
            f"<p class=meta>{escape(str(design.dataset))}, model {escape(str(design.model))}: "
            f"seeds varied one random stream at a time at the base point, the others held at "
            f"seed 0; metric {escape(metric)}.<br>{_runs(design.runs)}.</p>",
            "<h2>Where the seed-to-seed noise comes from</h2>",
            f"<figure>{_img(folder, 'noise')}<figcaption>{escape(adds_up(table))}."
            "</figcaption></figure>",
            _table(table),
            f"<p class=meta>Generated by ablate report from {escape(str(results))}.</p></html>",
        ]
    )
