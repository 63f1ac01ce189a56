"""The report's charts: seaborn figures outside pyplot, saved as PNG, SVG and PDF (no torch)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from . import stats
from .claims import POINT_INTERVALS, measured
from .metrics import Metric
from .tables import unit

NAMES = ("final", "curves", "effects", "interactions", "claims")
CLAIMED = ("claimed", "mean", "ci_low", "ci_high", "pi_low", "pi_high")  # in the metric's units


def _say(ax, text: str, x, y) -> None:
    """Words beside a point that has no interval, so a reader never sees a zero-width bar."""
    ax.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8)


@contextmanager
def style() -> Iterator[None]:
    """Seaborn's whitegrid theme while the charts draw, the caller's rcParams after: a notebook's
    own plots keep their style."""
    with matplotlib.rc_context():
        sns.set_theme(style="whitegrid", context="notebook")
        matplotlib.rcParams["text.parse_math"] = False  # a claim's "US$5 vs $10" is text, not TeX
        yield


def figure(rows: int = 1, figsize=(8, 4), **options):
    """A figure outside pyplot: drawn and saved without a backend, never shown by a notebook's
    inline backend, no pyplot state to close."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, 1, **options)


def label(row, factors) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) or "base"


def save(fig, out: Path, name: str) -> None:
    """PNG for the page, SVG and PDF for a paper; same input, same files: no dates, fixed ids."""
    fig.savefig(out / f"{name}.png", dpi=150, bbox_inches="tight")
    with matplotlib.rc_context({"svg.hashsalt": "ablate"}):
        fig.savefig(out / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})


def height(n: int) -> float:
    """A chart's height in inches for n rows of labels."""
    return max(2.5, 0.45 * n + 1.2)


def _shown(df: pd.DataFrame, columns, metric: Metric) -> pd.DataFrame:
    """`columns` of df as the tables print them: a fraction's in points (97.30, not 0.9730)."""
    return df.assign(**{column: metric.shown(df[column]) for column in columns})


def chart_final(finals, summary, factors, metric: Metric, out):
    """Every seed as a dot; the mean and its 95% CI as a bar, per design point."""
    summary = _shown(summary, ("mean", "ci_low", "ci_high"), metric).assign(
        label=[f"{label(r, factors)}  (n={r.n_seeds})" for _, r in summary.iterrows()]
    )
    lab = dict(zip(stats.points(summary, factors), summary.label, strict=True))
    ok = _shown(finals[finals.status == "ok"], (metric.column,), metric)
    ok = ok.assign(label=[lab[point] for point in stats.points(ok, factors)])
    fig, ax = figure(figsize=(8, height(len(summary))))
    state = (
        np.random.get_state()
    )  # seaborn jitters from numpy's global RNG: same results, same chart
    np.random.seed(0)
    try:
        sns.stripplot(
            data=ok,
            x=metric.column,
            y="label",
            order=summary.label,
            color="0.55",
            size=5,
            jitter=0.15,
            ax=ax,
        )
    finally:
        np.random.set_state(state)
    for i, r in summary.iterrows():
        if pd.notna(r.ci_low):
            ax.errorbar(
                r["mean"],
                i,
                xerr=[[r["mean"] - r.ci_low], [r.ci_high - r["mean"]]],
                fmt="o",
                color="black",
                capsize=4,
            )
        elif pd.notna(r["mean"]):  # one seed: a dot and words, never a zero-width bar
            ax.plot(r["mean"], i, "o", color="black")
            _say(ax, f"n={r.n_seeds}, no interval", r["mean"], i)
    ax.set(
        xlabel=f"final {metric.column}{unit(metric)} (dots: seeds; black: mean, 95% t CI)",
        ylabel="",
    )
    save(fig, out, "final")


def chart_curves(df, factors, metric: Metric, out):
    """Mean learning curve per design point with a 95% CI band."""
    cur = _shown(stats.curves(df, factors, metric), ("mean", "ci_low", "ci_high"), metric)
    lines = list(dict.fromkeys(cur["point"]))
    fig, ax = figure(figsize=(9, 4.5 + 0.22 * math.ceil(len(lines) / 2)))
    palette = sns.color_palette("tab10", n_colors=max(1, len(lines)))
    for color, key in zip(palette, lines, strict=False):
        g = cur[[p == key for p in cur["point"]]]
        name = ", ".join(f"{f}={v}" for f, v in zip(factors, key, strict=True)) or "base"
        ax.plot(
            g.epoch,
            g["mean"],
            color=color,
            label=f"{name} (n={g.n.min()})",
            marker="o",
            markersize=3,
        )
        ax.fill_between(g.epoch, g.ci_low, g.ci_high, color=color, alpha=0.15, linewidth=0)
    ax.set(xlabel="epoch", ylabel=f"{metric.column}{unit(metric)}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    save(fig, out, "curves")


def _differences(fig, ax, rows: pd.DataFrame, named, xlabel: str, out: Path, name: str) -> None:
    """Finish a chart of differences, one row of `rows` a line from the bottom up: the zero
    line, each row's label (`named(row)`) and the axis's; saved as `name`."""
    ax.axvline(0, color="0.6", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [named(r) for _, r in rows.iterrows()])
    ax.set(xlabel=xlabel)
    save(fig, out, name)


def _effect_name(r) -> str:
    alias = f"  [{r.alias[0]} {r.alias[1:]}]" if r.alias else ""
    return f"{r.factor}: {r.level} vs {r.baseline}{alias}  (n={r.n_pairs})"


def _interaction_name(r) -> str:
    return (
        f"{r.factor}={r.level} vs {r.baseline}\nat {r.by}={r.by_baseline} (square), "
        f"{r.by_level} (circle)  (n={r.n_pairs})"
    )


def _points(metric: Metric) -> str:
    """' (points)' after a difference of a fraction, as the effects table heads it."""
    return f" ({metric.unit.strip()})" if metric.unit else ""


def chart_effects(eff, metric: Metric, out, family):
    """Forest plot: each level minus its baseline, paired by seed; filled if it survives Holm. A
    bar is a row's own 95% CI (one excluding 0 on an open dot is not a finding: Holm decides)."""
    eff = _shown(eff.iloc[::-1].reset_index(drop=True), ("diff", "ci_low", "ci_high"), metric)
    fig, ax = figure(figsize=(8, height(len(eff))))
    for i, r in eff.iterrows():
        if pd.notna(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [i, i], color="black")
        elif r.no_spread:
            _say(ax, f"no spread: sign-flip p {r.p_value:.2g}", r["diff"], i)
        elif pd.notna(r["diff"]):
            _say(ax, f"n={r.n_pairs}, no interval", r["diff"], i)
        ax.plot(
            r["diff"], i, "o", color="black", markerfacecolor="black" if r.significant else "white"
        )
    xlabel = (
        f"difference in final {metric.column}{_points(metric)}: each row's own 95% CI; filled: "
        f"significant after Holm over {family} tests\n(effects and interactions)"
    )
    _differences(fig, ax, eff, _effect_name, xlabel, out, "effects")


def chart_interactions(inter, metric: Metric, out, family):
    """Each level's effect at the other factor's baseline (grey square) and at its level (black
    circle), 95% CIs; filled where the two differ after Holm (the interaction)."""
    ends = [f"{col}{end}" for col in ("at_baseline", "at_level") for end in ("", "_low", "_high")]
    inter = _shown(inter.iloc[::-1].reset_index(drop=True), ends, metric)
    fig, ax = figure(figsize=(8, height(len(inter)) + 0.3))
    for i, r in inter.iterrows():
        for dy, col, marker in ((0.15, "at_baseline", "s"), (-0.15, "at_level", "o")):
            color = "0.55" if col == "at_baseline" else "black"
            if pd.notna(r[f"{col}_low"]):
                ax.plot([r[f"{col}_low"], r[f"{col}_high"]], [i + dy, i + dy], color=color)
            ax.plot(
                r[col],
                i + dy,
                marker,
                color=color,
                markerfacecolor=color if r.significant else "white",
            )
    xlabel = (
        f"effect on final {metric.column}{_points(metric)} (95% CI; filled: the two differ, "
        f"Holm over {family} tests)"
    )
    _differences(fig, ax, inter, _interaction_name, xlabel, out, "interactions")


def chart_claims(cl, runs, out):
    """One small panel per claim, each on its own scale: the runs (dots), the interval the claim
    is judged by (prediction interval of one run, or CI of the mean), and the claimed value
    (green: inside / holds; red: outside / does not hold)."""
    fig, axes = figure(len(cl), figsize=(8, 0.95 * len(cl) + 0.8), squeeze=False)
    measures = [measured(claim) for claim in cl.to_dict("records")]
    for ax, (_, r), x, metric in zip(axes[:, 0], cl.iterrows(), runs, measures, strict=True):
        r = pd.Series({**r, **{c: metric.shown(r[c]) for c in CLAIMED}})  # a fraction's in points
        x = metric.shown(np.asarray(x, dtype=float))
        ax.plot(x, np.zeros(len(x)), "o", color="0.6", markersize=4, alpha=0.8)
        lo, hi = (r.pi_low, r.pi_high) if r.kind == "point" else (r.ci_low, r.ci_high)
        if r.kind in ("point", "mean") and pd.notna(lo):
            ax.plot([lo, hi], [0, 0], color="black", linewidth=2)
        ax.plot(r["mean"], 0, "|", color="black", markersize=14)
        marker = {"at_most": "<", "at_least": ">"}.get(
            r.kind, "D"
        )  # a bound points to the side it allows
        color = (
            "0.5" if r.inside is None else "tab:green" if r.inside else "tab:red"
        )  # None: cannot say
        ax.plot(r.claimed, 0, marker, color=color, markersize=9)
        how = {
            "point": f"one run: 95% {POINT_INTERVALS.get(r.judged_by, 'prediction interval')}",
            "mean": "a mean: 95% CI",
            "at_most": f"at most: {r.runs_within} of {r.n_seeds} runs",
            "at_least": f"at least: {r.runs_within} of {r.n_seeds} runs",
        }[r.kind]
        if pd.notna(r.get("outliers")) and r.outliers > 0:  # a bimodal outcome: see the note
            how += f"; {r.outliers} far from the rest"
        ax.set_title(f"{r.source or r.where}  (n={r.n_seeds}; {how})", fontsize=9, loc="left")
        ax.set_yticks([])
        ax.margins(x=0.08)
    said = {f"; {m.column}{unit(m)}" if m.fraction else "" for m in measures}  # one metric's %
    axes[-1, 0].set_xlabel(
        "dots: runs; bar: the interval judged; tick: mean; diamond or triangle: the claim"
        + (said.pop() if len(said) == 1 else "")
    )
    fig.tight_layout()
    save(fig, out, "claims")
