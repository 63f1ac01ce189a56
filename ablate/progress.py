"""A run's progress for a person: a Rich bar, in a terminal or a Jupyter cell."""

from __future__ import annotations

import html
import sys
import time

import rich.progress as bars
from rich.console import Console
from rich.markup import escape


def levels_text(levels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in levels.items()) or "base"


def describe(levels: dict) -> str:
    return escape(levels_text(levels))  # Rich would eat [..]


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


def in_notebook() -> bool:
    """A Jupyter kernel runs this: IPython's shell there is the ZMQ one."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class NotebookProgress:
    """Cells done of total in a Jupyter cell: one display updated in place, at most twice a
    second, so the cell's output holds one bar and not a line per epoch (no ipywidgets)."""

    def __init__(self, every: float = 0.5):
        self.every, self.last, self.handle = every, 0.0, None
        self.total = self.done = 0
        self.machine, self.now, self.notes, self.started = "", "", [], time.perf_counter()

    def start(self, total, todo, machine):
        from IPython.display import display

        self.total, self.done, self.machine = total, total - todo, machine
        self.started = time.perf_counter()
        if self.handle is None:  # --until-halfwidth's next round: the same display
            self.handle = display(self._data(), raw=True, display_id=True)
        self._draw(force=True)

    def cell_start(self, cell):
        self.now = f"{cell.id[:8]} seed {cell.seed} {levels_text(cell.levels)}"
        self._draw()

    def epoch(self, cell, epoch, loss):
        self.now = f"{cell.id[:8]} seed {cell.seed} {levels_text(cell.levels)}: epoch {epoch}, "
        self.now += f"loss {loss:.4f}"
        self._draw()

    def cell_done(self, cell, rows):
        self.done += 1
        diverged = rows[-1]["status"] == "diverged"
        if diverged:
            self.notes.append(
                f"diverged: cell {cell.id} ({levels_text(cell.levels)}, seed {cell.seed}) at epoch "
                f"{rows[-1]['epoch']}; the study goes on"
            )
        self._draw(force=diverged)  # a new note shows at once; the count can wait

    def warn(self, message):
        self.notes.append(f"warning: {message}")
        self._draw(force=True)

    def stop(self):
        self.now = ""
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        clock = time.perf_counter()
        if self.handle is None or (not force and clock - self.last < self.every):
            return
        self.last = clock
        self.handle.update(self._data(), raw=True)

    def _data(self) -> dict:
        """The same line as HTML (a <progress> bar) and as text, for whatever renders it."""
        elapsed = time.perf_counter() - self.started
        line = f"{self.done}/{self.total} cells on {self.machine}, {elapsed:.0f} s"
        text = "\n".join([line, *([self.now] if self.now else []), *self.notes])
        notes = "".join(
            f"<br><span style='color:#a15c00'>{html.escape(n)}</span>" for n in self.notes
        )
        bar = f"<progress value={self.done} max={max(self.total, 1)}></progress>"
        now = f"<br><code>{html.escape(self.now)}</code>" if self.now else ""
        return {
            "text/plain": text,
            "text/html": f"<div>{bar} {html.escape(line)}{now}{notes}</div>",
        }
