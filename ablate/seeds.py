"""Seeds where they matter: `run --until-halfwidth` adds seeds by Stein's rule, `plan` prices them.

The rule (Stein's two-stage procedure) takes the study's own seeds as its first stage and, from
each main effect's sd over them alone, picks the total once (inference.stein_total: the smallest
n with t(0.975, n0 - 1) * sd / sqrt(n) within the half-width, for every main effect), trains
every design point to it in one more round, and the report's interval of every row is then the
mean over all n seeds +- t(0.975, n0 - 1) * sd / sqrt(n) (inference.estimate with the first
stage marked). n depends only on the first stage's variances, which are independent of the
means: exact coverage under normal noise, whichever effects share the rule
(tests/test_calibration.py). The rounds before it, sized again after every round by the
observed spread, covered 0.87-0.94 where one effect decided or spreads differed. Adding seeds
until p < 0.05 flags a null effect about 16% of the time from 3 seeds up to 10, not 5%.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import analysis, inference, readback, stats
from .design import first_stage
from .errors import AblateError
from .keys import MAX_CELLS, SEED_LIMIT
from .metrics import SECONDS, TEST_ACC, Metric
from .study import Study, n_points

MAX_SEEDS = 30  # --max-seeds' default: past 30 seeds an interval narrows by under 2% a seed
UPPER = 0.95  # plan's upper bound: the spread's one-sided 95% upper confidence limit


def seed_list(study: Study, total: int) -> list[int]:
    """The study's seeds, then the next unused integers, `total` in all: past the largest seed
    while below 2**32 (rng.key folds a seed to its low 32 bits: 2**32 trains as seed 0), then
    the smallest unused from 0."""
    seeds = list(study.seeds)
    used, top = set(seeds), max(seeds, default=-1)
    fresh = (s for s in itertools.chain(range(top + 1, SEED_LIMIT), range(top)) if s not in used)
    return seeds + list(itertools.islice(fresh, max(0, total - len(seeds))))


def analysed(
    path: Path, halfwidth: float, metric: Metric = TEST_ACC, warn=None, seeds=None
) -> tuple:
    """(effects, rows): the main effects of a results folder as its report computes them
    (seeds_needed at `halfwidth`), each with its CI half-width, and the tidy rows they come
    from; `seeds`: from these seeds' runs alone. No files are written."""
    df, design = stats.tidy(readback.read(path, warn)), readback.read_design(path)
    # the report's refusals: plan took epoch, seed and seconds as metrics, and config raised
    analysis.check_request(df, path, metric, None, halfwidth)
    factors, levels, base = analysis.setting(design, df)
    final = stats.final(df)
    if seeds is not None:
        final = final[final["seed"].isin(seeds)]
    if not factors:
        raise AblateError(f"{path}: a study of no factors has no effects to narrow")
    layout = stats.Layout(final, factors, base, levels, metric, _step(design, metric))
    effects = stats.analyse(layout, design.kind or "grid", None, halfwidth).effects.copy()
    width = (effects["ci_high"] - effects["ci_low"]) / 2
    effects["halfwidth"] = np.where(effects["no_spread"], 0.0, width)
    return effects, df


def _step(design, metric: Metric) -> float:
    """The smallest step the metric takes in this folder: one of its test examples for
    accuracy (Metric.step)."""
    return metric.step(analysis.dataset_sizes(design)[1])


def default_halfwidth(path: Path, metric: Metric, warn=None) -> tuple[float, str]:
    """analysis.aimed_halfwidth for a results folder: the half-width the report's seeds_needed
    aims at when none is given, and how it was chosen."""
    df, design = stats.tidy(readback.read(path, warn)), readback.read_design(path)
    analysis.check_request(df, path, metric, None, None)
    halfwidth, said = analysis.aimed_halfwidth(stats.final(df), metric, _step(design, metric))
    if not halfwidth > 0:
        raise AblateError(f"{path}: {said}")
    return halfwidth, said


def spread(effects: pd.DataFrame) -> np.ndarray:
    """Each effect's sd of its per-seed differences, from its t interval's half-width (0 for
    a row without spread; NaN below 2 pairs)."""
    n = effects["n_pairs"].to_numpy(float)
    t = scipy_stats.t.ppf(0.975, np.maximum(n - 1, 1))
    return np.where(n >= 2, effects["halfwidth"].to_numpy(float) * np.sqrt(n) / t, np.nan)


@dataclass
class Rounds:
    """What `run --until-halfwidth` did: every round's seed total, the first the study's own."""

    summary: object  # executor.Summary over every round
    rounds: list[int]
    widest: float  # the widest main effect's Stein half-width after the last round
    capped: bool  # stopped by --max-seeds with some effect still wider


def until_halfwidth(
    study: Study,
    out,
    halfwidth: float,
    max_seeds: int,
    train: Callable,
    metric: Metric = TEST_ACC,
    warn=None,
) -> Rounds:
    """Stein's rule: train the first stage (the study's seeds; on a rerun, those the manifest
    records), then every design point alike (pairing needs them everywhere) to the total the
    first stage's spreads ask for (inference.stein_total), `max_seeds` at most, in one round.
    The rule and its first stage are recorded in the manifest before a round trains, so a rerun
    of the same command first finishes the round a kill cut short and asks for no more; a
    rerun with a smaller H trains on to that H's total, again from the first stage alone.
    `train(study, rule)` runs one round (runner.run with the rule to record) and returns its
    executor.Summary. `metric`: the one whose main effects' half-widths the rule narrows."""
    from . import runner  # torch loads here: `plan` and the report do without it

    if not halfwidth > 0:
        raise AblateError(
            f"--until-halfwidth {metric.shown(halfwidth):g}: expected a positive half-width"
        )
    if max_seeds < len(study.seeds):
        raise AblateError(
            f"--max-seeds {max_seeds}: the study already has {len(study.seeds)} seeds"
        )
    points = n_points(study.design, study.factors)
    if points * max_seeds > MAX_CELLS:  # checked before a seed list of that size is built
        raise AblateError(
            f"--max-seeds {max_seeds:,}: {points:,} design points x {max_seeds:,} seeds is more "
            f"than the {MAX_CELLS:,} cells one study may hold; at most {MAX_CELLS // points:,}"
        )
    path = runner.results_dir(study, out)
    recorded = readback.read_design(path)  # a rule's record: its rounds and first stage
    rounds, by = _recorded_rounds(recorded.rule, len(study.seeds))
    first = sorted(first if (first := first_stage(recorded)) is not None else study.seeds)
    if len(first) < 2:
        raise AblateError(
            f"--until-halfwidth {metric.shown(halfwidth):g}: the study's {len(first)} seed gives "
            "no spread to size the rule from; run it with --seeds 2 or more (5 is usual)"
        )
    total = None
    while True:
        # halfwidth: the H that chose the last round added (a rerun adding none keeps it)
        chose = next((h for h in reversed(by) if h is not None), halfwidth)
        rule = dict(halfwidth=chose, max_seeds=max_seeds, metric=metric.column, rounds=rounds)
        rule.update(by=by, first=first)  # the manifest's order, as before
        summary = train(replace(study, seeds=seed_list(study, rounds[-1])), rule)
        total = _add(total, summary)
        if summary.failed:  # a round with holes cannot be analysed; a rerun retries the cells
            return Rounds(total, rounds, np.nan, False)
        stage = analysed(path, halfwidth, metric, warn, seeds=first)[0]
        std_first, n_first = spread(stage), stage["n_pairs"].to_numpy(float)
        seeds = inference.stein_total(std_first, n_first, halfwidth, max_seeds)
        if seeds <= rounds[-1]:
            widest = _widest(path, std_first, n_first, halfwidth, metric, warn)
            return Rounds(total, rounds, widest, widest > halfwidth)
        rounds, by = [*rounds, seeds], [*by, halfwidth]


def _widest(path: Path, std_first, n_first, halfwidth: float, metric: Metric, warn) -> float:
    """The widest main effect's Stein half-width over every stored seed (its t half-width
    where all are first-stage seeds); inf for a row with no first-stage sd."""
    n = analysed(path, halfwidth, metric, warn)[0]["n_pairs"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        half = scipy_stats.t.ppf(0.975, n_first - 1) * std_first / np.sqrt(n)
    return float(np.max(np.nan_to_num(half, nan=np.inf), initial=0.0))


def _recorded_rounds(recorded: dict, study_seeds: int) -> tuple[list, list]:
    """The rounds a manifest records and the half-width that chose each (None: the study's own
    seeds). A record from before `by` credits every added round to its one `halfwidth`."""
    rounds = [r for r in recorded.get("rounds", []) if isinstance(r, int)] or [study_seeds]
    rounds[-1] = max(rounds[-1], study_seeds)
    by = recorded.get("by")
    if not (isinstance(by, list) and len(by) == len(rounds) and all(map(_is_width, by))):
        h = recorded.get("halfwidth") if _is_width(recorded.get("halfwidth")) else None
        by = [None] + [h] * (len(rounds) - 1)
    return rounds, by


def _is_width(h) -> bool:
    """None or a number: what `by` may hold (a results folder is untrusted input)."""
    return h is None or (isinstance(h, (int, float)) and not isinstance(h, bool))


def _add(before, summary):
    """One executor.Summary for the rounds so far: cells stored before the first round, cells
    trained in any, the last round's total and failures."""
    if before is None:
        return summary
    return replace(
        summary,
        skipped=before.skipped,
        trained=before.trained + summary.trained,
        diverged=before.diverged + summary.diverged,
        seconds=before.seconds + summary.seconds,
    )


def cell_seconds(df: pd.DataFrame) -> pd.Series:
    """Each cell's training time: its epochs' wall time over the cells it trained with. Cells
    trained as one group share every epoch's `seconds` exactly, so equal sequences mark them."""
    per_cell = df.sort_values("epoch").groupby("cell")[SECONDS.column].agg(tuple)
    sharing = per_cell.map(per_cell.value_counts())
    return per_cell.map(sum) / sharing


COUNTS = {  # plan's counts: cost key -> effects column
    "observed": "seeds_needed",
    "assured": "seeds_80",
    "upper": "seeds_upper",
    "stein": "seeds_stein",
}


def counts(std: float, n: int, halfwidth: float) -> dict:
    """One effect's seeds for a 95% CI within +-halfwidth, from a pilot's sd over n seeds: at
    the sd (seeds_needed: about half of new studies of that many seeds reach it), in 80% of
    them (seeds_80: inference.seeds_assured), at the sd's one-sided 95% upper limit
    (seeds_upper: about 95%), and the total `run --until-halfwidth` trains to from these
    seeds (seeds_stein: its Stein interval is within it every time)."""
    df = max(n - 1, 1)
    upper = std * np.sqrt(df / scipy_stats.chi2.ppf(1 - UPPER, df))
    return dict(
        seeds_needed=inference.seeds_needed(std, halfwidth),
        seeds_80=inference.seeds_assured(std, n, halfwidth),
        std_upper=upper,
        seeds_upper=inference.seeds_needed(upper, halfwidth),
        seeds_stein=inference.stein_seeds(std, n, halfwidth),
    )


def plan(path: Path, halfwidth: float | None, metric: Metric = TEST_ACC, warn=None) -> tuple:
    """(effects, cost) for a pilot's results folder: per main effect its sd and `counts` for
    a 95% CI of half-width `halfwidth` (None: the report's default for the metric, in its
    units; cost["halfwidth"] says which), and what the study would cost at each count's
    largest (cells, hours)."""
    if halfwidth is not None and not halfwidth > 0:
        raise AblateError(
            f"--halfwidth {metric.shown(halfwidth):g}: expected a positive half-width"
        )
    said = ""
    if halfwidth is None:
        halfwidth, said = default_halfwidth(path, metric, warn)
    effects, df = analysed(path, halfwidth, metric, warn)
    if not (effects["n_pairs"] >= 2).any():  # no spread to plan from: "0 more to train" said
        raise AblateError(
            f"{path}: each effect pairs at most {effects['n_pairs'].max()} run across its "
            "levels; a spread needs at least 2 seeds: rerun the pilot with --seeds 2 or more"
        )
    std = spread(effects)
    rows = [counts(s, n, halfwidth) for s, n in zip(std, effects["n_pairs"], strict=True)]
    counted = pd.DataFrame(rows, index=effects.index).drop(columns="seeds_needed")  # the report's
    effects = effects.assign(std=std, **counted)
    final = stats.final(df)
    points = final.groupby(stats.factor_columns(df), dropna=False).ngroups
    seeds_now = final["seed"].nunique()
    per_cell = float(cell_seconds(df).mean())
    cost = {}
    for name, column in COUNTS.items():
        seeds = np.nanmax(effects[column]) if effects[column].notna().any() else 0
        seeds = int(max(seeds, seeds_now)) if np.isfinite(seeds) else None
        cells = points * seeds if seeds else None
        extra = cells - final["cell"].nunique() if cells else None
        cost[name] = dict(
            seeds=seeds,
            cells=cells,
            to_train=extra,
            hours=extra * per_cell / 3600 if extra is not None else None,
        )
    return effects, dict(
        halfwidth=halfwidth,
        halfwidth_said=said,
        points=points,
        seeds=seeds_now,
        cell_seconds=per_cell,
        **cost,
    )
