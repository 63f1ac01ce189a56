"""The report's analysis of a results folder's rows (no files, no torch): the Report value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import anova, claims, curves, examples, stats
from .design import Design, first_stage
from .errors import AblateError, StoreError
from .keys import DATASET_SIZES
from .metrics import HALF_POINT, OUTCOMES, TEST_ACC, Metric


@dataclass
class Report:
    """Every table of one metric's report, as `analyse` computes them (a noise design's: its
    noise table alone); report.build sets where it wrote them and how long that took."""

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
    # the design as analysed, which says how an effect was estimated: grid (a complete grid,
    # however declared), one_at_a_time or fractional (Design.kind is the declared one)
    analysed_as: str = "grid"
    family: int = 0  # tests in the one Holm family of effects and interactions
    margin: float | None = None
    halfwidth: float = HALF_POINT
    halfwidth_said: str = ""  # how a default half-width was chosen; "" where the user gave it
    last: int = 1  # --final last-k: each cell's metric is the mean over its last k epochs
    swings: pd.DataFrame | None = None  # cells whose final epoch is far from their last ones
    curves: pd.DataFrame | None = None  # curves.table: area and epochs to a threshold, per effect
    threshold: float = float("nan")  # the threshold those epochs count to
    climbing: pd.DataFrame | None = None  # curves.climbing: per point, still climbing or not
    test_size: int = 0  # test examples behind the intervals that count the test set; 0: none
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


def analyse(
    df: pd.DataFrame,
    design: Design,
    metric: Metric = TEST_ACC,
    margin: float | None = None,
    halfwidth: float | None = None,
    final: str = "last",
    predictions: tuple | None = None,
) -> tuple[Report, pd.DataFrame, pd.DataFrame]:
    """Every table of the report for a design's tidy rows, no files: the Report (path and
    seconds unset), and the rows and final rows in design order (`final`: "last", or "last-k"
    for each cell's mean over its last k epochs). `predictions`: predictions.read_predictions'
    (labels, {cell: predicted}); with them, a per-example metric's (accuracy's) effects and points
    also get an interval that counts the test set as a sample of examples (examples.py)."""
    last = last_epochs(final)
    factors, levels, base = setting(design, df)
    df = in_design_order(df, factors, levels)
    finals = in_design_order(stats.final(df, last, metric), factors, levels)
    chosen = claims_about(design, metric)
    rep = _analyse(df, finals, design, factors, levels, base, metric, chosen, margin, halfwidth)
    rep.last = last
    rep.swings = stats.swings(df, metric, metric.step(dataset_sizes(design)[1]))
    if len(rep.effects):
        matched = rep.analysed_as != "fractional"
        rep.curves, rep.threshold = curves.table(df, finals, factors, base, levels, metric, matched)
    rep.climbing = curves.climbing(df, factors, metric)
    labels, predicted = predictions or (None, {})
    if predicted and metric.per_example and last == 1:  # the predictions are the final epoch's
        _test_set_counted(rep, finals, examples.correct(predicted, labels), factors, levels, base)
    return rep, df, finals


def _test_set_counted(rep: Report, finals, hits, factors, levels, base) -> None:
    """effects.csv and summary.csv gain the interval that counts the test set beside the seeds,
    each source's variance and the test set's share (rows in the same order)."""
    matched = rep.analysed_as != "fractional"
    resolution = 1 / hits.shape[1]
    shared = examples.effects(finals, hits, factors, base, levels, matched, resolution)
    points = examples.summary(finals, hits, factors, resolution)
    rep.test_size = hits.shape[1]
    for name, table in (("effects", shared), ("summary", points)):
        added = table[list(EXAMPLE_COLUMNS)].rename(columns=EXAMPLE_COLUMNS)
        mine = getattr(rep, name).reset_index(drop=True)
        setattr(rep, name, pd.concat([mine, added.reset_index(drop=True)], axis=1))


# examples.py's columns as effects.csv and summary.csv carry them
EXAMPLE_COLUMNS = {
    "ci_low_examples": "ci_low_examples",
    "ci_high_examples": "ci_high_examples",
    "var_seeds": "var_seeds",
    "var_examples": "var_examples",
    "share_examples": "share_examples",
    "method": "examples_method",
}


def last_epochs(final: str) -> int:
    """`--final`'s k: "last" is 1, "last-k" is k (a whole number from 1)."""
    text = str(final)
    k = text[5:] if text.startswith("last-") else "1" if text == "last" else ""
    if not k.isdigit() or int(k) < 1:
        raise AblateError(
            f"--final {text}: expected last (the final epoch) or last-K (the mean of each "
            "cell's last K epochs, K a whole number from 1)"
        )
    return int(k)


def claims_about(design: Design, metric: Metric) -> list[dict]:
    """The recorded claims about `metric` (a claim names its metric's column)."""
    return [c for c in design.claims if c.get("metric", TEST_ACC.column) == metric.column]


def aimed_halfwidth(final: pd.DataFrame, metric: Metric, step: float) -> tuple[float, str]:
    """The half-width seeds_needed aims at when none is given, and how it was chosen
    (Metric.default_halfwidth, from the mean of `metric` over the ok runs)."""
    mean = float(final.loc[final["status"] == "ok", metric.column].astype(float).mean())
    return metric.default_halfwidth(mean, step)


def check_request(df, results: Path, metric: Metric, margin, halfwidth) -> None:
    """The options must make sense for these rows, and some run must not have diverged."""
    if metric.column not in df.columns:
        raise AblateError(f"{results}: no metric '{metric.column}'; try {', '.join(OUTCOMES)}")
    check_margin(margin, metric)
    if halfwidth is not None and not halfwidth > 0:
        raise AblateError(
            f"--halfwidth {metric.shown(halfwidth):g}: expected a positive half-width "
            f"{_typed_in(metric)}"
        )
    if not (df["status"] == "ok").any():
        raise StoreError(
            f"{results}: every one of its {df['cell'].nunique()} cells diverged; nothing to "
            "report (`ablate show` lists them)"
        )


def check_margin(margin: float | None, metric: Metric) -> None:
    """A margin is a finite positive difference, below 100 points for a fraction (accuracy):
    1e300 was taken and printed as a 300-digit number of points. Said as it was typed."""
    if margin is None:
        return
    top = 1 if metric.fraction else float("inf")
    if not 0 < margin < top:
        below = ", below 100" if metric.fraction else ""
        raise AblateError(
            f"--margin {metric.shown(margin):.4g}: expected a positive, finite difference "
            f"{_typed_in(metric)}{below}"
        )


def _typed_in(metric: Metric) -> str:
    return "in points" if metric.fraction else f"in {metric.column}'s units"


def _analyse(df, final, design, factors, levels, base, metric, chosen, margin, halfwidth):
    """Every table of the report, in a Report whose path and seconds build sets."""
    classes, test_size = dataset_sizes(design)
    resolution = metric.step(test_size)
    halfwidth, said = (
        (halfwidth, "") if halfwidth is not None else aimed_halfwidth(final, metric, resolution)
    )
    layout = stats.Layout(final, factors, base, levels, metric, resolution)
    kind = design.kind or "grid"
    analysis = stats.analyse(layout, kind, margin, halfwidth, first_stage=first_stage(design))
    grid = analysis.design == "grid"
    table, anova_seeds = (
        anova.anova(final, factors, levels, metric) if grid else (pd.DataFrame(), 0)
    )
    simple = anova.sign_changes(layout) if grid else None
    at_base = base if analysis.design == "one_at_a_time" else None
    return Report(
        path=Path(),
        summary=stats.summary(final, factors, metric, resolution),
        effects=analysis.effects,
        claims=claims.claims(df, chosen, factors, resolution) if chosen else pd.DataFrame(),
        interactions=analysis.interactions,
        n_cells=final["cell"].nunique(),
        seeds=sorted(df["seed"].unique()),
        seconds=0.0,
        resolution=analysis.half_k,
        failures=anova.failures(final, factors, levels, classes, at_base)
        if TEST_ACC.column in final  # stalled: accuracy within 2 points of chance
        else pd.DataFrame(),
        anova=table,
        anova_seeds=anova_seeds,
        sign_changes=anova.changes_sign(simple, metric, analysis.interactions)
        if grid
        else pd.DataFrame(),
        analysed_as=analysis.design,
        family=analysis.family,
        margin=margin,
        halfwidth=halfwidth,
        halfwidth_said=said,
        rule=design.rule or None,
    )
