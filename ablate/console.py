"""What the terminal shows of a report: the effects table, warnings, claims and plans, in Rich."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from . import tables
from .compare import FAILED
from .page import chosen_by

MAX_PLANNED = 100_000  # inference.seeds_needed counts up to 100,001 seeds; past them: inf


def print_warnings(rep, out, warn) -> None:
    """The significant interactions, then effects that change sign, then failures that differ."""
    for _, row in rep.interactions.iterrows() if len(rep.interactions) else []:
        if row.significant:
            out.print(escape(_interaction_line(row)))
    for row in rep.sign_changes.itertuples() if rep.sign_changes is not None else []:
        warn(
            f"{row.factor}={row.level} vs {row.baseline} changes sign across the other factors: "
            f"{row.settings}"
        )
    failures = rep.failures is not None and len(rep.failures)
    for row in rep.failures.drop_duplicates("factor").itertuples() if failures else []:
        if row.differs:
            warn(
                f"failed runs differ across the levels of {row.factor} (Fisher p "
                f"{row.p_fisher:.3g}, Holm {row.p_holm:.3g}): its effects compare the runs that "
                "did not diverge; see failures.csv"
            )


def _interaction_line(row) -> str:
    def signed(value):
        return tables.number(value, row.metric, True)

    return (
        f"interaction: {row.factor}={row.level} vs {row.baseline} is {signed(row.at_baseline)} at "
        f"{row.by}={row.by_baseline} but {signed(row.at_level)} at {row.by}={row.by_level}: "
        f"difference {signed(row['diff'])} {tables.interval(row.ci_low, row.ci_high, row.metric)}"
        f"{_points(row.metric)}, p Holm {tables.p_value(row.p_holm)}"
    )


def _points(metric: str) -> str:
    return " points" if tables.is_fraction(metric) else ""


def effects_table(rep, metric: str, margin: float | None) -> Table:
    """One row per effect: estimate and CI, Holm p, what these seeds can detect, the verdict."""
    table = Table(
        title=f"effects on final {metric}{_points(metric) and ' in points'}: level - baseline, "
        f"paired by seed (95% t CI; Holm over {rep.family} tests, effects and interactions)"
    )
    for column in ["effect", "n", "diff [95% CI]", "p Holm", "mde", "seeds", ""]:
        justify = "left" if column == "effect" else "right"
        table.add_column(column, justify=justify, overflow="fold")
    for _, row in rep.effects.iterrows():
        table.add_row(
            escape(f"{row.factor}: {row.level} vs {row.baseline}{_alias(row)}"),
            str(row.n_pairs),
            f"{tables.number(row['diff'], metric, True)} {_interval(row, metric)}",
            tables.p_value(row.p_holm),
            tables.number(row.mde, metric),
            f"{row.seeds_needed:.0f}",
            _verdict(row),
        )
    notes = [
        "mde: smallest difference these seeds detect (80% power, 0.05); seeds: for a 95% CI of "
        f"±{tables.number(rep.halfwidth, metric)}{_points(metric)}"
    ]
    if margin:
        notes.append(
            f"equivalent: inside ±{tables.number(margin, metric)}{_points(metric)} (two one-sided "
            "t tests, Holm)"
        )
    if rep.rule:
        notes.append(chosen_by(rep.rule).strip().rstrip("."))
    if len(rep.effects) and rep.effects["note"].astype(str).str.contains("95% CI excludes").any():
        notes.append("†: the row's own CI excludes 0, but not after Holm")
    table.caption = "; ".join(notes)
    return table


def _interval(row, metric: str) -> str:
    if row.no_spread:
        return "no spread"
    return tables.interval(row.ci_low, row.ci_high, metric) or "no interval"


def _alias(row) -> str:
    """A fractional design's alias; past two factors, its order: a 5-way reads "+ 5-way"."""
    if not row.alias:
        return ""
    others = row.alias[1:].split(":")
    return f" ({row.alias[0]} {row.alias[1:] if len(others) < 3 else f'{len(others)}-way'})"


def _verdict(row) -> str:
    if row.significant:
        return "[green]significant[/green]"
    if row.equivalent:
        return "equivalent"
    return "†" if "95% CI excludes" in row.note else ""


def claim_line(claim) -> str:
    name = escape(str(claim["source"] or claim["where"]))  # claim.where: a pandas method

    def value(number):
        return tables.number(number, claim.metric)

    if claim.kind in ("at_most", "at_least"):
        said = "at most" if claim.kind == "at_most" else "at least"
        mark = "[green]holds[/green]" if claim.inside else "[red]does not hold[/red]"
        return (
            f"claim {name}: {said} {value(claim.claimed)}; {claim.runs_within} of {claim.n_seeds} "
            f"runs keep to it (mean {value(claim['mean'])}) {mark}"
        )
    if claim.inside is None:
        return f"claim {name}: {value(claim.claimed)}; n={claim.n_seeds}, no interval to compare"
    mark = "[green]inside[/green]" if claim.inside else "[red]outside[/red]"
    if claim.note:
        return (
            f"claim {name}: {value(claim.claimed)} vs every run {value(claim['mean'])} "
            f"(n={claim.n_seeds}, no spread) {mark}"
        )
    low, high, what = (
        (claim.pi_low, claim.pi_high, "95% prediction interval of one run")
        if claim.kind == "point"
        else (claim.ci_low, claim.ci_high, "95% CI of the mean")
    )
    return (
        f"claim {name}: {value(claim.claimed)} vs measured mean {value(claim['mean'])}, {what} "
        f"{tables.interval(low, high, claim.metric, False)} (n={claim.n_seeds}) {mark}"
    )


def plan_table(effects, halfwidth: float, metric: str) -> Table:
    """Per main effect: its spread now and the seeds a 95% CI of +-halfwidth needs."""
    table = Table(
        title=f"seeds for a 95% CI of ±{halfwidth:g} on each main effect (final {metric}), "
        "from the pilot's spread"
    )
    for column in ["effect", "n", "half-width now", "sd", "sd upper 95%", "seeds", "at most"]:
        table.add_column(column, justify="left" if column == "effect" else "right", overflow="fold")
    for row in effects.itertuples():
        table.add_row(
            escape(f"{row.factor}: {row.level} vs {row.baseline}"),
            str(row.n_pairs),
            _number(row.halfwidth),
            _number(row.std),
            _number(row.std_upper),
            _count(row.seeds_needed),
            _count(row.seeds_upper),
        )
    table.caption = (
        "seeds: at the observed sd of the per-seed differences; at most: at its one-sided 95% "
        "upper confidence limit (chi-square on n - 1 degrees of freedom)"
    )
    return table


def plan_lines(cost: dict, halfwidth: float) -> list[str]:
    """The whole study's cost at the seeds the widest effect needs, observed and at most."""
    lines = [
        f"the study: {cost['points']} design points x {cost['seeds']} seeds stored; "
        f"{cost['cell_seconds']:.1f} s of training per cell (from the stored seconds)"
    ]
    for name, said in (("observed", "at the observed spread"), ("upper", "at most")):
        plan = cost[name]
        if plan["seeds"] is None:  # seeds_needed's inf: past the counts it looks at
            lines.append(
                f"{said}: more than {MAX_PLANNED:,} seeds for some effect to be within "
                f"±{halfwidth:g}; plan for a wider half-width"
            )
            continue
        lines.append(
            f"{said}: {plan['seeds']} seeds for every effect within ±{halfwidth:g}: "
            f"{plan['cells']} cells, {plan['to_train']} more to train, about "
            f"{_duration(plan['hours'])}"
        )
    return lines


def _number(value) -> str:
    return "" if value != value else f"{value:.4f}"  # NaN: no estimate


def _count(value) -> str:
    if value != value:
        return ""
    return f"over {MAX_PLANNED}" if value == float("inf") else f"{value:.0f}"


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def noise_table(table, metric: str) -> Table:
    """Each stream's variance of the final metric, its 95% interval and share of all streams'."""
    out = Table(title=f"where the seed-to-seed noise in final {metric} comes from")
    for column in ["stream", "n", "sd", "variance [95% CI]", "share of all"]:
        out.add_column(column, justify="left" if column == "stream" else "right")
    for row in table.itertuples():
        out.add_row(
            escape(str(row.stream)),
            str(row.n),
            _number(row.sd),
            f"{row.variance:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]",
            "" if row.share != row.share else f"{row.share:.0%}",
        )
    return out


def compare_table(comparison) -> Table:
    """Per design point: A's and B's mean, B - A with its Welch CI, Holm p, the verdict."""
    metric, factors = comparison.metric, comparison.factors
    name_a, name_b = comparison.names
    out = Table(
        title=f"final {metric}{tables.unit(metric)}: B - A per design point (95% Welch CI, "
        "Holm over the points)",
        caption=f"A: {escape(name_a)}; B: {escape(name_b)}",
    )
    for factor in factors:
        out.add_column(escape(factor), overflow="fold")
    for column in ["n", "A", "B", "B - A [95% CI]", "p Holm", ""]:
        out.add_column(column, justify="right")
    for row in comparison.table.to_dict("records"):  # a factor may be named `class`
        tested = not row["verdict"].startswith("only")
        interval = tables.interval(row["ci_low"], row["ci_high"], metric) or row["test"] * tested
        verdict = f"[red]{row['verdict']}[/red]" if row["verdict"] in FAILED else row["verdict"]
        out.add_row(
            *(escape(str(row[f])) for f in factors),
            f"{row['n_a']}/{row['n_b']}",
            tables.number(row["mean_a"], metric),
            tables.number(row["mean_b"], metric),
            f"{tables.number(row['diff'], metric, True)} {interval}".strip(),
            tables.p_value(row["p_holm"]),
            verdict,
        )
    return out
