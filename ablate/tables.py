"""Paste-ready tables (Markdown, LaTeX with booktabs) and the number formats every table shares.

Accuracy reads as percent with two decimals (97.49; a difference +0.31 in points), any other
metric with four significant figures, a p value with three; the page, the terminal and the
paper tables say the same number the same way. The tabulars are written here, not by pandas'
to_latex/to_markdown (they need jinja2 and tabulate): every cell is already a formatted string.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from .metrics import Metric
from .stats import unconfirmed

# the columns of each report table that hold the metric, then those that hold a difference
VALUES = {
    "summary": ("mean std ci_low ci_high", ""),
    "effects": ("mde", "diff ci_low ci_high"),
    "interactions": ("", "at_baseline at_level diff ci_low ci_high"),
    "claims": ("claimed mean ci_low ci_high pi_low pi_high", ""),
}
P_COLUMNS = ("p", "p (unadjusted)", "p_value", "p_signflip", "p_holm", "p_equivalence")
P_COLUMNS += ("p_fisher",)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value, metric: Metric, signed: bool = False) -> str:
    """One value of `metric` (or a difference of two, signed): 97.49 or +0.31 for accuracy."""
    if _missing(value):
        return ""
    sign = "+" if signed else ""
    if metric.fraction:
        return f"{metric.shown(value):{sign}.2f}"
    return f"{value:{sign}.4g}"


def interval(low, high, metric: Metric, signed: bool = True) -> str:
    """[-0.09, +0.09] (a difference's) or [97.31, 97.67]; empty where there is no interval."""
    if _missing(low) or _missing(high):
        return ""
    return f"[{number(low, metric, signed)}, {number(high, metric, signed)}]"


def p_value(p) -> str:
    """Three significant figures; below 0.001 in scientific notation (2.31e-05)."""
    if _missing(p):
        return ""
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def unit(metric: Metric) -> str:
    """' (%)' after a header or axis that holds a fraction's values (97.30), '' otherwise."""
    return " (%)" if metric.fraction else ""


def readable(
    df: pd.DataFrame, metric: Metric | None = None, table: str = "", na: str = "", factors=()
) -> pd.DataFrame:
    """A report table as the page shows it: its metric columns (VALUES[table]) as `number`, p
    values as `p_value`, other floats to four significant figures; `na` where one is missing.
    Factor columns keep their levels as declared (a factor may be named `p`); `metric` may be
    None for a table with no metric columns."""
    plain, signed = (names.split() for names in VALUES.get(table, ("", "")))
    shown = df.copy()
    for column in shown.columns:
        if column in factors:
            continue
        if column in plain or column in signed:
            cells = [number(v, metric, column in signed) for v in df[column]]
        elif column in P_COLUMNS:
            cells = [p_value(v) for v in df[column]]
        elif pd.api.types.is_float_dtype(df[column]):
            cells = ["" if _missing(v) else f"{v:.4g}" for v in df[column]]
        else:
            continue
        shown[column] = pd.Series([c or na for c in cells], index=df.index, dtype=object)
    return shown


def seeds_text(seeds: list) -> str:
    """'seeds 0-4' for a run of integers, else 'seeds 0, 2, 7'."""
    seeds = sorted(int(s) for s in seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"  # an en dash
    return "seed " + str(seeds[0]) if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def summary_rows(summary: pd.DataFrame, factors: list[str], metric: Metric) -> tuple[list, list]:
    """Header and rows of the summary table: each point's mean +- sd, its 95% CI and n."""
    diverged = bool(summary["n_diverged"].sum())
    head = [*factors, f"{metric.column}{unit(metric)}", "95% CI", "n", *(["diverged"] * diverged)]
    rows = []
    for row in summary.itertuples(index=False):
        spread = number(row.std, metric)
        rows.append(
            [
                *(str(getattr(row, f)) for f in factors),
                number(row.mean, metric) + (f" ± {spread}" if spread else ""),
                interval(row.ci_low, row.ci_high, metric, signed=False)
                or ("no spread" if row.n_seeds >= 2 else ""),
                str(row.n_seeds),
                *([str(row.n_diverged)] * diverged),
            ]
        )
    return head, rows


def effect_rows(effects: pd.DataFrame, metric: Metric) -> tuple[list, list]:
    """Header and rows of the effects table; the last column marks * significant and
    = equivalent (a row whose own interval excludes 0 but Holm does not flag is no finding:
    the caption counts them)."""
    alias = bool("alias" in effects and effects["alias"].astype(bool).any())
    points = f" ({metric.unit.strip()})" if metric.unit else ""
    head = ["effect", *(["alias"] * alias), "n", f"diff{points}", "95% CI", "p (Holm)", ""]
    rows = []
    for row in effects.itertuples(index=False):
        mark = "*" if row.significant else "=" if row.equivalent else ""
        rows.append(
            [
                f"{row.factor}: {row.level} vs {row.baseline}",
                *([str(row.alias)] * alias),
                str(row.n_pairs),
                number(row.diff, metric, True),
                interval(row.ci_low, row.ci_high, metric) or ("no spread" if row.no_spread else ""),
                p_value(row.p_holm),
                mark,
            ]
        )
    return head, rows


def markdown(head: list, rows: list, caption: str, numbers_from: int) -> str:
    """A pipe table, text left and numbers right, and its caption below in italics."""
    rule = ["---:" if i >= numbers_from and name else "---" for i, name in enumerate(head)]
    lines = [head, rule, *rows]
    text = "\n".join("| " + " | ".join(_md(c) for c in line) + " |" for line in lines)
    return f"{text}\n\n*{_md(caption)}*\n"


def _md(cell: str) -> str:
    return cell if cell in ("*", "---", "---:") else cell.replace("|", "\\|").replace("*", "\\*")


LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"}
LATEX_SPECIAL.update({"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})
LATEX_SPECIAL["\\"] = r"\textbackslash{}"
LATEX_SPECIAL.update({"±": r"$\pm$", "†": r"$^\dagger$", "−": "$-$", "–": "--"})


def _tex(cell: str, numeric: bool = False) -> str:
    """Escaped for LaTeX text; in a number column a minus sign, not a hyphen."""
    escaped = "".join(LATEX_SPECIAL.get(c, c) for c in cell)
    if numeric:  # 1.06e-07 as 1.06 x 10^-7
        escaped = re.sub(r"(?<![\w.])-(?=\d)", "$-$", escaped)
        escaped = re.sub(r"(\d)e([+-])0*(\d+)", _power, escaped)
    return "$^*$" if escaped == "*" else escaped


def _power(match: re.Match) -> str:
    sign = "-" if match[2] == "-" else ""
    return f"{match[1]}$\\times 10^{{{sign}{match[3]}}}$"


def latex(head: list, rows: list, caption: str, label: str, numbers_from: int) -> str:
    """A booktabs table in a float, columns before `numbers_from` left, the rest right."""
    spec = "l" * numbers_from + "r" * (len(head) - numbers_from)
    body = [
        " & ".join(_tex(c, i >= numbers_from) for i, c in enumerate(line)) + r" \\" for line in rows
    ]
    return "\n".join(
        [
            r"% written by ablate report; needs \usepackage{booktabs}",
            r"\begin{table}[t]",
            r"\centering",
            f"\\caption{{{_tex(caption)}}}",
            f"\\label{{tab:{re.sub(r'[^A-Za-z0-9_.:-]', '-', label)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(_tex(c) for c in head) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


HOW = {  # what an effect is, for a paper's caption: page.CAPTIONS says it at length
    "grid": "level minus baseline, paired by seed and averaged over the other factors' levels",
    "one_at_a_time": "level minus baseline, paired by seed, every other factor at its baseline",
    "fractional": "fitted per seed over the half fraction, each with the interaction in its "
    "alias column added (+) or subtracted (-)",
    "single": "level minus baseline, paired by seed",
}


def write(folder: Path, rep, study: str, metric: Metric, factors: list[str]) -> None:
    """summary.md/.tex always; effects.md/.tex where the report has effects."""
    how = HOW["single"] if len(factors) == 1 else HOW.get(rep.analysed_as, HOW["grid"])
    n_seeds = sorted(rep.summary["n_seeds"].unique())
    n = str(n_seeds[0]) if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
    what = f"Final {metric.column}{unit(metric)} of {study}"
    caption = (
        f"{what}: mean ± standard deviation over {n} seeds per point "
        f"({seeds_text(rep.seeds)}) and the 95% t interval of the mean."
    )
    head, rows = summary_rows(rep.summary, factors, metric)
    _both(folder, "summary", head, rows, caption, f"{study}-summary", len(factors))
    if not len(rep.effects):
        return
    points = metric.unit
    caption = (
        f"Effects on the final {metric.column} of {study}{points and ' (percentage points)'}: "
        f"{how}, over {n} seeds ({seeds_text(rep.seeds)}); 95% t interval; p Holm-adjusted over "
        f"the {rep.family} tests of effects and interactions. *: significant at 0.05 after Holm"
    )
    if n := unconfirmed(rep.effects, rep.interactions):
        caption += (
            f"; not findings: {n} of the unmarked rows' own intervals exclude 0 (Holm does not "
            "flag them; by chance on 23% of null 2x2x2 pages)"
        )
    if rep.margin:
        caption += f"; =: equivalent, inside ±{number(rep.margin, metric)}{points}"
    head, rows = effect_rows(rep.effects, metric)
    _both(
        folder, "effects", head, rows, caption + ".", f"{study}-effects", 1 + (head[1] == "alias")
    )


def _both(folder: Path, name: str, head, rows, caption: str, label: str, text_columns: int):
    (folder / f"{name}.md").write_text(markdown(head, rows, caption, text_columns))
    (folder / f"{name}.tex").write_text(latex(head, rows, caption, label, text_columns))
