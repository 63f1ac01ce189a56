"""A report folder from a results folder alone (no torch): its CSV tables, charts and page."""

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
from pathlib import Path

import pandas as pd

from . import charts, claims, noise, predictions, readback, stats, store, tables
from .analysis import Report, analyse, check_request, claims_about, last_epochs
from .design import Design
from .errors import AblateError, StoreError
from .metrics import TEST_ACC, Metric, lookup
from .page import noise_page, page

REPORT = "_report"  # beside the rows, named so Parquet readers skip it (see store.py)
MARKER = ".ablate-report"  # in a report folder: each file ablate wrote with its sha256
CHARTS = charts.NAMES

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
    metric: Metric | str = TEST_ACC,
    warn: Callable[[str], None] | None = None,
    margin: float | None = None,
    halfwidth: float | None = None,
    final: str = "last",
) -> Report:
    """Write charts (PNG, SVG, PDF), summary.csv, effects.csv, interactions.csv (grids of two or
    more factors), anova.csv (grids), failures.csv, claims.csv, summary.md/.tex, effects.md/.tex
    and index.html for a results directory. `metric`: a Metric, or its name (looked up here);
    `margin` and `halfwidth` in its stored units (a fraction for accuracy)."""
    start = time.perf_counter()
    results = Path(results)
    metric = lookup(metric, where=str(results))
    last = last_epochs(final)
    df, design = stats.tidy(readback.read(results, warn)), readback.read_design(results)
    check_request(df, results, metric, margin, halfwidth)
    if design.kind == "noise":
        return _noise_report(df, design, results, out, metric, start)
    predicted = predictions.read_predictions(results, warn) if metric.per_example else None
    rep, df, final = analyse(
        df, design, metric, margin, halfwidth, final=f"last-{last}", predictions=predicted
    )
    factors = stats.factor_columns(df)
    runs = [claims.select(df, c, factors).to_numpy() for c in claims_about(design, metric)]

    def fill(folder: Path) -> None:
        rep.path = folder  # the page inlines the charts from where they are drawn
        _write_tables_and_charts(folder, rep, df, final, factors, metric, runs)
        tables.write(folder, rep, design.study or final["study"].iloc[0], metric, factors)
        (folder / "index.html").write_text(page(rep, design, final, factors, metric, results))

    rep.path = _write(results, out, fill)
    rep.seconds = time.perf_counter() - start
    return rep


def _write(results: Path, out: str | Path | None, fill: Callable[[Path], None]) -> Path:
    """write_folder into `out`, by default RESULTS/_report; the folder written."""
    out = Path(out) if out else results / REPORT
    write_folder(out, fill, by_place=out == results / REPORT)
    return out


def _noise_report(df, design: Design, results: Path, out, metric: Metric, start: float) -> Report:
    """noise.csv, the noise chart and index.html for an `ablate noise` results folder."""
    final = stats.final(df)
    if "stream" not in final:
        raise AblateError(f"{results}: a noise design's rows without their stream column")
    table = noise.decompose(final, metric)

    def fill(folder: Path) -> None:
        with charts.style():
            noise.chart(table, metric, folder)
        table.to_csv(folder / "noise.csv", index=False)
        (folder / "index.html").write_text(noise_page(table, design, metric, results, folder))

    out = _write(results, out, fill)
    n_cells, seeds = final["cell"].nunique(), sorted(df["seed"].unique())
    empty = pd.DataFrame()
    return Report(
        out, empty, empty, empty, empty, n_cells, seeds, time.perf_counter() - start, noise=table
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
        if (folder / readback.MANIFEST).is_file():
            inside = resolved.relative_to(folder).parts
            if not inside or not inside[0].startswith(("_", ".")):
                raise StoreError(
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
        new = {p.name: readback.sha256(p) for p in sorted(tmp.iterdir())}
        if theirs := [name for name in new if os.path.lexists(out / name) and name not in mine]:
            raise StoreError(
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
        raise StoreError(f"{out}: cannot write the {what} here ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def owned(out: Path, names: tuple[str, ...], by_place: bool, what: str = "report") -> dict:
    """The files in `out` that ablate wrote, each with its sha256 as it is now: those MARKER
    records with that very hash, plain files inside `out`. `out` itself, or its MARKER, as a
    link, and a folder holding anything but ablate's, are refused with one line."""
    readback.refuse_link(out)
    if out.exists() and not out.is_dir():
        raise StoreError(
            f"{out}: cannot write the {what} here: it exists and is not a folder; choose "
            "another --out",
            code=2,
        )
    marker = out / MARKER
    readback.refuse_link(marker)
    if not out.is_dir():
        return {}
    if marker.is_file():
        recorded = _recorded(marker, names)
    elif by_place:  # a default _report from before the marker: ablate's by its place
        recorded = dict.fromkeys(names)
    elif any(out.iterdir()):
        raise StoreError(
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
            digest = readback.sha256(file)
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
