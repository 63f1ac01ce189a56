"""Inference on per-seed differences: t interval, paired and sign-flip tests, Holm, power; no torch.

Method, chosen for the usual 3-10 seeds:
- Intervals are Student t (mean +- t(0.975, n-1) * s / sqrt(n)). Bootstrap intervals
  under-cover at such n: of 1000 normal samples of n=5, scipy's percentile and BCa
  95% intervals covered the mean 84.0% and 84.2% of the time, the t interval 94.2%.
- The per-seed differences of an effect are independent, so the t interval and the paired
  t test on them are exact under normal noise. Sign-flip permutation and Wilcoxon tests
  cannot reach 0.05 with 5 seeds (their smallest two-sided p is 2 / 2**5 = 0.0625), so the
  t test decides; the exact sign-flip p is given as p_signflip.
- Where the per-seed differences vary less than the metric resolves (accuracy: one test
  sample) there is no estimate of the noise: no interval, and the exact sign-flip p decides.
- Holm's step-down adjustment holds a family's chance of any false positive to 0.05.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from scipy.optimize import brentq

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8  # for `mde`: the usual planning power
HALFWIDTH = 0.005  # for `seeds_needed`: half a point of accuracy, the precision tutorials quote


def interval(x, level: float = LEVEL) -> tuple[float, float, float, float]:
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
    half = scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1) * std / np.sqrt(len(x))
    return mean, std, mean - half, mean + half


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.where(~np.isnan(p))[0]
    order = tested[np.argsort(p[tested], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def holm_family(*tables: pd.DataFrame) -> pd.DataFrame:
    """One Holm family over every row of the given tables (set in place); returns the first."""
    p = np.concatenate([t["p_value"].to_numpy(dtype=float) for t in tables]) if tables else []
    adjusted, start = holm(p), 0
    for table in tables:
        table["p_holm"] = adjusted[start : start + len(table)]
        table["significant"] = table["p_holm"] < ALPHA
        start += len(table)
    return tables[0]


def signflip(diffs: np.ndarray) -> float:
    """Exact two-sided sign-flip p of per-seed differences (Monte Carlo past 16 seeds)."""
    if len(diffs) < 1 or not np.any(diffs):
        return 1.0
    flips = scipy_stats.permutation_test(
        (diffs,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if len(diffs) <= 16 else 9999,
        random_state=0,
    )
    return float(flips.pvalue)


def no_spread(diffs: np.ndarray, resolution: float) -> bool:
    """Per-seed differences that vary less than the metric resolves (accuracy: one test sample)
    carry no estimate of the noise: a t interval would be zero-width and p = 0 with 2 seeds."""
    # 1e-12: a floor for rounding where the metric has no resolution
    return len(diffs) >= 2 and float(np.ptp(diffs)) < max(resolution * (1 - 1e-9), 1e-12)


def mde(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided paired t test over n seeds detects with this
    power, at this spread (noncentral t, exact; statsmodels' TTestPower agrees)."""
    if n < 2 or not std > 0:
        return np.nan
    df, crit = n - 1, scipy_stats.t.ppf(1 - alpha / 2, n - 1)
    # the far tail's cdf is NaN once it underflows; it is 0 there. Power 0.8 needs d < 12 at n = 2

    def reach(effect_size):
        shift = effect_size * np.sqrt(n)
        far_tail = np.nan_to_num(scipy_stats.nct.cdf(-crit, df, shift))
        return scipy_stats.nct.sf(crit, df, shift) + far_tail

    return float(brentq(lambda effect_size: reach(effect_size) - power, 0.0, 60.0)) * std


def seeds_needed(std: float, halfwidth: float) -> float:
    """Seeds for a 95% t interval of half-width <= halfwidth at this spread (2 at least)."""
    if not np.isfinite(std) or not halfwidth > 0:
        return np.nan
    n = np.arange(2, len(_HALF_WIDTHS) + 2)
    enough = np.nonzero(_half_widths() * std <= halfwidth)[0]
    return float(n[enough[0]]) if len(enough) else np.inf


def next_round(half_widths, needed, seeds: int, target: float, cap: int) -> int:
    """The seed count every design point trains to next under `run --until-halfwidth`: `seeds`
    (stop) once each effect's 95% CI half-width is at most `target` or `cap` seeds are reached;
    else what the widest effect needs at its observed spread (`needed`: seeds_needed), half as
    many again at least, `cap` at most. A NaN half-width (fewer than 2 seeds) is wide; the
    caller gives a row without spread a half-width of 0. Rounds of half as many again, not of
    one seed, give a spread that happens to be low fewer looks at which to stop the rule;
    tests/test_calibration.py measures the rule as it is."""
    half_widths, needed = np.asarray(half_widths, float), np.asarray(needed, float)
    wide = ~(half_widths <= target)
    if seeds >= cap or not wide.any():
        return seeds
    wanted = needed[wide & ~np.isnan(needed)]
    least = seeds + max(1, seeds // 2)
    return int(min(cap, max(least, wanted.max() if len(wanted) else least)))


_HALF_WIDTHS = np.zeros(100_000)  # t(0.975, n-1) / sqrt(n) for n = 2..100,001, filled on first use


def _half_widths() -> np.ndarray:
    if not _HALF_WIDTHS[0]:
        n = np.arange(2, len(_HALF_WIDTHS) + 2)
        _HALF_WIDTHS[:] = scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1) / np.sqrt(n)
    return _HALF_WIDTHS


def tost(diffs: np.ndarray, margin: float) -> float:
    """Two one-sided t tests: p that the mean difference lies outside +-margin (the larger
    one-sided p); below 0.05 the 90% interval lies inside the margin: `equivalent`."""
    if len(diffs) < 2 or not margin > 0 or np.std(diffs) == 0:
        return np.nan
    lower = scipy_stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    return float(max(lower, upper))


def _paired_test(diffs: np.ndarray, resolution: float) -> tuple[float, float, str]:
    """The p that decides (paired t; exact sign-flip where there is no spread), the sign-flip
    p, and the test's name."""
    if len(diffs) < 2:
        return np.nan, np.nan, "n<2"
    if no_spread(diffs, resolution):
        p = signflip(diffs)
        return p, p, "sign-flip (no spread)"
    return float(scipy_stats.ttest_1samp(diffs, 0.0).pvalue), signflip(diffs), "paired t"


def estimate(diffs: np.ndarray, resolution: float, margin: float | None, halfwidth: float) -> dict:
    """Estimate, interval, tests, power and equivalence of one sample of per-seed differences:
    the columns an effect or interaction row shares."""
    diff, std, low, high = interval(diffs)
    p, p_flip, test = _paired_test(diffs, resolution)
    flat = test.startswith("sign-flip")
    if flat:  # the t interval would be [diff, diff]: a claim the data cannot make
        low = high = np.nan
    p_eq = tost(diffs, margin) if margin and not flat else np.nan
    return dict(
        n_pairs=len(diffs),
        diff=diff,
        ci_low=low,
        ci_high=high,
        p_value=p,
        p_signflip=p_flip,
        no_spread=flat,
        test=test,
        mde=np.nan if flat else mde(std, len(diffs)),
        seeds_needed=np.nan if flat else seeds_needed(std, halfwidth),
        p_equivalence=p_eq,
        equivalent=bool(p_eq < ALPHA),
    )
