"""The metrics a run measures, as values: each one's column, direction, unit and resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import AblateError

HALF_POINT = 0.005  # the default half-width for a fraction: the precision tutorials quote


@dataclass(frozen=True)
class Metric:
    """One number a run records per epoch. Everything that reads, analyses or prints a metric
    takes this value; nothing tests a metric's name."""

    column: str  # the Parquet column that holds it
    label: str  # how a sentence names it: "test accuracy"
    higher: bool = True  # higher is better (accuracy); False where lower is (a loss)
    fraction: bool = False  # in [0, 1] and shown in points (percent): 0.9730 reads 97.30
    per_example: bool = False  # takes steps of one test example: resolution 1 / test size
    resolution: float = 0.0  # the smallest step it takes where it is fixed; 0 where unknown
    outcome: bool = True  # a per-cell outcome an analysis may take (False: a group's wall time)

    def step(self, test_size: int | None) -> float:
        """The smallest step this metric takes: one of `test_size` examples for accuracy, its
        fixed resolution otherwise, 0 where unknown."""
        if self.per_example and test_size:
            return 1 / test_size
        return self.resolution

    @property
    def unit(self) -> str:
        """' points' after a difference of a fraction, '' for any other metric."""
        return " points" if self.fraction else ""

    @property
    def scale(self) -> float:
        """What one stored unit is worth as printed: 100 for a fraction (points), else 1."""
        return 100.0 if self.fraction else 1.0

    def shown(self, value: float) -> float:
        """A stored value (or a difference of two) as pages, tables and options give it."""
        return value * self.scale

    def stored(self, value: float | None) -> float | None:
        """An option typed as printed (points for a fraction) in the stored units."""
        return None if value is None else value / self.scale

    @property
    def sign(self) -> float:
        """+1 where higher is better, -1 where lower is: sign * difference > 0 is an improvement."""
        return 1.0 if self.higher else -1.0

    def default_halfwidth(self, mean: float, step: float) -> tuple[float, str]:
        """The half-width a plan aims at when none is given, and how it was chosen: half a
        point for a fraction, or one step where that is coarser (xor's 4 test samples asked
        for 3,097 seeds at half a point); else 1% of |mean| to one significant figure."""
        if self.fraction:
            if step > HALF_POINT:
                return step, f"the default for {self.column}: one test sample, its resolution"
            return HALF_POINT, f"the default for {self.column}: half a point"
        mean = abs(mean)
        if not mean > 0 or not math.isfinite(mean):
            return math.nan, f"no default for {self.column}: its mean is 0; give --halfwidth"
        return float(f"{0.01 * mean:.1g}"), f"the default for {self.column}: 1% of its mean"


TEST_ACC = Metric("test_acc", "test accuracy", fraction=True, per_example=True)
TEST_LOSS = Metric("test_loss", "test loss", higher=False)
TRAIN_LOSS = Metric("train_loss", "training loss", higher=False)
# cells trained together share one group's wall time: shown, never analysed per cell
SECONDS = Metric("seconds", "seconds per epoch", higher=False, outcome=False)

# the built-in recipe's metrics, in the store's column order; a study's own join them
BUILT_IN = {m.column: m for m in (TRAIN_LOSS, TEST_LOSS, TEST_ACC, SECONDS)}
OUTCOMES = {name: m for name, m in BUILT_IN.items() if m.outcome}


def lookup(name: str | Metric, where: str, known: dict[str, Metric] = OUTCOMES) -> Metric:
    """The metric called `name` among `known`, or one line naming `where` and the choices. A
    Metric passes where `known` holds it under its column (a non-outcome one is refused)."""
    if isinstance(name, Metric):
        if known.get(name.column) == name:
            return name
        name = name.column
    if isinstance(name, str) and name in known:
        return known[name]
    if isinstance(name, str) and name in BUILT_IN and not BUILT_IN[name].outcome:
        raise AblateError(
            f"{where}: '{name}' is not a per-cell outcome (cells trained together share one "
            f"wall time); try {', '.join(known)}"
        )
    raise AblateError(f"{where}: no metric '{name}'; try {', '.join(known)}")
