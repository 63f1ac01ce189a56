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
- After `run --until-halfwidth` (Stein's two-stage rule) the interval and t test use the first
  stage's sd and df over all n seeds: exact under normal noise, since n depends only on the
  first stage's variances, which are independent of the means.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from scipy.optimize import brentq

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8  # for `mde`: the usual planning power


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


def mde(
    std: float, n: int, alpha: float = ALPHA, power: float = POWER, df: int | None = None
) -> float:
    """The smallest true difference a two-sided paired t test over n seeds detects with this
    power, at this spread (noncentral t, exact; statsmodels' TTestPower agrees). `df`: the
    test's, n - 1 unless Stein's test takes the first stage's."""
    df = n - 1 if df is None else df
    if n < 2 or df < 1 or not std > 0:
        return np.nan
    return _effect_size(n, df, alpha, power) * std


@functools.lru_cache(maxsize=1024)
def _effect_size(n: int, df: int, alpha: float, power: float) -> float:
    """mde in units of the spread: it depends on the counts alone, so each is solved once (the
    root finding was 15% of a report's analysis)."""
    crit = scipy_stats.t.ppf(1 - alpha / 2, df)
    # the far tail's cdf is NaN once it underflows; it is 0 there. Power 0.8 needs d < 12 at n = 2

    def reach(effect_size):
        shift = effect_size * np.sqrt(n)
        far_tail = np.nan_to_num(scipy_stats.nct.cdf(-crit, df, shift))
        return scipy_stats.nct.sf(crit, df, shift) + far_tail

    return float(brentq(lambda effect_size: reach(effect_size) - power, 0.0, 60.0))


def seeds_needed(std: float, halfwidth: float) -> float:
    """Seeds for a 95% t interval of half-width <= halfwidth at this spread (2 at least)."""
    if not np.isfinite(std) or not halfwidth > 0:
        return np.nan
    n = np.arange(2, len(_HALF_WIDTHS) + 2)
    enough = np.nonzero(_half_widths() * std <= halfwidth)[0]
    return float(n[enough[0]]) if len(enough) else np.inf


def stein_seeds(std, n_first, halfwidth):
    """Stein's total: the smallest n >= n_first with t(0.975, n_first - 1) * std / sqrt(n) <=
    halfwidth, from the first stage's sd over its n_first seeds (arrays too); NaN where the
    first stage has no sd, inf past 10**15."""
    std, n_first = np.asarray(std, float), np.asarray(n_first, float)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t = scipy_stats.t.ppf(0.5 + LEVEL / 2, n_first - 1)
        n = np.maximum(n_first, np.ceil((t * std / halfwidth) ** 2))
        n = np.where(n > 1e15, np.inf, n)
        # the square can round a count by one either way: n - 1 may still reach, n may not
        back = (n - 1 >= n_first) & (t * std / np.sqrt(np.maximum(n - 1, 1)) <= halfwidth)
        n = np.where(back, n - 1, np.where(t * std / np.sqrt(n) > halfwidth, n + 1, n))
    n = np.where((n_first >= 2) & (std >= 0) & (halfwidth > 0), n, np.nan)
    return n if n.ndim else float(n)


def stein_total(stds, n_first, halfwidth: float, cap: int):
    """The seed count every design point trains to under `run --until-halfwidth`, chosen once
    from the first stage: the largest of the main effects' stein_seeds (the last axis), at
    least the first stage's seeds, `cap` at most; an int, or an array over leading axes. A row
    without a first-stage sd (fewer than 2 pairs) asks for the cap."""
    stds = np.asarray(stds, float)
    n_first = np.broadcast_to(np.asarray(n_first, float), stds.shape)
    needed = np.nan_to_num(stein_seeds(stds, n_first, halfwidth), nan=np.inf)
    least = np.max(n_first, axis=-1, initial=0)
    total = np.minimum(cap, np.maximum(least, np.max(needed, axis=-1, initial=0))).astype(int)
    return int(total) if total.ndim == 0 else total


def stein(mean, std_first, n_first, n) -> tuple:
    """(half-width, p): Stein's two-stage 95% t interval and two-sided t test of a mean over n
    seeds, from the sd of its first n_first (df n_first - 1; arrays too)."""
    scale = np.asarray(std_first, float) / np.sqrt(n)
    df = np.asarray(n_first) - 1
    half = scipy_stats.t.ppf(0.5 + LEVEL / 2, df) * scale
    return half, 2 * scipy_stats.t.sf(np.abs(mean) / scale, df)


def seeds_assured(std: float, n_first: int, halfwidth: float, assurance: float = 0.8) -> float:
    """Seeds for a 95% t interval within +-halfwidth in `assurance` of new studies, from a
    pilot's sd over n_first seeds: the smallest n with P(F(n - 1, n_first - 1) <= halfwidth**2
    * n / (t(0.975, n - 1) * std)**2) >= assurance, since s_n**2 / std**2 is so distributed
    when the n seeds are new (independent of the pilot's, of the same sd); inf past 100,001."""
    if not np.isfinite(std) or n_first < 2 or not halfwidth > 0:
        return np.nan
    n, widths = np.arange(2, len(_HALF_WIDTHS) + 2), _half_widths()
    for part in (slice(0, 254), slice(254, None)):  # most counts lie in the first, 100x cheaper
        with np.errstate(divide="ignore"):
            reach = (halfwidth / (widths[part] * std)) ** 2
        enough = np.nonzero(scipy_stats.f.cdf(reach, n[part] - 1, n_first - 1) >= assurance)[0]
        if len(enough):
            return float(n[part][enough[0]])
    return np.inf


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


def estimate(
    diffs: np.ndarray,
    resolution: float,
    margin: float | None,
    halfwidth: float,
    first_stage=None,
) -> dict:
    """Estimate, interval, tests, power and equivalence of one sample of per-seed differences:
    the columns an effect or interaction row shares. `first_stage`: a boolean mask over `diffs`
    marking `run --until-halfwidth`'s first-stage seeds; where it marks 2 or more that spread,
    and not all, the interval, t test, TOST and mde are Stein's (first stage's sd and df)."""
    diff, std, low, high = interval(diffs)
    p, p_flip, test = _paired_test(diffs, resolution)
    flat = test.startswith("sign-flip")
    if flat:  # the t interval would be [diff, diff]: a claim the data cannot make
        low = high = np.nan
    p_eq = tost(diffs, margin) if margin and not flat else np.nan
    first = None if flat else stein_stage(diffs, first_stage, resolution)
    if first is not None:
        std_first, n = float(first.std(ddof=1)), len(diffs)
        half, p = (float(x) for x in stein(diff, std_first, len(first), n))
        low, high, test = diff - half, diff + half, "paired t, Stein two-stage"
        p_eq = _stein_tost(diff, std_first / np.sqrt(n), len(first) - 1, margin)
    return dict(
        n_pairs=len(diffs),
        diff=diff,
        ci_low=low,
        ci_high=high,
        p_value=p,
        p_signflip=p_flip,
        no_spread=flat,
        test=test,
        mde=np.nan if flat else mde(std, len(diffs), df=None if first is None else len(first) - 1),
        seeds_needed=np.nan if flat else seeds_needed(std, halfwidth),
        p_equivalence=p_eq,
        equivalent=bool(p_eq < ALPHA),
        **dict(zip(("p_greater", "p_greater_low", "p_greater_high"), greater(diffs), strict=True)),
    )


def greater(diffs) -> tuple[float, float, float]:
    """P(level > baseline) paired by seed, rliable's probability of improvement: the share of
    seeds whose difference is above 0 (a tie counts half), with its exact 95% Clopper-Pearson
    interval (ties counted as below for the lower end, as above for the upper). It reads where
    runs are skewed or stall, as a mean difference cannot: one collapsed seed moves the mean
    by its size but this by one seed. NaN without seeds."""
    d = np.asarray(diffs, float)
    if not len(d):
        return np.nan, np.nan, np.nan
    n, above, ties = len(d), int((d > 0).sum()), int((d == 0).sum())
    beta = scipy_stats.beta
    low = float(beta.ppf((1 - LEVEL) / 2, above, n - above + 1)) if above else 0.0
    top = above + ties
    high = float(beta.ppf(0.5 + LEVEL / 2, top + 1, n - top)) if top < n else 1.0
    return (above + ties / 2) / n, low, high


def stein_stage(diffs: np.ndarray, first_stage, resolution: float) -> np.ndarray | None:
    """The first stage's differences (`first_stage`: a mask over `diffs`, or None) where
    Stein's interval applies: 2 or more with spread, fewer than all (with all of them it is
    the t interval); else None."""
    if first_stage is None:
        return None
    first = np.asarray(diffs, float)[np.asarray(first_stage, bool)]
    if not 2 <= len(first) < len(diffs) or no_spread(first, resolution) or not first.std() > 0:
        return None
    return first


def _stein_tost(diff: float, scale: float, df: int, margin: float | None) -> float:
    """TOST on Stein's t: the larger one-sided p that the mean lies outside +-margin."""
    if not (margin and margin > 0):
        return np.nan
    lower = scipy_stats.t.sf((diff + margin) / scale, df)
    upper = scipy_stats.t.cdf((diff - margin) / scale, df)
    return float(max(lower, upper))
