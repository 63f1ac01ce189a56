"""A report from a results folder alone (no torch): its analysis, CSV tables, charts and page."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import anova, charts, claims, noise, stats, store, tables
from .design import Design
from .page import CAPTIONS, CSS, page  # noqa: F401  report.CSS and report.CAPTIONS, as before
from .study import DATASET_SIZES, AblateError
from .study import METRICS as KEY_METRICS

REPORT = "_report"  # beside the rows, named so Parquet readers skip it (see store.py)
MARKER = ".ablate-report"  # in a report folder: the files ablate wrote, the only ones it removes
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
    rule: dict | None = None  # `run --until-halfwidth`'s record, when it chose the seeds
    noise: pd.DataFrame | None = None  # a noise design's noise.csv (noise.decompose)


def setting(design: Design, df: pd.DataFrame) -> tuple:
    """Factors, levels in design order, and baselines."""
    factors, declared = stats.factor_columns(df), design.factors or {}
    levels = {  # as declared, else as stored
        factor: [stats.hashable(level) for level in declared.get(factor, [])]
        or sorted(df[factor].unique(), key=str)
        for factor in factors
    }
    recorded = design.base
    base = {f: stats.hashable(recorded[f]) if f in recorded else levels[f][0] for f in factors}
    return factors, levels, base


def in_design_order(df: pd.DataFrame, factors: list[str], levels: dict) -> pd.DataFrame:
    if not factors:
        return df
    rank = {factor: {level: i for i, level in enumerate(levels[factor])} for factor in factors}
    return df.sort_values(factors, key=lambda column: column.map(rank[column.name]), kind="stable")


def dataset_sizes(design: Design) -> tuple[int | None, int | None]:
    """Classes and test images: as the run recorded them, else the built-in dataset's."""
    known = DATASET_SIZES.get(design.dataset, (None, None))
    return design.classes or known[0], design.test_size or known[1]


# what an effect may be measured in: keys.METRICS (a claim's), in the store's column order
METRICS = tuple(m for m in store.METRICS if m in KEY_METRICS)
OURS = (
    *(f"{chart}.{kind}" for chart in CHARTS for kind in ("png", "svg", "pdf")),
    *(f"{table}.csv" for table in ("claims", "interactions", "failures", "anova", "summary")),
    *(f"{table}.{kind}" for table in ("effects", "summary") for kind in ("csv", "md", "tex")),
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
    """Write charts (PNG, SVG, PDF), summary.csv, effects.csv, interactions.csv (grids of two or
    more factors), anova.csv (grids), failures.csv, claims.csv, summary.md/.tex, effects.md/.tex
    and index.html for a results directory."""
    start = time.perf_counter()
    results = Path(results)
    df, design = stats.tidy(store.read(results, warn)), store.read_design(results)
    check_request(df, results, metric, margin, halfwidth)
    if design.kind == "noise":
        return _noise_report(df, design, results, out, metric, start)
    rep, df, final = analyse(df, design, metric, margin, halfwidth)
    factors = stats.factor_columns(df)
    runs = [claims.select(df, c, factors).to_numpy() for c in _chosen(design, metric)]

    def fill(folder: Path) -> None:
        rep.path = folder  # the page inlines the charts from where they are drawn
        _write_tables_and_charts(folder, rep, df, final, factors, metric, runs)
        tables.write(folder, rep, design.study or final["study"].iloc[0], metric, factors)
        (folder / "index.html").write_text(page(rep, design, final, factors, metric, results))

    out = Path(out) if out else results / REPORT
    # a default _report from before the marker: ablate's by its place; only its own names go
    write_folder(out, fill, OURS if out == results / REPORT else ())
    rep.path = out
    rep.seconds = time.perf_counter() - start
    return rep


def analyse(
    df: pd.DataFrame,
    design: Design,
    metric: str = "test_acc",
    margin: float | None = None,
    halfwidth: float = stats.HALFWIDTH,
) -> tuple[Report, pd.DataFrame, pd.DataFrame]:
    """Every table of the report for a design's tidy rows, no files: the Report (path and
    seconds unset), and the rows and final rows in design order."""
    factors, levels, base = setting(design, df)
    df = in_design_order(df, factors, levels)
    final = in_design_order(stats.final(df), factors, levels)
    chosen = _chosen(design, metric)
    rep = _analyse(df, final, design, factors, levels, base, metric, chosen, margin, halfwidth)
    return rep, df, final


def _chosen(design: Design, metric: str) -> list[dict]:
    """The recorded claims about `metric`."""
    return [c for c in design.claims if c.get("metric", "test_acc") == metric]


def _noise_report(df, design: Design, results: Path, out, metric: str, start: float) -> Report:
    """noise.csv, the noise chart and index.html for an `ablate noise` results folder."""
    final = stats.final(df)
    if "stream" not in final:
        raise AblateError(f"{results}: a noise design's rows without their stream column")
    table = noise.decompose(final, metric)

    def fill(folder: Path) -> None:
        with charts.style():
            noise.chart(table, metric, folder)
        table.to_csv(folder / "noise.csv", index=False)
        (folder / "index.html").write_text(noise.page(table, design, metric, results, folder))

    out = Path(out) if out else results / REPORT
    write_folder(out, fill)
    n_cells, seeds = final["cell"].nunique(), sorted(df["seed"].unique())
    empty = pd.DataFrame()
    return Report(
        out, empty, empty, empty, empty, n_cells, seeds, time.perf_counter() - start, noise=table
    )


def check_request(df, results: Path, metric: str, margin, halfwidth) -> None:
    """The options must make sense for these rows, and some run must not have diverged."""
    if metric == "seconds":  # cells trained together share one wall time: zero-width intervals
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


def _analyse(df, final, design, factors, levels, base, metric, chosen, margin, halfwidth):
    """Every table of the report, in a Report whose path and seconds build sets."""
    classes, test_size = dataset_sizes(design)
    resolution = 1 / test_size if metric == "test_acc" and test_size else 0.0
    kind = design.kind or "grid"
    analysis = stats.analyse(
        final, factors, base, levels, metric, kind, resolution, margin, halfwidth
    )
    grid = analysis.design == "grid"
    table, anova_seeds = (
        anova.anova(final, factors, levels, metric) if grid else (pd.DataFrame(), 0)
    )
    simple = anova.sign_changes(final, factors, base, levels, metric, resolution) if grid else None
    at_base = base if analysis.design == "one_at_a_time" else None
    return Report(
        path=Path(),
        summary=stats.summary(final, factors, metric),
        effects=analysis.effects,
        claims=claims.claims(df, chosen, factors, resolution) if chosen else pd.DataFrame(),
        interactions=analysis.interactions,
        n_cells=final["cell"].nunique(),
        seeds=sorted(df["seed"].unique()),
        seconds=0.0,
        resolution=analysis.half_k,
        failures=anova.failures(final, factors, levels, classes, at_base)
        if "test_acc" in final
        else pd.DataFrame(),
        anova=table,
        anova_seeds=anova_seeds,
        sign_changes=anova.changes_sign(simple, metric) if grid else pd.DataFrame(),
        design=analysis.design,
        family=analysis.family,
        margin=margin,
        halfwidth=halfwidth,
        rule=design.rule or None,
    )


def _write_tables_and_charts(folder, rep: Report, df, final, factors, metric, runs) -> None:
    with charts.style():
        charts.chart_final(final, rep.summary, factors, metric, folder)
        charts.chart_curves(df, factors, metric, folder)
        if len(rep.effects):
            charts.chart_effects(rep.effects, metric, folder, rep.family)
        if len(rep.interactions):
            charts.chart_interactions(rep.interactions, metric, folder, rep.family)
        if len(rep.claims):
            charts.chart_claims(rep.claims, runs, folder)
    if len(rep.interactions):
        rep.interactions.to_csv(folder / "interactions.csv", index=False)
    if len(rep.claims):
        rep.claims.drop(columns=["metric"]).to_csv(folder / "claims.csv", index=False)
    if len(rep.anova):
        rep.anova.to_csv(folder / "anova.csv", index=False)
    if len(rep.failures):
        rep.failures.to_csv(folder / "failures.csv", index=False)
    rep.summary.to_csv(folder / "summary.csv", index=False)
    rep.effects.to_csv(folder / "effects.csv", index=False)


def write_folder(out: Path, fill: Callable[[Path], None], ours: tuple[str, ...] = ()) -> None:
    """Fill a report folder: fill(tmp) writes every file into a hidden folder beside `out`, then
    each moves into place and files the last report wrote and this one did not are removed.
    A full disk or a read-only folder stops it before `out` changes. `out` must be new, empty,
    or ablate's (its MARKER lists what it wrote; `ours`: the names ablate may replace in a
    report folder written before the marker existed)."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise store.StoreError(f"{out}: exists and is not a folder; choose another --out", code=2)
    if out.is_dir() and not marker.is_file() and not ours and any(out.iterdir()):
        raise store.StoreError(
            f"{out}: not empty and not a report folder ablate wrote (no {MARKER}); choose a "
            "new or empty --out",
            code=2,
        )
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fill(tmp)
        old = set(json.loads(marker.read_text())["files"]) if marker.is_file() else set(ours)
        new = sorted(p.name for p in tmp.iterdir())
        out.mkdir(exist_ok=True)
        for name in new:
            os.replace(tmp / name, out / name)
        for name in old - set(new):  # an earlier --metric's charts and tables
            (out / name).unlink(missing_ok=True)
        store.atomic_write(marker, lambda f: f.write(json.dumps({"files": new}).encode()))
    except OSError as e:
        raise store.StoreError(f"{out}: cannot write the report here ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
