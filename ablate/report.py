"""CSV tables and one self-contained HTML page beside the charts, from a results directory alone (no torch)."""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import anova, charts, claims, stats, store
from .study import DATASET_SIZES, AblateError

REPORT = "_report"  # beside the rows, named so Parquet readers skip it (see store.py)
CHARTS = charts.NAMES


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
    failures: pd.DataFrame | None = None
    anova: pd.DataFrame | None = None  # grid designs: blocked ANOVA over complete seeds
    anova_seeds: int = 0
    sign_changes: pd.DataFrame | None = None  # main effects whose simple effects differ in sign
    design: str = "grid"  # as analysed: grid, one_at_a_time or fractional
    family: int = 0  # tests in the one Holm family of effects and interactions
    margin: float | None = None
    halfwidth: float = stats.HALFWIDTH


def setting(manifest: dict, df: pd.DataFrame) -> tuple:
    """Factors, levels in design order, and baselines."""
    factors = stats.factor_columns(df)
    declared, declared_base = manifest.get("factors", {}), manifest.get("base", {})
    levels = {
        f: [stats.hashable(v) for v in declared.get(f, [])] or sorted(df[f].unique(), key=str)
        for f in factors
    }
    base = {
        f: stats.hashable(declared_base[f]) if f in declared_base else levels[f][0] for f in factors
    }
    return factors, levels, base


def in_design_order(df: pd.DataFrame, factors: list[str], levels: dict) -> pd.DataFrame:
    rank = {f: {v: i for i, v in enumerate(levels[f])} for f in factors}
    return (
        df.sort_values(factors, key=lambda s: s.map(rank[s.name]), kind="stable") if factors else df
    )


def dataset_sizes(manifest: dict) -> tuple[int | None, int | None]:
    """Classes and test images: as the run recorded them, else the built-in dataset's."""
    known = DATASET_SIZES.get(manifest.get("dataset"), (None, None))
    return manifest.get("classes") or known[0], manifest.get("test_size") or known[1]


METRICS = tuple(m for m in store.METRICS if m != "seconds")  # what an effect may be measured in
OURS = (
    *(f"{c}.{x}" for c in CHARTS for x in ("png", "svg")),
    "claims.csv",
    "interactions.csv",
    "failures.csv",
    "anova.csv",
    "summary.csv",
    "effects.csv",
    "index.html",
)


def build(
    results: str | Path,
    out: str | Path | None = None,
    metric: str = "test_acc",
    warn: Callable[[str], None] | None = None,
    margin: float | None = None,
    halfwidth: float = stats.HALFWIDTH,
) -> Report:
    """Write charts, summary.csv, effects.csv, interactions.csv (grids of two or more factors),
    anova.csv (grids), failures.csv, claims.csv and index.html for a results directory."""
    start = time.perf_counter()
    results = Path(results)
    df, manifest = stats.tidy(store.read(results, warn)), store.read_manifest(results)
    if (
        metric == "seconds"
    ):  # cells trained together share one wall time: zero-width intervals, p = 0
        raise AblateError(
            f"--metric seconds: the epoch's wall time of the group a cell trained in, shared by "
            f"every cell of that group, not a per-cell outcome; try {', '.join(METRICS)}"
        )
    if metric not in METRICS or metric not in df.columns:
        raise AblateError(f"{results}: no metric '{metric}'; try {', '.join(METRICS)}")
    if margin is not None and not margin > 0:
        raise AblateError(f"--margin {margin}: expected a positive difference in {metric}'s units")
    if not halfwidth > 0:
        raise AblateError(
            f"--halfwidth {halfwidth}: expected a positive half-width in {metric}'s units"
        )
    if not (df["status"] == "ok").any():
        raise store.StoreError(
            f"{results}: every one of its {df['cell'].nunique()} cells diverged; nothing to "
            "report (`ablate show` lists them)"
        )
    factors, levels, base = setting(manifest, df)
    df = in_design_order(df, factors, levels)
    fin = in_design_order(stats.final(df), factors, levels)
    classes, test_size = dataset_sizes(manifest)
    resolution = 1 / test_size if metric == "test_acc" and test_size else 0.0
    summary = stats.summary(fin, factors, metric)
    an = stats.analyse(
        fin,
        factors,
        base,
        levels,
        metric,
        manifest.get("design", "grid"),
        resolution,
        margin,
        halfwidth,
    )
    grid = an.design == "grid"
    table, anova_seeds = anova.anova(fin, factors, levels, metric) if grid else (pd.DataFrame(), 0)
    flips = (
        anova.changes_sign(anova.sign_changes(fin, factors, base, levels, metric, resolution))
        if grid
        else pd.DataFrame()
    )
    fails = (
        anova.failures(
            fin, factors, levels, classes, base if an.design == "one_at_a_time" else None
        )
        if "test_acc" in fin
        else pd.DataFrame()
    )
    chosen = [c for c in manifest.get("claims", []) if c.get("metric", "test_acc") == metric]
    cl = claims.claims(df, chosen, factors, resolution) if chosen else pd.DataFrame()
    out = Path(out) if out else results / REPORT
    rep = Report(
        out,
        summary,
        an.effects,
        cl,
        an.interactions,
        fin["cell"].nunique(),
        sorted(df["seed"].unique()),
        0.0,
        an.half_k,
        fails,
        table,
        anova_seeds,
        flips,
        an.design,
        an.family,
        margin,
        halfwidth,
    )
    runs = [claims.select(df, c, factors).to_numpy() for c in chosen]

    def fill(folder: Path) -> None:
        rep.path = folder  # the page inlines the charts from where they are drawn
        charts.theme()
        charts.chart_final(fin, summary, factors, metric, folder)
        charts.chart_curves(df, factors, metric, folder)
        if len(an.effects):
            charts.chart_effects(an.effects, metric, folder, an.family)
        if len(an.interactions):
            charts.chart_interactions(an.interactions, metric, folder, an.family)
            an.interactions.to_csv(folder / "interactions.csv", index=False)
        if len(cl):
            charts.chart_claims(cl, runs, folder)
            cl.drop(columns=["metric"]).to_csv(folder / "claims.csv", index=False)
        if len(table):
            table.to_csv(folder / "anova.csv", index=False)
        if len(fails):
            fails.to_csv(folder / "failures.csv", index=False)
        summary.to_csv(folder / "summary.csv", index=False)
        an.effects.to_csv(folder / "effects.csv", index=False)
        (folder / "index.html").write_text(page(rep, manifest, fin, factors, metric, results))

    # a default _report from before the marker: ablate's by its place; only its own names go
    store.write_folder(out, fill, OURS if out == results / REPORT else ())
    rep.path = out
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


def _table(df: pd.DataFrame, na: str = "") -> str:
    """na: what a missing value means in this table (blank where a note or the caption says)."""
    html_ = df.to_html(
        index=False, escape=True, border=0, float_format=lambda v: f"{v:.4g}", na_rep=na
    )
    return f"<div class=scroll>{html_}</div>"  # wide tables scroll inside the page's column


def page(
    rep: Report, manifest: dict, fin: pd.DataFrame, factors: list[str], metric: str, results: Path
) -> str:
    """One HTML file, charts inlined as PNG data: opens offline; every study-supplied string escaped.
    No timestamp: the same results give the same page, so committed reports stay unchanged."""
    e = html.escape
    runs = manifest.get("runs", [])
    name = manifest.get("study") or fin["study"].iloc[0]
    n_ok = sorted(rep.summary["n_seeds"].unique())
    ok_txt = f"n={n_ok[0]} for every point" if len(n_ok) == 1 else f"n from {n_ok[0]} to {n_ok[-1]}"
    last = runs[-1] if runs else {}
    started = (
        f"started {e(runs[0]['started'])}"
        if len(runs) == 1
        else f"{len(runs)} runs, the first started {e(runs[0]['started'])}, the last {e(last['started'])}"
    )
    when = (
        (
            f"{started}; last on {e(last['device'])}, host {e(last['host'])}, torch {e(last['torch'])}, "
            f"Python {e(last['python'])}, ablate {e(last['ablate'])}"
        )
        if runs
        else "no manifest: run details unknown"
    )
    diverged = fin[fin.status != "ok"]
    parts = [
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{e(name)}: ablate report</title>",
        f"<style>{CSS}</style><h1>{e(name)}</h1>",
        f"<p class=meta>{e(str(manifest.get('dataset', '')))}, model {e(str(manifest.get('model', '')))}, "
        f"design {e(str(manifest.get('design', '')))}: {len(rep.summary)} points x {len(rep.seeds)} seeds "
        f"({rep.n_cells} cells), metric {e(metric)}.<br>{when}.</p>",
    ]
    if k := rep.resolution:
        sign = "minus" if k % 2 else "plus"
        alias = f"the interaction of the other {k - 1}" if k > 3 else "the other two's interaction"
        relation = ("-" if k % 2 else "+") + "".join(
            chr(65 + i) for i in range(k)
        )  # I = (-1)^k AB...K
        parts.append(
            f"<p class=warn>A half fraction of the 2^{k} grid (resolution {k}, I = {relation}): each "
            f"effect below is its factor's main effect {sign} {alias} (the alias column); interactions "
            "are not estimable here.</p>"
        )
    if len(diverged):
        which = ", ".join(
            f"{e(charts.label(r, factors))} seed {r.seed} at epoch {r.epoch}"
            for _, r in diverged.iterrows()
        )
        parts.append(
            f"<p class=warn>{len(diverged)} cells diverged (loss NaN or infinite) and are left out of "
            f"means and effects: {which}</p>"
        )
    parts += _failures_section(rep)
    parts += [
        "<h2>Final metric per design point</h2><figure>",
        _img(rep.path, "final"),
        f"<figcaption>Final-epoch {e(metric)}; each dot one seed, black the mean with its 95% t interval; "
        f"n = seeds behind each mean ({ok_txt}).</figcaption></figure>",
        _table(rep.summary, "n/a (n<2)"),
    ]
    parts += [
        "<h2>Learning curves</h2><figure>",
        _img(rep.path, "curves"),
        f"<figcaption>Mean {e(metric)} per epoch with a 95% t band; n seeds per line in the legend."
        "</figcaption></figure>",
    ]
    parts += _effects_section(rep, factors)
    parts += _anova_section(rep)
    if len(rep.interactions):
        hidden = (
            "metric",
            "at_baseline_low",
            "at_baseline_high",
            "at_level_low",
            "at_level_high",
            "p_value",
            "test",
            "no_spread",
        )  # in interactions.csv; the chart draws the bands
        shown = rep.interactions[[c for c in stats.INTERACTION_COLUMNS if c not in hidden]]
        parts += [
            "<h2>Interactions: does one factor's effect depend on another's level?</h2><figure>",
            _img(rep.path, "interactions"),
            "<figcaption>A level's effect (paired by seed, averaged over the remaining factors) at the other "
            "factor's baseline and at its level; diff = the second minus the first per seed, 95% t interval, "
            f"paired t test; Holm over the {rep.family} tests of effects and interactions together. A "
            "significant interaction means the main effect above averages unlike effects.</figcaption>"
            "</figure>",
            _table(shown),
        ]
    parts += _claims_section(rep)
    parts.append(f"<p class=meta>Generated by ablate report from {e(str(results))}.</p></html>")
    return "\n".join(parts)


CAPTIONS = {
    "grid": "Each level minus its baseline, paired by seed and averaged over the other factors' levels (the "
    "factorial main effect)",
    "one_at_a_time": "Each level minus the baseline, paired by seed, with every other factor at its baseline (a "
    "simple effect at the baseline, not averaged over other settings)",
    "fractional": "Fitted per seed by least squares over the half fraction's points (two-level factors coded "
    "+-1); each row estimates its main effect with the interaction in its alias column added "
    "(+) or subtracted (-)",
}


def _effects_section(rep: Report, factors: list[str]) -> list[str]:
    if not len(rep.effects):
        return []
    how = (
        CAPTIONS.get(rep.design, CAPTIONS["grid"])
        if len(factors) > 1
        else "Each level minus its baseline, paired by seed"
    )
    cols = [
        "factor",
        "level",
        "baseline",
        "n_pairs",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
        "p_holm",
        "significant",
        "mde",
        "seeds_needed",
        "equivalent",
        "note",
    ]
    if rep.resolution:
        cols.insert(3, "alias")
    margin = rep.effects["p_equivalence"].notna().any()
    shown = rep.effects[[c for c in cols if c != "equivalent" or margin]]
    flips = (
        []
        if rep.sign_changes is None or not len(rep.sign_changes)
        else [
            f"<p class=warn>{html.escape(str(r.factor))}={html.escape(str(r.level))} vs "
            f"{html.escape(str(r.baseline))} changes sign across the other factors' settings, so its main effect "
            f"averages effects of opposite sign: {html.escape(r.settings)}.</p>"
            for r in rep.sign_changes.itertuples()
        ]
    )
    return [
        "<h2>Effects against the baseline</h2><figure>",
        _img(rep.path, "effects"),
        f"<figcaption>{how}; 95% t interval of each row alone; n = pairs (seeds). Filled: significant at 0.05 "
        f"after Holm over the {rep.family} tests of effects and interactions together (paired t test; exact "
        "sign-flip where the seeds show no spread, that is, differ by less than the metric resolves). A row "
        "whose own interval excludes 0 but that Holm does not flag is marked \u2020 and says so in its note. "
        "mde: the smallest difference these seeds detect with 80% power at 0.05 (before Holm), from the "
        "observed spread; seeds_needed: seeds for a 95% interval of half-width "
        f"{rep.halfwidth:g}"
        + (
            f"; equivalent: inside +-{rep.margin:g} by two one-sided t tests, Holm over the rows"
            if margin
            else "; `ablate report --margin M` tests equivalence"
        )
        + ". Not significant is not no effect: only an equivalence test says that.</figcaption></figure>",
        _table(shown),
        *flips,
    ]


def _anova_section(rep: Report) -> list[str]:
    if rep.anova is None or not len(rep.anova):
        return []
    terms = rep.anova[~rep.anova.term.isin(["seed", "residual"])].sort_values(
        "eta_sq", ascending=False
    )
    share = ", ".join(f"{html.escape(r.term)} {100 * r.eta_sq:.1f}%" for r in terms.itertuples())
    return [
        "<h2>Analysis of variance</h2>",
        f"<p>Share of the variance of the final metric (eta squared), largest first: {share}; seeds "
        f"{100 * rep.anova.set_index('term').eta_sq.get('seed', 0):.1f}%, residual "
        f"{100 * rep.anova.set_index('term').eta_sq.get('residual', 0):.1f}%.</p>",
        f"<p class=meta>Blocked factorial ANOVA (seed as block, every interaction up to the full order) over "
        f"the {rep.anova_seeds} seeds whose every cell is ok; each term is tested against its own interaction "
        "with seed (error_df), as a repeated-measures ANOVA does, so a two-level main effect's F is its paired "
        "t squared. Its p values are unadjusted and descriptive; the verdicts are the effects table's.</p>",
        _table(rep.anova),
    ]


def _failures_section(rep: Report) -> list[str]:
    f = rep.failures
    if f is None or not len(f) or not (f.n_diverged.sum() + f.n_stalled.sum()):
        return []
    out = [
        f"<p class=warn>Failed runs differ across the levels of {html.escape(r.factor)} (Fisher's exact "
        f"p {r.p_fisher:.3g}, Holm {r.p_holm:.3g}): diverged runs are left out of every mean, so its effects "
        "compare the survivors; stalled runs stay in and weigh on their level's mean.</p>"
        for r in f.drop_duplicates("factor").itertuples()
        if r.differs
    ]
    return [
        "<h2>Failed runs</h2><p>Per level: runs that diverged (left out of every mean) and runs that "
        "stalled (final accuracy within 2 points of chance; kept in). Fisher's exact test across each "
        "factor's levels, Holm across factors.</p>",
        *out,
        _table(f),
    ]


def _claims_section(rep: Report) -> list[str]:
    if not len(rep.claims):
        return []
    return [
        "<h2>Claims against the measurements</h2><figure>",
        _img(rep.path, "claims"),
        "<figcaption>A published number beside the runs it describes. A single run's value "
        "(kind point) is inside when it lies in the 95% prediction interval for one new run, mean +- "
        "t(0.975, n-1) s sqrt(1 + 1/n); an average of runs (kind mean), in the 95% CI of the mean. A bound "
        "(at_most, at_least) holds when every run keeps to its side; runs_within counts those that do."
        "</figcaption></figure>",
        _table(rep.claims.drop(columns=["metric"])),
    ]
