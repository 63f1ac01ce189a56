"""The Python API for notebooks and scripts: ablate.run, ablate.load and the Results they give.

`load` and everything on Results read the results folder alone (no torch); `run` trains, as
`ablate run` does, then loads. A user's mistake raises AblateError with the CLI's one line
and no frames from inside ablate.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from html import escape
from pathlib import Path
from typing import NoReturn

import pandas as pd

from . import charts, readback, report, stats, tables
from .analysis import Report, analyse, check_request, in_design_order, setting
from .errors import AblateError, on_user_error
from .executor import Progress, RunOptions
from .metrics import TEST_ACC, Metric, lookup
from .predictions import read_predictions
from .progress import NotebookProgress, RichProgress, in_notebook
from .study import Study


def _one_line(error: AblateError) -> NoReturn:
    """An AblateError leaves with its one line and no frames from inside ablate."""
    raise error.with_traceback(None) from None


_user_errors = on_user_error(_one_line)


@_user_errors
def run(
    study: str | Path | Study,
    out: str | Path = "results",
    device: str = "auto",
    seeds: int | None = None,
    sets: str | list[str] | tuple[str, ...] = (),
    max_group: int | None = None,
    deterministic: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
    predictions: bool = True,
) -> Results:
    """Train every cell of `study` (a study file or a Study) not yet in out/<name>/, then load
    the folder, as `ablate run` does (its warnings too). `sets`: `--set` items ("epochs=1");
    `seeds`: seeds 0..N-1; `predictions=False`: no per-example test predictions
    (`--no-predictions`). A kernel interrupt (Ctrl-C) keeps the cells that finished and raises
    KeyboardInterrupt saying how many."""
    from . import runner  # torch loads here, not for ablate.load
    from .studyfile import prepare

    sets = [sets] if isinstance(sets, str) else sets  # one "epochs=1" is one item
    _check_arguments(sets, seeds, max_group, deterministic, progress)
    bar = (NotebookProgress() if in_notebook() else RichProgress(_console())) if progress else None
    options = RunOptions(
        out, device, max_group, deterministic, data_dir, predictions=predictions,
        progress=bar or Progress(),
    )  # fmt: skip
    study = prepare(study, sets, seeds, _warn, named="the sets")
    path = runner.results_dir(study, out)
    try:
        summary = runner.run(study, options)
    except runner.Stopped as e:
        raise KeyboardInterrupt(
            f"stopped: {e.done} of {e.total} cells stored in {path}; ablate.run again trains the "
            "rest"
        ) from None
    finally:
        if bar is not None:
            bar.stop()
    if summary.failed:
        raise AblateError(
            f"{len(summary.failed)} cells failed (warnings above) and were not stored; "
            "ablate.run again retries them"
        )
    return Results(path)


def _check_arguments(sets, seeds, max_group, deterministic, progress) -> None:
    """run's arguments of the types the CLI's options have: max_group=-3 or "2", seeds="3" and
    deterministic="no" raised TypeErrors from deep inside, or ran as something else."""

    def count(value, lo):
        return value is None or (
            isinstance(value, int) and not isinstance(value, bool) and value >= lo
        )

    if not isinstance(sets, (list, tuple)) or not all(isinstance(s, str) for s in sets):
        raise AblateError(
            f"ablate.run: sets={sets!r} is not allowed; expected 'key=value' strings, "
            "e.g. sets=['epochs=1', 'lr=0.1']"
        )
    for name, value in (("max_group", max_group), ("seeds", seeds)):
        if not count(value, 1):
            raise AblateError(f"ablate.run: {name}={value!r} is not allowed; expected an int >= 1")
    for name, value in (("deterministic", deterministic), ("progress", progress)):
        if not isinstance(value, bool):
            raise AblateError(
                f"ablate.run: {name}={value!r} is not allowed; expected True or False"
            )


def _warn(message: str) -> None:
    """The CLI's warning line; in Jupyter, the cell's stderr."""
    print(f"warning: {message}", file=sys.stderr)


def _console():
    from rich.console import Console

    return Console(stderr=True, emoji=False)


@_user_errors
def load(path: str | Path) -> Results:
    """A results folder's rows and analyses; no torch."""
    return Results(path)


class Results:
    """A results folder in Python: `frame` (its tidy rows, filtered to the design), `final()`,
    the report's tables as DataFrames (`effects()`, `interactions()`, `claims()`, `anova()`,
    `summary()`), `report()`; a notebook shows the study, its cells and the effects."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.frame: pd.DataFrame = readback.read(self.path, _warn)
        self.design = readback.read_design(self.path)
        self._tidy = stats.tidy(self.frame)  # list levels as tuples, once: every table groups them
        self._analysed: dict[tuple, Report] = {}

    def final(self) -> pd.DataFrame:
        """The last stored epoch of every cell, in design order."""
        final = stats.final(self._tidy)
        if self.design.kind == "noise":
            return final
        factors, levels, _ = setting(self.design, final)
        return in_design_order(final, factors, levels).reset_index(drop=True)

    @_user_errors
    def analysis(
        self,
        metric: str | Metric = "test_acc",
        margin: float | None = None,
        halfwidth: float | None = None,
        final: str = "last",
    ) -> Report:
        """Every table of the report for `metric` (cached), as `ablate report` computes them
        (`final`: "last", or "last-K" for each cell's mean over its last K epochs). `margin`
        and `halfwidth` as the CLI takes them: in points for accuracy (0.5 = half a point),
        in the metric's own units otherwise; the tables hold stored units (fractions)."""
        chosen = lookup(metric, str(self.path))
        margin, halfwidth = chosen.stored(margin), chosen.stored(halfwidth)
        key = (chosen.column, margin, halfwidth, final)
        if key not in self._analysed:
            if self.design.kind == "noise":
                raise AblateError(f"{self.path}: a noise design; .report() writes its noise.csv")
            check_request(self._tidy, self.path, chosen, margin, halfwidth)
            predicted = read_predictions(self.path, _warn) if chosen.per_example else None
            analysed = analyse(self._tidy, self.design, chosen, margin, halfwidth, final, predicted)
            self._analysed[key] = analysed[0]
        return self._analysed[key]

    def effects(
        self, metric: str | Metric = "test_acc", margin=None, halfwidth=None
    ) -> pd.DataFrame:
        """effects.csv's table: each level against its baseline, paired by seed, Holm (margin
        and half-width as `analysis` takes them: points for accuracy)."""
        return self.analysis(metric, margin, halfwidth).effects.copy()

    def interactions(self, metric: str | Metric = "test_acc") -> pd.DataFrame:
        return self.analysis(metric).interactions.copy()

    def claims(self, metric: str | Metric = "test_acc") -> pd.DataFrame:
        return self.analysis(metric).claims.copy()

    def anova(self, metric: str | Metric = "test_acc") -> pd.DataFrame:
        return self.analysis(metric).anova.copy()

    def summary(self, metric: str | Metric = "test_acc") -> pd.DataFrame:
        """summary.csv's table: each design point's mean and 95% interval."""
        return self.analysis(metric).summary.copy()

    @_user_errors
    def report(
        self,
        out: str | Path | None = None,
        metric: str | Metric = "test_acc",
        margin: float | None = None,
        halfwidth: float | None = None,
    ) -> Path:
        """Write the report (`ablate report`'s files) and return the path of its index.html;
        `margin` and `halfwidth` as `ablate report` takes them: in points for accuracy (0.5 =
        half a point), in the metric's own units otherwise."""
        chosen = lookup(metric, str(self.path))
        margin, halfwidth = chosen.stored(margin), chosen.stored(halfwidth)
        return report.build(self.path, out, chosen, _warn, margin, halfwidth).path / "index.html"

    def __repr__(self) -> str:
        return f"<ablate.Results {self._headline()}>"

    def _headline(self) -> str:
        design, final = self.design, stats.final(self._tidy)
        name = design.study or str(final["study"].iloc[0])
        points = len(set(stats.points(final, stats.factor_columns(final))))
        return (
            f"{name}: {design.dataset}, model {design.model}, design {design.kind or 'grid'}: "
            f"{points} points x {final['seed'].nunique()} seeds ({len(final)} cells) in {self.path}"
        )

    def _repr_html_(self) -> str:
        """The study, its cells and the effects table with its chart; an analysis that cannot
        be made says why in one line instead of raising inside the notebook's display."""
        head = f"<p><b>ablate</b> {escape(self._headline())}</p>"
        try:
            rep = self.analysis()
        except AblateError as e:
            return f"{head}<p style='color:#a15c00'>{escape(str(e))}</p>"
        if not len(rep.effects):
            shown = tables.readable(rep.summary, TEST_ACC, "summary")
            return head + shown.to_html(index=False, border=0)
        shown = tables.readable(rep.effects[_EFFECT_COLUMNS], TEST_ACC, "effects")
        return "\n".join(
            [
                head,
                f"<p>Effects on final test_acc in points: level minus baseline, paired by seed; "
                f"95% t interval; Holm over {rep.family} tests.</p>",
                _effects_png(rep),
                shown.to_html(index=False, border=0),
            ]
        )


_EFFECT_COLUMNS = "factor level baseline n_pairs diff ci_low ci_high p_holm significant".split()


def _effects_png(rep: Report) -> str:
    """The effects chart as an inline PNG, drawn in a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch, charts.style():
        charts.chart_effects(rep.effects, TEST_ACC, Path(scratch), rep.family)
        data = base64.b64encode((Path(scratch) / "effects.png").read_bytes()).decode()
    return f'<img alt="effects chart" src="data:image/png;base64,{data}" style="max-width:100%">'
