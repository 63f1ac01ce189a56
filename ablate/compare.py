"""Two results folders of one study, point by point: paired or Welch t, divergence, Holm; no torch.

Cells of one study and seed start from the same init and data order on both machines, so where
both folders hold the same seeds at a design point (every cell of the point finished on both
sides) the point's test is the paired t on B - A per seed; elsewhere (other seeds, a seed that
diverged on one side, per-seed differences with no spread) Welch's t compares the two means.
Welch's df (welch_df): Satterthwaite's at whichever end of an 80% F interval of the variance
ratio gives the fewer. tests/test_compare.py chose it by simulation: identical setups of 8
points, Holm, and one point shifted by 2 sd (root mean square of the sides'), 20,000 studies a
case, seeds 5v5, 5v4, 5v3, 10v5, 3v2 with B's sd 1, 2, 10 times A's and 1/2, 1/10 where B has
the fewer seeds. Worst identical-setup rate; mean power after Holm: Satterthwaite's 0.222 (3v2,
the 2 seeds 10x noisier); 0.242. Hsu's min(n) - 1 where counts differ (before) 0.061 (5v5, 10x:
Satterthwaite's there); 0.102. Satterthwaite's capped at min(n) - 1 where the fewer seeds vary
more 0.196; 0.217. The 50%, 90% F interval 0.087, 0.048; 0.201, 0.157. The 80% F interval
0.049; 0.172, and before Holm at equal spreads 0.71 (5v5), 0.59 (5v4), 0.35 (5v3), 0.83 (10v5),
0.06 (3v2) against Hsu's 0.77, 0.48, 0.22, 0.79, 0.01.
Holm's one family holds every point's test of the means and, where some cell of the point
diverged, Boschloo's exact test of the two sides' diverged counts (Fisher's is more
conservative: its smallest p for 0 of 5 against 5 of 5 is 2 / 252, which Holm over 8 points
cannot keep under 0.05; Boschloo's is 2 / 1024): `differ` or `diverged in A/B` below 0.05.
Identical setups of 8 points x 5 seeds a side with 1%, 2%, 5% of cells diverging exit 1 in
0.038, 0.038, 0.037 of 600 comparisons (before, where a cell that diverged on one side only was
a difference: 0.57, 0.80, 0.97). A point where nothing was found is `no difference detected`,
not equality: its `mde` is the smallest true difference its test detects with 80% power at 0.05
before Holm, at the observed spread; `equivalent` (with --margin) is the claim of equality.
A cell both folders hold (same config and seed, so the same cell id) is also compared value to
value: bitwise equal on one machine with --deterministic, within rounding on another.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as scipy_stats
from scipy.optimize import brentq

from . import inference, predictions, readback, stats, tables
from .analysis import check_margin, dataset_sizes, in_design_order, last_epochs, setting
from .errors import AblateError, StoreError
from .examples import correct, disagreement
from .inference import ALPHA, LEVEL, POWER, holm, no_spread
from .metrics import TEST_ACC, Metric, lookup
from .report import write_folder

COLUMNS = (
    "n_a mean_a std_a diverged_a n_b mean_b std_b diverged_b diff ci_low ci_high df p_value "
    "p_holm test p_equivalence shared_cells identical_cells max_cell_diff verdict mde "
    "p_diverged p_diverged_holm"
).split()  # after the factor columns, one per level
UNSEEN = "no difference detected"  # was `agree`: it claims no equality, `equivalent` does
VERDICTS = ("differ", UNSEEN, "equivalent", "diverged in A", "diverged in B", "too few seeds")
VERDICTS += ("only in A", "only in B")
FAILED = ("differ", "diverged in A", "diverged in B")  # what makes `ablate compare` exit 1
RATIO_LEVEL = 0.8  # welch_df's interval of the variance ratio; 0.5 let 0.09 through, 0.9 lost power


@dataclass
class Comparison:
    table: pd.DataFrame  # compare.csv: the factors, then COLUMNS
    factors: list[str]
    metric: Metric
    margin: float | None
    names: tuple[str, str]  # the two folders as given
    how: list = field(default_factory=list)  # (HOW key, value in A, value in B) that differ
    unstable: list = field(default_factory=list)  # `swung`'s sentence for A and B, if any

    def sentence(self) -> str:
        """One line: how the runs differ, where no difference was detected, which differ, and
        the cells whose final epoch swung far from their last epochs."""
        line = summary_line(self.table, self.factors, self.metric, self.margin)
        runs = ", ".join(f"{key} {a} in A, {b} in B" for key, a, b in self.how)
        line = f"runs differ in {runs}: {line}" if runs else line
        return "; ".join([line, *self.unstable])


def welch_df(var_a, n_a: int, var_b, n_b: int, level: float = RATIO_LEVEL):
    """Welch's df (arrays of variances welcome): Satterthwaite's at whichever end of an 80% F
    interval of the variance ratio gives the fewer. Satterthwaite's at the observed ratio lets 2
    seeds 10x noisier than 3 flag 0.22 of identical 8-point comparisons, Hsu's min(n) - 1 costs
    a third of the power at 5v3; the module docstring has the simulated rates of each."""
    share_a = np.asarray(var_a, float) / n_a
    share_b = np.asarray(var_b, float) / n_b
    ends = special.fdtri(n_a - 1, n_b - 1, [(1 - level) / 2, (1 + level) / 2])  # F quantiles
    with np.errstate(invalid="ignore", divide="ignore"):
        dfs = []
        for end in ends:  # the true ratio var_a / var_b at (observed ratio) / end
            of_a = share_a / (share_a + end * share_b)  # A's share of the squared standard error
            dfs.append(1 / (of_a**2 / (n_a - 1) + (1 - of_a) ** 2 / (n_b - 1)))
    return np.minimum(*dfs)


@functools.cache  # a paired test's df is a whole number of seeds
def detectable(df: float) -> float:
    """The shift, in standard errors, that a two-sided t test at this df detects with 80% power
    at 0.05: inference.mde's noncentral t at any df (scipy.special's, 100x faster than
    scipy.stats.nct's for the simulations in tests/test_compare.py)."""
    crit = special.stdtrit(df, 1 - ALPHA / 2)

    def reach(shift):  # a cdf far out in a tail is NaN where it underflows; it is 0 there
        below, far = special.nctdtr(df, shift, crit), special.nctdtr(df, shift, -crit)
        return 1 - (below if below == below else 0.0) + (far if far == far else 0.0) - POWER

    high = 2 * crit  # power at a shift of crit is about 1/2: the root lies above it
    while reach(high) < 0:
        high *= 2
    return float(brentq(reach, crit, high, xtol=1e-12 * high))


def welch(a, b, resolution: float = 0.0, margin: float | None = None) -> dict:
    """B's mean minus A's with its 95% Welch interval (welch_df's df), Welch's t test, its MDE
    and, with a margin, the two one-sided Welch tests of equivalence. Where neither sample varies
    by more than the metric resolves, there is no noise to estimate: the exact permutation test
    decides."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    row = dict(diff=np.nan, ci_low=np.nan, ci_high=np.nan, df=np.nan, p_value=np.nan)
    row.update(test="n<2", p_equivalence=np.nan, mde=np.nan)
    if len(a) == 0 or len(b) == 0:
        return row
    row["diff"] = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return row
    if no_spread(a, resolution) and no_spread(b, resolution):
        row["test"], row["p_value"] = "permutation (no spread)", 1.0
        if abs(row["diff"]) >= max(resolution * (1 - 1e-9), 1e-12):  # else no shift at all
            exact = scipy_stats.permutation_test(
                (b, a), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                n_resamples=np.inf if len(a) + len(b) <= 16 else 9999, random_state=0,
            )  # fmt: skip
            row["p_value"] = float(exact.pvalue)
        return row
    var_a, var_b = a.var(ddof=1), b.var(ddof=1)
    se = float(np.sqrt(var_a / len(a) + var_b / len(b)))
    df = float(welch_df(var_a, len(a), var_b, len(b)))
    half = special.stdtrit(df, 0.5 + LEVEL / 2) * se
    t = row["diff"] / se
    row.update(ci_low=row["diff"] - half, ci_high=row["diff"] + half, df=df, test="welch")
    row.update(p_value=float(2 * special.stdtr(df, -abs(t))), mde=detectable(df) * se)
    if margin:  # the larger one-sided p: both ends of the 90% interval inside +-margin
        above = scipy_stats.t.sf((row["diff"] + margin) / se, df)
        below = scipy_stats.t.cdf((row["diff"] - margin) / se, df)
        row["p_equivalence"] = float(max(above, below))
    return row


def paired(a, b, resolution: float = 0.0, margin: float | None = None) -> dict:
    """welch's columns from seed-aligned samples: the paired t on B - A per seed, its interval,
    inference.mde and TOST. Differences with no spread (bitwise equal cells, or a shift by a
    constant) estimate no noise: Welch decides from each side's spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diffs = b - a
    if len(diffs) < 2 or no_spread(diffs, resolution):
        return welch(a, b, resolution, margin)
    diff, std, low, high = inference.interval(diffs)
    t = diff / (std / np.sqrt(len(diffs)))  # scipy's ttest_1samp, 50x faster
    p_value = float(2 * special.stdtr(len(diffs) - 1, -abs(t)))
    row = dict(diff=diff, ci_low=low, ci_high=high, df=float(len(diffs) - 1), p_value=p_value)
    p_equivalence = inference.tost(diffs, margin) if margin else np.nan
    mde = detectable(len(diffs) - 1) * std / np.sqrt(len(diffs))  # inference.mde, faster
    row.update(test="paired t", p_equivalence=p_equivalence, mde=mde)
    return row


@functools.cache  # counts repeat: a few dozen tables cover every study of 5 seeds a side
def diverged_p(diverged_a: int, ok_a: int, diverged_b: int, ok_b: int) -> float:
    """Boschloo's exact two-sided p that cells diverge as often on both sides; NaN where none
    did (no test) or one side holds no cell."""
    if not diverged_a + diverged_b or not diverged_a + ok_a or not diverged_b + ok_b:
        return np.nan
    if not ok_a + ok_b:  # every cell diverged on both sides: the same rate
        return 1.0
    table = [[diverged_a, ok_a], [diverged_b, ok_b]]
    return float(scipy_stats.boschloo_exact(table).pvalue)


def compare(
    final_a: pd.DataFrame,
    final_b: pd.DataFrame,
    factors: list[str],
    metric: Metric = TEST_ACC,
    resolution: float = 0.0,
    margin: float | None = None,
) -> pd.DataFrame:
    """One row per design point, A's first in A's order, then those only B holds: both means,
    B minus A with its paired or Welch interval, the diverged counts' test, one Holm family over
    both, cells compared value to value, and the verdict."""
    at_a = _rows_at(stats.points(final_a, factors))
    at_b = _rows_at(stats.points(final_b, factors))
    side_a, side_b = _side(final_a, metric), _side(final_b, metric)
    by_cell = final_b.set_index("cell")[metric.column]
    shared = final_a["cell"].isin(by_cell.index).to_numpy()
    gaps = (final_a["cell"].map(by_cell) - final_a[metric.column]).to_numpy(float)
    rows = []
    for point in dict.fromkeys([*at_a, *at_b]):
        rows_a, rows_b = at_a.get(point, []), at_b.get(point, [])
        row = dict(zip(factors, point, strict=True))
        cells_a, cells_b = (
            [x[rows] for x in side] for side, rows in ((side_a, rows_a), (side_b, rows_b))
        )
        row.update(_tests(cells_a, cells_b, resolution, margin))
        gap = gaps[rows_a][shared[rows_a]]
        row["shared_cells"], row["identical_cells"] = len(gap), int((gap == 0).sum())
        row["max_cell_diff"] = float(np.nanmax(np.abs(gap))) if len(gap) else np.nan
        row["only"] = "A" if not rows_b else "B" if not rows_a else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    family = holm(np.concatenate([table["p_value"], table["p_diverged"]]))  # one family
    table["p_holm"], table["p_diverged_holm"] = family[: len(table)], family[len(table) :]
    decided = table.assign(p_equivalence_holm=holm(table["p_equivalence"]))
    table["verdict"] = [_verdict(row) for row in decided.to_dict("records")]
    return table[[*factors, *COLUMNS]]


def _rows_at(keys: list[tuple]) -> dict:
    """Each design point's row positions, in first-seen order."""
    at = {}
    for i, key in enumerate(keys):
        at.setdefault(key, []).append(i)
    return at


def _side(final: pd.DataFrame, metric: Metric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A folder's values, which cells finished (status ok) and their seeds (NaN: none stored,
    which pairs nothing)."""
    seeds = final["seed"].to_numpy(float) if "seed" in final else np.full(len(final), np.nan)
    return final[metric.column].to_numpy(float), (final["status"] == "ok").to_numpy(), seeds


def _tests(cells_a: list, cells_b: list, resolution: float, margin: float | None) -> dict:
    """One point's counts, means, spreads, test of the means and test of the diverged counts."""
    row, finished = {}, []
    for side, (values, ok, seeds) in (("a", cells_a), ("b", cells_b)):
        values, seeds = values[ok], seeds[ok]
        order = np.argsort(seeds, kind="stable")
        finished.append((values[order], seeds[order]))
        row[f"n_{side}"], row[f"mean_{side}"] = (
            len(values),
            values.mean() if len(values) else np.nan,
        )
        row[f"std_{side}"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row[f"diverged_{side}"] = int((~ok).sum())
    (a, seeds_a), (b, seeds_b) = finished
    every_seed = not row["diverged_a"] and not row["diverged_b"]  # on both sides
    if every_seed and np.array_equal(seeds_a, seeds_b) and len(np.unique(seeds_a)) == len(a):
        row.update(paired(a, b, resolution, margin))
    else:
        row.update(welch(a, b, resolution, margin))
    counts = (row["diverged_a"], row["n_a"], row["diverged_b"], row["n_b"])
    row["p_diverged"] = diverged_p(*counts)
    return row


def _verdict(row: dict) -> str:
    if row["only"]:
        return f"only in {row['only']}"
    if row["p_diverged_holm"] < ALPHA:  # NaN compares False
        rate_a = row["diverged_a"] / (row["diverged_a"] + row["n_a"])
        rate_b = row["diverged_b"] / (row["diverged_b"] + row["n_b"])
        return f"diverged in {'A' if rate_a > rate_b else 'B'}"
    if np.isnan(row["p_holm"]):
        return "too few seeds"
    if row["p_holm"] < ALPHA:
        return "differ"
    return "equivalent" if row["p_equivalence_holm"] < ALPHA else UNSEEN


def summary_line(table: pd.DataFrame, factors: list[str], metric: Metric, margin=None) -> str:
    """'38 of 40 points show no difference (...; differences under 0.41 points would often go
    unseen ...); 2 differ: relu (+0.31 [0.12, 0.50])'; in points for accuracy."""
    unit = metric.unit
    rows = table.to_dict("records")  # not itertuples: a factor may be named `class` or `_x`
    unseen = [row for row in rows if row["verdict"] in (UNSEEN, "equivalent")]
    differ = [row for row in rows if row["verdict"] == "differ"]
    parts = [
        f"{len(unseen)} of {len(unseen) + len(differ)} points show no difference (none detected "
        "at 0.05 after Holm over the points' means and diverged counts"
    ]
    if np.isfinite(largest := max((row["mde"] for row in unseen), default=np.nan)):
        parts[0] += (
            f"; differences under {tables.number(largest, metric)}{unit} would often go unseen: "
            "the largest MDE, 80% power before Holm"
        )
    parts[0] += ")"
    if margin and (equivalent := sum(row["verdict"] == "equivalent" for row in rows)):
        parts[0] += f", {equivalent} of them equivalent within +-"
        parts[0] += f"{tables.number(margin, metric)}{unit}"
    if differ:
        which = "; ".join(
            f"{_point(row, factors)} ({tables.number(row['diff'], metric, True)}{unit} "
            f"{tables.interval(row['ci_low'], row['ci_high'], metric) or 'no spread'})"
            for row in differ
        )
        parts.append(f"{len(differ)} differ: {which}")
    for verdict in VERDICTS[3:]:
        if at := [row for row in rows if row["verdict"] == verdict]:
            where = "; ".join(f"{_point(row, factors)} ({_diverged(row)})" for row in at)
            parts.append(f"{len(at)} {verdict}{': ' + where if 'diverged' in verdict else ''}")
    if lost := int(table["diverged_a"].sum() + table["diverged_b"].sum()):
        in_a = int(table["diverged_a"].sum())
        cells = f"{lost} cell{'s' * (lost > 1)} diverged"
        parts.append(f"{cells} ({in_a} in A, {lost - in_a} in B; see p_diverged)")
    if cells := int(table["shared_cells"].sum()):
        identical = int(table["identical_cells"].sum())
        worst = tables.number(float(table["max_cell_diff"].max()), metric)
        parts.append(f"{identical} of {cells} shared cells identical (largest gap {worst}{unit})")
    return "; ".join(parts)


def _diverged(row: dict) -> str:
    total_a, total_b = row["diverged_a"] + row["n_a"], row["diverged_b"] + row["n_b"]
    return f"{row['diverged_a']} of {total_a} diverged in A, {row['diverged_b']} of {total_b} in B"


def _point(row: dict, factors: list[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) or "base"


def load(path: Path, metric: Metric, warn: Callable[[str], None] | None, last: int = 1):
    """A folder's final rows (each cell's mean over its last `last` epochs), its design and the
    cells whose final epoch swung far from their last ones (stats.swings); a noise folder or a
    missing metric is a mistake."""
    try:
        rows = stats.tidy(readback.read(path, warn))
        final = stats.final(rows, last, metric)
        design = readback.read_design(path)
    except StoreError as e:  # exit 2, as every mistake here: 1 says a point differs
        raise AblateError(str(e)) from None
    if design.kind == "noise":
        raise AblateError(f"{path}: a noise design; `ablate report` on it compares its streams")
    if metric.column not in final.columns:
        raise AblateError(f"{path}: no metric '{metric.column}' in its rows")
    step = metric.step(dataset_sizes(design)[1])
    return final, design, stats.swings(rows, metric, step).assign(final_epochs=last)


def swung(side: str, swings: pd.DataFrame, final: pd.DataFrame, factors, metric: Metric) -> str:
    """'1 cell of B ends far from its last 5 epochs (relu, seed 0: 39.20 against 93.40)'."""
    if not len(swings):
        return ""
    points = final.set_index("cell")
    which = "; ".join(
        f"{_point(points.loc[row.cell], factors)} seed {row.seed}: "
        f"{tables.number(row.final, metric)} against {tables.number(row.recent, metric)}"
        for row in swings.itertuples()
    )
    cells = f"{len(swings)} cell{'s' * (len(swings) > 1)}"
    advice = (
        f"compared as the mean of the last {swings['final_epochs'].iloc[0]} epochs"
        if swings["final_epochs"].iloc[0] > 1
        else "--final last-5 compares the mean of each cell's last 5 epochs"
    )
    return (
        f"{cells} of {side} end far from their last {stats.SWING_EPOCHS} epochs ({which}): "
        f"unstable curves; {advice}"
    )


# base keys that change how a cell is computed, not what it is: runs may differ in them
HOW = ("precision",)


def same_study(path_a: Path, path_b: Path, design_a, design_b, factors_a, factors_b) -> list:
    """Different studies or designs compare nothing: one line (exit 2) naming what differs.
    Returns the HOW keys the two runs differ in, as (key, value in A, value in B)."""
    checks = [
        ("study", design_a.study, design_b.study),
        ("dataset", design_a.dataset, design_b.dataset),
        ("model", design_a.model, design_b.model),
        ("design", design_a.kind, design_b.kind),
        ("factors", ", ".join(factors_a), ", ".join(factors_b)),
    ]
    how = []
    for key in sorted(set(design_a.base) | set(design_b.base)):  # a key one ablate lacks: default
        values = [d.base.get(key, d.json_defaults.get(key)) for d in (design_a, design_b)]
        (how if key in HOW else checks).append((f"base {key}", *(json.dumps(v) for v in values)))
    for what, value_a, value_b in checks:
        if value_a != value_b:
            raise AblateError(
                f"{path_a} and {path_b}: not the same study ({what} {value_a or '-'} in A, "
                f"{value_b or '-'} in B); compare two runs of one study"
            )
    return [(what[5:], a, b) for what, a, b in how if a != b]


def run(
    path_a: str | Path,
    path_b: str | Path,
    metric: Metric = TEST_ACC,
    margin: float | None = None,
    warn: Callable[[str], None] | None = None,
    final: str = "last",
) -> Comparison:
    """Read, check and compare two results folders of one study (`final`: "last", or "last-k"
    for each cell's mean over its last k epochs); `metric` one of metrics.OUTCOMES (a group's
    wall time, `seconds`, is no per-cell outcome: refused as the report refuses it)."""
    metric = lookup(metric, "--metric")
    check_margin(margin, metric)
    last = last_epochs(final)
    path_a, path_b = Path(path_a), Path(path_b)
    final_a, design_a, swings_a = load(path_a, metric, warn, last)
    final_b, design_b, swings_b = load(path_b, metric, warn, last)
    if os.path.samefile(path_a, path_b):  # every point would agree with itself: no news
        raise AblateError(
            f"{path_a} and {path_b}: one folder on both sides; compare two runs of one study "
            "(rerun it with another --out)"
        )
    factors_a, factors_b = stats.factor_columns(final_a), stats.factor_columns(final_b)
    how = same_study(path_a, path_b, design_a, design_b, factors_a, factors_b)
    if clash := sorted(set(factors_a) & {*COLUMNS, "only", "lost"}):
        raise AblateError(f"{path_a}: factor {clash[0]} shares its name with a compare.csv column")
    levels = setting(design_a, final_a)[1]
    final_a = in_design_order(final_a, factors_a, levels)
    step = metric.step(dataset_sizes(design_a)[1])
    table = compare(final_a, final_b, factors_a, metric, step, margin)
    if not table["verdict"].isin(VERDICTS[:5]).any():
        raise AblateError(
            f"{path_a} and {path_b}: no design point both hold with 2 or more seeds; nothing to "
            "compare"
        )
    unstable = [
        swung(side, swings, rows, factors_a, metric)
        for side, swings, rows in (("A", swings_a, final_a), ("B", swings_b, final_b))
    ]
    if metric.per_example and last == 1:  # the predictions score the final epoch's examples
        table, said = disagreements(table, factors_a, *_hits(path_a, final_a, path_b, final_b))
        unstable += [said]
    names = (str(path_a), str(path_b))
    return Comparison(table, factors_a, metric, margin, names, how, [u for u in unstable if u])


def _hits(path_a: Path, final_a, path_b: Path, final_b) -> tuple:
    """Each side's ok final rows and its cells' correctness per test example (examples.correct),
    or None for both where a side stored no predictions or the two scored other test sets."""
    labels_a, predicted_a = predictions.read_predictions(path_a, None)
    labels_b, predicted_b = predictions.read_predictions(path_b, None)
    if not predicted_a or not predicted_b or not np.array_equal(labels_a, labels_b):
        return final_a, final_b, None, None
    return final_a, final_b, correct(predicted_a, labels_a), correct(predicted_b, labels_b)


DISAGREE = ["disagree_between", "disagree_within_a", "disagree_within_b", "p_disagree"]


def disagreements(table: pd.DataFrame, factors, final_a, final_b, hits_a, hits_b) -> tuple:
    """compare.csv with, per point whose ok cells both sides scored example by example, how
    often a run of A and a run of B disagree on which test examples they get right, the same
    between runs of each side, and the permutation p that A and B disagree beyond their own
    seeds (examples.disagreement), Holm over the points (a family of its own: no verdict, no
    exit code); and the line's sentence ("" without predictions on both sides)."""
    if hits_a is None:
        return table, ""
    rows = []
    keys_a, keys_b = stats.points(final_a, factors), stats.points(final_b, factors)
    for point in stats.points(table, factors):
        runs = []
        for final, keys, hits in ((final_a, keys_a, hits_a), (final_b, keys_b, hits_b)):
            at = final[[k == point for k in keys]]
            cells = at.loc[at["status"] == "ok", "cell"]
            runs.append(hits.loc[cells].to_numpy() if cells.isin(hits.index).all() else [])
        found = disagreement(*runs)
        rows.append([found["between"], found["within_a"], found["within_b"], found["p_value"]])
    added = pd.DataFrame(rows, columns=DISAGREE, index=table.index)
    added["p_disagree_holm"] = holm(added["p_disagree"])
    table = pd.concat([table, added], axis=1)
    tested = table["p_disagree_holm"].notna()
    if not tested.any():
        return table, ""
    beyond = int((table["p_disagree_holm"] < ALPHA).sum())
    between, within = table.loc[tested, DISAGREE[0]].mean(), table.loc[tested, DISAGREE[1:3]]
    return table, (
        f"test examples: a run of A and one of B disagree on {100 * between:.1f}% of them, two "
        f"runs of one side on {100 * np.nanmean(within.to_numpy()):.1f}%; {beyond} of "
        f"{int(tested.sum())} points beyond their own seeds (permutation p, Holm over the points)"
    )


def write(comparison: Comparison, out: Path | None, path_b: Path) -> Path:
    """compare.csv into `out` (default B/_compare) by report.write_folder's rule, the one for
    every --out: a new or empty folder, or one ablate wrote, whose files the user added or
    changed stay (one line names such a compare.csv, which was replaced without a word)."""
    folder = Path(out) if out else Path(path_b) / "_compare"
    csv = comparison.table.to_csv(index=False).encode()
    by_place = folder == Path(path_b) / "_compare"  # one from before the marker: ablate's

    def fill(tmp: Path) -> None:
        (tmp / "compare.csv").write_bytes(csv)

    try:
        write_folder(folder, fill, ("compare.csv",), by_place, "comparison")
    except StoreError as e:  # exit 2, as every mistake here: 1 says a point differs
        raise AblateError(str(e)) from None
    return folder / "compare.csv"
