"""Paste-ready tables (Markdown, LaTeX with booktabs) and the number formats every table shares.

Accuracy reads as percent with two decimals (97.49), a loss with four significant figures, a p
value with three; the page, the terminal and the paper tables say the same number the same way.
"""

from __future__ import annotations

import math


def is_fraction(metric: str) -> bool:
    """A metric in [0, 1] that reads as percent: accuracy."""
    return metric.endswith("acc")


def number(value, metric: str, signed: bool = False) -> str:
    """One value of `metric` (or a difference of two, signed): 97.49 or +0.31 for accuracy."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    sign = "+" if signed else ""
    if is_fraction(metric):
        return f"{100 * value:{sign}.2f}"
    return f"{value:{sign}.4g}"


def interval(low, high, metric: str) -> str:
    """[-0.09, +0.09]; empty where there is no interval."""
    if low is None or low != low or high != high:
        return ""
    return f"[{number(low, metric, True)}, {number(high, metric, True)}]"


def p_value(p) -> str:
    """Three significant figures; below 0.001 in scientific notation (2.31e-05)."""
    if p is None or p != p:
        return ""
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def unit(metric: str) -> str:
    return " (%)" if is_fraction(metric) else ""
