"""Charts, CSV tables and one self-contained HTML page, drawn from a results directory alone (no torch)."""
from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import stats, store  # noqa: E402
from .study import AblateError  # noqa: E402

REPORT = "_report"  # beside the rows, named so Parquet readers skip it (see store.py)
CHARTS = ("final", "curves", "effects", "interactions", "claims")


@dataclass
class Report:
    path: Path
    summary: pd.DataFrame
    effects: pd.DataFrame
    claims: pd.DataFrame
    interactions: pd.DataFrame
    n_cells: int
    seeds: list
    seconds: float
    resolution: int | None = None  # a fractional half's: its number of two-level factors


def label(row, factors) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) or "base"


def _save(fig, out: Path, name: str) -> None:
    fig.savefig(out / f"{name}.png", dpi=150, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": "ablate"}):  # same input, same file: no date, fixed element ids
        fig.savefig(out / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def _height(n: int) -> float:
    return max(2.5, 0.45 * n + 1.2)


def chart_final(fin, summary, factors, metric, out):
    """Every seed as a dot; the mean and its 95% CI as a bar, per design point."""
    summary = summary.assign(label=[f"{label(r, factors)}  (n={r.n_seeds})" for _, r in summary.iterrows()])
    lab = {tuple(r[factors]): r.label for _, r in summary.iterrows()}
    ok = fin[fin.status == "ok"].assign(label=lambda d: [lab[tuple(r)] for r in d[factors].itertuples(index=False)])
    fig, ax = plt.subplots(figsize=(8, _height(len(summary))))
    state = np.random.get_state()  # seaborn jitters from numpy's global RNG: same results, same chart
    np.random.seed(0)
    try:
        sns.stripplot(data=ok, x=metric, y="label", order=summary.label, color="0.55", size=5, jitter=0.15, ax=ax)
    finally:
        np.random.set_state(state)
    for i, r in summary.iterrows():
        if pd.notna(r.ci_low):
            ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r.ci_low], [r.ci_high - r["mean"]]], fmt="o",
                        color="black", capsize=4)
        elif pd.notna(r["mean"]):  # one seed: a dot and words, never a zero-width bar
            ax.plot(r["mean"], i, "o", color="black")
            ax.annotate(f"n={r.n_seeds}, no interval", (r["mean"], i), xytext=(6, 6), textcoords="offset points",
                        fontsize=8)
    ax.set(xlabel=f"final {metric} (dots: seeds; black: mean, 95% t CI)", ylabel="")
    _save(fig, out, "final")


def chart_curves(df, factors, metric, out):
    """Mean learning curve per design point with a 95% CI band."""
    cur = stats.curves(df, factors, metric)
    n_lines = cur.groupby(factors).ngroups if factors else 1
    fig, ax = plt.subplots(figsize=(9, 4.5 + 0.22 * math.ceil(n_lines / 2)))
    palette = sns.color_palette("tab10", n_colors=max(1, cur.groupby(factors).ngroups if factors else 1))
    for color, (key, g) in zip(palette, cur.groupby(factors, sort=False) if factors else [((), cur)], strict=False):
        key = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{f}={v}" for f, v in zip(factors, key, strict=True)) or "base"
        ax.plot(g.epoch, g["mean"], color=color, label=f"{name} (n={g.n.min()})", marker="o", markersize=3)
        ax.fill_between(g.epoch, g.ci_low, g.ci_high, color=color, alpha=0.15, linewidth=0)
    ax.set(xlabel="epoch", ylabel=metric)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    _save(fig, out, "curves")


def chart_effects(eff, metric, out):
    """Forest plot: each level minus its baseline, paired by seed; filled if it survives Holm."""
    eff = eff.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, _height(len(eff))))
    for i, r in eff.iterrows():
        if pd.notna(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [i, i], color="black")
        elif pd.notna(r["diff"]):
            ax.annotate(f"n={r.n_pairs}, no interval", (r["diff"], i), xytext=(6, 6), textcoords="offset points",
                        fontsize=8)
        ax.plot(r["diff"], i, "o", color="black", markerfacecolor="black" if r.significant else "white")
    ax.axvline(0, color="0.6", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(eff)), [f"{r.factor}: {r.level} vs {r.baseline}  (n={r.n_pairs})"
                                    for _, r in eff.iterrows()])
    ax.set(xlabel=f"difference in final {metric} (95% CI; filled: significant after Holm)")
    _save(fig, out, "effects")


def chart_interactions(inter, metric, out):
    """Each level's effect at the other factor's baseline (grey square) and at its level (black
    circle), 95% CIs; filled where the two differ after Holm (the interaction)."""
    inter = inter.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, _height(len(inter)) + 0.3))
    for i, r in inter.iterrows():
        for dy, col, marker in ((0.15, "at_baseline", "s"), (-0.15, "at_level", "o")):
            color = "0.55" if col == "at_baseline" else "black"
            if pd.notna(r[f"{col}_low"]):
                ax.plot([r[f"{col}_low"], r[f"{col}_high"]], [i + dy, i + dy], color=color)
            ax.plot(r[col], i + dy, marker, color=color, markerfacecolor=color if r.significant else "white")
    ax.axvline(0, color="0.6", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(inter)), [f"{r.factor}={r.level} vs {r.baseline}\nat {r.by}={r.by_baseline} (square), "
                                      f"{r.by_level} (circle)  (n={r.n_pairs})" for _, r in inter.iterrows()])
    ax.set(xlabel=f"effect on final {metric} (95% CI; filled: the two differ, Holm)")
    _save(fig, out, "interactions")


def chart_claims(cl, out):
    """Each claimed single-run value beside the measured mean and its 95% CI."""
    cl = cl.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, _height(len(cl))))
    for i, r in cl.iterrows():
        if pd.notna(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [i, i], color="black")
        ax.plot(r["mean"], i, "o", color="black")
        marker = {"at_most": "<", "at_least": ">"}.get(r.kind, "D")  # a bound points to the side it allows
        ax.plot(r.claimed, i, marker, color="tab:green" if r.inside else "tab:red")
    ax.set_yticks(range(len(cl)), [f"{r.source or r.where}  (n={r.n_seeds})" for _, r in cl.iterrows()])
    ax.set(xlabel="claimed (diamond: one run, green inside the CI; triangle: a bound, green where the CI keeps "
                  "to its side) vs measured mean, 95% CI")
    _save(fig, out, "claims")


def build(results: str | Path, out: str | Path | None = None, metric: str = "test_acc",
          warn: Callable[[str], None] | None = None) -> Report:
    """Write charts, summary.csv, effects.csv, interactions.csv (grids of two or more factors),
    claims.csv and index.html for a results directory."""
    start = time.perf_counter()
    results = Path(results)
    df, manifest = stats.tidy(store.read(results, warn)), store.read_manifest(results)
    if metric not in store.METRICS or metric not in df.columns:
        raise AblateError(f"{results}: no metric '{metric}'; try {', '.join(store.METRICS)}")
    factors = stats.factor_columns(df)
    declared, declared_base = manifest.get("factors", {}), manifest.get("base", {})
    levels = {f: [stats.hashable(v) for v in declared.get(f, [])] or sorted(df[f].unique(), key=str)
              for f in factors}
    base = {f: stats.hashable(declared_base[f]) if f in declared_base else levels[f][0] for f in factors}
    rank = {f: {v: i for i, v in enumerate(levels[f])} for f in factors}
    in_design_order = lambda d: d.sort_values(factors, key=lambda s: s.map(rank[s.name]), kind="stable")  # noqa: E731
    df = in_design_order(df) if factors else df
    fin = stats.final(df)
    fin = in_design_order(fin) if factors else fin
    summary = stats.summary(fin, factors, metric)
    # every combination of levels present (a grid, or a fractional study that a --set made one)
    full = len(factors) > 1 and len(fin[factors].astype(str).drop_duplicates()) == math.prod(map(len, levels.values()))
    fractional = manifest.get("design") == "fractional" and not full
    effects = stats.effects(fin, factors, base, levels, metric, matched=not fractional)
    inter = stats.interactions(fin, factors, base, levels, metric) if full else pd.DataFrame()
    claims = stats.claims(df, [c for c in manifest.get("claims", []) if c.get("metric", "test_acc") == metric],
                          factors) if manifest.get("claims") else pd.DataFrame()
    out = Path(out) if out else results / REPORT
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AblateError(f"{out}: cannot write the report here ({e.strerror})") from None
    # an earlier --metric's charts and claims, or an effects chart no longer drawn
    for stale in [*(f"{c}.{x}" for c in CHARTS for x in ("png", "svg")), "claims.csv", "interactions.csv"]:
        (out / stale).unlink(missing_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    chart_final(fin, summary, factors, metric, out)
    chart_curves(df, factors, metric, out)
    if len(effects):
        chart_effects(effects, metric, out)
    if len(inter):
        chart_interactions(inter, metric, out)
        inter.to_csv(out / "interactions.csv", index=False)
    if len(claims):
        chart_claims(claims, out)
        claims.drop(columns=["metric"]).to_csv(out / "claims.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    effects.to_csv(out / "effects.csv", index=False)
    rep = Report(out, summary, effects, claims, inter, fin["cell"].nunique(), sorted(df["seed"].unique()), 0.0,
                 sum(len(ls) == 2 for ls in levels.values()) if fractional else None)
    (out / "index.html").write_text(page(rep, manifest, fin, factors, metric, results))
    rep.seconds = time.perf_counter() - start
    return rep


CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#555}figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#444;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{padding:.25em .6em;border-bottom:1px solid #eee;
text-align:right}th{background:#f6f6f6}.scroll{overflow-x:auto}td:first-child,th:first-child{text-align:left}.warn{color:#a15c00}"""


def _img(out: Path, name: str) -> str:
    data = base64.b64encode((out / f"{name}.png").read_bytes()).decode()
    return f'<img alt="{name} chart" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    html_ = df.to_html(index=False, escape=True, border=0, float_format=lambda v: f"{v:.4g}", na_rep="n/a (n<2)")
    return f'<div class=scroll>{html_}</div>'  # wide tables scroll inside the page's column


def page(rep: Report, manifest: dict, fin: pd.DataFrame, factors: list[str], metric: str, results: Path) -> str:
    """One HTML file, charts inlined as PNG data: opens offline; every study-supplied string escaped.
    No timestamp: the same results give the same page, so committed reports stay unchanged."""
    e = html.escape
    runs = manifest.get("runs", [])
    name = manifest.get("study") or fin["study"].iloc[0]
    n_ok = sorted(rep.summary["n_seeds"].unique())
    ok_txt = f"n={n_ok[0]} for every point" if len(n_ok) == 1 else f"n from {n_ok[0]} to {n_ok[-1]}"
    last = runs[-1] if runs else {}
    started = (f"started {e(runs[0]['started'])}" if len(runs) == 1 else
               f"{len(runs)} runs, the first started {e(runs[0]['started'])}, the last {e(last['started'])}")
    when = (f"{started}; last on {e(last['device'])}, host {e(last['host'])}, torch {e(last['torch'])}, "
            f"Python {e(last['python'])}, ablate {e(last['ablate'])}") if runs else "no manifest: run details unknown"
    diverged = fin[fin.status != "ok"]
    parts = [
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{e(name)}: ablate report</title>",
        f"<style>{CSS}</style><h1>{e(name)}</h1>",
        f"<p class=meta>{e(str(manifest.get('dataset', '')))}, model {e(str(manifest.get('model', '')))}, "
        f"design {e(str(manifest.get('design', '')))}: {len(rep.summary)} points x {len(rep.seeds)} seeds "
        f"({rep.n_cells} cells), metric {e(metric)}.<br>{when}.</p>",
    ]
    if k := rep.resolution:
        alias = f"the interaction of the other {k - 1}" if k > 3 else "the other two's interaction"
        parts.append(f"<p class=meta>A half fraction of the 2^{k} grid (resolution {k}): each effect "
                     f"below is its factor's main effect plus {alias}; interactions are not estimable here.</p>")
    if len(diverged):
        parts.append(f"<p class=warn>{len(diverged)} cells diverged (loss NaN or infinite) and are left out of "
                     f"means and effects: " + ", ".join(f"{e(label(r, factors))} seed {r.seed} at epoch {r.epoch}"
                                                         for _, r in diverged.iterrows()) + "</p>")
    parts += ["<h2>Final metric per design point</h2><figure>", _img(rep.path, "final"),
              f"<figcaption>Final-epoch {e(metric)}; each dot one seed, black the mean with its 95% t interval; "
              f"n = seeds behind each mean ({ok_txt}).</figcaption></figure>", _table(rep.summary)]
    parts += ["<h2>Learning curves</h2><figure>", _img(rep.path, "curves"),
              f"<figcaption>Mean {e(metric)} per epoch with a 95% t band; n seeds per line in the legend."
              "</figcaption></figure>"]
    if len(rep.effects):
        parts += ["<h2>Effects against the baseline</h2><figure>", _img(rep.path, "effects"),
                  "<figcaption>Each level minus its baseline, paired by seed and averaged over the other factors' "
                  "levels; 95% t interval over seeds; n = pairs (seeds). Filled: significant at 0.05 after Holm "
                  "across all rows (paired t test).</figcaption></figure>", _table(rep.effects.drop(columns=["test"]))]
    if len(rep.interactions):
        shown = rep.interactions[["factor", "level", "baseline", "by", "by_level", "by_baseline", "n_pairs",
                                  "at_baseline", "at_level", "diff", "ci_low", "ci_high", "p_holm", "significant"]]
        parts += ["<h2>Interactions: does one factor's effect depend on another's level?</h2><figure>",
                  _img(rep.path, "interactions"),
                  "<figcaption>A level's effect (paired by seed, averaged over the remaining factors) at the other "
                  "factor's baseline and at its level; diff = the second minus the first per seed, 95% t interval, "
                  "paired t test, Holm across these rows. A significant interaction means the main effect above "
                  "averages unlike effects.</figcaption></figure>", _table(shown)]
    if len(rep.claims):
        parts += ["<h2>Claims against the measurements</h2><figure>", _img(rep.path, "claims"),
                  "<figcaption>Each published single-run value beside the mean of the cells it describes and "
                  "its 95% t interval; n = seeds.</figcaption></figure>", _table(rep.claims.drop(columns=["metric"]))]
    parts.append(f"<p class=meta>Generated by ablate report from {e(str(results))}.</p></html>")
    return "\n".join(parts)
