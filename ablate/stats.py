"""Per-cell summaries, paired factor effects, one Holm family of verdicts, curves; no torch.

An effect is paired by seed: per seed, the level's final metric minus the baseline's, matched
on the levels of every other factor and averaged over them (grid: the factorial main effect;
one-at-a-time: the simple effect against base; fractional: fitted per seed, the main effect
plus or minus the interaction it is aliased with). inference.py tests the per-seed differences;
effects and interactions are one Holm family. tests/test_calibration.py simulates error rates.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .inference import ALPHA, estimate, holm, holm_family, interval, no_spread
from .metrics import HALF_POINT, TEST_ACC, Metric


def hashable(v):
    """Parquet lists (such as `hidden`) come back as arrays, JSON ones as lists: tuples here."""
    if isinstance(v, np.ndarray):
        v = v.tolist()  # Python ints, so labels read (4,) and not (np.int64(4),)
    return tuple(v) if isinstance(v, list) else v


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued columns as tuples, so they group and compare."""
    df = df.copy()
    for column in [c for c in df.columns if pd.api.types.is_object_dtype(df[c])]:
        values = [hashable(v) for v in df[column]]  # not map: it would make None NaN
        df[column] = pd.Series(values, index=df.index, dtype=object)
    return df


def points(df: pd.DataFrame, factors: list[str]) -> list[tuple]:
    """Each row's design point as a tuple of levels, NaN read as None (the key pandas' groupby
    would turn into NaN, so that a None level and its rows never meet)."""
    missing = lambda v: isinstance(v, float) and v != v  # noqa: E731
    return [
        tuple(None if missing(v) else v for v in row) for row in df[factors].itertuples(index=False)
    ]


def factor_columns(df: pd.DataFrame) -> list[str]:
    """The schema puts the factor columns between `seed` and `epoch`."""
    cols = list(df.columns)
    return cols[cols.index("seed") + 1 : cols.index("epoch")]


def final(df: pd.DataFrame, last: int = 1, metric: Metric | None = None) -> pd.DataFrame:
    """Each cell's last stored epoch (a diverged cell's is the epoch it diverged in). With
    `last` k > 1, an ok cell's `metric` is the mean over its last k stored epochs (`--final
    last-k`): on a recipe whose curve swings late, one epoch's value is one draw of that swing."""
    ordered = df.sort_values("epoch", kind="stable")
    out = ordered.groupby("cell", sort=False).tail(1).reset_index(drop=True)
    if last > 1 and metric is not None and len(out):
        column = metric.column
        means = ordered.groupby("cell", sort=False).tail(last).groupby("cell")[column].mean()
        ok = out["status"] == "ok"
        out.loc[ok, column] = out.loc[ok, "cell"].map(means).to_numpy()
    return out


SWING = 10  # a final epoch this many times the study's typical late epoch-to-epoch change away
SWING_EPOCHS = 5  # from the median of the cell's 5 epochs before it is flagged


def swings(df: pd.DataFrame, metric: Metric, resolution: float = 0.0) -> pd.DataFrame:
    """The ok cells whose final epoch lies far from their own last epochs: final minus the
    median of the SWING_EPOCHS before it, beyond SWING times the study's typical late change
    (the median over cells of each one's median |change| over those epochs; 10 resolution
    steps at least). digits_mlp's ReLU + batchnorm cell ended at 39.2% on a rerun against 93.4%
    committed, its curve at 91-94% the epochs before. Columns: cell, seed, epoch, final,
    recent (the median), gap, and the threshold."""
    ok = df[df["status"] == "ok"].sort_values("epoch", kind="stable")
    tails = ok.groupby("cell", sort=False).tail(SWING_EPOCHS + 1)
    by_cell = tails.groupby("cell", sort=False)[metric.column]
    sizes = by_cell.size()
    long_enough = sizes.index[sizes == SWING_EPOCHS + 1]
    columns = ["cell", "seed", "epoch", "final", "recent", "gap", "threshold"]
    if not len(long_enough):
        return pd.DataFrame(columns=columns)
    values = by_cell.apply(lambda v: v.to_numpy(dtype=float))[long_enough]
    typical = float(np.median([np.median(np.abs(np.diff(v))) for v in values]))
    threshold = max(SWING * typical, SWING * resolution, 1e-12)
    rows = []
    for cell, v in values.items():
        recent = float(np.median(v[:-1]))
        if abs(v[-1] - recent) > threshold:
            last = tails[tails["cell"] == cell].iloc[-1]
            row = (cell, last["seed"], last["epoch"], v[-1], recent, v[-1] - recent, threshold)
            rows.append(dict(zip(columns, row, strict=True)))
    return pd.DataFrame(rows, columns=columns)


def same(a, b) -> bool:
    """Level equality where None and NaN are one level: a Parquet column of None and ints reads
    back as NaN and floats (train_subset=None), while the manifest still says None."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return bool(missing(a) and missing(b)) or (not missing(a) and not missing(b) and bool(a == b))


def level_mask(df: pd.DataFrame, factor: str, level) -> pd.Series:
    """Rows at one level; map, not ==, which would read a tuple level (hidden) as a sequence."""
    return df[factor].map(lambda v: same(v, level)).astype(bool)


def non_baseline(factor: str, levels: dict, baselines: dict) -> list:
    """A factor's levels other than its baseline, in study order."""
    return [v for v in levels[factor] if not same(v, baselines[factor])]


def summary(
    finals: pd.DataFrame, factors: list[str], metric: Metric = TEST_ACC, resolution: float = 0.0
) -> pd.DataFrame:
    """Per design point: n_seeds (ok cells), n_diverged, mean, std, ci_low, ci_high of the
    final metric; no interval where the seeds vary less than the metric resolves (the rule
    effects and claims follow: 100.00 [100.00, 100.00] claimed a certainty 4 test samples lack)."""
    rows, keys = [], points(finals, factors)
    for point in dict.fromkeys(keys):  # first seen first: the caller's (design) order
        at_point = finals[[k == point for k in keys]]
        ok = at_point[at_point["status"] == "ok"][metric.column]
        mean, std, low, high = interval(ok)
        if no_spread(ok.to_numpy(dtype=float), resolution):
            low = high = np.nan
        rows.append(
            {
                **dict(zip(factors, point, strict=True)),
                "n_seeds": len(ok),
                "n_diverged": int((at_point["status"] != "ok").sum()),
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def _per_seed(values: pd.Series) -> pd.Series:
    """Mean per seed of values indexed (setting, seed): over the seeds that have every setting
    any seed has, else over the settings every seed has; one estimand, whatever diverged."""
    settings = values.index.get_level_values("match")
    seeds = values.index.get_level_values("seed")
    per_seed = pd.Series(settings, index=seeds).groupby(level=0).nunique()
    full = per_seed.index[per_seed == settings.nunique()]
    if len(full):
        return values[seeds.isin(full)].groupby(level="seed").mean()
    common = pd.Series(seeds, index=settings).groupby(level=0).nunique()
    shared = common.index[common == seeds.nunique()]
    return values[settings.isin(shared)].groupby(level="seed").mean()


def _corner_means(
    ok: pd.DataFrame, others: list[str], corners: dict, metric: Metric
) -> pd.DataFrame:
    """Mean metric per (setting of `others`, seed) row and named corner column; `corners` maps
    a corner's name to its rows' mask. Settings match by repr, so 1 and "1" stay apart. Rows
    and columns sorted as pandas' groupby and unstack order them; summed with numpy, 6x faster
    (a design point and seed hold one cell, so each mean is of one value: the same float)."""
    corner = np.full(len(ok), None, dtype=object)
    for name, mask in corners.items():
        corner[mask.to_numpy()] = name
    kept = corner != None  # noqa: E711 (an object array: `is not` would test the array)
    match = np.full(int(kept.sum()), "", dtype=object)
    for factor in others:
        match = match + "|" + ok[factor].map(repr).to_numpy(dtype=object)[kept]
    codes, uniques = zip(
        *(pd.factorize(values, sort=True) for values in (match, ok["seed"].to_numpy()[kept],
                                                         corner[kept])), strict=True,
    )  # fmt: skip
    shape = tuple(len(u) for u in uniques)
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, codes, ok[metric.column].to_numpy(dtype=float)[kept])
    np.add.at(counts, codes, 1.0)
    present = counts.sum(axis=2) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, np.nan)[present]
    rows, seeds = np.nonzero(present)
    index = pd.MultiIndex.from_arrays(
        [pd.Index(uniques[0])[rows], pd.Index(uniques[1])[seeds]], names=["match", "seed"]
    )
    return pd.DataFrame(means, index=index, columns=pd.Index(uniques[2], name="corner"))


def paired_diffs(
    finals: pd.DataFrame,
    factors: list[str],
    factor: str,
    level,
    baseline,
    metric: Metric = TEST_ACC,
    matched: bool = True,
) -> pd.Series:
    """Per seed: mean over matched settings of the other factors of (level - baseline). A
    fractional design has no matched settings (the other factors' levels fix this one's), so
    `matched=False` fits the main effects by least squares per seed (two-level factors coded
    +-1): on the complete half, the mean at the level minus the mean at the baseline; with a
    diverged cell, still unbiased under the main-effects model, where a difference of the
    remaining means would not be."""
    ok = finals[finals["status"] == "ok"]
    if ok.empty:  # every cell diverged (or none at this level): nothing to pair
        return pd.Series(dtype=float)
    if not matched:
        return _fitted(ok, factors, factor, level, baseline, metric)
    others = [f for f in factors if f != factor]
    corners = {"level": level_mask(ok, factor, level), "base": level_mask(ok, factor, baseline)}
    wide = _corner_means(ok, others, corners, metric)
    if not set(corners) <= set(wide.columns):
        return pd.Series(dtype=float)
    return _per_seed((wide["level"] - wide["base"]).dropna())


def _fitted(
    ok: pd.DataFrame, factors: list[str], factor: str, level, baseline, metric: Metric
) -> pd.Series:
    """Per seed: twice the least-squares coefficient of `factor` coded +1 at the level and -1
    at the baseline, beside the +-1 codes of every other factor with two levels there."""
    out = {}
    for seed, runs in ok.groupby("seed"):
        runs = runs[level_mask(runs, factor, level) | level_mask(runs, factor, baseline)]
        codes = [np.where(level_mask(runs, factor, level), 1.0, -1.0)]
        for other in factors:
            values = list(dict.fromkeys(runs[other].map(hashable)))
            if other != factor and len(values) == 2:
                high = runs[other].map(lambda v, high=values[1]: hashable(v) == high).astype(bool)
                codes.append(np.where(high, 1.0, -1.0))
        design = np.column_stack([np.ones(len(runs)), *codes])
        if np.linalg.matrix_rank(design) == design.shape[1]:  # full rank: every effect estimable
            observed = runs[metric.column].to_numpy(dtype=float)
            out[seed] = 2 * np.linalg.lstsq(design, observed, rcond=None)[0][1]
    return pd.Series(out, dtype=float).rename_axis("seed")


EFFECT_COLUMNS = (
    "factor level baseline metric n_pairs diff ci_low ci_high p_value p_signflip p_holm "
    "significant test no_spread mde seeds_needed p_equivalence equivalent alias note p_greater "
    "p_greater_low p_greater_high"
).split()


def effects(
    finals: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    metric: Metric = TEST_ACC,
    matched: bool = True,
    resolution: float = 0.0,
    margin: float | None = None,
    halfwidth: float = HALF_POINT,
    *,
    first_stage=None,
) -> pd.DataFrame:
    """Every non-baseline level of every factor against its baseline, paired by seed
    (`matched=False`: fitted per seed, for a fractional design; see paired_diffs). Holm here
    covers this table alone; `analyse` makes one family of effects and interactions."""
    rows = []
    for factor in factors:
        baseline = baselines[factor]
        for level in non_baseline(factor, levels, baselines):
            paired = paired_diffs(finals, factors, factor, level, baseline, metric, matched)
            row = dict(factor=factor, level=level, baseline=baseline, metric=metric.column)
            first = _first(paired, first_stage)
            tested = estimate(paired.to_numpy(), resolution, margin, halfwidth, first)
            rows.append({**row, **tested, "alias": "", "note": ""})
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    if len(out):  # equivalence too is claimed page-wide: Holm over the rows it was tested on
        out["equivalent"] = holm(out["p_equivalence"]) < ALPHA
    return holm_family(out)


INTERACTION_COLUMNS = (
    "factor level baseline by by_level by_baseline metric n_pairs at_baseline at_baseline_low "
    "at_baseline_high at_level at_level_low at_level_high diff ci_low ci_high p_value p_holm "
    "significant test no_spread note"
).split()
INTERACTION_KEYS = ("n_pairs", "diff", "ci_low", "ci_high", "p_value", "test", "no_spread")


@dataclass(frozen=True, eq=False)  # eq=False: frames do not compare to one truth value
class Layout:
    """What an analysis of final rows reads besides them: the factors in study order, each
    one's baseline and levels, the metric, and its resolution (the smallest step it takes:
    one test sample for accuracy; 0 where unknown)."""

    finals: pd.DataFrame  # each cell's final row (stats.final)
    factors: list[str]
    baselines: dict
    levels: dict
    metric: Metric = TEST_ACC
    resolution: float = 0.0


def interactions(layout: Layout, *, first_stage=None) -> pd.DataFrame:
    """Does a factor's effect depend on another's level? For each pair of factors (study order)
    and each non-baseline level of each: per setting of the remaining factors where all four
    cells are ok, the first's effect (level - baseline) at the second's baseline
    (`at_baseline`) and at its level (`at_level`), and their difference (`diff`, the
    interaction contrast), each averaged per seed over the same settings and seeds; paired t
    test (sign-flip where there is no spread), Holm across the table (`analyse`: across effects
    and interactions together). Needs every combination of the pair: full grids only."""
    factors, levels, baselines = layout.factors, layout.levels, layout.baselines
    ok, rows = layout.finals[layout.finals["status"] == "ok"], []
    for i, first in enumerate(factors):
        for by in factors[i + 1 :]:
            pairs = itertools.product(
                non_baseline(first, levels, baselines), non_baseline(by, levels, baselines)
            )
            for level, by_level in pairs:
                contrast = (first, level, baselines[first]), (by, by_level, baselines[by])
                rows.append(_interaction(ok, layout, *contrast, first_stage))
    return holm_family(pd.DataFrame(rows, columns=INTERACTION_COLUMNS))


def _interaction(
    ok: pd.DataFrame, layout: Layout, first: tuple, second: tuple, first_stage=None
) -> dict:
    """One row of `interactions`: `first` and `second` are (factor, level, baseline)."""
    at_baseline, at_level = _simple_pair(ok, layout.factors, first, second, layout.metric)
    contrast = at_level - at_baseline
    first_seeds = _first(contrast, first_stage)
    tested = estimate(contrast.to_numpy(), layout.resolution, None, HALF_POINT, first_seeds)
    return {
        # factor, level, baseline, by, by_level, by_baseline: the table's first six columns
        **dict(zip(INTERACTION_COLUMNS[:6], (*first, *second), strict=True)),
        "metric": layout.metric.column,
        **_mean_and_interval("at_baseline", at_baseline),
        **_mean_and_interval("at_level", at_level),
        **{key: tested[key] for key in INTERACTION_KEYS},
        "note": "",
    }


def _mean_and_interval(name: str, per_seed: pd.Series) -> dict:
    """Columns name, name_low and name_high: the mean and t interval of a per-seed effect."""
    mean, _, low, high = interval(per_seed)
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


def _simple_pair(ok, factors, first: tuple, second: tuple, metric: Metric) -> tuple:
    """Per seed: the first factor's effect at the second's baseline and at its level, over the
    settings of the remaining factors where all four cells are ok."""
    (factor_a, level_a, base_a), (factor_b, level_b, base_b) = first, second
    others = [f for f in factors if f not in (factor_a, factor_b)]
    corners = {
        code_a + code_b: level_mask(ok, factor_a, value_a) & level_mask(ok, factor_b, value_b)
        for code_a, value_a in (("1", level_a), ("0", base_a))
        for code_b, value_b in (("1", level_b), ("0", base_b))
    }  # "10": a at its level, b at baseline
    wide = _corner_means(ok, others, corners, metric) if len(ok) else pd.DataFrame()
    if not set(corners) <= set(wide.columns):
        return pd.Series(dtype=float), pd.Series(dtype=float)
    wide = wide.dropna()
    return _per_seed(wide["10"] - wide["00"]), _per_seed(wide["11"] - wide["01"])


def curves(df: pd.DataFrame, factors: list[str], metric: Metric) -> pd.DataFrame:
    """Per design point and epoch: n, mean and t interval of the metric over ok seeds."""
    ok = df[df["status"] == "ok"]
    keys = [(*point, epoch) for point, epoch in zip(points(ok, factors), ok["epoch"], strict=True)]
    columns, rows = [*factors, "epoch", "point", "n", "mean", "ci_low", "ci_high"], []
    for key in dict.fromkeys(keys):
        at_key = ok[[k == key for k in keys]]
        mean, _, low, high = interval(at_key[metric.column])
        values = (*key, key[:-1], len(at_key), mean, low, high)  # key[:-1]: the design point
        rows.append(dict(zip(columns, values, strict=True)))
    return pd.DataFrame(rows, columns=columns)


@dataclass
class Analysis:
    """What the report prints as verdicts: effects and interactions, one Holm family."""

    effects: pd.DataFrame
    interactions: pd.DataFrame
    design: str  # as analysed: grid (every combination present), one_at_a_time, fractional
    half_k: int | None = None  # a fractional half's two-level factors (its resolution)

    @property
    def family(self) -> int:
        return int(
            self.effects["p_value"].notna().sum() + self.interactions["p_value"].notna().sum()
        )


def analyse(
    layout: Layout,
    design: str = "grid",
    margin: float | None = None,
    halfwidth: float = HALF_POINT,
    *,
    first_stage=None,
) -> Analysis:
    """Effects, interactions where every combination of levels is present, one Holm family over
    both (a complete null then flags something on the page in <= 5% of studies), and a note
    on every row a reader could misread. `first_stage`: the seeds `run --until-halfwidth`
    sized its one further round from, whose spread and df every interval then takes (Stein)."""
    finals, factors, levels = layout.finals, layout.factors, layout.levels
    n_points = len(finals[factors].astype(str).drop_duplicates()) if factors else 1
    full = len(factors) > 1 and n_points == math.prod(len(levels[f]) for f in factors)
    fractional = design == "fractional" and not full
    effect_rows = effects(
        finals, factors, layout.baselines, levels, layout.metric, not fractional,
        layout.resolution, margin, halfwidth, first_stage=first_stage,
    )  # fmt: skip
    interaction_rows = (
        interactions(layout, first_stage=first_stage)
        if full
        else pd.DataFrame(columns=INTERACTION_COLUMNS)
    )
    holm_family(effect_rows, interaction_rows)
    out = Analysis(
        effect_rows,
        interaction_rows,
        "grid" if full else "fractional" if fractional else design,
        sum(len(levels[f]) == 2 for f in factors) if fractional else None,
    )
    if out.half_k:
        sign = "-" if out.half_k % 2 else "+"  # the half's defining relation: I = (-1)^k AB...K
        two = [f for f in factors if len(levels[f]) == 2]  # a factor a --set pinned aliases nothing
        effect_rows["alias"] = [
            sign + ":".join(f for f in two if f != row.factor) for row in effect_rows.itertuples()
        ]
    for table in (effect_rows, interaction_rows):
        table["note"] = [_note(row) for _, row in table.iterrows()]
    return out


def _first(per_seed: pd.Series, first_stage) -> np.ndarray | None:
    """Which of a per-seed series' seeds are `run --until-halfwidth`'s first stage (a mask for
    inference.estimate), or None without one."""
    return None if first_stage is None else per_seed.index.isin(list(first_stage))


def alias_note(alias: str) -> str:
    """What a half fraction's row estimates, in the units the page prints: a j-way interaction's
    diff (interactions.csv's: the effect at the level minus at the baseline, iterated) is 2^j
    times its +-1-coded coefficient and the row adds or subtracts twice that coefficient, so
    "A -b:c" estimates A's main effect minus 1/2 x the b:c diff."""
    others = alias[1:].split(":")
    word = "minus" if alias[0] == "-" else "plus"
    if len(others) == 1:
        return f"estimates the main effect {word} {others[0]}'s main effect (aliased in the half)"
    what = "diff" if len(others) == 2 else "iterated difference"
    return (
        f"estimates the main effect {word} 1/{2 ** (len(others) - 1)} x the {alias[1:]} "
        f"interaction's {what} (aliased in the half)"
    )


def _note(row) -> str:
    """What the row's numbers do not say by themselves."""
    notes = []
    if row.get("alias"):
        notes.append(alias_note(row["alias"]))
    if row["no_spread"]:
        notes.append(
            f"no spread: every seed differs by {row['diff']:+.4g} to within the metric's "
            f"resolution; exact sign-flip p {row['p_value']:.3g} decides"
        )
    return "; ".join(notes)


def unconfirmed(*tables: pd.DataFrame) -> int:
    """Rows Holm does not flag whose own 95% interval excludes 0: the page counts them in one
    footnote, never as a mark on a row (on 23% of null 2^3 pages one appears: simulated)."""
    return sum(
        int((~t["significant"].astype(bool) & ((t["ci_low"] > 0) | (t["ci_high"] < 0))).sum())
        for t in tables
        if len(t)
    )
