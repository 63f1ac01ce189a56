"""What the terminal shows of a report: the effects table, warnings, claims and plans, in Rich."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from . import stats, tables
from .claims import POINT_INTERVALS
from .compare import FAILED
from .metrics import BUILT_IN, TEST_ACC, Metric, lookup
from .page import chosen_by, width

MAX_PLANNED = 100_000  # inference.seeds_needed counts up to 100,001 seeds; past them: inf


def print_warnings(rep, out, warn, metric: Metric = TEST_ACC) -> None:
    """The significant interactions, then effects that change sign, then failures that differ."""
    for _, row in rep.interactions.iterrows() if len(rep.interactions) else []:
        if row.significant:
            out.print(escape(_interaction_line(row, metric)))
    for row in rep.sign_changes.itertuples() if rep.sign_changes is not None else []:
        warn(
            f"{row.factor}={row.level} vs {row.baseline} changes sign across the other factors: "
            f"{row.settings}"
        )
    for row in rep.swings.itertuples() if rep.swings is not None else []:
        warn(
            f"cell {row.cell} (seed {row.seed}) ends at {tables.number(row.final, metric)} against "
            f"{tables.number(row.recent, metric)} over its {stats.SWING_EPOCHS} epochs before: an "
            "unstable curve; --final last-5 analyses the mean of each cell's last 5 epochs"
        )
    failures = rep.failures is not None and len(rep.failures)
    for row in rep.failures.drop_duplicates("factor").itertuples() if failures else []:
        if row.differs:
            warn(
                f"failed runs differ across the levels of {row.factor} (Fisher p "
                f"{row.p_fisher:.3g}, Holm {row.p_holm:.3g}): its effects compare the runs that "
                "did not diverge; see failures.csv"
            )


def _interaction_line(row, metric: Metric) -> str:
    def signed(value):
        return tables.number(value, metric, True)

    return (
        f"interaction: {row.factor}={row.level} vs {row.baseline} is {signed(row.at_baseline)} at "
        f"{row.by}={row.by_baseline} but {signed(row.at_level)} at {row.by}={row.by_level}: "
        f"difference {signed(row['diff'])} {tables.interval(row.ci_low, row.ci_high, metric)}"
        f"{metric.unit}, p Holm {tables.p_value(row.p_holm)}"
    )


def typed(value: float, metric: Metric) -> str:
    """A half-width or margin as a user types it: 0.5 for half a point of accuracy."""
    return f"{metric.shown(value):g}"


def effects_table(rep, metric: Metric, margin: float | None) -> Table:
    """One row per effect: estimate and CI, Holm p, what these seeds can detect, the verdict.
    `margin`: in the stored units, as the report took it."""
    table = Table(
        title=f"effects on final {metric.column}{metric.unit and ' in points'}: level - baseline, "
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
        f"±{width(rep.halfwidth, metric, rep.halfwidth_said)}"
    ]
    if margin:
        notes.append(
            f"equivalent: inside ±{tables.number(margin, metric)}{metric.unit} (two one-sided "
            "t tests, Holm)"
        )
    if rep.rule:
        notes.append(chosen_by(rep.rule).strip().rstrip("."))
    if n := stats.unconfirmed(rep.effects, rep.interactions):
        notes.append(
            f"not findings: {n} row(s) whose own CI excludes 0 but Holm does not flag (by chance "
            "on 23% of null 2x2x2 pages)"
        )
    table.caption = "; ".join(notes)
    return table


def _interval(row, metric: Metric) -> str:
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
    return "equivalent" if row.equivalent else ""


def claim_line(claim) -> str:
    name = escape(str(claim["source"] or claim["where"]))  # claim.where: a pandas method
    metric = lookup(claim.metric, f"claim {name}", BUILT_IN)

    def value(number):
        return tables.number(number, metric)

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
    if str(claim.note).startswith("no spread"):
        return (
            f"claim {name}: {value(claim.claimed)} vs every run {value(claim['mean'])} "
            f"(n={claim.n_seeds}, no spread) {mark}"
        )
    one_run = POINT_INTERVALS.get(claim.judged_by, "prediction interval")
    low, high, what = (
        (claim.pi_low, claim.pi_high, f"95% {one_run} of one run")
        if claim.kind == "point"
        else (claim.ci_low, claim.ci_high, "95% CI of the mean")
    )
    line = (
        f"claim {name}: {value(claim.claimed)} vs measured mean {value(claim['mean'])}, {what} "
        f"{tables.interval(low, high, metric, False)} (n={claim.n_seeds}) {mark}"
    )
    return f"{line}\n  {escape(claim.note)}" if claim.note else line  # outliers, clipping


def plan_table(effects, halfwidth: float, metric: Metric) -> Table:
    """Per main effect: its spread now and the seeds a 95% CI of +-halfwidth needs, by count;
    half-widths and sds as the report prints the metric (points for accuracy)."""
    table = Table(
        title=f"seeds for a 95% CI of ±{typed(halfwidth, metric)}{metric.unit} on each main "
        f"effect (final {metric.column}), from the pilot's spread"
    )
    for column in ["effect", "n", "half-width now", "sd", "seeds", "80%", "at most", "until"]:
        table.add_column(column, justify="left" if column == "effect" else "right", overflow="fold")
    for row in effects.itertuples():
        table.add_row(
            escape(f"{row.factor}: {row.level} vs {row.baseline}"),
            str(row.n_pairs),
            tables.number(row.halfwidth, metric),
            tables.number(row.std, metric),
            *map(_count, (row.seeds_needed, row.seeds_80, row.seeds_upper, row.seeds_stein)),
        )
    table.caption = (
        "seeds: at the observed sd of the per-seed differences (about half of new studies of "
        "that many seeds reach the half-width); 80%: reached by 80% of them, given the pilot "
        "(F on n - 1 degrees of freedom); at most: at the sd's one-sided 95% upper confidence "
        "limit (chi-square on n - 1; about 95%); until: what run --until-halfwidth trains to "
        "from these seeds (Stein's rule: within the half-width every time)"
    )
    return table


def plan_lines(cost: dict, halfwidth: float, metric: Metric) -> list[str]:
    """The whole study's cost at the seeds the widest effect needs, observed and at most."""
    within = f"±{typed(halfwidth, metric)}{metric.unit}"
    lines = [
        f"the study: {cost['points']} design points x {cost['seeds']} seeds stored; "
        f"{cost['cell_seconds']:.1f} s of training per cell (from the stored seconds)"
    ]
    for name, said in (
        ("observed", "at the observed spread"),
        ("assured", "in 80% of studies"),
        ("upper", "at most"),
        ("stein", f"--until-halfwidth {typed(halfwidth, metric)} from these seeds"),
    ):
        plan = cost[name]
        if plan["seeds"] is None:  # seeds_needed's inf: past the counts it looks at
            lines.append(
                f"{said}: more than {MAX_PLANNED:,} seeds for some effect to be within "
                f"{within}; plan for a wider half-width"
            )
            continue
        lines.append(
            f"{said}: {plan['seeds']} seeds for every effect within {within}: "
            f"{plan['cells']} cells, {plan['to_train']} more to train, about "
            f"{_duration(plan['hours'])}{_reach(name, plan['seeds'])}"
        )
    return lines


def _reach(name: str, seeds: int) -> str:
    """What a plan's count promises, simulated (tests/test_calibration.py)."""
    if name != "stein":
        share = dict(observed="about half", assured="80%", upper="about 95%")[name]
        return f" ({share} of new studies of that many seeds reach it)"
    cap = f"; pass --max-seeds {seeds}" if seeds > 30 else ""  # 30: seeds.MAX_SEEDS
    return f" (Stein's rule: every time, its sd taken from these seeds{cap})"


def _number(value) -> str:
    return "" if value != value else f"{value:.4f}"  # NaN: no estimate


def _count(value) -> str:
    if value != value:
        return ""
    return f"over {MAX_PLANNED}" if value == float("inf") else f"{value:.0f}"


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def noise_table(table, metric: Metric) -> Table:
    """Each stream's variance of the final metric, its 95% interval and share of all streams'."""
    out = Table(title=f"where the seed-to-seed noise in final {metric.column} comes from")
    for column in ["stream", "n", "sd", "variance [95% CI]", "share of all [95% CI]"]:
        out.add_column(column, justify="left" if column == "stream" else "right")
    for row in table.itertuples():
        share = "" if row.share != row.share else f"{row.share:.0%}"
        low = getattr(row, "share_low", float("nan"))
        if low == low:  # not NaN: "all" is 100% by definition, no interval
            share += f" [{low:.0%}, {row.share_high:.0%}]"
        out.add_row(
            escape(str(row.stream)),
            str(row.n),
            _number(row.sd),
            f"{row.variance:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]",
            share,
        )
    return out


def compare_table(comparison) -> Table:
    """Per design point: A's and B's mean, B - A with its paired or Welch CI, the MDE, Holm p,
    the diverged counts where some cell diverged, the verdict."""
    metric, factors = comparison.metric, comparison.factors
    name_a, name_b = comparison.names
    out = Table(
        title=f"final {metric.column}{tables.unit(metric)}: B - A per design point (95% CI: "
        "paired t by seed, else Welch; MDE: 80% power before Holm; Holm over the points)",
        caption=f"A: {escape(name_a)}; B: {escape(name_b)}",
    )
    lost = bool(comparison.table[["diverged_a", "diverged_b"]].to_numpy().any())
    for factor in factors:
        out.add_column(escape(factor), overflow="fold")
    heads = ["n", "A", "B", "B - A [95% CI]", "MDE", "p Holm", *["diverged (Holm p)"] * lost, ""]
    for column in heads:
        out.add_column(column, justify="right")
    for row in comparison.table.to_dict("records"):  # a factor may be named `class`
        tested = not row["verdict"].startswith("only")
        interval = tables.interval(row["ci_low"], row["ci_high"], metric) or row["test"] * tested
        verdict = f"[red]{row['verdict']}[/red]" if row["verdict"] in FAILED else row["verdict"]
        diverged = f"{row['diverged_a']}/{row['diverged_b']}"
        if row["p_diverged_holm"] == row["p_diverged_holm"]:  # not NaN: some cell diverged
            diverged += f" ({tables.p_value(row['p_diverged_holm'])})"
        out.add_row(
            *(escape(str(row[f])) for f in factors),
            f"{row['n_a']}/{row['n_b']}",
            tables.number(row["mean_a"], metric),
            tables.number(row["mean_b"], metric),
            f"{tables.number(row['diff'], metric, True)} {interval}".strip(),
            tables.number(row["mde"], metric),
            tables.p_value(row["p_holm"]),
            *[diverged] * lost,
            verdict,
        )
    return out
