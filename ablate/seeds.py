"""Seeds where they matter: `run --until-halfwidth` adds seeds in rounds, `plan` prices them.

The rule stops on each main effect's 95% CI *width*, never on its verdict: how wide an interval
is says nothing about which side of zero it lies, so the intervals keep their coverage
(tests/test_calibration.py simulates it). Adding seeds until p < 0.05 does not: from 3 seeds up
to 10, one at a time, it flags a null effect about 16% of the time, not 5%.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import inference, report, stats, store
from .study import MAX_CELLS, SEED_LIMIT, AblateError, Study, n_points

RULE = "until_halfwidth"  # the manifest's record of the rule and its rounds
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


def analysed(path: Path, halfwidth: float, metric: str = "test_acc", warn=None) -> tuple:
    """(effects, rows): the main effects of a results folder as its report computes them
    (seeds_needed at `halfwidth`), each with its CI half-width, and the tidy rows they come
    from; no files are written."""
    df, design = stats.tidy(store.read(path, warn)), store.read_design(path)
    # the report's refusals: plan took epoch, seed and seconds as metrics, and config raised
    report.check_request(df, path, metric, None, halfwidth)
    factors, levels, base = report.setting(design, df)
    final = stats.final(df)
    if not factors:
        raise AblateError(f"{path}: a study of no factors has no effects to narrow")
    classes, test_size = report.dataset_sizes(design)
    resolution = 1 / test_size if metric == "test_acc" and test_size else 0.0
    analysis = stats.analyse(
        final, factors, base, levels, metric, design.kind or "grid", resolution, None, halfwidth
    )
    effects = analysis.effects.copy()
    width = (effects["ci_high"] - effects["ci_low"]) / 2
    effects["halfwidth"] = np.where(effects["no_spread"], 0.0, width)
    return effects, df


@dataclass
class Rounds:
    """What `run --until-halfwidth` did: every round's seed total, the first the study's own."""

    summary: object  # runner.Summary over every round
    rounds: list[int]
    widest: float  # the widest main effect's half-width after the last round
    capped: bool  # stopped by --max-seeds with some effect still wider


def until_halfwidth(
    study: Study,
    out,
    halfwidth: float,
    max_seeds: int,
    train: Callable,
    metric: str = "test_acc",
    warn=None,
) -> Rounds:
    """Train the study's seeds, then rounds of more seeds for every design point alike (pairing
    needs them everywhere) until every main effect's 95% CI half-width is at most `halfwidth`
    or `max_seeds` seeds are stored. Each round is recorded in the manifest before it trains, so
    a rerun of the same command first finishes the round a kill cut short. `train(study, rule)`
    runs one round (runner.run with the rule to record) and returns its runner.Summary."""
    from . import runner  # torch loads here: `plan` and the report do without it

    if not halfwidth > 0:
        raise AblateError(f"--until-halfwidth {halfwidth}: expected a positive half-width")
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
    rounds, by = _recorded_rounds(store.read_manifest(path).get(RULE) or {}, len(study.seeds))
    total = None
    while True:
        # halfwidth: the H that chose the last round added (a rerun adding none keeps it)
        chose = next((h for h in reversed(by) if h is not None), halfwidth)
        rule = dict(halfwidth=chose, max_seeds=max_seeds, metric=metric, rounds=rounds, by=by)
        summary = train(replace(study, seeds=seed_list(study, rounds[-1])), rule)
        total = _add(total, summary)
        if summary.failed:  # a round with holes cannot be analysed; a rerun retries the cells
            return Rounds(total, rounds, np.nan, False)
        effects, _ = analysed(path, halfwidth, metric, warn)
        seeds = inference.next_round(
            effects["halfwidth"].to_numpy(float),
            effects["seeds_needed"].to_numpy(float),
            rounds[-1],
            halfwidth,
            max_seeds,
        )
        widest = float(np.nanmax(effects["halfwidth"].fillna(np.inf)))
        if seeds == rounds[-1]:
            return Rounds(total, rounds, widest, widest > halfwidth)
        rounds, by = [*rounds, seeds], [*by, halfwidth]


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
    """One runner.Summary for the rounds so far: cells stored before the first round, cells
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
    per_cell = df.sort_values("epoch").groupby("cell")["seconds"].agg(tuple)
    sharing = per_cell.map(per_cell.value_counts())
    return per_cell.map(sum) / sharing


def plan(path: Path, halfwidth: float, metric: str = "test_acc", warn=None) -> tuple:
    """(effects, cost) for a pilot's results folder: per main effect the seeds for a 95% CI of
    half-width `halfwidth` at the observed spread and at its upper confidence limit, and what
    the study would cost at the larger of those counts (cells, hours)."""
    if not halfwidth > 0:
        raise AblateError(f"--halfwidth {halfwidth}: expected a positive half-width")
    effects, df = analysed(path, halfwidth, metric, warn)
    if not (effects["n_pairs"] >= 2).any():  # no spread to plan from: "0 more to train" said
        raise AblateError(
            f"{path}: each effect pairs at most {effects['n_pairs'].max()} run across its "
            "levels; a spread needs at least 2 seeds: rerun the pilot with --seeds 2 or more"
        )
    n = effects["n_pairs"].to_numpy(float)
    t = scipy_stats.t.ppf(0.975, np.maximum(n - 1, 1))
    std = np.where(n >= 2, effects["halfwidth"] * np.sqrt(n) / t, np.nan)
    chi = scipy_stats.chi2.ppf(1 - UPPER, np.maximum(n - 1, 1))
    upper = std * np.sqrt(np.maximum(n - 1, 1) / chi)
    effects = effects.assign(
        std=std,
        std_upper=upper,
        seeds_upper=[inference.seeds_needed(s, halfwidth) for s in upper],
    )
    final = stats.final(df)
    points = final.groupby(stats.factor_columns(df), dropna=False).ngroups
    seeds_now = final["seed"].nunique()
    needed = np.nanmax(effects["seeds_needed"]) if effects["seeds_needed"].notna().any() else 0
    upper_needed = np.nanmax(effects["seeds_upper"]) if effects["seeds_upper"].notna().any() else 0
    per_cell = float(cell_seconds(df).mean())
    cost = {}
    for name, seeds in (("observed", needed), ("upper", upper_needed)):
        seeds = int(max(seeds, seeds_now)) if np.isfinite(seeds) else None
        cells = points * seeds if seeds else None
        extra = cells - final["cell"].nunique() if cells else None
        cost[name] = dict(
            seeds=seeds,
            cells=cells,
            to_train=extra,
            hours=extra * per_cell / 3600 if extra is not None else None,
        )
    return effects, dict(points=points, seeds=seeds_now, cell_seconds=per_cell, **cost)
