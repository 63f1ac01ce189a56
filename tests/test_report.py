"""The report: every file written, a self-contained page, the documented CSV columns, no torch."""

import base64
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pandas as pd
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from ablate import report
from ablate.analysis import aimed_halfwidth, check_margin, check_request
from ablate.cli import app
from ablate.errors import AblateError
from ablate.metrics import TEST_ACC, TEST_LOSS
from ablate.readback import MANIFEST
from ablate.report import REPORT
from helpers import REPO, write_study

cli = CliRunner()
EVIL = "<script>alert(1)</script>"
STUDY = """
from ablate import Claim, Study

study = Study(
    name="tinyrep",
    dataset="mnist",
    base=dict(hidden=(32,), activation="relu", lr=0.05, momentum=0.5, batch_size=64, epochs=2,
              train_subset=512, batchnorm=False),
    factors=dict(batchnorm=[False, True], lr=[0.05, 1e30]),
    seeds=3,
    claims=[Claim(where=dict(batchnorm=False, lr=0.05), value=0.5, source="{evil}")],
)
""".replace("{evil}", EVIL)


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("rep")
    r = cli.invoke(
        app, ["run", str(write_study(tmp, name="tinyrep", body=STUDY)), "--out", str(tmp / "res")]
    )
    assert r.exit_code == 0, r.output
    folder = tmp / "res" / "tinyrep"
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["study"] = EVIL  # as if a study's name carried markup
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


@pytest.mark.slow
def test_report_writes_every_file_and_a_self_contained_page(results):
    r = cli.invoke(app, ["report", str(results)])
    assert r.exit_code == 0, r.output
    out = results / REPORT
    names = {p.name for p in out.iterdir()}
    for chart in ("final", "curves", "effects", "interactions", "claims"):
        assert {f"{chart}.png", f"{chart}.svg"} <= names
        assert mpimg.imread(out / f"{chart}.png").shape[2] in (3, 4)
        ET.parse(out / f"{chart}.svg")
    page = (out / "index.html").read_text()
    parser = Collect()
    parser.feed(page)
    assert "script" not in parser.tags and EVIL not in page and "&lt;script&gt;" in page
    assert len(parser.imgs) == 5 and all(
        src.startswith("data:image/png;base64,") for src in parser.imgs
    )
    for src in parser.imgs:
        assert (
            mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png").ndim == 3
        )
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from the network
    assert (
        "4 points x 3 seeds (12 cells)" in page
        and "n from 0 to 3" in page
        and "6 cells diverged" in page
    )
    assert pd.read_parquet(results).shape[0] > 0  # the report folder does not disturb readers


@pytest.mark.slow
def test_csvs_have_the_documented_columns(results):
    cli.invoke(app, ["report", str(results)])
    out = results / REPORT
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:2]) == ["batchnorm", "lr"]
    assert {"n_seeds", "mean", "std", "ci_low", "ci_high"} <= set(summary.columns)
    assert summary["n_seeds"].tolist() == [3, 0, 3, 0] and summary["n_diverged"].tolist() == [
        0,
        3,
        0,
        3,
    ]
    effects = pd.read_csv(out / "effects.csv")
    assert list(effects.columns[:9]) == [
        "factor",
        "level",
        "baseline",
        "metric",
        "n_pairs",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    assert {"p_holm", "significant"} <= set(effects.columns)
    bn = effects.set_index("factor").loc["batchnorm"]
    assert bn["n_pairs"] == 3 and bn["baseline"] == "False"
    lr = effects.set_index("factor").loc["lr"]
    assert lr["n_pairs"] == 0 and not lr["significant"]  # every 1e30 cell diverged: nothing to pair
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns[:11]) == [
        "where",
        "claimed",
        "mean",
        "ci_low",
        "ci_high",
        "pi_low",
        "pi_high",
        "n_seeds",
        "runs_within",
        "judged_by",
        "inside",
    ]
    assert claims.loc[0, "n_seeds"] == 3 and claims.loc[0, "source"] == EVIL
    inter = pd.read_csv(
        out / "interactions.csv"
    )  # batchnorm's effect at lr 1e30: every cell diverged
    assert list(inter.columns[:8]) == [
        "factor",
        "level",
        "baseline",
        "by",
        "by_level",
        "by_baseline",
        "metric",
        "n_pairs",
    ]
    assert inter[["factor", "by", "n_pairs"]].values.tolist() == [["batchnorm", "lr", 0]]
    assert (
        pd.isna(inter.loc[0, "at_baseline"]) and not inter.loc[0, "significant"]
    )  # no setting has 4 ok cells


@pytest.mark.slow
def test_report_never_imports_torch(results, tmp_path):
    code = (
        "import sys; from typer.testing import CliRunner; from ablate.cli import app; "
        f"r = CliRunner().invoke(app, ['report', {str(results)!r}, '--out', {str(tmp_path)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_on_a_missing_or_empty_directory_is_one_line(tmp_path, make):
    if make == "empty":
        (tmp_path / "d").mkdir()
    r = cli.invoke(app, ["report", str(tmp_path / "d")])
    assert r.exit_code == 1 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert str(tmp_path / "d") in r.stderr


@pytest.mark.slow
def test_one_seed_says_no_interval_instead_of_a_zero_width_bar(tmp_path):
    r = cli.invoke(
        app, ["run", "studies/xor.py", "--out", str(tmp_path), "--seeds", "1", "--set", "epochs=5"]
    )
    assert r.exit_code == 0, r.output
    rep = cli.invoke(app, ["report", str(tmp_path / "xor")])
    assert rep.exit_code == 0 and "n=1, no interval" in rep.stdout
    page = (tmp_path / "xor" / REPORT / "index.html").read_text()
    assert (
        "n/a (n&lt;2)" in page
        and "hidden=(4,)" in (tmp_path / "xor" / REPORT / "claims.csv").read_text()
    )


@pytest.mark.slow
def test_the_same_results_give_the_same_files_and_another_metric_leaves_no_stale_ones(
    results, tmp_path
):
    out = tmp_path / "r"
    assert cli.invoke(app, ["report", str(results), "--out", str(out)]).exit_code == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.invoke(app, ["report", str(results), "--out", str(out)]).exit_code == 0
    assert {
        p.name: p.read_bytes() for p in out.iterdir()
    } == first  # committed reports stay unchanged
    assert f"from {results}." in first["index.html"].decode()
    assert (
        cli.invoke(
            app, ["report", str(results), "--out", str(out), "--metric", "test_loss"]
        ).exit_code
        == 0
    )
    names = {
        p.name for p in out.iterdir()
    }  # the claims are about test_acc: none drawn for test_loss
    assert "claims.csv" not in names and "claims.png" not in names and "final.png" in names


@pytest.mark.slow
def test_failed_runs_are_counted_per_level_and_the_page_warns_when_they_differ(results):
    assert cli.invoke(app, ["report", str(results)]).exit_code == 0
    fails = pd.read_csv(results / REPORT / "failures.csv").set_index(["factor", "level"])
    assert fails.loc[("lr", "1e+30"), ["n_runs", "n_diverged"]].tolist() == [6, 6]
    assert fails.loc[("lr", "0.05"), "n_diverged"] == 0
    assert fails.loc[("lr", "0.05"), "p_fisher"] == pytest.approx(
        st.fisher_exact([[0, 6], [6, 0]]).pvalue
    )
    page = (results / REPORT / "index.html").read_text()
    assert "Failed runs differ across the levels of lr" in page and "batchnorm (Fisher" not in page


@pytest.mark.slow
def test_the_reference_study_shows_anova_shares_sign_changes_and_prediction_intervals(tmp_path):
    r = cli.invoke(app, ["report", str(REPO / "results" / "mnist_mlp"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    anova = pd.read_csv(tmp_path / "anova.csv")
    assert list(anova.columns) == [
        "term",
        "df",
        "sum_sq",
        "mean_sq",
        "F",
        "p",
        "eta_sq",
        "error_df",
    ]
    assert anova["term"].tolist()[-2:] == ["activation:batchnorm:init", "residual"]
    assert anova["eta_sq"].sum() == pytest.approx(1.0)
    page = (tmp_path / "index.html").read_text()
    assert (
        "Share of the variance" in page and "init=kaiming_uniform vs default changes sign" in page
    )
    assert (
        "+3.24 at activation=sigmoid, batchnorm=False" in page
    )  # He init: +3.24 points there, -0.83 ...
    claims = pd.read_csv(
        tmp_path / "claims.csv"
    )  # the ReLU claim 97.41 lies in [97.31, 97.67] for one run
    assert claims["inside"].tolist() == [False, True, True, True] and set(claims["judged_by"]) == {
        "prediction"
    }
    assert "averaged over the other factors' levels" in page


@pytest.mark.slow
def test_rows_whose_own_ci_excludes_zero_but_holm_does_not_flag_are_one_footnote_not_marks(
    tmp_path,
):
    # issue 28: a dagger on the row read as a finding; a null 2x2x2 page shows one 22% of the time
    r = cli.invoke(
        app, ["report", str(REPO / "results" / "fashion_mnist_mlp"), "--out", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    effects = pd.read_csv(tmp_path / "effects.csv").set_index("factor")
    for factor in ("dropout", "hflip"):  # their own CIs exclude 0; p_holm 0.11 each (and a
        # dropout x hflip row: 3 in all)
        row = effects.loc[factor]
        assert (row["ci_low"] > 0 or row["ci_high"] < 0) and not row["significant"]
        assert pd.isna(row["note"])  # nothing on the row
    said = " ".join(r.stdout.split())
    assert "†" not in r.stdout and "not findings: 3 row(s) whose own CI excludes 0" in said
    page = (tmp_path / "index.html").read_text()
    assert "Not findings: 3 rows' own 95% interval excludes 0" in page and "†" not in page
    assert "not findings: 3 of the unmarked rows" in (tmp_path / "effects.md").read_text()


@pytest.mark.slow
def test_margin_adds_an_equivalence_test_and_a_bad_margin_is_one_line(results, tmp_path):
    # typed in points for accuracy: 0.5 is half a point, 0.005 stored
    r = cli.invoke(app, ["report", str(results), "--out", str(tmp_path), "--margin", "0.5"])
    assert r.exit_code == 0, r.output
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert {"mde", "seeds_needed", "p_equivalence", "equivalent"} <= set(effects.columns)
    assert "equivalent: inside ±0.50 points" in " ".join(r.stdout.split())
    page = " ".join((tmp_path / "index.html").read_text().split())
    assert "equivalent: inside +-0.50 points by two one-sided t tests" in page
    bad = cli.invoke(app, ["report", str(results), "--out", str(tmp_path / "x"), "--margin", "-1"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "--margin -1" in bad.stderr
    assert not (tmp_path / "x").exists()


DIGITS = """
from ablate import Study
study = Study(name="ts", dataset="digits",
    base=dict(hidden=(16,), activation="relu", lr=0.1, batch_size=64, epochs=2, train_subset=None),
    factors=dict(train_subset=[None, 300], batchnorm=[False, True]), seeds=2)
"""


@pytest.mark.slow
def test_a_none_baseline_level_reports_and_shows_as_none(tmp_path):
    # before: KeyError (nan, False) in the report; show printed nan and 300.0
    study = tmp_path / "ts.py"
    study.write_text(DIGITS)
    assert cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res")]).exit_code == 0
    r = cli.invoke(app, ["report", str(tmp_path / "res" / "ts")])
    assert r.exit_code == 0, r.output
    effects = pd.read_csv(tmp_path / "res" / "ts" / REPORT / "effects.csv").set_index("factor")
    assert (
        effects.loc["train_subset", "n_pairs"] == 2
        and effects.loc["train_subset", "baseline"] != effects.loc["train_subset", "level"]
    )
    shown = cli.invoke(app, ["show", str(tmp_path / "res" / "ts")]).stdout
    assert "None" in shown and "300 " in shown and "nan" not in shown and "300.0" not in shown


def test_a_study_whose_every_cell_diverged_is_one_line_and_writes_nothing(tmp_path):
    study = tmp_path / "ts.py"
    study.write_text(DIGITS)
    run = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res"), "--set", "lr=1e30"])
    assert run.exit_code == 0 and "diverged" in run.output
    r = cli.invoke(app, ["report", str(tmp_path / "res" / "ts")])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (
        r.output
    )
    assert (
        "every one of its 8 cells diverged" in r.stderr
        and not (tmp_path / "res" / "ts" / REPORT).exists()
    )


@pytest.mark.slow
def test_dollar_signs_in_a_claim_are_text_not_math(tmp_path):
    # before: matplotlib parsed "$...$" as TeX: an invalid expression crashed the report
    study = tmp_path / "ts.py"
    study.write_text(
        DIGITS.replace(
            "seeds=2)",
            "seeds=2, claims=[Claim(where=dict(batchnorm=True), value=0.5, "
            "source=r'US$5 vs $10 and $\\frac{$')])",
        ).replace("import Study", "import Claim, Study")
    )
    assert cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res")]).exit_code == 0
    r = cli.invoke(app, ["report", str(tmp_path / "res" / "ts")])
    assert r.exit_code == 0, r.output
    assert (
        pd.read_csv(tmp_path / "res" / "ts" / REPORT / "claims.csv")["source"][0]
        == r"US$5 vs $10 and $\frac{$"
    )


def test_seconds_is_no_effect_metric(results):
    # fused cells share their group's wall time: the report printed zero-width intervals and p = 0
    r = cli.invoke(
        app, ["report", str(results), "--out", str(results.parent / "sec"), "--metric", "seconds"]
    )
    assert r.exit_code == 2 and "seconds" in r.stderr and "Traceback" not in r.output, r.output
    assert not (results.parent / "sec").exists()
    with pytest.raises(AblateError, match="'seconds' is not a per-cell outcome"):
        report.build(results, results.parent / "sec", "seconds")
    assert not (results.parent / "sec").exists()


def test_a_bad_margin_or_halfwidth_is_said_as_typed_in_points_for_accuracy():
    with pytest.raises(AblateError, match=r"--margin 150: .* in points, below 100$"):
        check_margin(1.5, TEST_ACC)
    with pytest.raises(AblateError, match="--margin -2: .* in test_loss's units$"):
        check_margin(-2, TEST_LOSS)
    check_margin(0.005, TEST_ACC)  # half a point
    check_margin(5.0, TEST_LOSS)  # a loss has no top
    rows = pd.DataFrame(dict(test_acc=[0.9], status=["ok"], cell=["c"]))
    with pytest.raises(AblateError, match="--halfwidth -50: expected a positive half-width in "):
        check_request(rows, "here", TEST_ACC, None, -0.5)
    with pytest.raises(AblateError, match="here: no metric 'test_loss'; try train_loss, test_"):
        check_request(rows, "here", TEST_LOSS, None, None)


def test_the_default_halfwidth_is_the_metrics_own_from_the_mean_of_the_ok_runs():
    final = pd.DataFrame(dict(test_loss=[0.31, 0.35, 99.0], status=["ok", "ok", "diverged"]))
    assert aimed_halfwidth(final, TEST_LOSS, 0.0) == (
        0.003,
        "the default for test_loss: 1% of its mean",
    )
    final = final.rename(columns=dict(test_loss="test_acc"))
    assert aimed_halfwidth(final, TEST_ACC, 1 / 4)[0] == 0.25  # one of 4 test samples
    assert aimed_halfwidth(final, TEST_ACC, 1 / 360)[0] == 0.005  # half a point


def test_a_noise_report_keeps_the_users_noise_csv_and_removes_only_what_ablate_wrote(tmp_path):
    from ablate.errors import StoreError
    from ablate.report import write_folder

    def files(**texts):
        return lambda folder: [
            (folder / n.replace("_", ".")).write_text(t) for n, t in texts.items()
        ]

    out = tmp_path / "rep"
    write_folder(out, files(summary_csv="grid", index_html="grid page"))
    (out / "noise.csv").write_text("my own streams")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="noise.csv: not a file ablate wrote") as said:
        write_folder(out, files(noise_csv="streams", index_html="noise page"))
    assert said.value.code == 2 and (out / "noise.csv").read_text() == "my own streams"
    assert (out / "index.html").read_text() == "grid page"  # nothing written half-way
    (out / "noise.csv").unlink()
    (out / "summary.csv").write_text("grid, edited by hand")  # no longer what ablate wrote
    write_folder(out, files(noise_csv="streams", index_html="noise page"))
    kept = {p.name: p.read_text() for p in out.iterdir() if p.name != ".ablate-report"}
    assert kept == {
        "noise.csv": "streams",
        "index.html": "noise page",
        "notes.txt": "mine",
        "summary.csv": "grid, edited by hand",
    }


def collapsed_digits(tmp_path):
    """results/digits_mlp copied, its ReLU + batchnorm cell of seed 0 ending at 39.2% at epoch 30
    (as a rerun did, issue 28) where it stood at 91-94% the epochs before."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "digits_mlp"
    shutil.copytree(REPO / "results" / "digits_mlp", folder, ignore=shutil.ignore_patterns("_rep*"))
    file = folder / "geb569831f6419f5e.parquet"  # relu with batchnorm, seeds 0-4
    original = pq.read_table(file)
    rows = original.to_pandas()
    rows.loc[(rows["seed"] == 0) & (rows["epoch"] == 30), "test_acc"] = 0.392
    pq.write_table(pa.Table.from_pandas(rows, schema=original.schema, preserve_index=False), file)
    return folder, rows


@pytest.mark.slow
def test_a_cell_whose_final_epoch_collapses_is_flagged_and_last_k_averages_its_last_epochs(
    tmp_path,
):
    folder, rows = collapsed_digits(tmp_path)
    r = cli.invoke(app, ["report", str(folder), "--out", str(tmp_path / "last")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.stderr.split())
    assert "(seed 0) ends at 39.20 against" in said and "--final last-5" in said
    page = (tmp_path / "last" / "index.html").read_text()
    assert "1 cells end far from their own last 5 epochs" in page
    assert "activation=relu, batchnorm=True seed 0: 39.20 at epoch 30" in page
    r = cli.invoke(app, ["report", str(folder), "--out", str(tmp_path / "k"), "--final", "last-5"])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "k" / "summary.csv")
    at = summary[(summary["activation"] == "relu") & summary["batchnorm"]]
    by_hand = rows[rows["epoch"] > 25].groupby("seed")["test_acc"].mean().mean()
    assert at["mean"].iloc[0] == pytest.approx(by_hand, abs=1e-12)
    page = (tmp_path / "k" / "index.html").read_text()
    assert "each cell's mean over its last 5 epochs (--final last-5)" in page
    assert "the analysis already averages the last 5 epochs" in page


def test_the_committed_digits_curves_flag_no_swing_and_a_bad_final_is_one_line(tmp_path):
    from ablate import readback, stats

    rows = stats.tidy(readback.read(REPO / "results" / "digits_mlp"))
    assert stats.swings(rows, TEST_ACC, 1 / 360).empty  # late jitter of 1-4 points is no swing
    for bad in ("last-0", "last-x", "first"):
        r = cli.invoke(app, ["report", str(REPO / "results" / "digits_mlp"), "--final", bad])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        assert f"--final {bad}: expected last" in r.stderr


@pytest.mark.slow
def test_the_default_halfwidth_is_per_metric_in_its_units_and_said_in_the_caption(tmp_path):
    # issue 28: xor's 4 test samples asked for 3,097 seeds at half a point
    r = cli.invoke(app, ["report", str(REPO / "results" / "xor"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "x" / "effects.csv")["seeds_needed"].tolist() == [4.0]
    page = (tmp_path / "x" / "index.html").read_text()
    assert "half-width 25.00 points (the default for test_acc: one test sample" in page
    assert (
        "| (4,) | 100.00 ± 0.00 | no spread | 10 |" in (tmp_path / "x" / "summary.md").read_text()
    )
    assert pd.read_csv(tmp_path / "x" / "summary.csv")["ci_low"].isna().tolist() == [False, True]
    folder = REPO / "results" / "digits_mlp"
    r = cli.invoke(
        app, ["report", str(folder), "--out", str(tmp_path / "l"), "--metric", "test_loss"]
    )
    assert r.exit_code == 0, r.output
    loss = pd.read_csv(tmp_path / "l" / "summary.csv")["mean"].mean()
    page = " ".join((tmp_path / "l" / "index.html").read_text().split())
    assert f"half-width {float(f'{0.01 * loss:.1g}'):.4g} (the default for test_loss: 1%" in page


@pytest.mark.slow
def test_the_curves_are_tested_by_area_and_epochs_to_a_threshold_checked_by_hand(tmp_path):
    from ablate import readback, stats

    r = cli.invoke(app, ["report", str(REPO / "results" / "digits_mlp"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = stats.tidy(readback.read(REPO / "results" / "digits_mlp"))
    area = rows.groupby(["activation", "batchnorm", "seed"])["test_acc"].mean()
    per_seed = (area.loc["relu"] - area.loc["sigmoid"]).groupby("seed").mean()  # over batchnorm
    table = pd.read_csv(tmp_path / "curve_effects.csv").set_index(["measure", "factor"])
    assert table.loc[("area", "activation"), "diff"] == pytest.approx(per_seed.mean(), abs=1e-12)
    final = stats.final(rows)
    worst = final.groupby(["activation", "batchnorm"])["test_acc"].mean().min()
    reached = rows[rows["test_acc"] >= worst].groupby("cell")["epoch"].min()
    first = rows.groupby("cell")[["activation", "seed"]].first().assign(at=reached).fillna(31)
    by_hand = first.groupby(["activation", "seed"])["at"].mean()
    epochs = (by_hand.loc["relu"] - by_hand.loc["sigmoid"]).mean()
    assert table.loc[("epochs to threshold", "activation"), "diff"] == pytest.approx(epochs)
    climbing = pd.read_csv(tmp_path / "climbing.csv")
    assert list(climbing.columns[-5:]) == ["n", "slope", "p_value", "p_holm", "still_climbing"]
    page = (tmp_path / "index.html").read_text()
    assert "The curves, tested" in page and "epochs to reach 92." in page


@pytest.mark.slow
def test_with_stored_predictions_effects_and_points_count_the_test_set_beside_the_seeds(tmp_path):
    from ablate import examples, predictions, readback, stats

    args = ["run", "studies/digits_mlp.py", "--out", str(tmp_path), "--set", "epochs=3"]
    assert cli.invoke(app, args).exit_code == 0
    folder = tmp_path / "digits_mlp"
    r = cli.invoke(app, ["report", str(folder), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    effects = pd.read_csv(tmp_path / "rep" / "effects.csv")
    added = ["ci_low_examples", "ci_high_examples", "var_seeds", "var_examples", "share_examples"]
    assert list(effects.columns[-6:]) == [*added, "examples_method"]
    labels, predicted = predictions.read_predictions(folder)
    hits = examples.correct(predicted, labels)
    final = stats.final(stats.tidy(readback.read(folder)))
    by_hand = hits.mean(axis=1)  # each cell's accuracy from its predictions is its test_acc
    assert (by_hand.loc[final["cell"]].to_numpy() == final["test_acc"].to_numpy()).all()
    for row in effects.itertuples():  # wider than the seed-only interval: a second source
        assert row.ci_low_examples < row.ci_low and row.ci_high < row.ci_high_examples
        assert 0 < row.share_examples < 1
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert summary["share_examples"].between(0, 1).all()
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "95% CI, test set counted" in page and "the 899 test examples counted" in page
    r = cli.invoke(app, ["report", str(folder), "--out", str(tmp_path / "k"), "--final", "last-2"])
    assert "ci_low_examples" not in pd.read_csv(tmp_path / "k" / "effects.csv")  # last epoch's only
