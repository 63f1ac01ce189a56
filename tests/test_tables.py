"""Paste-ready tables and number formats: by hand on tiny frames, then a real report's files."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ablate import tables
from ablate.cli import app
from ablate.metrics import TEST_ACC, TEST_LOSS
from helpers import REPO

cli = CliRunner()


def test_accuracy_reads_as_percent_with_two_decimals_and_p_with_three_figures():
    assert tables.number(0.97491, TEST_ACC) == "97.49"
    assert tables.number(0.0031, TEST_ACC, signed=True) == "+0.31"
    assert tables.number(0.123456, TEST_LOSS) == "0.1235"
    assert tables.number(np.nan, TEST_ACC) == ""
    assert tables.interval(-0.0009, 0.0009, TEST_ACC) == "[-0.09, +0.09]"
    assert tables.interval(0.9742, 0.9757, TEST_ACC, signed=False) == "[97.42, 97.57]"
    assert tables.p_value(0.04567) == "0.0457" and tables.p_value(2.3149e-5) == "2.31e-05"
    assert tables.p_value(1.0) == "1" and tables.seeds_text([0, 1, 2, 3, 4]) == "seeds 0–4"
    assert tables.seeds_text([0, 2, 7]) == "seeds 0, 2, 7" and tables.seeds_text([3]) == "seed 3"


def test_readable_formats_each_column_by_what_it_holds():
    effects = pd.DataFrame(
        dict(factor=["lr"], n_pairs=[5], diff=[0.0747], ci_low=[-0.001], ci_high=[0.15],
             p_holm=[1.06e-7], mde=[0.0021], seeds_needed=[3.0], note=[""])
    )  # fmt: skip
    shown = tables.readable(effects, TEST_ACC, "effects").iloc[0].to_dict()
    assert shown == dict(
        factor="lr", n_pairs=5, diff="+7.47", ci_low="-0.10", ci_high="+15.00",
        p_holm="1.06e-07", mde="0.21", seeds_needed="3", note="",
    )  # fmt: skip


def test_factor_columns_keep_their_levels_even_when_named_like_a_p_value():
    summary = pd.DataFrame(dict(p=[0.0, 1.2345e-4], n_seeds=[2, 2], mean=[0.5, 0.6]))
    shown = tables.readable(summary, TEST_ACC, "summary", factors=["p"])
    assert shown["p"].tolist() == [0.0, 1.2345e-4] and shown["mean"].tolist() == ["50.00", "60.00"]


SUMMARY = pd.DataFrame(
    dict(lr=[0.1, 0.01], n_seeds=[5, 1], n_diverged=[0, 0], mean=[0.9749, 0.5],
         std=[0.0006, np.nan], ci_low=[0.9742, np.nan], ci_high=[0.9757, np.nan])
)  # fmt: skip


def test_summary_markdown_by_hand():
    head, rows = tables.summary_rows(SUMMARY, ["lr"], TEST_ACC)
    text = tables.markdown(head, rows, "Final test_acc (%).", numbers_from=1)
    assert text == (
        "| lr | test_acc (%) | 95% CI | n |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| 0.1 | 97.49 ± 0.06 | [97.42, 97.57] | 5 |\n"
        "| 0.01 | 50.00 |  | 1 |\n"
        "\n*Final test_acc (%).*\n"
    )


def test_latex_escapes_a_users_level_and_writes_minus_signs_and_powers_of_ten():
    head = ["factor", "diff", "p"]
    rows = [["a_b & 5% {x}", "-0.31", "2.31e-05"], ["c", "+0.10 ± 0.02", "0.5"]]
    text = tables.latex(head, rows, "The 95% caption", "my study!", numbers_from=1)
    lines = text.splitlines()
    assert lines[0].startswith("% written by ablate report; needs \\usepackage{booktabs}")
    assert "\\caption{The 95\\% caption}" in lines and "\\label{tab:my-study-}" in lines
    assert "\\begin{tabular}{lrr}" in lines
    assert "a\\_b \\& 5\\% \\{x\\} & $-$0.31 & 2.31$\\times 10^{-5}$ \\\\" in lines
    assert "c & +0.10 $\\pm$ 0.02 & 0.5 \\\\" in lines
    assert [line for line in lines if "rule" in line] == ["\\toprule", "\\midrule", "\\bottomrule"]


@pytest.mark.slow
def test_a_real_report_writes_paste_ready_tables_and_pdfs_and_the_same_files_twice(tmp_path):
    folder = tmp_path / "mnist_mlp"
    shutil.copytree(REPO / "results" / "mnist_mlp", folder, ignore=shutil.ignore_patterns("_*"))
    shutil.copy(REPO / "results" / "mnist_mlp" / "_manifest.json", folder)
    for out in ("one", "two"):
        result = cli.invoke(app, ["report", str(folder), "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ["summary.md", "summary.tex", "effects.md", "effects.tex", "final.pdf"]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), f"{name} differs"
    pdfs = sorted(p.name for p in one.glob("*.pdf"))
    assert pdfs == ["claims.pdf", "curves.pdf", "effects.pdf", "final.pdf", "interactions.pdf"]
    assert all((one / p).read_bytes().startswith(b"%PDF") for p in pdfs)
    # the committed reference study: 8 points x 5 seeds; relu at 97.49 +- 0.06 without bn
    summary = (one / "summary.md").read_text()
    assert "| relu | False | default | 97.49 ± 0.06 | [97.42, 97.57] | 5 |" in summary
    assert "over 5 seeds per point (seeds 0–4)" in summary
    tex = (one / "summary.tex").read_text()
    assert "relu & False & default & 97.49 $\\pm$ 0.06 & [97.42, 97.57] & 5 \\\\" in tex
    rows = [line for line in tex.splitlines() if line.endswith("\\\\")]
    assert len(rows) == 1 + 8 and {row.count(" & ") for row in rows} == {5}
    effects = (one / "effects.tex").read_text()
    assert re.search(r"activation: relu vs sigmoid & 5 & \+7\.47 & \[\+7\.\d\d, \+7\.\d\d\] & "
                     r"1\.06\$\\times 10\^\{-7\}\$ & \$\^\*\$ \\\\", effects), effects  # fmt: skip
    assert "Holm-adjusted over the 6 tests" in effects and "seeds 0--4" in effects
    page = (one / "index.html").read_text()
    assert "<td>97.49</td>" in page and "<td>0.9749</td>" not in page
