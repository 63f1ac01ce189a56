"""A run's progress for a person: a Rich bar, in a terminal or a Jupyter cell."""

from __future__ import annotations

import rich.progress as bars
from rich.console import Console
from rich.markup import escape


def describe(levels: dict) -> str:
    return escape(", ".join(f"{k}={v}" for k, v in levels.items()) or "base")  # Rich would eat [..]


class RichProgress:
    """Cells done of total with ETA, and the current cell's epoch and loss."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = bars.Progress(
            bars.TextColumn("{task.description}"),
            bars.BarColumn(),
            bars.MofNCompleteColumn(),
            bars.TimeElapsedColumn(),
            bars.TextColumn("eta"),
            bars.TimeRemainingColumn(),
            bars.TextColumn("{task.fields[now]}"),
            console=console,
            transient=False,
        )
        self.task, self.epochs = None, 0

    def start(self, total, todo, device):
        self.console.print(
            f"training {todo} of {total} cells on {device} ({total - todo} already done)"
        )
        if self.task is not None:  # --until-halfwidth's next round: the same bar, a new total
            self.bar.update(self.task, total=total, completed=total - todo)
            return
        self.bar.start()
        self.task = self.bar.add_task("cells", total=total, completed=total - todo, now="")

    def cell_start(self, cell):
        self.epochs = cell.config["epochs"]
        self.bar.update(self.task, now=f"{cell.id[:8]} seed {cell.seed} {describe(cell.levels)}")

    def epoch(self, cell, epoch, loss):
        self.bar.update(
            self.task,
            now=f"{cell.id[:8]} seed {cell.seed} {describe(cell.levels)}: "
            f"epoch {epoch}/{self.epochs} loss {loss:.4f}",
        )

    def cell_done(self, cell, rows):
        self.bar.advance(self.task)
        if rows[-1]["status"] == "diverged":
            self.console.print(
                f"[yellow]diverged:[/yellow] cell {cell.id} ({describe(cell.levels)}, "
                f"seed {cell.seed}) at epoch {rows[-1]['epoch']}; the study goes on"
            )

    def warn(self, message):
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def stop(self):
        self.bar.stop()
