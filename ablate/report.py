"""A report from a results folder alone (no torch): its analysis, CSV tables, charts and page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import anova, charts, claims, curves, examples, noise, stats, store, tables
from .design import Design, first_stage
from .errors import AblateError
from .keys import DATASET_SIZES
from .keys import METRICS as KEY_METRICS
from .page import CAPTIONS, CSS, page  # noqa: F401  report.CSS and report.CAPTIONS, as before

REPORT = "_report"  # beside the rows, named so Parquet readers skip it (see store.py)
MARKER = ".ablate-report"  # in a report folder: each file ablate wrote with its sha256
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


# what an effect may be measured in: keys.METRICS (a claim's), in the store's column order
METRICS = tuple(m for m in store.METRICS if m in KEY_METRICS)
OURS = (
    *(f"{chart}.{kind}" for chart in CHARTS for kind in ("png", "svg", "pdf")),
    *(f"{table}.csv" for table in ("claims", "interactions", "failures", "anova", "summary")),
    "curve_effects.csv",
    "climbing.csv",
    *(f"{table}.{kind}" for table in ("effects", "summary") for kind in ("csv", "md", "tex")),
    "index.html",
)
NOISE = ("noise.png", "noise.svg", "noise.pdf", "noise.csv", "index.html")  # a noise report's


def build(
    results: str | Path,
    out: str | Path | None = None,
    metric: str = "test_acc",
    warn: Callable[[str], None] | None = None,
    margin: float | None = None,
    halfwidth: float | None = None,
    final: str = "last",
) -> Report:
    """Write charts (PNG, SVG, PDF), summary.csv, effects.csv, interactions.csv (grids of two or
    more factors), anova.csv (grids), failures.csv, claims.csv, summary.md/.tex, effects.md/.tex
    and index.html for a results directory."""
    start = time.perf_counter()
    results = Path(results)
    last = last_epochs(final)
    df, design = stats.tidy(store.read(results, warn)), store.read_design(results)
    check_request(df, results, metric, margin, halfwidth)
    if design.kind == "noise":
        return _noise_report(df, design, results, out, metric, start)
    predicted = store.read_predictions(results, warn) if metric == "test_acc" else None
    rep, df, final = analyse(
        df, design, metric, margin, halfwidth, final=f"last-{last}", predictions=predicted
    )
    factors = stats.factor_columns(df)
    runs = [claims.select(df, c, factors).to_numpy() for c in _chosen(design, metric)]

    def fill(folder: Path) -> None:
        rep.path = folder  # the page inlines the charts from where they are drawn
        _write_tables_and_charts(folder, rep, df, final, factors, metric, runs)
        tables.write(folder, rep, design.study or final["study"].iloc[0], metric, factors)
        (folder / "index.html").write_text(page(rep, design, final, factors, metric, results))

    out = Path(out) if out else results / REPORT
    write_folder(out, fill, by_place=out == results / REPORT)
    rep.path = out
    rep.seconds = time.perf_counter() - start
    return rep


def analyse(
    df: pd.DataFrame,
    design: Design,
    metric: str = "test_acc",
    margin: float | None = None,
    halfwidth: float | None = None,
    final: str = "last",
    predictions: tuple | None = None,
) -> tuple[Report, pd.DataFrame, pd.DataFrame]:
    """Every table of the report for a design's tidy rows, no files: the Report (path and
    seconds unset), and the rows and final rows in design order (`final`: "last", or "last-k"
    for each cell's mean over its last k epochs). `predictions`: store.read_predictions' (labels,
    {cell: predicted}); with them, test accuracy's effects and points also get an interval that
    counts the test set as a sample of examples (examples.py)."""
    last = last_epochs(final)
    factors, levels, base = setting(design, df)
    df = in_design_order(df, factors, levels)
    finals = in_design_order(stats.final(df, last, metric), factors, levels)
    chosen = _chosen(design, metric)
    rep = _analyse(df, finals, design, factors, levels, base, metric, chosen, margin, halfwidth)
    rep.last = last
    rep.swings = stats.swings(df, metric, resolution_of(design, metric))
    higher, matched = tables.is_fraction(metric), rep.design != "fractional"
    if len(rep.effects):
        rep.curves, rep.threshold = curves.table(
            df, finals, factors, base, levels, metric, higher, matched
        )
    rep.climbing = curves.climbing(df, factors, metric, higher)
    labels, predicted = predictions or (None, {})
    if predicted and metric == "test_acc" and last == 1:  # the predictions are the final epoch's
        _test_set_counted(rep, finals, examples.correct(predicted, labels), factors, levels, base)
    return rep, df, finals


def _test_set_counted(rep: Report, finals, hits, factors, levels, base) -> None:
    """effects.csv and summary.csv gain the interval that counts the test set beside the seeds,
    each source's variance and the test set's share (rows in the same order)."""
    matched = rep.design != "fractional"
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


def resolution_of(design: Design, metric: str) -> float:
    """The smallest step the metric takes: one test sample for accuracy; 0 where unknown."""
    test_size = dataset_sizes(design)[1]
    return 1 / test_size if metric == "test_acc" and test_size else 0.0


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
    write_folder(out, fill, by_place=out == results / REPORT)
    n_cells, seeds = final["cell"].nunique(), sorted(df["seed"].unique())
    empty = pd.DataFrame()
    return Report(
        out, empty, empty, empty, empty, n_cells, seeds, time.perf_counter() - start, noise=table
    )


def default_halfwidth(final: pd.DataFrame, metric: str, resolution: float) -> tuple[float, str]:
    """The half-width seeds_needed aims at when none is given, in the metric's units, and how it
    was chosen: for accuracy half a point, or one test sample where that is coarser (xor's 4
    samples asked for 3,097 seeds at half a point); for any other metric 1% of its mean over the
    ok runs, to one significant figure (NaN where that mean is 0)."""
    if tables.is_fraction(metric):
        if resolution > stats.HALFWIDTH:
            return resolution, f"the default for {metric}: one test sample, its resolution"
        return stats.HALFWIDTH, f"the default for {metric}: half a point"
    mean = abs(float(final.loc[final["status"] == "ok", metric].astype(float).mean()))
    if not mean > 0 or not np.isfinite(mean):
        return float("nan"), f"no default for {metric}: its mean is 0; give --halfwidth"
    return float(f"{0.01 * mean:.1g}"), f"the default for {metric}: 1% of its mean"


def check_request(df, results: Path, metric: str, margin, halfwidth) -> None:
    """The options must make sense for these rows, and some run must not have diverged."""
    if metric == "seconds":  # cells trained together share one wall time: zero-width intervals
        raise AblateError(
            f"--metric seconds: the epoch's wall time of the group a cell trained in, shared by "
            f"every cell of that group, not a per-cell outcome; try {', '.join(METRICS)}"
        )
    if metric not in METRICS or metric not in df.columns:
        raise AblateError(f"{results}: no metric '{metric}'; try {', '.join(METRICS)}")
    check_margin(margin, metric)
    if halfwidth is not None and not halfwidth > 0:
        raise AblateError(
            f"--halfwidth {halfwidth}: expected a positive half-width in {metric}'s units"
        )
    if not (df["status"] == "ok").any():
        raise store.StoreError(
            f"{results}: every one of its {df['cell'].nunique()} cells diverged; nothing to "
            "report (`ablate show` lists them)"
        )


def check_margin(margin: float | None, metric: str) -> None:
    """A margin is a finite positive difference, below 1 for a fraction (accuracy): 1e300 was
    taken and printed as a 300-digit number of points."""
    if margin is None:
        return
    top = 1 if tables.is_fraction(metric) else float("inf")
    if not 0 < margin < top:
        below = " below 1 (a fraction: 0.01 is 1 point)" if top == 1 else ""
        raise AblateError(
            f"--margin {margin:.4g}: expected a positive, finite difference in {metric}'s "
            f"units{below}"
        )


def _analyse(df, final, design, factors, levels, base, metric, chosen, margin, halfwidth):
    """Every table of the report, in a Report whose path and seconds build sets."""
    classes = dataset_sizes(design)[0]
    resolution = resolution_of(design, metric)
    halfwidth, said = (
        (halfwidth, "") if halfwidth is not None else default_halfwidth(final, metric, resolution)
    )
    kind = design.kind or "grid"
    analysis = stats.analyse(
        final, factors, base, levels, metric, kind, resolution, margin, halfwidth,
        first_stage=first_stage(design),
    )  # fmt: skip
    grid = analysis.design == "grid"
    table, anova_seeds = (
        anova.anova(final, factors, levels, metric) if grid else (pd.DataFrame(), 0)
    )
    simple = anova.sign_changes(final, factors, base, levels, metric, resolution) if grid else None
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
        if "test_acc" in final
        else pd.DataFrame(),
        anova=table,
        anova_seeds=anova_seeds,
        sign_changes=anova.changes_sign(simple, metric, analysis.interactions)
        if grid
        else pd.DataFrame(),
        design=analysis.design,
        family=analysis.family,
        margin=margin,
        halfwidth=halfwidth,
        halfwidth_said=said,
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
    if rep.curves is not None and len(rep.curves):
        rep.curves.to_csv(folder / "curve_effects.csv", index=False)
    if rep.climbing is not None and len(rep.climbing):
        rep.climbing.to_csv(folder / "climbing.csv", index=False)


def write_folder(
    out: Path,
    fill: Callable[[Path], None],
    names: tuple[str, ...] = (*OURS, *NOISE),
    by_place: bool = False,
    what: str = "report",
) -> None:
    """Fill a report folder: fill(tmp) writes every file into a hidden folder beside `out`, then
    each moves into place and the files the last report wrote and this one did not are removed.
    A full disk, a read-only folder or a signal stops it before `out` changes, its temp folder
    gone. `out` must be new, empty or ablate's, and a file there is replaced or removed only
    where ablate wrote it: MARKER records each with its sha256 (owned). A file of the user's
    where the report puts one is refused with one line naming it; a link is never written
    through; nothing outside `out` is touched, whatever MARKER lists. `names`: what ablate may
    have written in a folder from before the hashes, trusted by name in its place (`by_place`:
    RESULTS/_report, RESULTS/_compare) or where an older MARKER lists them."""
    outside_results(out)
    mine = owned(out, names, by_place, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    store.clear_temporaries(out.parent, out.name)  # a killed (kill -9) report's
    try:
        with _signals_raise():
            _fill_and_move(out, fill, mine, what)
    except _Signalled as e:  # its temp folder removed: on to the default, which ends the process
        signal.raise_signal(e.signum)
        raise


def outside_results(out: Path) -> None:
    """Refuse an --out that is a study's results folder or inside one, unless the part right
    under it begins with _ or . (as _report/ and _compare/ do): pyarrow and DuckDB skip those
    names and read every other file and subfolder as rows, so pd.read_parquet(folder) would
    fail on the report (`ablate run` refuses the same for results)."""
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / store.MANIFEST).is_file():
            inside = resolved.relative_to(folder).parts
            if not inside or not inside[0].startswith(("_", ".")):
                raise store.StoreError(
                    f"{out}: is inside the results folder {folder}, whose readers would take "
                    "it for rows; choose an --out outside it (or a name beginning with _)",
                    code=2,
                )
            return


def _fill_and_move(out: Path, fill: Callable[[Path], None], mine: dict, what: str) -> None:
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        fill(tmp)
        new = {p.name: store.sha256(p) for p in sorted(tmp.iterdir())}
        if theirs := [name for name in new if os.path.lexists(out / name) and name not in mine]:
            raise store.StoreError(
                f"{out / theirs[0]}: not a file ablate wrote (or changed since); the {what} "
                "would replace it: move it aside or choose another --out",
                code=2,
            )
        stale = [name for name in mine if name not in new]
        out.mkdir(exist_ok=True)
        # meanwhile each name holds its old file or its new one: a kill leaves both owned
        both = {name: sorted({mine.get(name), digest} - {None}) for name, digest in new.items()}
        _mark(out, {**{name: [mine[name]] for name in stale}, **both})
        for name in new:
            os.replace(tmp / name, out / name)
        for name in stale:  # an earlier --metric's charts and tables
            (out / name).unlink(missing_ok=True)
        _mark(out, {name: [digest] for name, digest in new.items()})
    except OSError as e:
        raise store.StoreError(f"{out}: cannot write the {what} here ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def owned(out: Path, names: tuple[str, ...], by_place: bool, what: str = "report") -> dict:
    """The files in `out` that ablate wrote, each with its sha256 as it is now: those MARKER
    records with that very hash, plain files inside `out`. `out` itself, or its MARKER, as a
    link, and a folder holding anything but ablate's, are refused with one line."""
    store.refuse_link(out)
    if out.exists() and not out.is_dir():
        raise store.StoreError(
            f"{out}: cannot write the {what} here: it exists and is not a folder; choose "
            "another --out",
            code=2,
        )
    marker = out / MARKER
    store.refuse_link(marker)
    if not out.is_dir():
        return {}
    if marker.is_file():
        recorded = _recorded(marker, names)
    elif by_place:  # a default _report from before the marker: ablate's by its place
        recorded = dict.fromkeys(names)
    elif any(out.iterdir()):
        raise store.StoreError(
            f"{out}: not empty and not a {what} folder ablate wrote (no {MARKER}); choose a "
            "new or empty --out",
            code=2,
        )
    else:
        recorded = {}
    mine = {}
    for name, digests in recorded.items():
        file = out / name
        if os.path.isfile(file) and not os.path.islink(file):
            digest = store.sha256(file)
            if digests is None or digest in digests:
                mine[name] = digest
    return mine


def _recorded(marker: Path, names: tuple[str, ...]) -> dict:
    """MARKER's {name: sha256s}: untrusted, so only plain names of files in the folder count
    (`../thesis.tex` or `/home/x` listed deleted them before); a list of names (before the
    hashes) counts only for the names ablate writes (`names`); anything else for nothing."""
    try:
        files = json.loads(marker.read_text()).get("files")
    except (ValueError, OSError, AttributeError):
        return {}
    if isinstance(files, list):
        return {name: None for name in files if isinstance(name, str) and name in names}
    if not isinstance(files, dict):
        return {}
    return {
        name: {d for d in digests if isinstance(d, str)}
        for name, digests in files.items()
        if _plain(name) and isinstance(digests, list)
    }


def _plain(name) -> bool:
    """A file name in the folder itself: no folder part, no `..`, not the marker."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MARKER)
        and not any(c in name for c in "/\\\0")
        and os.path.basename(name) == name
    )


def _mark(out: Path, files: dict) -> None:
    text = json.dumps({"files": files}, indent=1, sort_keys=True).encode()
    store.atomic_write(out / MARKER, lambda f: f.write(text))


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise inside, so that the temp folder goes with the `finally` (a
    terminated report left it in the results folder for good), where they would end the
    process anyway: a handler of the caller's (a notebook's, the runner's) is left as it is."""
    kinds = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Signalled(signum)

    old = {sig: signal.getsignal(sig) for sig in kinds}
    for sig in [sig for sig, was in old.items() if was == signal.SIG_DFL]:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, was in old.items():
            signal.signal(sig, was)
