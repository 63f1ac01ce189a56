"""Groups as Ray tasks over a cluster; rows come back to the driver, the store's only writer."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import torch

from . import data as datasets
from . import engine, loop
from .errors import AblateError
from .executor import Outcome, Predicting, RunOptions, same_test_set
from .study import Cell, Study, own_values

INSTALL = 'pip install "ablate[ray]"'
RETRIES = 3  # a group whose worker dies runs again up to 3 times, then is recorded as failed
POLL = 0.5  # seconds between looks at the epoch events while groups train

# in a worker process: the dataset on its device, kept across groups
_DATA: dict[str, datasets.Data] = {}


def _ray():
    try:
        import ray
    except ImportError:
        raise AblateError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _worker(data_box: list, deterministic: bool) -> tuple[datasets.Data, torch.device]:
    """This worker's device and the dataset on it. The uint8 tensors come from the object store
    once per worker process (one copy per node); later groups find them already on the device."""
    ray = _ray()
    device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
    if device.type == "cpu":  # as many threads as CPUs the task reserved, not the node's count
        torch.set_num_threads(
            max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        )
    engine.configure(deterministic)
    key = data_box[0].hex()
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = datasets.to_device(ray.get(data_box[0]), device)
    return _DATA[key], device


def _train_group(
    group: list[Cell], model, source: str, data_box: list, deterministic: bool, events, predict
) -> tuple[list[list[dict]], dict | None] | None:
    """The group's rows and, where `predict`, its cells' final test predictions (Outcome's), or
    None where it ran out of memory: returned, not raised, so that the driver splits the group."""
    device = None
    try:
        data, device = _worker(data_box, deterministic)
        on_epoch = (
            (lambda c, epoch, loss: events.put_nowait((c.id, epoch, loss)))
            if events is not None
            else None
        )
        with loop.keep_predictions(predict) as kept:
            rows = engine.train(group, data, model, device, on_epoch, source)
        return rows, kept
    except torch.OutOfMemoryError:
        return None
    finally:
        if device is not None and device.type == "cuda":  # the process stays; others share the GPU
            torch.cuda.empty_cache()


def _auto_group(cells: list[Cell], model, data_box: list) -> int:
    data, device = _worker(data_box, False)
    return engine.auto_group(cells, data, device, model)


class Pool:
    """Submits groups as Ray tasks and hands back each group's outcome as it finishes."""

    def __init__(self, study: Study, options: RunOptions):
        ray = self.ray = _ray()
        self.study, self.progress = study, options.progress
        self.deterministic = options.deterministic
        self.data_dir, self.boxes = options.data_dir, {}  # own keys' setting -> [its data in Ray]
        self.predictions = False  # the runner turns it on: keep each cell's final test predictions
        self.same_test = {}  # own keys' setting -> whether its test labels are the base's
        self.test_sets = Predicting(study, options.progress)
        self.device = None  # Ray's workers pick their own devices: no group is formed for one
        data = self.data = self._data(study.base)  # a missing dataset fails before Ray starts
        self.shape, self.classes = data.shape, data.classes
        self._connect(options.address)
        try:
            self._plan(options.device, options.address, options.groups_per_gpu)
            if module := sys.modules.get(f"ablate_study_{Path(study.source).stem}"):
                from ray import cloudpickle  # workers cannot import a study file by name: ship it

                cloudpickle.register_pickle_by_value(module)
            self.boxes[self._setting(study.base)] = [ray.put(data)]  # a list: fetched once
            self.same_test[self._setting(study.base)] = True
            from ray.util.queue import Queue

            self.events = Queue(actor_options={"num_cpus": 0})
            self.task = ray.remote(max_calls=0 if self.reuse else 1)(_train_group)
        except BaseException:
            ray.shutdown()
            raise
        self.pending: dict = {}  # task reference -> group
        self.cells: dict[str, Cell] = {}

    def _setting(self, config: dict) -> str:
        return json.dumps(own_values(self.study, config), sort_keys=True, default=list)

    def _data(self, config: dict) -> datasets.Data:
        own = own_values(self.study, config)
        return datasets.study_data(self.study.dataset, own, "cpu", self.data_dir, self.study.source)

    def data_box(self, config: dict) -> list:
        """The dataset for cells of this config in Ray's object store, in a list (so tasks get
        the reference and fetch it once per worker); put there once per own keys' setting."""
        if (setting := self._setting(config)) not in self.boxes:
            data = self._data(config)
            self.same_test[setting] = same_test_set(data, self.data)
            self.boxes[setting] = [self.ray.put(data)]
        return self.boxes[setting]

    def _predicts(self, config: dict) -> bool:
        """Whether a group's predictions are kept: asked for, and on the base's test set."""
        return self.predictions and self.test_sets.keep(self.same_test[self._setting(config)])

    def _connect(self, address: str | None) -> None:
        # "local" starts a fresh instance even when one from `ray start` is running; shutdown()
        # stops it again, or only disconnects from a cluster given by --address
        try:
            self.ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
            )
        except Exception as e:
            raise AblateError(
                f"--address {address or 'local'}: cannot start or reach Ray: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None

    def _plan(self, device: torch.device | None, address: str | None, groups_per_gpu: int) -> None:
        """Where groups run: GPUs unless the device is cpu (Ray, not the index, picks the GPU)."""
        res = self.ray.cluster_resources()
        self.cpus, self.gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
        self.where = f"Ray cluster at {address}" if address else "local Ray instance"
        if device is not None and device.type == "cuda" and not self.gpus:
            raise AblateError(f"--device {device}: the {self.where} has no GPU")
        use_gpu = self.use_gpu = self.gpus > 0 and (device is None or device.type == "cuda")
        self.per_gpu = groups_per_gpu if use_gpu else 1
        self.options = dict(
            num_cpus=1, num_gpus=1 / groups_per_gpu if use_gpu else 0, max_retries=RETRIES
        )
        self.slots = max(1, min(self.cpus, self.gpus * groups_per_gpu) if use_gpu else self.cpus)
        # A worker process keeps its data across groups (max_calls=0), but CUDA binds a process to
        # the GPU it first used, while Ray may give a reused worker another GPU of the same node.
        # So workers are reused where no node has two GPUs; elsewhere each group gets a fresh one.
        per_node = max(
            (n["Resources"].get("GPU", 0) for n in self.ray.nodes() if n["Alive"]), default=0
        )
        self.reuse = not use_gpu or per_node <= 1

    def label(self) -> str:
        per = f"{self.per_gpu} groups per GPU" if self.use_gpu else "1 CPU per group"
        return f"ray, {self.where}: {self.cpus} CPUs, {self.gpus} GPUs, {per}"

    def memory(self) -> str:
        return "GPU" if self.use_gpu else "worker"

    def check(self, todo: list[Cell]) -> None:
        """Each shape's model of the built-in kinds; a study's own model runs on the workers
        only (it may end its process on purpose)."""
        engine.check_models(self.study, todo, self.shape, self.classes, own=False)

    def auto_group(self, todo: list[Cell]) -> int:
        """What one worker's device holds (asked of a worker: the driver may have no GPU), shared by
        the groups on one GPU, and smaller where that leaves slots idle: 8 cells of one shape on 2
        slots train as 2 groups of 4."""
        task = self.ray.remote(_auto_group).options(**self.options)
        try:
            box = self.data_box(todo[0].config)
            fits = self.ray.get(task.remote(todo[:1], self.study.model, box))
        except self.ray.exceptions.RayError as e:
            raise AblateError(
                f"--executor ray: a worker could not load {self.study.dataset} onto its device: "
                f"{str(e).strip().splitlines()[-1]}"
            ) from None
        return max(1, min(fits // self.per_gpu, math.ceil(len(todo) / self.slots)))

    def submit(self, group: list[Cell]) -> None:
        ref = self.task.options(**self.options).remote(
            group,
            self.study.model,
            self.study.source,
            self.data_box(group[0].config),
            self.deterministic,
            self.events,
            self._predicts(group[0].config),
        )
        self.pending[ref] = group
        self.cells.update((c.id, c) for c in group)

    def __len__(self) -> int:
        return len(self.pending)

    def next(self) -> Outcome:
        """Wait for any group to end: trained, out of memory, or failed once Ray gave up."""
        while True:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL)
            self._show_events()
            if ready:
                return self._outcome(ready[0])

    def drain(self) -> list[Outcome]:
        """The groups trained but not yet collected (on Ctrl-C), so that none is lost."""
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        return [out for out in map(self._outcome, ready) if out.rows is not None]

    def _outcome(self, ref) -> Outcome:
        """How a finished task's group ended; a user error raised in the worker is raised here."""
        ray, rows, error, out_of_memory, kept = self.ray, None, None, False, None
        try:
            trained = ray.get(ref)
            out_of_memory = trained is None  # _train_group's answer to torch.OutOfMemoryError
            rows, kept = trained or (None, None)
        except ray.exceptions.RayTaskError as e:  # the group's own exception, raised in the worker
            if isinstance(e.cause, AblateError):
                self.pending.pop(ref)
                raise e.cause from None
            out_of_memory = isinstance(e.cause, torch.OutOfMemoryError)
            error = None if out_of_memory else f"{type(e.cause).__name__}: {e.cause}"
        except ray.exceptions.OutOfMemoryError:  # Ray's memory monitor killed the worker
            out_of_memory = True
        except ray.exceptions.RayError as e:  # its worker died RETRIES + 1 times, or its node did
            error = f"{type(e).__name__} after {RETRIES} retries: {str(e).strip().splitlines()[0]}"
        return Outcome(self.pending.pop(ref), rows, error, out_of_memory, kept)

    def _show_events(self) -> None:
        n = self.events.qsize()
        for cell_id, epoch, loss in self.events.get_nowait_batch(n) if n else []:
            cell = self.cells[cell_id]
            self.progress.cell_start(cell)
            self.progress.epoch(cell, epoch, loss)

    def close(self) -> None:
        """Cancel what still runs (Ctrl-C, an error) and stop the Ray instance this run started."""
        for ref in self.pending:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # a lost cluster cannot cancel; shutdown still disconnects
                pass
        self.ray.shutdown()
