"""The `ablate` command: run a study, show and report its results; a user's mistake is one line."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import AblateError
from .progress import RichProgress

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Ablation studies for PyTorch: many seeds per cell, effects with confidence intervals.",
)
out = Console(emoji=False)  # ":x:" in a user's value is text, not an emoji
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def user_errors(fn):
    """AblateError -> `error: <one line>` on stderr and its exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AblateError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", markup=True)
            raise typer.Exit(e.code) from None

    return wrapper


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


# help texts too long to sit on their option's line
HELP = {
    "study": "A study file defining `study = Study(...)`.",
    "seeds": "Use seeds 0..N-1 instead of the study's.",
    "deterministic": "Bitwise-repeatable kernels (slower on GPU).",
    "data_dir": "Folder holding MNIST/raw/*.gz and the like.",
    "set": "Override a base value: key=value, a Python literal or a bare word. Repeatable.",
    "max_group": "Most cells trained together (default: from free memory).",
    "dry_run": "Print the cells and their count; train nothing.",
    # Rich reads [ray] as markup
    "executor": 'local (this process) | ray (groups as Ray tasks; pip install "ablate\\[ray]")',
    "address": "With --executor ray: the cluster to join (auto, host:port); default: start a "
    "local Ray and stop it after.",
    "groups_per_gpu": "With --executor ray: groups sharing one GPU (each task asks for 1/N of a "
    "GPU).",
    "margin": "Test each effect for equivalence: inside +-M (the metric's units) by two one-sided "
    "t tests, Holm.",
    "halfwidth": "seeds_needed: seeds for a 95% CI of this half-width (the metric's units; 0.005 "
    "= half a point of accuracy). Default: half a point of accuracy (one test sample where "
    "coarser), 1% of the mean for any other metric.",
    "until": "After the study's seeds (the first stage), train every design point once more, to "
    "the seeds their spread asks for so that each main effect's 95% CI half-width is at most H "
    "(Stein's two-stage rule; final test_acc; 0.001 = 0.1 point).",
    "final": "The value analysed per cell: last (its final epoch) or last-K (the mean of its "
    "last K epochs, for curves that swing late).",
    "max_seeds": "With --until-halfwidth: stop at this many seeds per design point.",
    "plan": "The half-width to plan for (the metric's units; 0.001 = 0.1 point of accuracy). "
    "Default: the report's (half a point of accuracy, 1% of the mean for another metric).",
}


@app.command()
@user_errors
def run(
    study_file: Path = typer.Argument(..., metavar="STUDY", help=HELP["study"]),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Results go to OUT/<study name>/."),
    set_: list[str] | None = typer.Option(None, "--set", help=HELP["set"]),
    seeds: int | None = typer.Option(None, "--seeds", help=HELP["seeds"]),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    max_group: int | None = typer.Option(None, "--max-group", min=1, help=HELP["max_group"]),
    deterministic: bool = typer.Option(False, "--deterministic", help=HELP["deterministic"]),
    dry_run: bool = typer.Option(False, "--dry-run", help=HELP["dry_run"]),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="ABLATE_DATA_DIR", help=HELP["data_dir"]
    ),
    executor: str = typer.Option("local", "--executor", help=HELP["executor"]),
    address: str | None = typer.Option(None, "--address", help=HELP["address"]),
    groups_per_gpu: int = typer.Option(
        1, "--groups-per-gpu", min=1, max=1000, help=HELP["groups_per_gpu"]
    ),
    until_halfwidth: float | None = typer.Option(None, "--until-halfwidth", help=HELP["until"]),
    max_seeds: int | None = typer.Option(None, "--max-seeds", min=2, help=HELP["max_seeds"]),
    predictions: bool = typer.Option(
        True,
        "--predictions/--no-predictions",
        help="Store each cell's predicted class per test example at its final epoch, under "
        "_predictions/ (20 KB a cell for 10,000 images, before compression): the paired, "
        "per-example analyses read them. Off by itself past 1,000,000 test examples.",
    ),
):
    """Train every cell of STUDY not yet in the results directory (resumable)."""
    from . import runner  # torch loads here, not for --help
    from . import study as studies

    if executor not in ("local", "ray"):  # checked before the study loads; run() checks it again
        raise AblateError(f"--executor {executor}: expected local or ray")
    if address and executor != "ray":
        raise AblateError(f"--address {address}: only used with --executor ray")
    if max_seeds is not None and until_halfwidth is None:
        raise AblateError(f"--max-seeds {max_seeds}: only used with --until-halfwidth")
    study = _load(study_file, set_ or [], seeds)
    path = runner.results_dir(study, out_dir)
    if dry_run:
        return _print_cells(study, studies.cells(study), runner.finished(path), path)
    progress = RichProgress(out)
    # runner.run's arguments after the study and folder, in its order
    options = (device, max_group, deterministic, data_dir, progress, executor, address)

    def train(chosen, rule=None):
        return runner.run(chosen, out_dir, *options, groups_per_gpu, rule, predictions)

    if until_halfwidth is None:
        return _print_summary(_until_stopped(progress, lambda: train(study)), path)
    from . import seeds as rounds

    cap = max_seeds or rounds.MAX_SEEDS
    done = _until_stopped(
        progress, lambda: rounds.until_halfwidth(study, out_dir, until_halfwidth, cap, train)
    )
    steps = " -> ".join(map(str, done.rounds))
    said = "every main effect within" if not done.capped else "capped; the widest is"
    if not done.summary.failed:  # a round with holes stops the rule: the summary says why
        out.print(
            f"seeds per design point: {steps} (--until-halfwidth {until_halfwidth:g}, at most "
            f"{cap}, Stein's rule); {said} ±{done.widest:.4g}"
        )
    _print_summary(done.summary, path)


def _load(study_file: Path, sets: list[str], seeds: int | None):
    """The study file with --set and --seeds applied; what they leave doubtful is a warning."""
    from . import study as studies
    from . import studyfile

    study = studyfile.override(studyfile.load(study_file), sets, seeds)
    for problem in studies.claim_problems(study):  # after --set: say so, the quick look goes on
        warn(f"{problem}; after --set the report leaves this claim out")
    if study.design == "fractional" and sum(len(v) == 2 for v in study.factors.values()) == 3:
        warn(
            f"{study.source}: a fractional design of three factors aliases each main effect with "
            "the other two's interaction (A reads A - BC); four or more factors keep main effects "
            "clear of two-factor ones"
        )
    return study


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


@app.command()
@user_errors
def show(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    metric: str = typer.Option("test_acc", "--metric"),
):
    """Final-epoch metrics of every cell in RESULTS_DIR."""
    from . import store

    df = store.read(results_dir, warn)
    if metric not in store.METRICS or metric not in df.columns:
        raise AblateError(f"{results_dir}: no metric '{metric}'; try {', '.join(store.METRICS)}")
    factors = [f for f in store.read_design(results_dir).factors or {} if f in df.columns]
    last = df.sort_values("epoch").groupby("cell", sort=False).tail(1)
    last = last.sort_values([*factors, "seed"], key=lambda s: s.astype(str), kind="stable")
    table = Table(title=f"{results_dir}: {len(last)} cells, final epoch")
    for column in [*factors, "seed", "epoch", metric, "status"]:
        right = column in ("seed", "epoch", metric)
        table.add_column(column, justify="right" if right else "left")
    for _, row in last.iterrows():
        value = f"{row[metric]:.4f}"
        value = value if row["status"] == "ok" else f"[yellow]{value}[/yellow]"
        levels = (str(row[f]) for f in factors)
        table.add_row(*levels, str(row["seed"]), str(row["epoch"]), value, row["status"])
    out.print(table)


@app.command()
@user_errors
def report(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    metric: str = typer.Option("test_acc", "--metric", help="test_acc, test_loss or train_loss"),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Where to write (default RESULTS_DIR/_report)."
    ),
    margin: float | None = typer.Option(None, "--margin", help=HELP["margin"]),
    halfwidth: float | None = typer.Option(None, "--halfwidth", help=HELP["halfwidth"]),
    final: str = typer.Option("last", "--final", help=HELP["final"]),
):
    """Charts, CSVs and index.html: does each factor help, by how much, how sure are we."""
    from . import console
    from . import report as reports

    rep = reports.build(results_dir, out_dir, metric, warn, margin, halfwidth, final)
    if rep.noise is not None:
        from .noise import adds_up

        out.print(console.noise_table(rep.noise, metric))
        out.print(f"{adds_up(rep.noise)}\nreport: {rep.path / 'index.html'}")
        return
    out.print(console.effects_table(rep, metric, margin))
    console.print_warnings(rep, out, warn, metric)
    for _, claim in rep.claims.iterrows():
        out.print(console.claim_line(claim))
    out.print(f"report: {rep.path / 'index.html'} ({rep.n_cells} cells, {rep.seconds:.1f}s)")


@app.command()
@user_errors
def noise(
    study_file: Path = typer.Argument(..., metavar="STUDY", help=HELP["study"]),
    seeds: int = typer.Option(8, "--seeds", min=2, help="Seeds per stream (1..N)."),
    set_: list[str] | None = typer.Option(None, "--set", help=HELP["set"]),
    out_dir: Path = typer.Option(Path("results"), "--out", help="To OUT/<study name>-noise/."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    max_group: int | None = typer.Option(None, "--max-group", min=1, help=HELP["max_group"]),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="ABLATE_DATA_DIR", help=HELP["data_dir"]
    ),
):
    """Where the seed-to-seed noise comes from: the study's base point (or the one --set pins)
    with N seeds varying one random stream at a time, the others held at seed 0, and N varying
    them all (resumable); `ablate report` on the folder writes noise.csv."""
    from dataclasses import replace

    from . import runner, studyfile
    from . import study as studies

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
    options = (device, max_group, False, data_dir, progress)
    summary = _until_stopped(progress, lambda: runner.run(study, out_dir, *options))
    path = runner.results_dir(study, out_dir)
    _print_summary(summary, path)
    out.print(f"next: ablate report {path}")


@app.command()
@user_errors
def plan(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    halfwidth: float | None = typer.Option(None, "--halfwidth", help=HELP["plan"]),
    metric: str = typer.Option("test_acc", "--metric", help="test_acc, test_loss or train_loss"),
):
    """From a pilot's spread: the seeds each main effect needs, and what the study would cost."""
    from . import console, seeds

    effects, cost = seeds.plan(results_dir, halfwidth, metric, warn)
    if cost["halfwidth_said"]:
        out.print(f"--halfwidth {cost['halfwidth']:g}: {cost['halfwidth_said']}")
    halfwidth = cost["halfwidth"]
    out.print(console.plan_table(effects, halfwidth, metric))
    for line in console.plan_lines(cost, halfwidth):
        out.print(line)


@app.command()
@user_errors
def compare(
    results_a: Path = typer.Argument(..., metavar="A", help="A results folder (the reference)."),
    results_b: Path = typer.Argument(..., metavar="B", help="The same study's results, run apart."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Where compare.csv goes (default B/_compare)."
    ),
    metric: str = typer.Option("test_acc", "--metric", help="test_acc, test_loss or train_loss"),
    margin: float | None = typer.Option(None, "--margin", help=HELP["margin"]),
    final: str = typer.Option("last", "--final", help=HELP["final"]),
):
    """Two runs of one study, point by point: B's mean minus A's with a 95% CI (paired by seed
    where both hold the same seeds, else Welch) and its MDE, Holm over the points' means and
    diverged counts; exit 1 when some point differs or diverges more often on one side, 2 when
    they are not the same study."""
    from . import compare as comparing
    from . import console

    comparison = comparing.run(results_a, results_b, metric, margin, warn, final)
    csv = comparing.write(comparison, out_dir, results_b)  # --out: new, empty or ablate's
    out.print(console.compare_table(comparison))
    out.print(escape(comparison.sentence()), soft_wrap=True)  # one line, for grep and logs
    out.print(f"compare: {csv}", soft_wrap=True)
    if comparison.table["verdict"].isin(comparing.FAILED).any():
        raise typer.Exit(1)


def main():
    sys.exit(app())
