"""Two results folders of one study, point by point: Welch intervals and verdicts (no torch).

The two folders' seeds ran apart (another machine, torch, precision), so nothing pairs them:
each design point's means are compared by Welch's t (unequal variances), and one Holm family
over the points decides `differ` (40 points at 0.05 each would flag 2 of two identical setups
on average). tests/test_compare.py simulates how often some point of two identical setups
differs: at most 0.05 with equal seed counts and spreads within 2x of each other, or unequal
counts (Hsu's df); about 0.1 with 3 seeds a side and one spread 10x the other (pinned).
A point whose cells diverged on one side only is `diverged in A` or `diverged in B`.
A cell both folders hold (same config and seed, so the same cell id) is also compared value
to value: bitwise equal on one machine with --deterministic, within rounding on another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import stats, store, tables
from .inference import ALPHA, LEVEL, holm, no_spread
from .report import METRICS, check_margin, dataset_sizes, in_design_order, setting, write_folder
from .study import AblateError

COLUMNS = (
    "n_a mean_a std_a diverged_a n_b mean_b std_b diverged_b diff ci_low ci_high df p_value "
    "p_holm test p_equivalence shared_cells identical_cells max_cell_diff verdict"
).split()  # after the factor columns, one per level
VERDICTS = ("differ", "agree", "equivalent", "diverged in A", "diverged in B", "too few seeds")
VERDICTS += ("only in A", "only in B")
FAILED = ("differ", "diverged in A", "diverged in B")  # what makes `ablate compare` exit 1


@dataclass
class Comparison:
    table: pd.DataFrame  # compare.csv: the factors, then COLUMNS
    factors: list[str]
    metric: str
    margin: float | None
    names: tuple[str, str]  # the two folders as given
    how: list = field(default_factory=list)  # (HOW key, value in A, value in B) that differ

    def sentence(self) -> str:
        """One line: how the runs differ, how many points agree, which differ, by how much."""
        line = summary_line(self.table, self.factors, self.metric, self.margin)
        runs = ", ".join(f"{key} {a} in A, {b} in B" for key, a, b in self.how)
        return f"runs differ in {runs}: {line}" if runs else line


def welch(a, b, resolution: float = 0.0, margin: float | None = None) -> dict:
    """B's mean minus A's with its 95% Welch interval, Welch's t test and, with a margin, the
    two one-sided Welch tests of equivalence. Where the seed counts differ, the df is Hsu's,
    min(n_a, n_b) - 1: Satterthwaite's let 3 noisy seeds against 5 flag 0.12 of identical
    8-point comparisons (simulated), Hsu's 0.004. Where neither sample varies by more than the
    metric resolves, there is no noise to estimate: the exact permutation test decides."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    row = dict(diff=np.nan, ci_low=np.nan, ci_high=np.nan, df=np.nan, p_value=np.nan)
    row.update(test="n<2", p_equivalence=np.nan)
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
    share_a, share_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(share_a + share_b))
    df = (share_a + share_b) ** 2 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    if len(a) != len(b):  # Hsu's: Satterthwaite's df overstates when the fewer seeds vary more
        df = min(len(a), len(b)) - 1
    half = scipy_stats.t.ppf(0.5 + LEVEL / 2, df) * se
    t = row["diff"] / se
    row.update(ci_low=row["diff"] - half, ci_high=row["diff"] + half, df=float(df))
    test = "welch" if len(a) == len(b) else "welch, hsu df"
    row.update(p_value=float(2 * scipy_stats.t.sf(abs(t), df)), test=test)
    if margin:  # the larger one-sided p: both ends of the 90% interval inside +-margin
        above = scipy_stats.t.sf((row["diff"] + margin) / se, df)
        below = scipy_stats.t.cdf((row["diff"] - margin) / se, df)
        row["p_equivalence"] = float(max(above, below))
    return row


def compare(
    final_a: pd.DataFrame,
    final_b: pd.DataFrame,
    factors: list[str],
    metric: str = "test_acc",
    resolution: float = 0.0,
    margin: float | None = None,
) -> pd.DataFrame:
    """One row per design point, A's first in A's order, then those only B holds: both means,
    B minus A with its Welch interval, Holm over the tested points, cells compared value to
    value, and the verdict."""
    keys_a, keys_b = stats.points(final_a, factors), stats.points(final_b, factors)
    by_cell = final_b.set_index("cell")[metric]
    rows = []
    for point in dict.fromkeys([*keys_a, *keys_b]):
        at_a = final_a[[k == point for k in keys_a]]
        at_b = final_b[[k == point for k in keys_b]]
        ok_a, ok_b = _ok(at_a, metric), _ok(at_b, metric)
        row = dict(zip(factors, point, strict=True))
        for side, ok, at in (("a", ok_a, at_a), ("b", ok_b, at_b)):
            row[f"n_{side}"], row[f"mean_{side}"] = len(ok), ok.mean() if len(ok) else np.nan
            row[f"std_{side}"] = ok.std(ddof=1) if len(ok) > 1 else np.nan
            row[f"diverged_{side}"] = int((at["status"] != "ok").sum())
        row.update(welch(ok_a, ok_b, resolution, margin))
        shared = at_a[at_a["cell"].isin(by_cell.index)]
        gaps = (by_cell.loc[shared["cell"]].to_numpy() - shared[metric].to_numpy()).astype(float)
        row["shared_cells"], row["identical_cells"] = len(shared), int((gaps == 0).sum())
        row["max_cell_diff"] = float(np.nanmax(np.abs(gaps))) if len(gaps) else np.nan
        row["only"] = "A" if not len(at_b) else "B" if not len(at_a) else ""
        row["lost"] = _lost(row)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"])
    p_equivalence = holm(table["p_equivalence"])
    decided = zip(table["only"], table["lost"], table["p_holm"], p_equivalence, strict=True)
    table["verdict"] = [_verdict(*row) for row in decided]
    return table[[*factors, *COLUMNS]]


def _lost(row: dict) -> str:
    """The side whose cells diverged where the other's did not (all of them, or some)."""
    if row["diverged_a"] and not row["diverged_b"]:
        return "A"
    return "B" if row["diverged_b"] and not row["diverged_a"] else ""


def _ok(at: pd.DataFrame, metric: str) -> pd.Series:
    return at.loc[at["status"] == "ok", metric].astype(float)


def _verdict(only: str, lost: str, p_holm: float, p_equivalence: float) -> str:
    if only:
        return f"only in {only}"
    if lost:  # a run that diverged on one machine only is a difference, whatever the means
        return f"diverged in {lost}"
    if np.isnan(p_holm):
        return "too few seeds"
    if p_holm < ALPHA:
        return "differ"
    return "equivalent" if p_equivalence < ALPHA else "agree"


def summary_line(table: pd.DataFrame, factors: list[str], metric: str, margin=None) -> str:
    """'38 of 40 points agree ...; 2 differ: relu (+0.31 [0.12, 0.50])'; in points for
    accuracy."""
    unit = " points" if tables.is_fraction(metric) else ""
    counts = table["verdict"].value_counts()
    tested = int(counts.get("differ", 0) + counts.get("agree", 0) + counts.get("equivalent", 0))
    same = int(counts.get("agree", 0) + counts.get("equivalent", 0))
    parts = [f"{same} of {tested} points agree (no difference at 0.05 after Holm over the points)"]
    if margin and counts.get("equivalent", 0):
        within = f"{tables.number(margin, metric)}{unit}"
        parts[0] += f", {counts['equivalent']} of them equivalent within +-{within}"
    rows = table.to_dict("records")  # not itertuples: a factor may be named `class` or `_x`
    differ = [row for row in rows if row["verdict"] == "differ"]
    if differ:
        which = "; ".join(
            f"{_point(row, factors)} ({tables.number(row['diff'], metric, True)}{unit} "
            f"{tables.interval(row['ci_low'], row['ci_high'], metric) or 'no spread'})"
            for row in differ
        )
        parts.append(f"{len(differ)} differ: {which}")
    for verdict in VERDICTS[3:]:
        if at := [row for row in rows if row["verdict"] == verdict]:
            where = (
                f": {'; '.join(_point(row, factors) for row in at)}"
                if "diverged" in verdict
                else ""
            )
            parts.append(f"{len(at)} {verdict}{where}")
    if cells := int(table["shared_cells"].sum()):
        identical = int(table["identical_cells"].sum())
        worst = tables.number(float(table["max_cell_diff"].max()), metric)
        parts.append(f"{identical} of {cells} shared cells identical (largest gap {worst}{unit})")
    return "; ".join(parts)


def _point(row: dict, factors: list[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) or "base"


def load(path: Path, metric: str, warn: Callable[[str], None] | None):
    """A folder's final rows and its design; a noise folder or missing metric is a mistake."""
    try:
        final = stats.final(stats.tidy(store.read(path, warn)))
        design = store.read_design(path)
    except store.StoreError as e:  # exit 2, as every mistake here: 1 says a point differs
        raise AblateError(str(e)) from None
    if design.kind == "noise":
        raise AblateError(f"{path}: a noise design; `ablate report` on it compares its streams")
    if metric not in METRICS or metric not in final.columns:
        raise AblateError(f"{path}: no metric '{metric}'; try {', '.join(METRICS)}")
    return final, design


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
    metric: str = "test_acc",
    margin: float | None = None,
    warn: Callable[[str], None] | None = None,
) -> Comparison:
    """Read, check and compare two results folders of one study."""
    check_margin(margin, metric)
    path_a, path_b = Path(path_a), Path(path_b)
    final_a, design_a = load(path_a, metric, warn)
    final_b, design_b = load(path_b, metric, warn)
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
    test_size = dataset_sizes(design_a)[1]
    resolution = 1 / test_size if metric == "test_acc" and test_size else 0.0
    table = compare(final_a, final_b, factors_a, metric, resolution, margin)
    if not table["verdict"].isin(VERDICTS[:5]).any():
        raise AblateError(
            f"{path_a} and {path_b}: no design point both hold with 2 or more seeds; nothing to "
            "compare"
        )
    return Comparison(table, factors_a, metric, margin, (str(path_a), str(path_b)), how)


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
    except store.StoreError as e:  # exit 2, as every mistake here: 1 says a point differs
        raise AblateError(str(e)) from None
    return folder / "compare.csv"
