"""The `ablate` command: run a study, show and report its results; a user's mistake is one line."""

from __future__ import annotations

import signal
import sys
from enum import Enum
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table
from typer import Abort
from typer.core import TyperGroup

try:  # typer from 0.29 raises its own copy of click's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # an older typer raises click's
    from click import exceptions as click_errors

from .errors import AblateError, on_user_error
from .executor import KINDS
from .metrics import BUILT_IN, OUTCOMES, TEST_ACC, lookup
from .progress import RichProgress

NO_ARGS = getattr(click_errors, "NoArgsIsHelpError", ())  # click 8.2 on: `ablate` alone
PIPED_WIDTH = 10_000  # columns when stdout is no terminal: Rich's 80 cut -18.29 to `-18.2…`


class Stdout(Console):
    """A terminal's width in a terminal; piped or redirected (a file, a pager, a CI log), wide
    enough that no table cuts, folds or wraps a number and no sentence breaks over lines."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


out = Stdout(emoji=False)  # ":x:" in a user's value is text, not an emoji
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class OneLineErrors(TyperGroup):
    """Click's own refusals (a choice not among --metric's, a missing argument, an unknown
    option) as one line on stderr like ablate's, exit 2, not a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NO_ARGS as e:  # `ablate` alone: the help is printed already
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            err.print(f"[red]error:[/red] {escape(where + e.format_message())}", markup=True)
            sys.exit(e.exit_code)
        except Abort:
            err.print("Aborted!")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # an Exit's code, else 0


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Ablation studies for PyTorch: many seeds, effects with confidence intervals.",
)

# the choices of --metric and --executor, from their registries
OutcomeName = Enum("OutcomeName", {name: name for name in OUTCOMES}, type=str)
StoredName = Enum("StoredName", {name: name for name in BUILT_IN}, type=str)
ExecutorName = Enum("ExecutorName", {name: name for name in KINDS}, type=str)


def _one_line(error: AblateError) -> NoReturn:
    """`error: <one line>` on stderr and the error's exit code; no traceback."""
    err.print(f"[red]error:[/red] {escape(str(error))}", markup=True)
    raise typer.Exit(error.code) from None


user_errors = on_user_error(_one_line)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


UNITS = "In points for accuracy (0.5 = half a point), the metric's own units otherwise."
# help texts too long to sit on their option's line
HELP = {
    "study": "A study file defining `study = Study(...)`.",
    "results": "A results folder: OUT/<study name>/ of `ablate run`.",
    "out": "Results go to OUT/<study name>/.",
    "seeds": "Use seeds 0..N-1 instead of the study's.",
    "device": "auto (the GPU where there is one), cpu, cuda or cuda:N.",
    "deterministic": "Bitwise-repeatable kernels (slower on GPU).",
    "data_dir": "Folder holding MNIST/raw/*.gz and the like.",
    "set": "Override a base value: key=value, a Python literal or a bare word. Repeatable.",
    "max_group": "Most cells trained together (default: from free memory).",
    "dry_run": "Print the cells and their count; train nothing.",
    "executor": "Where groups train: "
    + "; ".join(f"{name}: {kind.about}" for name, kind in KINDS.items())
    + ".",
    "address": "With --executor ray: the cluster to join (auto, host:port); default: start a "
    "local Ray and stop it after.",
    "groups_per_gpu": "With --executor ray: groups sharing one GPU (each task asks for 1/N of a "
    "GPU).",
    "predictions": "Store each cell's predicted class per test example at its final epoch, "
    "under _predictions/ (20 KB a cell for 10,000 images, before compression): the paired, "
    "per-example analyses read them. Off by itself past 1,000,000 test examples.",
    "metric": "The metric analysed.",
    "show_metric": "The metric shown: any the run stores, seconds (a group's wall time per "
    "epoch) too; accuracy in points.",
    "until_metric": "With --until-halfwidth: the metric whose main effects the rule sizes "
    "(default: test_acc).",
    "margin": "Test each effect for equivalence: inside ±M by two one-sided t tests, Holm. "
    + UNITS,
    "halfwidth": "The half-width the seeds column plans for: seeds for a 95% CI of ±H. "
    + UNITS
    + " Default: half a point of accuracy (one test sample where coarser), 1% of the mean for "
    "any other metric.",
    "until": "After the study's seeds (the first stage), train every design point once more, to "
    "the seeds their spread asks for so that each main effect's 95% CI half-width is at most H "
    "(Stein's two-stage rule; the final --metric). " + UNITS,
    "final": "The value analysed per cell: last (its final epoch) or last-K (the mean of its "
    "last K epochs, for curves that swing late).",
    "max_seeds": "With --until-halfwidth: stop at this many seeds per design point.",
    "plan": "The half-width to plan for. "
    + UNITS
    + " Default: the report's (half a point of accuracy, 1% of the mean for another metric).",
    "report_out": "Where to write (default RESULTS_DIR/_report).",
    "noise_seeds": "Seeds per stream (1..N).",
    "noise_out": "To OUT/<study name>-noise/.",
    "a": "A results folder (the reference).",
    "b": "The same study's results, run apart.",
    "compare_out": "Where compare.csv goes (default B/_compare).",
}


def metric_option(help: str = HELP["metric"]):
    """--metric: a per-cell outcome (metrics.OUTCOMES), test accuracy unless given."""
    return typer.Option(OutcomeName("test_acc"), "--metric", help=help)


@app.command()
@user_errors
def run(
    study_file: Path = typer.Argument(..., metavar="STUDY", help=HELP["study"]),
    out_dir: Path = typer.Option(Path("results"), "--out", help=HELP["out"]),
    set_: list[str] | None = typer.Option(None, "--set", help=HELP["set"]),
    seeds: int | None = typer.Option(None, "--seeds", help=HELP["seeds"]),
    device: str = typer.Option("auto", "--device", help=HELP["device"]),
    max_group: int | None = typer.Option(None, "--max-group", min=1, help=HELP["max_group"]),
    deterministic: bool = typer.Option(False, "--deterministic", help=HELP["deterministic"]),
    dry_run: bool = typer.Option(False, "--dry-run", help=HELP["dry_run"]),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="ABLATE_DATA_DIR", help=HELP["data_dir"]
    ),
    executor: ExecutorName = typer.Option(
        ExecutorName("local"), "--executor", help=HELP["executor"]
    ),
    address: str | None = typer.Option(None, "--address", help=HELP["address"]),
    groups_per_gpu: int = typer.Option(
        1, "--groups-per-gpu", min=1, max=1000, help=HELP["groups_per_gpu"]
    ),
    until_halfwidth: float | None = typer.Option(None, "--until-halfwidth", help=HELP["until"]),
    metric: OutcomeName | None = typer.Option(None, "--metric", help=HELP["until_metric"]),
    max_seeds: int | None = typer.Option(None, "--max-seeds", min=2, help=HELP["max_seeds"]),
    predictions: bool = typer.Option(
        True, "--predictions/--no-predictions", help=HELP["predictions"]
    ),
):
    """Train every cell of STUDY not yet stored (resumable)."""
    from . import runner  # torch loads here, not for --help
    from . import study as studies
    from .executor import RunOptions
    from .studyfile import prepare

    progress = RichProgress(out)
    options = RunOptions(  # --executor, --address and --groups-per-gpu: checked here
        out=out_dir, device=device, max_group=max_group, deterministic=deterministic,
        data_dir=data_dir, executor=executor.value, address=address,
        groups_per_gpu=groups_per_gpu, predictions=predictions, progress=progress,
    )  # fmt: skip
    for given, said in ((max_seeds, "--max-seeds"), (metric and metric.value, "--metric")):
        if given is not None and until_halfwidth is None:
            raise AblateError(f"{said} {given}: only used with --until-halfwidth")
    study = prepare(study_file, set_ or [], seeds, warn)
    path = runner.results_dir(study, out_dir)
    if dry_run:
        return _print_cells(study, studies.cells(study), runner.finished(path), path)
    if until_halfwidth is None:
        return _print_summary(_until_stopped(progress, lambda: runner.run(study, options)), path)
    from . import seeds as rounds

    chosen = lookup(metric.value, "--metric") if metric else TEST_ACC
    halfwidth, cap = chosen.stored(until_halfwidth), max_seeds or rounds.MAX_SEEDS

    def train(seeded, rule):  # one round: the study at the round's seeds
        return runner.run(seeded, options, rule)

    done = _until_stopped(
        progress, lambda: rounds.until_halfwidth(study, out_dir, halfwidth, cap, train, chosen)
    )
    steps = " -> ".join(map(str, done.rounds))
    said = "every main effect within" if not done.capped else "capped; the widest is"
    if not done.summary.failed:  # a round with holes stops the rule: the summary says why
        out.print(
            f"seeds per design point: {steps} (--until-halfwidth {until_halfwidth:g}, at most "
            f"{cap}, Stein's rule); {said} ±{chosen.shown(done.widest):.4g}{chosen.unit}"
        )
    _print_summary(done.summary, path)


def _until_stopped(progress: RichProgress, train):
    """train() under the progress bar; a signal that stops it exits with the shell's status."""
    from . import runner

    try:
        return train()
    except runner.Stopped as e:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second must not cut the line
            signal.signal(sig, signal.SIG_IGN)
        progress.stop()
        err.print(str(e))
        raise typer.Exit(128 + e.signum) from None  # the shell's: 130 Ctrl-C, 143 SIGTERM
    finally:
        progress.stop()


def _print_summary(summary, path: Path) -> None:
    """What the run trained and stored; cells that failed make the exit status 1."""
    if summary.trained == 0 and not summary.failed:
        out.print(f"nothing to train: all {summary.total} cells are in {path}")
        return
    diverged = f", {len(summary.diverged)} diverged" if summary.diverged else ""
    stored = summary.skipped + summary.trained
    out.print(
        f"trained {summary.trained} cells in {summary.seconds:.1f}s{diverged}; "
        f"{stored} of {summary.total} in {path}"
    )
    if summary.failed:
        err.print(
            f"[red]error:[/red] {len(summary.failed)} cells failed (warnings above) and were not "
            "stored; run the same command to retry them",
            markup=True,
        )
        raise typer.Exit(1)


def _print_cells(study, cells, done, path):
    """A table in a terminal; past 200 cells, or piped, one tab-separated line per cell as it
    comes (a Rich table of 10^5 rows took 98 s to lay out and cut the ids to fit 80 columns)."""
    points, n_seeds = len(cells) // len(study.seeds), len(study.seeds)
    title = f"{study.name}: {study.design}, {len(cells)} cells ({points} points x {n_seeds} seeds)"
    columns = ["cell", "seed", *study.factors, "done"]
    if out.is_terminal and len(cells) <= 200:
        table = Table(title=title)
        for column in columns:
            table.add_column(column, no_wrap=column == "cell")
        for cell in cells:
            levels = (escape(str(cell.levels[f])) for f in study.factors)
            table.add_row(cell.id, str(cell.seed), *levels, "yes" if cell.id in done else "")
        out.print(table)
    else:
        write = sys.stdout.write
        write(f"# {title}\n" + "\t".join(columns) + "\n")
        for cell in cells:
            levels = (str(cell.levels[f]) for f in study.factors)
            fields = [cell.id, str(cell.seed), *levels, "yes" if cell.id in done else ""]
            write("\t".join(fields) + "\n")
    n_done = sum(cell.id in done for cell in cells)
    out.print(f"{len(cells)} cells, {n_done} done, {len(cells) - n_done} to train -> {path}")


def results_argument(name: str = "RESULTS_DIR", help: str = HELP["results"]):
    return typer.Argument(..., metavar=name, help=help)


@app.command()
@user_errors
def show(
    results_dir: Path = results_argument(),
    metric: StoredName = typer.Option(StoredName("test_acc"), "--metric", help=HELP["show_metric"]),
):
    """Final-epoch metrics of every cell in RESULTS_DIR."""
    from . import readback, tables

    shown = lookup(metric.value, "--metric", BUILT_IN)
    df = readback.read(results_dir, warn)
    if shown.column not in df.columns:
        stored = ", ".join(name for name in BUILT_IN if name in df.columns)
        raise AblateError(f"{results_dir}: no metric '{shown.column}'; try {stored}")
    factors = [f for f in readback.read_design(results_dir).factors or {} if f in df.columns]
    last = df.sort_values("epoch").groupby("cell", sort=False).tail(1)
    last = last.sort_values([*factors, "seed"], key=lambda s: s.astype(str), kind="stable")
    table = Table(title=f"{results_dir}: {len(last)} cells, final epoch")
    heads = [*factors, "seed", "epoch", f"{shown.column}{tables.unit(shown)}", "status"]
    for column in heads:
        right = column in heads[-4:-1]
        table.add_column(escape(column), justify="right" if right else "left")
    for _, row in last.iterrows():
        value = tables.number(row[shown.column], shown)
        value = value if row["status"] == "ok" else f"[yellow]{value}[/yellow]"
        levels = (escape(str(row[f])) for f in factors)
        table.add_row(*levels, str(row["seed"]), str(row["epoch"]), value, row["status"])
    out.print(table)


@app.command()
@user_errors
def report(
    results_dir: Path = results_argument(),
    metric: OutcomeName = metric_option(),
    out_dir: Path | None = typer.Option(None, "--out", help=HELP["report_out"]),
    margin: float | None = typer.Option(None, "--margin", help=HELP["margin"]),
    halfwidth: float | None = typer.Option(None, "--halfwidth", help=HELP["halfwidth"]),
    final: str = typer.Option("last", "--final", help=HELP["final"]),
):
    """Does each factor help, by how much, how sure: charts, tables."""
    from . import console
    from . import report as reports

    chosen = lookup(metric.value, "--metric")
    margin, halfwidth = chosen.stored(margin), chosen.stored(halfwidth)
    rep = reports.build(results_dir, out_dir, chosen, warn, margin, halfwidth, final)
    if rep.noise is not None:
        from .noise import adds_up

        out.print(console.noise_table(rep.noise, chosen))
        out.print(f"{adds_up(rep.noise)}\nreport: {rep.path / 'index.html'}")
        return
    out.print(console.effects_table(rep, chosen, margin))
    console.print_warnings(rep, out, warn, chosen)
    for _, claim in rep.claims.iterrows():
        out.print(console.claim_line(claim))
    out.print(f"report: {rep.path / 'index.html'} ({rep.n_cells} cells, {rep.seconds:.1f}s)")


@app.command()
@user_errors
def noise(
    study_file: Path = typer.Argument(..., metavar="STUDY", help=HELP["study"]),
    seeds: int = typer.Option(8, "--seeds", min=2, help=HELP["noise_seeds"]),
    set_: list[str] | None = typer.Option(None, "--set", help=HELP["set"]),
    out_dir: Path = typer.Option(Path("results"), "--out", help=HELP["noise_out"]),
    device: str = typer.Option("auto", "--device", help=HELP["device"]),
    max_group: int | None = typer.Option(None, "--max-group", min=1, help=HELP["max_group"]),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="ABLATE_DATA_DIR", help=HELP["data_dir"]
    ),
):
    """Where seed-to-seed noise comes from, one stream at a time.

    The study's base point (or the one --set pins) with N seeds varying one random stream at a
    time, the others held at seed 0, and N varying them all (resumable); `ablate report` on the
    folder writes noise.csv."""
    from dataclasses import replace

    from . import runner, studyfile
    from . import study as studies
    from .executor import RunOptions

    study = studyfile.override(studyfile.load(study_file), set_ or [])  # its claims do not apply
    study = studies.validate(
        replace(
            study,
            name=f"{study.name}-noise",
            factors={},
            design="noise",
            seeds=list(range(1, seeds + 1)),
            claims=[],
        )
    )
    progress = RichProgress(out)
    options = RunOptions(out_dir, device, max_group, data_dir=data_dir, progress=progress)
    summary = _until_stopped(progress, lambda: runner.run(study, options))
    path = runner.results_dir(study, out_dir)
    _print_summary(summary, path)
    out.print(f"next: ablate report {path}")


@app.command()
@user_errors
def plan(
    results_dir: Path = results_argument(help=HELP["results"] + " A pilot: a few seeds."),
    halfwidth: float | None = typer.Option(None, "--halfwidth", help=HELP["plan"]),
    metric: OutcomeName = metric_option(),
):
    """The seeds each main effect needs, from a pilot's spread."""
    from . import console, seeds

    chosen = lookup(metric.value, "--metric")
    effects, cost = seeds.plan(results_dir, chosen.stored(halfwidth), chosen, warn)
    typed = console.typed(cost["halfwidth"], chosen)
    if cost["halfwidth_said"]:
        out.print(f"--halfwidth {typed}: {cost['halfwidth_said']}")
    out.print(console.plan_table(effects, cost["halfwidth"], chosen))
    for line in console.plan_lines(cost, cost["halfwidth"], chosen):
        out.print(line)


@app.command()
@user_errors
def compare(
    results_a: Path = results_argument("A", HELP["a"]),
    results_b: Path = results_argument("B", HELP["b"]),
    out_dir: Path | None = typer.Option(None, "--out", help=HELP["compare_out"]),
    metric: OutcomeName = metric_option(),
    margin: float | None = typer.Option(None, "--margin", help=HELP["margin"]),
    final: str = typer.Option("last", "--final", help=HELP["final"]),
):
    """Two runs of one study, point by point: does B differ from A.

    B's mean minus A's with a 95% CI (paired by seed where both hold the same seeds, else
    Welch) and its MDE, Holm over the points' means and diverged counts; exit 1 when some point
    differs or diverges more often on one side, 2 when they are not the same study."""
    from . import compare as comparing
    from . import console

    chosen = lookup(metric.value, "--metric")
    comparison = comparing.run(results_a, results_b, chosen, chosen.stored(margin), warn, final)
    csv = comparing.write(comparison, out_dir, results_b)  # --out: new, empty or ablate's
    out.print(console.compare_table(comparison))
    out.print(escape(comparison.sentence()), soft_wrap=True)  # one line, for grep and logs
    out.print(f"compare: {csv}", soft_wrap=True)
    if comparison.table["verdict"].isin(comparing.FAILED).any():
        raise typer.Exit(1)


def main():
    sys.exit(app())
