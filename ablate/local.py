"""Groups trained one after another in this process, on one device."""

from __future__ import annotations

import platform

import torch

from . import data as datasets
from . import engine, loop
from .cores import CoreShare
from .executor import Outcome, Predicting, RunOptions, same_test_set
from .study import Cell, Study, own_values


def device_name(device: torch.device) -> str:
    """The device in words, as a run's manifest records it and its progress line shows it."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class Local:
    """Trains queued groups one after another in this process, on one device."""

    def __init__(self, study: Study, options: RunOptions):
        """`options.device`: None is "auto", the GPU where there is one."""
        self.study, self.progress, self.queue = study, options.progress, []
        self.predictions = False  # the runner turns it on: keep each cell's final test predictions
        self.test_sets = Predicting(study, options.progress)
        self.device = engine.pick_device(options.device)
        engine.configure(options.deterministic)
        self.data_dir = options.data_dir
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

    def check(self, todo: list[Cell]) -> None:
        """Each shape's model, a study's own too (it trains in this process); where an own model
        will train cell by cell on a device that would fuse it, said once."""
        engine.check_models(self.study, todo, self.shape, self.classes)
        if problem := engine.unfused(self.study, todo, self.device, self.shape, self.classes):
            self.progress.warn(problem)

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
            keep = self.predictions and self.test_sets.keep(same_test_set(data, self.data))
            with loop.keep_predictions(keep) as kept:
                rows = engine.train(
                    group, data, self.study.model, self.device, on_epoch, self.study.source
                )
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return Outcome(group, out_of_memory=True)
        return Outcome(group, rows, predictions=kept)

    def _epoch(self, cell: Cell, epoch: int, train_loss: float) -> None:
        self.cores.adjust()
        self.progress.epoch(cell, epoch, train_loss)

    def drain(self) -> list[Outcome]:
        return []  # a group trains inside next(): none is ever finished and uncollected

    def close(self) -> None:
        if self.cores:
            self.cores.restore()
