"""`ablate compare A B`: Welch per design point against scipy, Holm's error rate, real stores."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from ablate import compare, inference
from ablate.cli import app
from conftest import write_study

cli = CliRunner()


def test_welch_by_hand_on_three_values_each():
    # diff 1; se = sqrt(1/3 + 1/3); df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4 exactly
    row = compare.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    se = np.sqrt(2 / 3)
    assert row["diff"] == pytest.approx(1.0) and row["df"] == pytest.approx(4.0)
    assert row["p_value"] == pytest.approx(2 * scipy_stats.t.sf(1 / se, 4))
    half = scipy_stats.t.ppf(0.975, 4) * se
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((1 - half, 1 + half))
    assert row["test"] == "welch"


def test_welch_equals_scipys_ttest_ind_with_unequal_variances_and_hsus_df_for_unequal_counts():
    rng = np.random.default_rng(0)
    for n_a, n_b, scale in [(5, 5, 1.0), (3, 3, 4.0), (10, 10, 0.3), (5, 3, 4.0)]:
        a, b = rng.normal(0, 1, n_a), rng.normal(0.5, scale, n_b)
        row = compare.welch(a, b)
        ref = scipy_stats.ttest_ind(b, a, equal_var=False)
        low, high = ref.confidence_interval(0.95)
        if n_a != n_b:  # Hsu: scipy's statistic and standard error, min(n) - 1 df
            df, se = min(n_a, n_b) - 1, (b.mean() - a.mean()) / ref.statistic
            half = scipy_stats.t.ppf(0.975, df) * se
            low, high = b.mean() - a.mean() - half, b.mean() - a.mean() + half
            ref = type("Hsu", (), dict(df=df, pvalue=2 * scipy_stats.t.sf(abs(ref.statistic), df)))
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["df"] == pytest.approx(ref.df, rel=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), rel=1e-9)


def test_welch_equivalence_equals_statsmodels_ttost_ind():
    from statsmodels.stats.weightstats import ttost_ind

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 5), rng.normal(0.2, 2, 5)
    row = compare.welch(a, b, margin=1.5)
    reference = ttost_ind(b, a, -1.5, 1.5, usevar="unequal")[0]
    assert row["p_equivalence"] == pytest.approx(reference, rel=1e-9)


def test_no_spread_on_either_side_is_decided_by_the_exact_permutation_test():
    # 3 vs 3 values, all alike on each side: the observed split is the most extreme of C(6,3) =
    # 20, and so is its mirror: p = 2 / 20
    row = compare.welch([0.9, 0.9, 0.9], [0.91, 0.91, 0.91], resolution=1e-4)
    assert row["p_value"] == pytest.approx(0.1) and np.isnan(row["ci_low"])
    assert row["test"] == "permutation (no spread)"
    assert compare.welch([0.9] * 3, [0.9] * 3, resolution=1e-4)["p_value"] == 1.0
    assert compare.welch([0.9], [0.9, 0.8])["test"] == "n<2"


def finals(means_a, means_b, seeds=3, spread=0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two folders' final rows for one factor `lr`, seed s of point i at mean + spread * s."""
    frames = []
    for side, means in (("a", means_a), ("b", means_b)):
        rows = [
            dict(cell=f"{side}{i}{s}", lr=i, status="ok", test_acc=m + spread * (s - 1))
            for i, m in enumerate(means)
            for s in range(seeds)
        ]
        frames.append(pd.DataFrame(rows))
    return frames[0], frames[1]


def test_compare_marks_a_shifted_point_differ_and_the_others_agree_by_hand():
    a, b = finals([0.5, 0.6, 0.7], [0.5, 0.6, 0.8])  # point 2 moved by 10 sd
    table = compare.compare(a, b, ["lr"], resolution=1e-4)
    assert table["verdict"].tolist() == ["agree", "agree", "differ"]
    assert table["diff"].tolist() == pytest.approx([0, 0, 0.1])
    assert table["p_holm"].iloc[2] == pytest.approx(3 * table["p_value"].iloc[2])
    line = compare.summary_line(table, ["lr"], "test_acc")
    assert line.startswith("2 of 3 points agree"), line
    assert "1 differ: lr=2 (+10.00 points [+7.73, +12.27])" in line, line


def test_points_only_one_side_holds_are_listed_and_not_tested():
    a, b = finals([0.5, 0.6], [0.5])
    table = compare.compare(a, b, ["lr"])
    assert table["verdict"].tolist() == ["agree", "only in A"]
    assert "1 only in A" in compare.summary_line(table, ["lr"], "test_acc")


def test_tuple_and_none_levels_are_points_like_any_other():
    rows = [
        dict(cell=f"{side}{i}{s}", hidden=level, status="ok", test_acc=0.9 + 0.01 * s)
        for side in "ab"
        for i, level in enumerate([(64, 32), None])
        for s in range(3)
    ]
    frame = pd.DataFrame(rows)
    frame["hidden"] = pd.Series([r["hidden"] for r in rows], dtype=object)
    a, b = frame[frame.cell.str[0] == "a"], frame[frame.cell.str[0] == "b"]
    table = compare.compare(a, b, ["hidden"])
    assert table["hidden"].tolist() == [(64, 32), None]
    assert table["verdict"].tolist() == ["agree", "agree"]
    assert compare.summary_line(table, ["hidden"], "test_acc").startswith("2 of 2 points agree")


def test_cells_that_diverged_on_one_side_only_are_a_difference():
    a, b = finals([0.5, 0.6], [0.5, 0.6])
    b.loc[b["cell"] == "b10", "status"] = "diverged"
    table = compare.compare(a, b, ["lr"])
    assert table["verdict"].tolist() == ["agree", "diverged in B"]
    assert table["diverged_b"].tolist() == [0, 1] and table["n_b"].tolist() == [3, 2]
    assert "1 diverged in B: lr=1" in compare.summary_line(table, ["lr"], "test_acc")


def test_without_spread_a_shift_below_the_resolution_is_no_shift_and_identical_setups_agree():
    # accuracy on 899 test images moves in steps of 1/899: noise smaller than a step leaves
    # every seed of a point on the same value; 1,000 simulated 8-point comparisons
    rng, step, flagged = np.random.default_rng(3), 1 / 899, 0
    for _ in range(1000):
        truth = rng.uniform(0.8, 0.95, 8)
        rows = [
            compare.welch(*(np.round((truth[i] + rng.normal(0, 0.05 * step, (2, 5))) / step)
                            * step), resolution=step)
            for i in range(8)
        ]  # fmt: skip
        flagged += bool((inference.holm([row["p_value"] for row in rows]) < 0.05).any())
    assert flagged / 1000 <= 0.05, f"some point differs in {flagged / 1000:.3f} (no spread)"
    one_step = compare.welch([0.5] * 5, [0.5 + step] * 5, resolution=step)
    assert one_step["p_value"] == pytest.approx(2 / 252)  # 5 v 5: C(10, 5) = 252 splits


def simulated_differ_rate(points, n_a, n_b, sd_b, noise, studies, seed) -> tuple[float, float]:
    """Two setups with equal means: the share of studies where some point is called `differ`,
    and the share of single-point intervals that cover the true difference 0."""
    rng = np.random.default_rng(seed)
    draw = {"normal": rng.standard_normal, "t3": lambda size: rng.standard_t(3, size)}[noise]
    flagged, covered = 0, 0
    for _ in range(studies):
        rows = [compare.welch(draw(n_a), sd_b * draw(n_b)) for _ in range(points)]
        p_holm = inference.holm([row["p_value"] for row in rows])
        flagged += bool((p_holm < 0.05).any())
        covered += rows[0]["ci_low"] <= 0 <= rows[0]["ci_high"]
    return flagged / studies, covered / studies


@pytest.mark.parametrize(
    "n_a, n_b, sd_b, noise",
    [
        (5, 5, 1.0, "normal"),
        (5, 5, 2.0, "normal"),
        (3, 3, 2.0, "normal"),
        (5, 5, 1.0, "t3"),
        (5, 3, 3.0, "normal"),  # Hsu's df: fewer seeds, more spread
        (10, 3, 3.0, "normal"),
    ],
)
def test_two_identical_setups_see_some_point_differ_at_most_5_percent_of_the_time(
    n_a, n_b, sd_b, noise
):
    # 1,000 simulated comparisons of 8 points; 3 standard errors of 0.05 at 1,000 is 0.021
    rate, coverage = simulated_differ_rate(8, n_a, n_b, sd_b, noise, 1000, seed=n_a + n_b)
    said = f"{noise}, seeds {n_a} vs {n_b}, sd ratio {sd_b}: some point differs in {rate:.3f}"
    assert rate <= 0.05 + 0.021, f"{said} of identical comparisons (want <= 0.05)"
    assert coverage >= 0.95 - 0.021, f"{said}; a point's 95% interval covered {coverage:.3f}"


def test_welch_overstates_where_one_sides_spread_is_several_times_the_others_as_documented():
    # Satterthwaite's df, equal seed counts: the README and compare.py say about 0.09
    rate, _ = simulated_differ_rate(8, 3, 3, 10.0, "normal", 1000, seed=11)
    assert 0.06 < rate < 0.12, f"3 vs 3 seeds, sd ratio 10: some point differs in {rate:.3f}"


def test_equivalent_is_said_at_most_5_percent_of_the_time_when_the_shift_is_the_margin():
    rng = np.random.default_rng(7)
    said = np.mean(
        [compare.welch(rng.normal(0, 1, 5), rng.normal(1, 2, 5), margin=1.0)["p_equivalence"]
         < 0.05 for _ in range(2000)]
    )  # fmt: skip
    assert said <= 0.05 + 0.015, f"equivalent in {said:.3f} of 2000 at a true shift = margin"


def run_tiny(tmp_path, out: str, *extra: str) -> None:
    study = write_study(tmp_path, seeds=4, epochs=3)  # spread about 4 points
    result = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / out), *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_dir):
    """The tiny study run twice with --deterministic, into two folders."""
    tmp = tmp_path_factory.mktemp("compare")
    run_tiny(tmp, "a", "--deterministic")
    run_tiny(tmp, "b", "--deterministic")
    return tmp


def test_two_deterministic_runs_agree_everywhere_with_every_cell_identical(two_runs):
    a, b = two_runs / "a" / "tiny", two_runs / "b" / "tiny"
    result = cli.invoke(app, ["compare", str(a), str(b), "--out", str(two_runs / "cmp")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4 of 4 points agree" in text and "16 of 16 shared cells identical" in text, text
    table = pd.read_csv(two_runs / "cmp" / "compare.csv")
    assert list(table.columns) == ["activation", "dropout", *compare.COLUMNS]
    assert (table["diff"] == 0).all() and (table["identical_cells"] == 4).all()


def copy_with(folder, out, change) -> None:
    """A copy of a results folder whose Parquet rows went through change(table)."""
    out.mkdir()
    for file in folder.iterdir():
        if file.suffix == ".parquet":
            stored = pq.read_table(file)
            table = change(stored.to_pandas())
            changed = pa.Table.from_pandas(table, schema=stored.schema, preserve_index=False)
            pq.write_table(changed, out / file.name)
        elif file.is_file():
            (out / file.name).write_bytes(file.read_bytes())


def test_a_point_moved_in_the_stored_parquet_differs_and_exits_1(two_runs, tmp_path):
    def move(table):  # as a broken kernel on another machine would
        table.loc[(table["activation"] == "relu") & (table["dropout"] == 0.25), "test_acc"] -= 0.3
        return table

    moved = tmp_path / "moved"
    copy_with(two_runs / "b" / "tiny", moved, move)
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(moved)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "3 of 4 points agree" in text and "activation=relu, dropout=0.25 (-30.00" in text
    assert (moved / "_compare" / "compare.csv").is_file()


def test_cells_diverged_on_one_side_only_exit_1_and_are_named(two_runs, tmp_path):
    def diverge(table):
        at = (table["activation"] == "sigmoid") & (table["dropout"] == 0.0)
        table.loc[at, "status"] = "diverged"
        return table

    copy_with(two_runs / "b" / "tiny", tmp_path / "lost", diverge)
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(tmp_path / "lost")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "1 diverged in B: activation=sigmoid, dropout=0.0" in text, text


def test_another_studys_folder_is_one_line_and_exit_2(two_runs, tmp_path):
    run_tiny(tmp_path, "other", "--set", "lr=0.1")
    other = tmp_path / "other" / "tiny"
    result = cli.invoke(app, ["compare", str(two_runs / "a" / "tiny"), str(other)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "base lr 0.05 in A, 0.1 in B" in result.output
    assert not (other / "_compare").exists()


def test_runs_in_another_precision_are_compared_and_the_line_says_so(two_runs, tmp_path):
    run_tiny(tmp_path, "bf16", "--set", "precision=bf16")  # fp32 vs bf16: the case
    result = cli.invoke(
        app, ["compare", str(two_runs / "a" / "tiny"), str(tmp_path / "bf16" / "tiny")]
    )
    assert result.exit_code in (0, 1), result.output
    text = " ".join(result.output.split())
    assert 'runs differ in precision "fp32" in A, "bf16" in B: ' in text, text
    table = pd.read_csv(tmp_path / "bf16" / "tiny" / "_compare" / "compare.csv")
    assert (table["shared_cells"] == 0).all() and (table["n_b"] == 4).all()


def test_mistakes_are_one_line_each(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    for args, said in [
        ([a, str(tmp_path / "none")], "no such results directory"),
        ([a, a, "--margin", "0"], "--margin 0"),
        ([a, a, "--metric", "seconds"], "no metric 'seconds'"),
        ([a, a, "--metric", "seed"], "no metric 'seed'"),
        ([a, b, "--out", str(two_runs / "a" / "tiny" / "_manifest.json")], "cannot write"),
    ]:
        result = cli.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and said in result.output, result.output
        assert result.output.count("\n") == 1, result.output


def test_compare_never_imports_torch(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    code = (
        "import sys; from typer.testing import CliRunner; from ablate.cli import app; "
        f"r = CliRunner().invoke(app, ['compare', {a!r}, {b!r}, '--out', {str(tmp_path)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compare_out_keeps_a_users_compare_csv_as_report_out_does(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    users = tmp_path / "u"
    users.mkdir()
    (users / "compare.csv").write_text("my own comparison")
    result = cli.invoke(app, ["compare", a, b, "--out", str(users)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "not empty and not a comparison folder ablate wrote" in result.output
    assert (users / "compare.csv").read_text() == "my own comparison"
    ours = tmp_path / "cmp"  # a folder ablate wrote, whose compare.csv the user then edited
    assert cli.invoke(app, ["compare", a, b, "--out", str(ours)]).exit_code == 0
    (ours / "compare.csv").write_text("edited by hand")
    result = cli.invoke(app, ["compare", a, b, "--out", str(ours)])
    assert result.exit_code == 2 and "compare.csv: not a file ablate wrote" in result.output
    assert (ours / "compare.csv").read_text() == "edited by hand"


def test_a_huge_margin_and_one_folder_on_both_sides_are_one_line_each(two_runs, tmp_path):
    a, b = str(two_runs / "a" / "tiny"), str(two_runs / "b" / "tiny")
    for args, said in [
        ([a, b, "--margin", "1e300"], "--margin 1e+300: expected a positive, finite"),
        ([a, b, "--margin", "inf"], "--margin inf"),
        ([a, a], "one folder on both sides"),  # before: all agree, exit 0
        ([a, f"{a}/../tiny"], "one folder on both sides"),
    ]:
        result = cli.invoke(app, ["compare", *args, "--out", str(tmp_path / "c")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert result.output.count("\n") == 1 and len(result.output) < 300, result.output
    assert not (tmp_path / "c").exists()
