"""The `ablate` command: run a study, show its results; user mistakes are one line and an exit code."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .study import AblateError

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


def _describe(levels: dict) -> str:
    return escape(", ".join(f"{k}={v}" for k, v in levels.items()) or "base")  # Rich would eat [..]


class RichProgress:
    """Cells done of total with ETA, and the current cell's epoch and loss."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[now]}"),
            console=console,
            transient=False,
        )
        self.task, self.epochs = None, 0

    def start(self, total, todo, device):
        self.console.print(
            f"training {todo} of {total} cells on {device} ({total - todo} already done)"
        )
        self.bar.start()
        self.task = self.bar.add_task("cells", total=total, completed=total - todo, now="")

    def cell_start(self, cell):
        self.epochs = cell.config["epochs"]
        self.bar.update(self.task, now=f"{cell.id[:8]} seed {cell.seed} {_describe(cell.levels)}")

    def epoch(self, cell, epoch, loss):
        self.bar.update(
            self.task,
            now=f"{cell.id[:8]} seed {cell.seed} {_describe(cell.levels)}: "
            f"epoch {epoch}/{self.epochs} loss {loss:.4f}",
        )

    def cell_done(self, cell, rows):
        self.bar.advance(self.task)
        if rows[-1]["status"] == "diverged":
            self.console.print(
                f"[yellow]diverged:[/yellow] cell {cell.id} ({_describe(cell.levels)}, "
                f"seed {cell.seed}) at epoch {rows[-1]['epoch']}; the study goes on"
            )

    def warn(self, message):
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def stop(self):
        self.bar.stop()


@app.command()
@user_errors
def run(
    study_file: Path = typer.Argument(
        ..., metavar="STUDY", help="A study file defining `study = Study(...)`."
    ),
    out_dir: Path = typer.Option(Path("results"), "--out", help="Results go to OUT/<study name>/."),
    set_: list[str] | None = typer.Option(
        None,
        "--set",
        help="Override a base value: key=value, a Python literal or a bare word. Repeatable.",
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Use seeds 0..N-1 instead of the study's."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    max_group: int | None = typer.Option(
        None, "--max-group", min=1, help="Most cells trained together (default: from free memory)."
    ),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Bitwise-repeatable kernels (slower on GPU)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the cells and their count; train nothing."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        envvar="ABLATE_DATA_DIR",
        help="Folder holding MNIST/raw/*.gz and the like.",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help='local (this process) | ray (groups as Ray tasks; pip install "ablate\\[ray]")',
    ),  # Rich reads [ray] as markup
    address: str | None = typer.Option(
        None,
        "--address",
        help="With --executor ray: the cluster to join "
        "(auto, host:port); default: start a local Ray and stop it after.",
    ),
    groups_per_gpu: int = typer.Option(
        1,
        "--groups-per-gpu",
        min=1,
        max=1000,
        help="With --executor ray: groups sharing one GPU (each task asks for 1/N of a GPU).",
    ),
):
    """Train every cell of STUDY not yet in the results directory (resumable)."""
    from . import (
        runner,  # torch loads here, not for --help
        studyfile,
    )
    from . import study as studies

    if executor not in ("local", "ray"):  # checked before the study loads; run() checks it again
        raise AblateError(f"--executor {executor}: expected local or ray")
    if address and executor != "ray":
        raise AblateError(f"--address {address}: only used with --executor ray")
    st = studyfile.override(studyfile.load(study_file), set_ or [], seeds)
    for problem in studies.claim_problems(st):  # after --set: say so, the quick look goes on
        warn(f"{problem}; after --set the report leaves this claim out")
    if st.design == "fractional" and sum(len(v) == 2 for v in st.factors.values()) == 3:
        warn(
            f"{st.source}: a fractional design of three factors aliases each main effect with the other two's "
            "interaction (A reads A - BC); four or more factors keep main effects clear of two-factor ones"
        )
    path = runner.results_dir(st, out_dir)
    if dry_run:
        return _print_cells(st, studies.cells(st), runner.finished(path), path)
    progress = RichProgress(out)
    try:
        summary = runner.run(
            st,
            out_dir,
            device,
            max_group,
            deterministic,
            data_dir,
            progress,
            executor,
            address,
            groups_per_gpu,
        )
    except runner.Stopped as e:
        for sig in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
        ):  # a second one must not cut the line
            signal.signal(sig, signal.SIG_IGN)
        progress.stop()
        err.print(str(e))
        raise typer.Exit(
            128 + e.signum
        ) from None  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    finally:
        progress.stop()
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
            f"[red]error:[/red] {len(summary.failed)} cells failed (warnings above) and were not stored; "
            f"run the same command to retry them",
            markup=True,
        )
        raise typer.Exit(1)


def _print_cells(st, cells, done, path):
    """A table in a terminal; past 200 cells, or piped, one tab-separated line per cell as it
    comes (a Rich table of 10^5 rows took 98 s to lay out and cut the ids to fit 80 columns)."""
    title = f"{st.name}: {st.design}, {len(cells)} cells ({len(cells) // len(st.seeds)} points x {len(st.seeds)} seeds)"
    if out.is_terminal and len(cells) <= 200:
        table = Table(title=title)
        for col in ["cell", "seed", *st.factors, "done"]:
            table.add_column(col, no_wrap=col == "cell")
        for c in cells:
            table.add_row(
                c.id,
                str(c.seed),
                *(escape(str(c.levels[f])) for f in st.factors),
                "yes" if c.id in done else "",
            )
        out.print(table)
    else:
        write = sys.stdout.write
        write(f"# {title}\n" + "\t".join(["cell", "seed", *st.factors, "done"]) + "\n")
        for c in cells:
            write(
                "\t".join(
                    [
                        c.id,
                        str(c.seed),
                        *(str(c.levels[f]) for f in st.factors),
                        "yes" if c.id in done else "",
                    ]
                )
                + "\n"
            )
    n_done = sum(c.id in done for c in cells)
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
    manifest = store.read_manifest(results_dir)
    factors = manifest.get("factor_order") or list(manifest.get("factors") or [])
    factors = [f for f in factors if f in df.columns]
    last = df.sort_values("epoch").groupby("cell", sort=False).tail(1)
    last = last.sort_values([*factors, "seed"], key=lambda s: s.astype(str), kind="stable")
    table = Table(title=f"{results_dir}: {len(last)} cells, final epoch")
    for col in [*factors, "seed", "epoch", metric, "status"]:
        table.add_column(col, justify="right" if col in ("seed", "epoch", metric) else "left")
    for _, r in last.iterrows():
        value = f"{r[metric]:.4f}" if r["status"] == "ok" else f"[yellow]{r[metric]:.4f}[/yellow]"
        table.add_row(
            *(str(r[f]) for f in factors), str(r["seed"]), str(r["epoch"]), value, r["status"]
        )
    out.print(table)


@app.command()
@user_errors
def report(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR"),
    metric: str = typer.Option("test_acc", "--metric", help="test_acc, test_loss or train_loss"),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Where to write (default RESULTS_DIR/_report)."
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Test each effect for equivalence: inside "
        "+-M (the metric's units) by two one-sided t tests, Holm.",
    ),
    halfwidth: float = typer.Option(
        0.005,
        "--halfwidth",
        help="seeds_needed: seeds for a 95% CI of this "
        "half-width (the metric's units; 0.005 = half a point of accuracy).",
    ),
):
    """Charts, CSVs and index.html: does each factor help, by how much, how sure are we."""
    from . import report as reports

    rep = reports.build(results_dir, out_dir, metric, warn, margin, halfwidth)
    out.print(_effects_table(rep, metric, margin))
    for _, r in rep.interactions.iterrows() if len(rep.interactions) else []:
        if r.significant:
            out.print(
                escape(
                    f"interaction: {r.factor}={r.level} vs {r.baseline} is {r.at_baseline:+.4f} at "
                    f"{r.by}={r.by_baseline} but {r.at_level:+.4f} at {r.by}={r.by_level}: difference "
                    f"{r['diff']:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], p Holm {r.p_holm:.3g}"
                )
            )
    for r in rep.sign_changes.itertuples() if rep.sign_changes is not None else []:
        warn(
            f"{r.factor}={r.level} vs {r.baseline} changes sign across the other factors: {r.settings}"
        )
    for r in (
        rep.failures.drop_duplicates("factor").itertuples()
        if rep.failures is not None and len(rep.failures)
        else []
    ):
        if r.differs:
            warn(
                f"failed runs differ across the levels of {r.factor} (Fisher p {r.p_fisher:.3g}, Holm "
                f"{r.p_holm:.3g}): its effects compare the runs that did not diverge; see failures.csv"
            )
    for _, c in rep.claims.iterrows():
        out.print(_claim_line(c))
    out.print(f"report: {rep.path / 'index.html'} ({rep.n_cells} cells, {rep.seconds:.1f}s)")


def _effects_table(rep, metric: str, margin: float | None) -> Table:
    """One row per effect: estimate and CI, Holm p, what these seeds can detect, the verdict."""
    table = Table(
        title=f"effects on final {metric}: level - baseline, paired by seed (95% t CI; Holm over "
        f"{rep.family} tests, effects and interactions)"
    )
    for col in ["effect", "n", "diff [95% CI]", "p Holm", "mde", "seeds", ""]:
        table.add_column(col, justify="left" if col == "effect" else "right", overflow="fold")
    for _, r in rep.effects.iterrows():
        ci = (
            "no spread"
            if r.no_spread
            else "no interval"
            if r.n_pairs < 2
            else f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]"
        )
        others = (
            r.alias[1:].split(":") if r.alias else []
        )  # past two, say its order: a 5-way reads "+ 5-way"
        alias = (
            f" ({r.alias[0]} {r.alias[1:] if len(others) < 3 else f'{len(others)}-way'})"
            if r.alias
            else ""
        )
        verdict = (
            "[green]significant[/green]"
            if r.significant
            else "equivalent"
            if r.equivalent
            else "†"
            if "95% CI excludes" in r.note
            else ""
        )
        table.add_row(
            escape(f"{r.factor}: {r.level} vs {r.baseline}{alias}"),
            str(r.n_pairs),
            f"{r['diff']:+.4f} {ci}",
            f"{r.p_holm:.3g}",
            f"{r.mde:.4f}",
            f"{r.seeds_needed:.0f}",
            verdict,
        )
    notes = [
        f"mde: smallest difference these seeds detect (80% power, 0.05); seeds: for a 95% CI of "
        f"±{rep.halfwidth:g}"
    ]
    if margin:
        notes.append(f"equivalent: inside ±{margin:g} (two one-sided t tests, Holm)")
    if rep.effects["note"].str.contains("95% CI excludes").any():
        notes.append("†: the row's own CI excludes 0, but not after Holm")
    table.caption = "; ".join(notes)
    return table


def _claim_line(c) -> str:
    name = escape(str(c.source or c.where))
    if c.kind in ("at_most", "at_least"):
        said = "at most" if c.kind == "at_most" else "at least"
        mark = "[green]holds[/green]" if c.inside else "[red]does not hold[/red]"
        return (
            f"claim {name}: {said} {c.claimed:.4f}; {c.runs_within} of {c.n_seeds} runs keep to it "
            f"(mean {c['mean']:.4f}) {mark}"
        )
    if c.inside is None:
        return f"claim {name}: {c.claimed:.4f}; n={c.n_seeds}, no interval to compare"
    if c.note:
        mark = "[green]inside[/green]" if c.inside else "[red]outside[/red]"
        return f"claim {name}: {c.claimed:.4f} vs every run {c['mean']:.4f} (n={c.n_seeds}, no spread) {mark}"
    lo, hi, what = (
        (c.pi_low, c.pi_high, "95% prediction interval of one run")
        if c.kind == "point"
        else (c.ci_low, c.ci_high, "95% CI of the mean")
    )
    mark = "[green]inside[/green]" if c.inside else "[red]outside[/red]"
    return (
        f"claim {name}: {c.claimed:.4f} vs measured mean {c['mean']:.4f}, {what} [{lo:.4f}, {hi:.4f}] "
        f"(n={c.n_seeds}) {mark}"
    )


def main():
    sys.exit(app())
