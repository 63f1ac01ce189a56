"""What a run is told and tells: its options, the Executor it trains on, each group's Outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .errors import AblateError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .sources import Data
    from .study import Cell, Study


class Kind(NamedTuple):
    about: str  # what it does, in --help's words (Rich reads [ray] as markup)
    cluster: bool  # joins a cluster (--address) whose GPUs groups may share (--groups-per-gpu)


# each executor's name and kind, torch-free for the CLI's choices; runner.EXECUTORS maps each
# name to the class it builds
KINDS = {
    "local": Kind("this process, one group after another", cluster=False),
    "ray": Kind('groups as Ray tasks (pip install "ablate\\[ray]")', cluster=True),
}


class Progress:
    """What the runner tells its caller; the CLI draws it with Rich. Every method is optional."""

    def start(self, total: int, todo: int, machine: str) -> None: ...
    def cell_start(self, cell: Cell) -> None: ...
    def epoch(self, cell: Cell, epoch: int, train_loss: float) -> None: ...
    def cell_done(self, cell: Cell, rows: list[dict]) -> None: ...
    def warn(self, message: str) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How a study is run, apart from the study: what `ablate run` and `ablate.run` build.
    `device`: "auto", "cpu", "cuda", "cuda:N" or a torch.device. `predictions`: store each
    cell's argmax class per test example at its final epoch (predictions.PREDICTIONS); neither it
    nor its absence enters a cell's id, so a rerun with the other setting resumes."""

    out: str | Path = "results"  # the results go to OUT/<study name>/
    device: str | torch.device | None = "auto"
    max_group: int | None = None  # most cells trained together; None: from free memory
    deterministic: bool = False  # bitwise-repeatable kernels
    data_dir: str | Path | None = None  # where the datasets' files are
    executor: str = "local"  # a name in KINDS
    address: str | None = None  # the cluster an executor joins (ray); None: it starts its own
    groups_per_gpu: int = 1  # groups sharing one GPU, where an executor shares them (ray)
    predictions: bool = True
    progress: Progress = field(default_factory=Progress)  # where the run says how it goes

    def __post_init__(self):
        if self.executor not in KINDS:
            raise AblateError(f"--executor {self.executor}: expected {' or '.join(KINDS)}")
        if self.groups_per_gpu < 1:
            raise AblateError(f"--groups-per-gpu {self.groups_per_gpu}: expected 1 or more")
        if self.address and not KINDS[self.executor].cluster:
            clusters = " or ".join(name for name, kind in KINDS.items() if kind.cluster)
            raise AblateError(f"--address {self.address}: only used with --executor {clusters}")


@dataclass
class Summary:
    total: int
    skipped: int
    trained: int = 0
    diverged: list[str] = field(default_factory=list)
    # cell ids whose group failed; a rerun tries them
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


class Executor(Protocol):
    """Where groups train: local.Local (this process) or cluster.Pool (Ray tasks), each built
    from the study and the RunOptions. run() submits the groups and takes back each one's
    Outcome while the executor has any."""

    shape: tuple[int, ...]  # the dataset's image shape and class count, for engine.check_models
    classes: int
    data: Data  # the dataset at the study's baseline (a dataset callable's, at its own defaults)
    predictions: bool  # keep each cell's final test predictions in its Outcome; the runner sets it
    # the device groups are formed for (runner.groups); None where workers pick their own
    device: torch.device | None

    def label(self) -> str:
        """The machine in words, for the manifest and the progress line."""
        ...

    def memory(self) -> str:
        """The memory a group runs out of, in words: cpu, cuda:0, GPU, worker."""
        ...

    def check(self, todo: list[Cell]) -> None:
        """Each shape's model built where this executor can build it, before anything is
        written: one that does not fit the data fails as one line (engine.check_models)."""
        ...

    def auto_group(self, todo: list[Cell]) -> int: ...
    def submit(self, group: list[Cell]) -> None: ...
    def __len__(self) -> int: ...

    def next(self) -> Outcome:
        """Wait for a group to end (train it, for Local)."""
        ...

    def drain(self) -> list[Outcome]:
        """The groups trained but not yet collected (on Ctrl-C), so that none is lost."""
        ...

    def close(self) -> None: ...


def same_test_set(data: Data, base: Data) -> bool:
    """Whether `data` tests on the base's test labels, which _predictions/labels.parquet holds: a
    dataset callable may return another test set per setting of the study's own keys."""
    if data is base:
        return True
    mine, theirs = data.test_y.cpu(), base.test_y.cpu()
    return mine.shape == theirs.shape and bool((mine == theirs).all())


class Predicting:
    """Whether a group's test predictions can be kept: on the base's test set only, as
    labels.parquet holds its labels; the first setting of the study's own keys that tests on
    other labels is said once."""

    def __init__(self, study: Study, progress: Progress):
        self.study, self.progress, self.said = study, progress, False

    def keep(self, same: bool) -> bool:
        """`same`: whether the group tests on the base's labels (same_test_set)."""
        if not same and not self.said:
            self.said = True
            self.progress.warn(
                f"{self.study.source}: a setting of the study's own keys gives the dataset "
                "another test set than the base's; its cells' test predictions are not stored"
            )
        return same
