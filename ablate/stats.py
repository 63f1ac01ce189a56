"""Per-cell summaries, confidence intervals, paired factor effects and claim checks; pandas/numpy/scipy only.

Method, chosen for the usual 3-10 seeds:
- Intervals are Student t (mean +- t(0.975, n-1) * s / sqrt(n)). Bootstrap intervals
  under-cover at such n: of 1000 normal samples of n=5, scipy's percentile and BCa
  95% intervals covered the mean 84.0% and 84.2% of the time, the t interval 94.2%.
  `method="bca"` gives scipy's BCa bootstrap for large n.
- An effect is paired by seed: for each seed, the level's final metric minus the
  baseline's, matched on the levels of every other factor and averaged over them (in a
  grid: the factorial main effect; one-at-a-time: the simple effect against base;
  fractional: fitted per seed, the main effect plus the interaction it is aliased with).
  The per-seed differences are independent, so the t interval and the paired t test on
  them are exact under normal noise. p_value is that t test. Sign-flip permutation and
  Wilcoxon tests cannot reach 0.05 with 5 seeds (their smallest two-sided p is
  2 / 2**5 = 0.0625); the exact sign-flip p is still given as p_signflip.
- Holm's step-down adjustment across every row of the effect table; significant at 0.05.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats as st

from .study import JSON_DEFAULTS

LEVEL = 0.95
ALPHA = 0.05


def hashable(v):
    """Parquet lists (such as `hidden`) come back as arrays, JSON ones as lists: make them tuples."""
    if isinstance(v, np.ndarray):
        v = v.tolist()  # Python ints, so labels read (4,) and not (np.int64(4),)
    return tuple(v) if isinstance(v, list) else v


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued columns as tuples, so they group and compare."""
    df = df.copy()
    for c in [c for c in df.columns if pd.api.types.is_object_dtype(df[c])]:
        df[c] = df[c].map(hashable)
    return df


def factor_columns(df: pd.DataFrame) -> list[str]:
    """The schema puts the factor columns between `seed` and `epoch`."""
    cols = list(df.columns)
    return cols[cols.index("seed") + 1: cols.index("epoch")]


def final(df: pd.DataFrame) -> pd.DataFrame:
    """Each cell's last stored epoch (a diverged cell's is the epoch it diverged in)."""
    return df.sort_values("epoch", kind="stable").groupby("cell", sort=False).tail(1).reset_index(drop=True)


def interval(x, method: str = "t") -> tuple[float, float, float, float]:
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
        r = st.bootstrap((x,), np.mean, confidence_level=LEVEL, method="BCa", random_state=0)
        return mean, std, float(r.confidence_interval.low), float(r.confidence_interval.high)
    half = st.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * std / np.sqrt(len(x))
    return mean, std, mean - half, mean + half


def summary(fin: pd.DataFrame, factors: list[str], metric: str = "test_acc") -> pd.DataFrame:
    """Per design point: n_seeds (ok cells), n_diverged, mean, std, ci_low, ci_high of the final metric."""
    rows = []
    for levels, g in fin.groupby(factors, sort=False, dropna=False) if factors else [((), fin)]:
        ok = g[g["status"] == "ok"][metric]
        mean, std, lo, hi = interval(ok)
        rows.append({**dict(zip(factors, levels if isinstance(levels, tuple) else (levels,), strict=True)),
                     "n_seeds": len(ok), "n_diverged": int((g["status"] != "ok").sum()),
                     "mean": mean, "std": std, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def _per_seed(d: pd.Series) -> pd.Series:
    """Mean per seed of values indexed (setting, seed), over the seeds that have every setting
    any seed has: one estimand, whatever diverged."""
    counts = d.groupby(level="seed").size()
    full = counts[counts == counts.max()].index
    return d[d.index.get_level_values("seed").isin(full)].groupby(level="seed").mean()


def _sides(ok: pd.DataFrame, others: list[str], columns: dict, metric: str) -> pd.DataFrame:
    """Rows (setting of `others`, seed) x the named corners; `columns` maps a corner name to a mask."""
    match = ok[others].astype(str).agg("|".join, axis=1) if others else pd.Series("", index=ok.index)
    corner = pd.Series(None, index=ok.index, dtype=object)
    for name, mask in columns.items():
        corner[mask.to_numpy()] = name
    frame = pd.DataFrame({"match": match, "seed": ok["seed"], "corner": corner, "y": ok[metric]})
    return frame.dropna(subset=["corner"]).pivot_table(index=["match", "seed"], columns="corner", values="y")


def paired_diffs(fin: pd.DataFrame, factors: list[str], factor: str, level, baseline,
                 metric: str = "test_acc", matched: bool = True) -> pd.Series:
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
    wide = _sides(ok, others, {"level": _is(ok, factor, level), "base": _is(ok, factor, baseline)}, metric)
    if not {"level", "base"} <= set(wide.columns):
        return pd.Series(dtype=float)
    return _per_seed((wide["level"] - wide["base"]).dropna())


def _fitted(ok: pd.DataFrame, factors: list[str], factor: str, level, baseline, metric: str) -> pd.Series:
    out = {}
    for seed, g in ok.groupby("seed"):
        g = g[g[factor].map(lambda x: x == level or x == baseline).astype(bool)]
        cols = [np.where(g[factor].map(lambda x: x == level).astype(bool), 1.0, -1.0)]
        for f in factors:
            values = list(dict.fromkeys(g[f].map(hashable)))
            if f != factor and len(values) == 2:
                cols.append(np.where(g[f].map(hashable) == values[1], 1.0, -1.0))
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


def _test(d: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t and exact sign-flip p of per-seed differences."""
    if len(d) < 2:
        return np.nan, np.nan
    if np.ptp(d) <= 1e-12:  # no spread (to rounding): t is undefined; the data alone decide
        return (1.0, 1.0) if abs(d[0]) <= 1e-12 else (0.0, 2 / 2 ** len(d))
    p_t = float(st.ttest_1samp(d, 0.0).pvalue)
    flips = st.permutation_test((d,), np.mean, permutation_type="samples",
                                n_resamples=np.inf if len(d) <= 16 else 9999, random_state=0)
    return p_t, float(flips.pvalue)


def effects(fin: pd.DataFrame, factors: list[str], baselines: dict, levels: dict,
            metric: str = "test_acc", matched: bool = True) -> pd.DataFrame:
    """Every non-baseline level of every factor against its baseline, paired by seed
    (`matched=False`: fitted per seed, for a fractional design; see paired_diffs)."""
    rows = []
    for f in factors:
        for level in levels[f]:
            if level == baselines[f]:
                continue
            d = paired_diffs(fin, factors, f, level, baselines[f], metric, matched).to_numpy()
            diff, _, lo, hi = interval(d)
            p, p_flip = _test(d)
            rows.append(dict(factor=f, level=level, baseline=baselines[f], metric=metric, n_pairs=len(d),
                             diff=diff, ci_low=lo, ci_high=hi, p_value=p, p_signflip=p_flip))
    out = pd.DataFrame(rows, columns=["factor", "level", "baseline", "metric", "n_pairs", "diff", "ci_low",
                                      "ci_high", "p_value", "p_signflip"])
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    out["significant"] = out["p_holm"] < ALPHA
    out["test"] = "paired t over seeds; Holm"
    return out


INTERACTION_COLUMNS = ["factor", "level", "baseline", "by", "by_level", "by_baseline", "metric", "n_pairs",
                       "at_baseline", "at_baseline_low", "at_baseline_high", "at_level", "at_level_low",
                       "at_level_high", "diff", "ci_low", "ci_high", "p_value", "p_holm", "significant"]


def interactions(fin: pd.DataFrame, factors: list[str], baselines: dict, levels: dict,
                 metric: str = "test_acc") -> pd.DataFrame:
    """Does a factor's effect depend on another's level? For each pair of factors (study order)
    and each non-baseline level of each: per setting of the remaining factors where all four
    cells are ok, the first's effect (level - baseline) at the second's baseline
    (`at_baseline`) and at its level (`at_level`), and their difference (`diff`, the
    interaction contrast), each averaged per seed over the same settings and seeds; paired t
    test, Holm across the table. A grid's main effect averages the simple effects, which can
    differ in sign. Needs every combination of the pair: full grids only."""
    ok, rows = fin[fin["status"] == "ok"], []
    for i, a in enumerate(factors):
        for b in factors[i + 1:]:
            others = [f for f in factors if f not in (a, b)]
            for la in [v for v in levels[a] if v != baselines[a]]:
                for lb in [v for v in levels[b] if v != baselines[b]]:
                    corners = {x + y: _is(ok, a, va) & _is(ok, b, vb) for x, va in (("1", la), ("0", baselines[a]))
                               for y, vb in (("1", lb), ("0", baselines[b]))}  # "10": a at la, b at baseline
                    w = _sides(ok, others, corners, metric) if len(ok) else pd.DataFrame()
                    w = w.dropna() if set(corners) <= set(w.columns) else pd.DataFrame(columns=list(corners))
                    at0 = _per_seed(w["10"] - w["00"]) if len(w) else pd.Series(dtype=float)
                    at1 = _per_seed(w["11"] - w["01"]) if len(w) else pd.Series(dtype=float)
                    d = (at1 - at0).to_numpy()
                    (m0, _, lo0, hi0), (m1, _, lo1, hi1), (diff, _, lo, hi) = interval(at0), interval(at1), interval(d)
                    rows.append(dict(factor=a, level=la, baseline=baselines[a], by=b, by_level=lb,
                                     by_baseline=baselines[b], metric=metric, n_pairs=len(d),
                                     at_baseline=m0, at_baseline_low=lo0, at_baseline_high=hi0, at_level=m1,
                                     at_level_low=lo1, at_level_high=hi1, diff=diff, ci_low=lo, ci_high=hi,
                                     p_value=_test(d)[0]))
    out = pd.DataFrame(rows, columns=INTERACTION_COLUMNS[:-2])
    out["p_holm"] = holm(out["p_value"]) if len(out) else []
    out["significant"] = out["p_holm"] < ALPHA
    return out


def _is(df: pd.DataFrame, factor: str, level) -> pd.Series:
    """Rows at one level; map, not ==, because a tuple level (hidden) would be read as a sequence."""
    return df[factor].map(lambda v: v == level).astype(bool)


def holds(kind: str, value: float, lo: float, hi: float) -> bool:
    """A point claim holds when the CI contains it; a bound, when the whole CI is on its side."""
    return bool({"point": lo <= value <= hi, "at_most": hi <= value, "at_least": lo >= value}[kind])


def claims(df: pd.DataFrame, claim_list: list[dict], factors: list[str]) -> pd.DataFrame:
    """Each claim beside the mean and CI over the ok cells its `where` selects, of their final
    metric or, where the claim names an epoch, of the metric at that epoch."""
    rows = []
    last = final(df)
    for c in claim_list:
        fin = last if c.get("epoch") is None else df[df["epoch"] == c["epoch"]]
        configs = fin["config"].map(lambda c: {**JSON_DEFAULTS, **json.loads(c)})  # old rows: defaults
        mask = pd.Series(True, index=fin.index)
        for k, v in c["where"].items():
            col = fin[k] if k in factors else configs.map(lambda cfg, k=k: cfg.get(k))
            mask &= col.map(lambda x, w=hashable(v): hashable(x) == w).astype(bool)
        sel = fin[mask & (fin["status"] == "ok")][c.get("metric", "test_acc")]
        mean, _, lo, hi = interval(sel)
        where = ", ".join(f"{k}={hashable(v)}" for k, v in c["where"].items())
        kind = c.get("kind", "point")
        rows.append(dict(where=where, claimed=c["value"], mean=mean, ci_low=lo, ci_high=hi, n_seeds=len(sel),
                         inside=holds(kind, c["value"], lo, hi) if len(sel) > 1 else False,
                         source=c.get("source", ""), metric=c.get("metric", "test_acc"), epoch=c.get("epoch"),
                         kind=kind))
    return pd.DataFrame(rows)


def curves(df: pd.DataFrame, factors: list[str], metric: str) -> pd.DataFrame:
    """Per design point and epoch: n, mean and t interval of the metric over ok seeds."""
    ok = df[df["status"] == "ok"]
    rows = []
    for key, g in ok.groupby([*factors, "epoch"], sort=False):
        mean, _, lo, hi = interval(g[metric])
        rows.append({**dict(zip([*factors, "epoch"], key, strict=True)), "n": len(g), "mean": mean,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
