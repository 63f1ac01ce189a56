"""Where the seed-to-seed noise comes from: each stream's variance, interval and share (no torch).

`ablate noise STUDY` trains the study's base point with N seeds varying one random stream at a
time (init, order, dropout, flip), the others held at seed 0's draw, plus N varying them all. The
variance of the final metric over a stream's seeds is what that stream contributes at seed 0's
draw of the others (its conditional contribution: the stream's average over the others' draws
only where the streams do not interact). Its 95% interval is a chi-square whose degrees of
freedom shrink with the seeds' kurtosis (Bonett 2006's estimate, plus 1 for the tails a few seeds
cannot show). A share is a stream's variance over the all-streams one, its interval on the log
scale with the covariance of the two that their shared draws (the same seed's stream and "all"
cells) bring, estimated from the seed-paired cells. The row "sum" adds the single streams'
variances: its share is 100% where the streams add, N x 100% where each alone gives it all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter
from scipy import special
from scipy import stats as scipy_stats

from . import charts
from .metrics import TEST_ACC, Metric
from .study import STREAMS

COLUMNS = ["stream", "variance", "share", "ci_low", "ci_high", "n", "sd", "share_low", "share_high"]
ALL = "all"  # the cells that vary every stream: ordinary cells of those seeds
SUM = "sum"  # the single streams' variances added up (a row of noise.csv after "all")
TAILS = 1.0  # excess kurtosis added: 5-16 seeds hide t5's tails (0.95 coverage, not 0.85-0.90)
Z = scipy_stats.norm.ppf(0.975)
HELD = (
    "each stream's variance is measured with the other streams held at seed 0's draw: it is that "
    "draw's conditional contribution, not the stream's average over the others' draws (the two "
    "agree only where the streams do not interact)"
)


def decompose(final: pd.DataFrame, metric: Metric = TEST_ACC) -> pd.DataFrame:
    """Per stream (init, order, dropout, flip, all, then sum): the variance of the final `metric`
    over its seeds that did not diverge, its 95% interval, its share of all streams' with one."""
    ok = final[final["status"] == "ok"]
    values, seeds = ok[metric.column].to_numpy(float), ok["seed"].to_numpy()
    cells = {s: (values[i], seeds[i]) for s, i in ok.groupby("stream").indices.items()}
    order = [s for s in [*STREAMS, ALL] if s in cells] + sorted(
        s for s in cells if s not in (*STREAMS, ALL)
    )
    rows = {s: _row(s, cells[s][0]) for s in order}
    whole = rows.get(ALL)
    single = [s for s in order if s != ALL]
    if whole is not None and whole["variance"] > 0:
        terms = {}
        for s in single:
            cross = co_spread(*cells[s], *cells[ALL])
            spread = rows[s]["spread"] + whole["spread"] - 2 * cross
            rows[s].update(_share(rows[s]["variance"], whole, spread))
            terms[s] = (rows[s]["variance"], rows[s]["spread"], cross)
        whole.update(share=1.0)
        if single:
            rows[SUM] = _sum(terms, whole, min(rows[s]["n"] for s in single))
    table = pd.DataFrame.from_records(list(rows.values()), columns=COLUMNS)
    table["sd"] = np.sqrt(table["variance"])
    table["n"] = table["n"].astype(int)
    return table


def _row(stream: str, values: np.ndarray) -> dict:
    n = len(values)
    variance = float(np.var(values, ddof=1)) if n >= 2 else np.nan
    spread = log_spread(values)
    low, high = interval(variance, 2 / spread)
    return dict(stream=stream, variance=variance, ci_low=low, ci_high=high, n=n, spread=spread)


def _share(variance: float, whole: dict, spread: float) -> dict:
    """A ratio of variances and its 95% interval: log ratio +- z se."""
    share = variance / whole["variance"]
    if not share > 0 or not np.isfinite(spread):
        return dict(share=share, share_low=np.nan, share_high=np.nan)
    half = Z * np.sqrt(max(spread, 0.0))
    return dict(share=share, share_low=share * np.exp(-half), share_high=share * np.exp(half))


def _sum(terms: dict, whole: dict, n: int) -> dict:
    """The single streams' variances added up (streams' cells share no draw but seed 0's, held
    alike across their seeds: independent), with their sum's share of all streams'."""
    variance = sum(v for v, _, _ in terms.values())
    weights = {s: v / variance if variance > 0 else np.nan for s, (v, _, _) in terms.items()}
    own = sum(weights[s] ** 2 * spread for s, (_, spread, _) in terms.items())
    cross = sum(weights[s] * c for s, (_, _, c) in terms.items())
    low, high = interval(variance, 2 / own if own > 0 else np.nan)
    row = dict(stream=SUM, variance=variance, ci_low=low, ci_high=high, n=n)
    return row | _share(variance, whole, own + whole["spread"] - 2 * cross)


def kurtosis(values: np.ndarray) -> float:
    """Bonett's (2006) kurtosis: fourth moment about the mean trimmed by 1 / (2 sqrt(n - 4)),
    over the squared variance (3 under normal noise); NaN below 5 values or with no spread."""
    n = len(values)
    squares = float(np.sum((values - np.mean(values)) ** 2)) if n else 0.0
    if n < 5 or not squares > 0:
        return np.nan
    cut = int(n / (2 * np.sqrt(n - 4)))  # scipy.stats.trim_mean's count, a tenth of the time
    centre = np.mean(np.sort(values)[cut : n - cut])
    return float(n * np.sum((values - centre) ** 4) / squares**2)


def log_spread(values: np.ndarray) -> float:
    """The variance of log s^2 over n values: 2 / (n - 1) + excess kurtosis / n, the excess
    estimated (none below 5 values) and never under 0, plus TAILS."""
    n = len(values)
    if n < 2:
        return np.nan
    excess = kurtosis(values) - 3
    return 2 / (n - 1) + (max(excess, 0.0) if np.isfinite(excess) else 0.0) / n + TAILS / n


def co_spread(x: np.ndarray, x_seeds, y: np.ndarray, y_seeds) -> float:
    """The covariance of log s_x^2 and log s_y^2 from the seeds both hold: the mean product of
    their squared deviations, each over its mean, less 1 (2 rho^2 / n under normal noise)."""
    dx, dy = _relative_squares(x), _relative_squares(y)
    _, in_x, in_y = np.intersect1d(x_seeds, y_seeds, return_indices=True)
    if not len(in_x) or not np.isfinite(dx).all() or not np.isfinite(dy).all():
        return 0.0
    return float(np.sum((dx[in_x] - 1) * (dy[in_y] - 1)) / (len(x) * len(y)))


def _relative_squares(values: np.ndarray) -> np.ndarray:
    squares = (values - np.mean(values)) ** 2
    mean = np.mean(squares) if len(values) else 0.0
    return squares / mean if mean > 0 else np.full(len(values), np.nan)


def interval(variance: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """A variance's interval as a scaled chi-square on df degrees of freedom (n - 1: the normal
    theory one; 2 / log_spread: kurtosis-adjusted)."""
    if not df > 0 or not np.isfinite(variance) or not np.isfinite(df):
        return np.nan, np.nan
    tail = (1 - level) / 2
    upper, lower = special.chdtri(df, tail), special.chdtri(df, 1 - tail)  # chi2.ppf's quantiles
    return df * variance / upper, df * variance / lower


def adds_up(table: pd.DataFrame) -> str:
    """Whether the single streams' variances sum to the all-streams variance, in words, with
    what the held draw means."""
    rows = table.to_dict("records")
    single = [r for r in rows if r["stream"] not in (ALL, SUM)]
    whole = [r for r in rows if r["stream"] == ALL]
    total = [r for r in rows if r["stream"] == SUM and pd.notna(r.get("share_low"))]
    if not single or not whole:
        return "no all-streams cells to compare the streams with"
    if not whole[0].get("variance", np.nan) > 0:
        return "the all-streams cells did not vary (or too few did not diverge): no shares"
    if not total:
        return "a stream with fewer than 2 seeds that did not diverge, or none that varied: no sum"
    low, high = total[0]["share_low"], total[0]["share_high"]
    said = (
        f"the single streams' variances sum to {total[0]['share']:.0%} [{low:.0%}, {high:.0%}] "
        "of all streams' (95% interval)"
    )
    return f"{said}: {_verdict(low, high, single)}; {HELD}"


def _verdict(low: float, high: float, single: list[dict]) -> str:
    k = len(single)
    alone = f"{k * 100}% (each stream alone gives all)"
    if low <= 1 <= high:
        if k > 1 and low <= k <= high:
            return f"100% (streams that add) and {alone} are both inside: these seeds cannot tell"
        return "consistent with streams that simply add" + (
            f"; {alone} is outside" if k > 1 else ""
        )
    if high < 1:
        return (
            "below 100%: the streams interact, varying them together spreads the metric more "
            "than their parts"
        )
    each_whole = all(r["share_low"] <= 1 <= r["share_high"] for r in single)
    if k > 1 and low <= k <= high and each_whole:
        return (
            "the shares do not add up; each stream alone gives about the whole spread, as if "
            "training amplified any one perturbation into all of the seed-to-seed noise, so no "
            "stream dominates"
        )
    return "the shares do not add up: the streams interact, each changing what others' draws do"


def chart(table: pd.DataFrame, metric: Metric, out: Path) -> None:
    """Each stream's variance with its 95% interval, its share of all streams' (with its interval)
    as a label."""
    fig, ax = charts.figure(figsize=(8, charts.height(len(table))))
    rows = table.iloc[::-1].reset_index(drop=True)
    for i, row in rows.iterrows():
        if pd.notna(row.ci_low):
            ax.plot([row.ci_low, row.ci_high], [i, i], color="black")
        ax.plot(row.variance, i, "o", color="black", markerfacecolor="white")
        if pd.notna(row.share) and row.stream != ALL:
            ax.annotate(
                _share_label(row), (row.variance, i), xytext=(0, 6), textcoords="offset points"
            )
    ax.set_yticks(range(len(rows)), [f"{r.stream}  (n={r.n})" for r in rows.itertuples()])
    if (table[["variance", "ci_low"]] > 0).all(axis=None):  # a seed-proof metric: no log axis
        ax.set_xscale("log")  # the intervals are multiplicative: 8 seeds span about 10x
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))  # text: no TeX
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(
        xlabel=f"variance of final {metric.column} over seeds, 95% interval (chi-square, kurtosis-"
        "adjusted)\nlabel: share of the all-streams variance [95% interval]; sum: the single "
        "streams' variances added"
    )
    charts.save(fig, out, "noise")


def _share_label(row) -> str:
    if pd.isna(row.share_low):
        return f"{row.share:.0%}"
    return f"{row.share:.0%} [{row.share_low:.0%}, {row.share_high:.0%}]"
