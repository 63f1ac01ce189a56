"""Groups trained one after another in this process, and the Outcome every executor returns."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import data as datasets
from . import engine, loop
from .cores import CoreShare
from .study import Cell, Study, own_values

if TYPE_CHECKING:
    from .runner import Progress


@dataclass(frozen=True)
class Outcome:
    """How a group ended: trained (`rows`, one list of epochs per cell; `predictions`, each ok
    cell's argmax class per test example at its final epoch, {cell id: int16 [N]}, where the run
    keeps them), out of memory (split it and retry the halves), or failed (`error` says why;
    recorded, never retried)."""

    group: list[Cell]
    rows: list[list[dict]] | None = None
    error: str | None = None
    out_of_memory: bool = False
    predictions: dict[str, np.ndarray] | None = None


def same_test_set(data: datasets.Data, base: datasets.Data) -> bool:
    """Whether `data` tests on the base's test labels, which _predictions/labels.parquet holds: a
    dataset callable may return another test set per setting of the study's own keys."""
    return data is base or torch.equal(data.test_y.cpu(), base.test_y.cpu())


def other_test_set(study: Study) -> str:
    return (
        f"{study.source}: a setting of the study's own keys gives the dataset another test set "
        "than the base's; its cells' test predictions are not stored"
    )


def device_name(device: torch.device) -> str:
    """The device in words, as a run's manifest records it and its progress line shows it."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class Local:
    """Trains queued groups one after another in this process, on one device."""

    def __init__(
        self,
        study: Study,
        device: torch.device | None,
        deterministic: bool,
        data_dir,
        progress: Progress,
    ):
        self.study, self.progress, self.queue = study, progress, []
        self.predictions = False  # the runner turns it on: keep each cell's final test predictions
        self.other_test_set = False  # said once: a setting of own keys tests on other labels
        self.device = engine.pick_device(device)  # None is "auto": the GPU where there is one
        engine.configure(deterministic)
        self.data_dir = data_dir
        self.cores = CoreShare() if self.device.type == "cpu" else None
        self.data = self.data_for(study.base)
        self.shape, self.classes = self.data.shape, self.data.classes

    def data_for(self, config: dict) -> datasets.Data:
        """The dataset for cells of this config: one per setting of the study's own keys when a
        dataset callable takes a config (a group's cells share it: fused.shape_key)."""
        own = own_values(self.study, config)
        return datasets.study_data(
            self.study.dataset, own, self.device, self.data_dir, self.study.source
        )

    def label(self) -> str:
        return device_name(self.device)

    def memory(self) -> str:
        return str(self.device)

    def auto_group(self, todo: list[Cell]) -> int:
        return engine.auto_group(todo, self.data_for(todo[0].config), self.device, self.study.model)

    def submit(self, group: list[Cell]) -> None:
        self.queue.append(group)

    def __len__(self) -> int:
        return len(self.queue)

    def next(self) -> Outcome:
        """Train the next group: its rows, or out of memory."""
        group = self.queue.pop()  # last in, first out: the halves of a split group go next
        for cell in group:
            self.progress.cell_start(cell)
        on_epoch = self.progress.epoch
        if self.cores:  # threads for the cores other processes leave free, looked at each epoch
            self.cores.adjust()
            on_epoch = self._epoch
        data = self.data_for(group[0].config)
        try:
            with loop.keep_predictions(self._predicts(data)) as kept:
                rows = engine.train(
                    group, data, self.study.model, self.device, on_epoch, self.study.source
                )
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return Outcome(group, out_of_memory=True)
        return Outcome(group, rows, predictions=kept)

    def _predicts(self, data: datasets.Data) -> bool:
        """Whether this group's predictions are kept: asked for, and on the base's test set."""
        if not self.predictions or same_test_set(data, self.data):
            return self.predictions
        if not self.other_test_set:
            self.other_test_set = True
            self.progress.warn(other_test_set(self.study))
        return False

    def _epoch(self, cell: Cell, epoch: int, train_loss: float) -> None:
        self.cores.adjust()
        self.progress.epoch(cell, epoch, train_loss)

    def drain(self) -> list[Outcome]:
        return []  # a group trains inside next(): none is ever finished and uncollected

    def close(self) -> None:
        if self.cores:
            self.cores.restore()
