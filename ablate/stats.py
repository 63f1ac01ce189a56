"""Per-cell summaries, paired factor effects, one Holm family of verdicts, failed runs; no torch.

Method, chosen for the usual 3-10 seeds:
- Intervals are Student t (mean +- t(0.975, n-1) * s / sqrt(n)). Bootstrap intervals
  under-cover at such n: of 1000 normal samples of n=5, scipy's percentile and BCa
  95% intervals covered the mean 84.0% and 84.2% of the time, the t interval 94.2%.
  `method="bca"` gives scipy's BCa bootstrap for large n.
- An effect is paired by seed: for each seed, the level's final metric minus the
  baseline's, matched on the levels of every other factor and averaged over them (in a
  grid: the factorial main effect; one-at-a-time: the simple effect against base;
  fractional: fitted per seed, the main effect plus or minus the interaction it is
  aliased with). The per-seed differences are independent, so the t interval and the
  paired t test on them are exact under normal noise. Sign-flip permutation and Wilcoxon
  tests cannot reach 0.05 with 5 seeds (their smallest two-sided p is 2 / 2**5 = 0.0625),
  so the t test decides; the exact sign-flip p is given as p_signflip.
- Where the per-seed differences vary less than the metric resolves (accuracy: one test
  sample) there is no estimate of the noise: no interval, and the exact sign-flip p decides.
- Effects and interactions are one family: Holm's step-down adjustment over every row of
  both tables; significant at 0.05. tests/test_calibration.py simulates the error rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st
from scipy.optimize import brentq

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8  # for `mde`: the usual planning power
HALFWIDTH = 0.005  # for `seeds_needed`: half a point of accuracy, the precision tutorials quote


def hashable(v):
    """Parquet lists (such as `hidden`) come back as arrays, JSON ones as lists: make them tuples."""
    if isinstance(v, np.ndarray):
        v = v.tolist()  # Python ints, so labels read (4,) and not (np.int64(4),)
    return tuple(v) if isinstance(v, list) else v


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued columns as tuples, so they group and compare."""
    df = df.copy()
    for c in [c for c in df.columns if pd.api.types.is_object_dtype(df[c])]:
        df[c] = pd.Series(
            [hashable(v) for v in df[c]], index=df.index, dtype=object
        )  # map makes None NaN
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


def final(df: pd.DataFrame) -> pd.DataFrame:
    """Each cell's last stored epoch (a diverged cell's is the epoch it diverged in)."""
    return (
        df.sort_values("epoch", kind="stable")
        .groupby("cell", sort=False)
        .tail(1)
        .reset_index(drop=True)
    )


def interval(x, method: str = "t", level: float = LEVEL) -> tuple[float, float, float, float]:
    """mean, std, ci_low, ci_high of a sample; the interval is NaN for n < 2."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (np.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(x.std(ddof=1))
    if std == 0:
        return mean, 0.0, mean, mean
    if method == "bca":
        r = st.bootstrap((x,), np.mean, confidence_level=level, method="BCa", random_state=0)
        return mean, std, float(r.confidence_interval.low), float(r.confidence_interval.high)
    half = st.t.ppf(0.5 + level / 2, len(x) - 1) * std / np.sqrt(len(x))
    return mean, std, mean - half, mean + half


def summary(fin: pd.DataFrame, factors: list[str], metric: str = "test_acc") -> pd.DataFrame:
    """Per design point: n_seeds (ok cells), n_diverged, mean, std, ci_low, ci_high of the final metric."""
    rows, keys = [], points(fin, factors)
    for levels in dict.fromkeys(keys):  # first seen first: the caller's (design) order
        g = fin[[k == levels for k in keys]]
        ok = g[g["status"] == "ok"][metric]
        mean, std, lo, hi = interval(ok)
        rows.append(
            {
                **dict(zip(factors, levels, strict=True)),
                "n_seeds": len(ok),
                "n_diverged": int((g["status"] != "ok").sum()),
                "mean": mean,
                "std": std,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(rows)


def _per_seed(d: pd.Series) -> pd.Series:
    """Mean per seed of values indexed (setting, seed): over the seeds that have every setting
    any seed has, else over the settings every seed has; one estimand, whatever diverged."""
    settings = d.index.get_level_values("match")
    seeds = d.index.get_level_values("seed")
    per_seed = pd.Series(settings, index=seeds).groupby(level=0).nunique()
    full = per_seed.index[per_seed == settings.nunique()]
    if len(full):
        return d[seeds.isin(full)].groupby(level="seed").mean()
    common = pd.Series(seeds, index=settings).groupby(level=0).nunique()
    shared = common.index[common == seeds.nunique()]
    return d[settings.isin(shared)].groupby(level="seed").mean()


def _sides(ok: pd.DataFrame, others: list[str], columns: dict, metric: str) -> pd.DataFrame:
    """Rows (setting of `others`, seed) x the named corners; `columns` maps a corner name to a mask.
    Settings match by repr, so 1 and "1" stay apart."""
    match = pd.Series("", index=ok.index)
    for f in others:
        match = match + "|" + ok[f].map(repr)
    corner = pd.Series(None, index=ok.index, dtype=object)
    for name, mask in columns.items():
        corner[mask.to_numpy()] = name
    frame = pd.DataFrame({"match": match, "seed": ok["seed"], "corner": corner, "y": ok[metric]})
    return (
        frame.dropna(subset=["corner"])
        .groupby(["match", "seed", "corner"])["y"]
        .mean()
        .unstack("corner")
    )


def paired_diffs(
    fin: pd.DataFrame,
    factors: list[str],
    factor: str,
    level,
    baseline,
    metric: str = "test_acc",
    matched: bool = True,
) -> pd.Series:
    """Per seed: mean over matched settings of the other factors of (level - baseline). A
    fractional design has no matched settings (the other factors' levels fix this one's), so
    `matched=False` fits the main effects by least squares per seed (two-level factors coded
    +-1): on the complete half, the mean at the level minus the mean at the baseline; with a
    diverged cell, still unbiased under the main-effects model, where a difference of the
    remaining means would not be."""
    ok = fin[fin["status"] == "ok"]
    if ok.empty:  # every cell diverged (or none at this level): nothing to pair
        return pd.Series(dtype=float)
    if not matched:
        return _fitted(ok, factors, factor, level, baseline, metric)
    others = [f for f in factors if f != factor]
    wide = _sides(
        ok, others, {"level": _is(ok, factor, level), "base": _is(ok, factor, baseline)}, metric
    )
    if not {"level", "base"} <= set(wide.columns):
        return pd.Series(dtype=float)
    return _per_seed((wide["level"] - wide["base"]).dropna())


def _fitted(
    ok: pd.DataFrame, factors: list[str], factor: str, level, baseline, metric: str
) -> pd.Series:
    out = {}
    for seed, g in ok.groupby("seed"):
        g = g[g[factor].map(lambda x: same(x, level) or same(x, baseline)).astype(bool)]
        cols = [np.where(g[factor].map(lambda x: same(x, level)).astype(bool), 1.0, -1.0)]
        for f in factors:
            values = list(dict.fromkeys(g[f].map(hashable)))
            if f != factor and len(values) == 2:
                cols.append(
                    np.where(
                        g[f].map(lambda x, v=values[1]: hashable(x) == v).astype(bool), 1.0, -1.0
                    )
                )
        x = np.column_stack([np.ones(len(g)), *cols])
        if np.linalg.matrix_rank(x) == x.shape[1]:  # full column rank: every effect estimable
            out[seed] = 2 * np.linalg.lstsq(x, g[metric].to_numpy(dtype=float), rcond=None)[0][1]
    return pd.Series(out, dtype=float).rename_axis("seed")


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.where(~np.isnan(p))[0]
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def signflip(d: np.ndarray) -> float:
    """Exact two-sided sign-flip p of per-seed differences (Monte Carlo past 16 seeds)."""
    if len(d) < 1 or not np.any(d):
        return 1.0
    flips = st.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if len(d) <= 16 else 9999,
        random_state=0,
    )
    return float(flips.pvalue)


def no_spread(d: np.ndarray, resolution: float) -> bool:
    """Per-seed differences that vary less than the metric resolves (accuracy: one test sample)
    carry no estimate of the noise: a t interval would be zero-width and p = 0 with 2 seeds."""
    return len(d) >= 2 and float(np.ptp(d)) < max(resolution * (1 - 1e-9), 1e-12)  # 1e-12: rounding


def mde(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided paired t test over n seeds detects with this
    power, at this spread (noncentral t, exact; statsmodels' TTestPower agrees)."""
    if n < 2 or not std > 0:
        return np.nan
    df, crit = n - 1, st.t.ppf(1 - alpha / 2, n - 1)
    # the far tail's cdf is NaN once it underflows; it is 0 there. Power 0.8 needs d < 12 at n = 2

    def reach(d):
        shift = d * np.sqrt(n)
        return st.nct.sf(crit, df, shift) + np.nan_to_num(st.nct.cdf(-crit, df, shift))

    return float(brentq(lambda d: reach(d) - power, 0.0, 60.0)) * std


def seeds_needed(std: float, halfwidth: float) -> float:
    """Seeds for a 95% t interval of half-width <= halfwidth at this spread (2 at least)."""
    if not np.isfinite(std) or not halfwidth > 0:
        return np.nan
    n = np.arange(2, len(_HALF_WIDTHS) + 2)
    ok = np.nonzero(_half_widths() * std <= halfwidth)[0]
    return float(n[ok[0]]) if len(ok) else np.inf


_HALF_WIDTHS = np.zeros(100_000)  # t(0.975, n-1) / sqrt(n) for n = 2..100,001, filled on first use


def _half_widths() -> np.ndarray:
    if not _HALF_WIDTHS[0]:
        n = np.arange(2, len(_HALF_WIDTHS) + 2)
        _HALF_WIDTHS[:] = st.t.ppf(0.5 + LEVEL / 2, n - 1) / np.sqrt(n)
    return _HALF_WIDTHS


def tost(d: np.ndarray, margin: float) -> float:
    """Two one-sided t tests: p that the mean difference lies outside +-margin (the larger
    one-sided p); below 0.05 the 90% interval lies inside the margin: `equivalent`."""
    if len(d) < 2 or not margin > 0 or np.std(d) == 0:
        return np.nan
    lower = st.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = st.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(lower, upper))


def _test(d: np.ndarray, resolution: float) -> tuple[float, float, str]:
    """p that decides (paired t; exact sign-flip where there is no spread), the sign-flip p, the test."""
    if len(d) < 2:
        return np.nan, np.nan, "n<2"
    if no_spread(d, resolution):
        p = signflip(d)
        return p, p, "sign-flip (no spread)"
    return float(st.ttest_1samp(d, 0.0).pvalue), signflip(d), "paired t"


def _row(d: np.ndarray, resolution: float, margin: float | None, halfwidth: float) -> dict:
    """Estimate, interval and tests of one set of per-seed differences."""
    diff, std, lo, hi = interval(d)
    p, p_flip, test = _test(d, resolution)
    flat = test.startswith("sign-flip")
    if flat:  # the t interval would be [diff, diff]: a claim the data cannot make
        lo = hi = np.nan
    p_eq = tost(d, margin) if margin and not flat else np.nan
    return dict(
        n_pairs=len(d),
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        p_signflip=p_flip,
        no_spread=flat,
        test=test,
        mde=np.nan if flat else mde(std, len(d)),
        seeds_needed=np.nan if flat else seeds_needed(std, halfwidth),
        p_equivalence=p_eq,
        equivalent=bool(p_eq < ALPHA),
    )


EFFECT_COLUMNS = [
    "factor",
    "level",
    "baseline",
    "metric",
    "n_pairs",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_signflip",
    "p_holm",
    "significant",
    "test",
    "no_spread",
    "mde",
    "seeds_needed",
    "p_equivalence",
    "equivalent",
    "alias",
    "note",
]


def effects(
    fin: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    metric: str = "test_acc",
    matched: bool = True,
    resolution: float = 0.0,
    margin: float | None = None,
    halfwidth: float = HALFWIDTH,
) -> pd.DataFrame:
    """Every non-baseline level of every factor against its baseline, paired by seed
    (`matched=False`: fitted per seed, for a fractional design; see paired_diffs). Holm here
    covers this table alone; `analyse` makes one family of effects and interactions."""
    rows = []
    for f in factors:
        for level in levels[f]:
            if same(level, baselines[f]):
                continue
            d = paired_diffs(fin, factors, f, level, baselines[f], metric, matched).to_numpy()
            rows.append(
                dict(
                    factor=f,
                    level=level,
                    baseline=baselines[f],
                    metric=metric,
                    **_row(d, resolution, margin, halfwidth),
                    alias="",
                    note="",
                )
            )
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    if len(out):  # equivalence too is claimed page-wide: Holm over the rows it was tested on
        out["equivalent"] = holm(out["p_equivalence"]) < ALPHA
    return _holm_family(out)


def _holm_family(*tables: pd.DataFrame) -> pd.DataFrame:
    """One Holm family over every row of the given tables (set in place); returns the first."""
    p = np.concatenate([t["p_value"].to_numpy(dtype=float) for t in tables]) if tables else []
    adjusted, at = holm(p), 0
    for t in tables:
        t["p_holm"] = adjusted[at : at + len(t)]
        t["significant"] = t["p_holm"] < ALPHA
        at += len(t)
    return tables[0]


INTERACTION_COLUMNS = [
    "factor",
    "level",
    "baseline",
    "by",
    "by_level",
    "by_baseline",
    "metric",
    "n_pairs",
    "at_baseline",
    "at_baseline_low",
    "at_baseline_high",
    "at_level",
    "at_level_low",
    "at_level_high",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "significant",
    "test",
    "no_spread",
    "note",
]


def interactions(
    fin: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    metric: str = "test_acc",
    resolution: float = 0.0,
) -> pd.DataFrame:
    """Does a factor's effect depend on another's level? For each pair of factors (study order)
    and each non-baseline level of each: per setting of the remaining factors where all four
    cells are ok, the first's effect (level - baseline) at the second's baseline
    (`at_baseline`) and at its level (`at_level`), and their difference (`diff`, the
    interaction contrast), each averaged per seed over the same settings and seeds; paired t
    test (sign-flip where there is no spread), Holm across the table (`analyse`: across effects
    and interactions together). Needs every combination of the pair: full grids only."""
    ok, rows = fin[fin["status"] == "ok"], []
    for i, a in enumerate(factors):
        for b in factors[i + 1 :]:
            for la in [v for v in levels[a] if not same(v, baselines[a])]:
                for lb in [v for v in levels[b] if not same(v, baselines[b])]:
                    at0, at1 = _simple_pair(
                        ok, factors, (a, la, baselines[a]), (b, lb, baselines[b]), metric
                    )
                    d = (at1 - at0).to_numpy()
                    (m0, _, lo0, hi0), (m1, _, lo1, hi1) = interval(at0), interval(at1)
                    row = _row(d, resolution, None, HALFWIDTH)
                    rows.append(
                        dict(
                            factor=a,
                            level=la,
                            baseline=baselines[a],
                            by=b,
                            by_level=lb,
                            by_baseline=baselines[b],
                            metric=metric,
                            at_baseline=m0,
                            at_baseline_low=lo0,
                            at_baseline_high=hi0,
                            at_level=m1,
                            at_level_low=lo1,
                            at_level_high=hi1,
                            **{k: row[k] for k in INTERACTION_KEYS},
                            note="",
                        )
                    )
    return _holm_family(pd.DataFrame(rows, columns=INTERACTION_COLUMNS))


INTERACTION_KEYS = ("n_pairs", "diff", "ci_low", "ci_high", "p_value", "test", "no_spread")


def _simple_pair(ok, factors, first: tuple, second: tuple, metric) -> tuple[pd.Series, pd.Series]:
    """Per seed: the first factor's effect at the second's baseline and at its level, over the
    settings of the remaining factors where all four cells are ok."""
    (a, la, ba), (b, lb, bb) = first, second
    others = [f for f in factors if f not in (a, b)]
    corners = {
        x + y: _is(ok, a, va) & _is(ok, b, vb)
        for x, va in (("1", la), ("0", ba))
        for y, vb in (("1", lb), ("0", bb))
    }  # "10": a at its level, b at baseline
    w = _sides(ok, others, corners, metric) if len(ok) else pd.DataFrame()
    if not set(corners) <= set(w.columns):
        return pd.Series(dtype=float), pd.Series(dtype=float)
    w = w.dropna()
    return _per_seed(w["10"] - w["00"]), _per_seed(w["11"] - w["01"])


def same(a, b) -> bool:
    """Level equality where None and NaN are one level: a Parquet column of None and ints reads
    back as NaN and floats (train_subset=None), while the manifest still says None."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return bool(missing(a) and missing(b)) or (not missing(a) and not missing(b) and bool(a == b))


def _is(df: pd.DataFrame, factor: str, level) -> pd.Series:
    """Rows at one level; map, not ==, because a tuple level (hidden) would be read as a sequence."""
    return df[factor].map(lambda v: same(v, level)).astype(bool)


def curves(df: pd.DataFrame, factors: list[str], metric: str) -> pd.DataFrame:
    """Per design point and epoch: n, mean and t interval of the metric over ok seeds."""
    ok = df[df["status"] == "ok"]
    keys = [(*point, epoch) for point, epoch in zip(points(ok, factors), ok["epoch"], strict=True)]
    rows = []
    for key in dict.fromkeys(keys):
        g = ok[[k == key for k in keys]]
        mean, _, lo, hi = interval(g[metric])
        rows.append(
            {
                **dict(zip([*factors, "epoch"], key, strict=True)),
                "point": key[:-1],
                "n": len(g),
                "mean": mean,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(
        rows, columns=[*factors, "epoch", "point", "n", "mean", "ci_low", "ci_high"]
    )


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
    fin: pd.DataFrame,
    factors: list[str],
    baselines: dict,
    levels: dict,
    metric: str = "test_acc",
    design: str = "grid",
    resolution: float = 0.0,
    margin: float | None = None,
    halfwidth: float = HALFWIDTH,
) -> Analysis:
    """Effects, interactions where every combination of levels is present, one Holm family over
    both (a complete null then flags something on the page in <= 5% of studies), and a note
    on every row a reader could misread."""
    points = len(fin[factors].astype(str).drop_duplicates()) if factors else 1
    full = len(factors) > 1 and points == math.prod(len(levels[f]) for f in factors)
    fractional = design == "fractional" and not full
    eff = effects(
        fin, factors, baselines, levels, metric, not fractional, resolution, margin, halfwidth
    )
    inter = (
        interactions(fin, factors, baselines, levels, metric, resolution)
        if full
        else pd.DataFrame(columns=INTERACTION_COLUMNS)
    )
    _holm_family(eff, inter)
    out = Analysis(
        eff,
        inter,
        "grid" if full else "fractional" if fractional else design,
        sum(len(levels[f]) == 2 for f in factors) if fractional else None,
    )
    if out.half_k:
        sign = "-" if out.half_k % 2 else "+"  # the half's defining relation: I = (-1)^k AB...K
        two = [f for f in factors if len(levels[f]) == 2]  # a factor a --set pinned aliases nothing
        eff["alias"] = [sign + ":".join(f for f in two if f != r.factor) for r in eff.itertuples()]
    for table in (eff, inter):
        table["note"] = [_note(r, out.family) for _, r in table.iterrows()]
    return out


def _note(r, family: int) -> str:
    """What the row's numbers do not say by themselves."""
    notes = []
    if r.get("alias"):
        word = "minus" if r["alias"][0] == "-" else "plus"
        notes.append(
            f"estimates the main effect {word} the {r['alias'][1:]} interaction (aliased in the half)"
        )
    if r["no_spread"]:
        notes.append(
            f"no spread: every seed differs by {r['diff']:+.4g} to within the metric's resolution; "
            f"exact sign-flip p {r['p_value']:.3g} decides"
        )
    elif not r["significant"] and (r["ci_low"] > 0 or r["ci_high"] < 0):
        notes.append(
            f"95% CI excludes 0 for this row alone; not significant after Holm over {family} tests"
        )
    return "; ".join(notes)
