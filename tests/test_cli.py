"""The `ablate` command through Typer's runner: real studies on MNIST subsets, real Parquet."""

import json
import typing

import numpy as np
import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from ablate import engine, readback, seeds, testhooks
from ablate.cli import app
from ablate.executor import KINDS
from ablate.metrics import BUILT_IN, OUTCOMES, TEST_ACC
from ablate.readback import MANIFEST
from helpers import BLOBS_STUDY, REPO, write_study

cli = CliRunner()
COLUMNS = [
    "study",
    "cell",
    "seed",
    "activation",
    "dropout",
    "epoch",
    "train_loss",
    "test_loss",
    "test_acc",
    "seconds",
    "status",
    "config",
]


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


def test_run_writes_tidy_parquet_then_trains_nothing_the_second_time(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=2)
    first = run("run", study, "--out", tmp_path / "res")
    assert first.exit_code == 0, first.output
    assert "trained 8 cells" in first.stdout
    df = pd.read_parquet(tmp_path / "res" / "tiny")
    assert list(df.columns) == COLUMNS
    assert len(df) == 16 and df.groupby("cell").size().eq(2).all() and df["cell"].nunique() == 8
    assert (
        df["dropout"].dtype == "float64"
        and df["seed"].dtype == "int64"
        and df["epoch"].tolist().count(1) == 8
    )
    assert set(df["status"]) == {"ok"} and df["test_acc"].between(0, 1).all()
    relu = df[(df.activation == "relu") & (df.epoch == 2)]
    assert relu["test_acc"].min() > 0.3  # 16 steps on 512 samples; chance is 0.1
    config = json.loads(df["config"].iloc[0])
    assert config["hidden"] == [32] and config["train_subset"] == 512
    manifest = json.loads((tmp_path / "res" / "tiny" / MANIFEST).read_text())
    assert (
        manifest["source"]["text"] == study.read_text() and len(manifest["source"]["sha256"]) == 64
    )
    assert manifest["runs"][0]["torch"] and manifest["runs"][0]["device"].startswith("cpu")
    assert manifest["claims"][0]["value"] == 0.8 and manifest["factors"]["dropout"] == [0.0, 0.25]

    second = run("run", study, "--out", tmp_path / "res")
    assert second.exit_code == 0 and "nothing to train: all 8 cells" in second.stdout
    assert pd.read_parquet(tmp_path / "res" / "tiny").equals(df)

    shown = run("show", tmp_path / "res" / "tiny")
    assert shown.exit_code == 0 and "8 cells" in shown.stdout and "sigmoid" in shown.stdout


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    result = run("run", write_study(tmp_path, seeds=3), "--out", tmp_path / "res", "--dry-run")
    assert result.exit_code == 0
    assert "12 cells, 0 done, 12 to train" in result.stdout
    assert not (tmp_path / "res").exists()


def test_a_piped_dry_run_prints_one_whole_line_per_cell(tmp_path):
    # before: a Rich table laid out over every row (98 s for 10^5 cells) and cut ids to 80 columns
    result = run("run", write_study(tmp_path, seeds=3), "--out", tmp_path / "res", "--dry-run")
    rows = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert rows[0] == ["cell", "seed", "activation", "dropout", "done"] and len(rows) == 13
    assert all(len(r[0]) == 16 and int(r[0], 16) >= 0 for r in rows[1:])


def test_set_and_seeds_reshape_the_study(tmp_path):
    result = run(
        "run",
        write_study(tmp_path),
        "--dry-run",
        "--set",
        "activation=relu",
        "--set",
        "hidden=(16, 8)",
        "--seeds",
        "3",
    )
    assert result.exit_code == 0 and "6 cells" in result.stdout


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--set", "hidden=(64,"], 2, ["--set", "does not parse"]),
        (["--set", "lrr=0.1"], 2, ["lrr", "did you mean 'lr'"]),
        (["--set", "dropout=1.5"], 2, ["dropout=1.5", "0 <= p < 1"]),
        (["--seeds", "0"], 2, ["seeds=0"]),
        (["--metric", "test_loss"], 2, ["--metric test_loss: only used with --until-halfwidth"]),
        (["--address", "h:1"], 2, ["--address h:1: only used with --executor ray"]),
    ],
)
def test_user_mistakes_are_one_line_with_an_exit_code(tmp_path, args, code, words):
    result = run("run", write_study(tmp_path), "--out", tmp_path / "res", *args)
    assert result.exit_code == code
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in result.stderr
    assert not (tmp_path / "res").exists()


def test_missing_data_is_exit_1_and_writes_nothing(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    from ablate import data

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN", {})
    monkeypatch.setattr(tvd, "MNIST", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    data._load.cache_clear()
    data._load_cpu.cache_clear()
    result = run(
        "run", write_study(tmp_path), "--out", tmp_path / "res", "--data-dir", tmp_path / "nodata"
    )
    data._load.cache_clear()
    data._load_cpu.cache_clear()
    assert (
        result.exit_code == 1
        and "dataset mnist" in result.stderr
        and str(tmp_path / "nodata") in result.stderr
    )
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
def test_interrupted_run_keeps_finished_cells_and_the_rerun_finishes_the_rest(
    tmp_path, data_dir, monkeypatch
):
    study = write_study(tmp_path)
    real, calls = engine.train, []

    def interrupt_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "train", interrupt_third)
    stopped = run("run", study, "--out", tmp_path / "res", "--max-group", "2")
    assert stopped.exit_code == 130
    assert "stopped: 4 of 8 cells done; run the same command to finish" in stopped.stderr
    assert pd.read_parquet(tmp_path / "res" / "tiny")["cell"].nunique() == 4

    monkeypatch.setattr(engine, "train", real)
    rest = run("run", study, "--out", tmp_path / "res")
    assert rest.exit_code == 0 and "training 4 of 8 cells" in rest.stdout
    df = pd.read_parquet(tmp_path / "res" / "tiny")
    assert df["cell"].nunique() == 8 and len(df) == 8  # every cell exactly once


def test_out_of_memory_splits_the_group_and_the_study_completes(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(testhooks.OOM_ABOVE, "2")
    result = run("run", write_study(tmp_path), "--out", tmp_path / "res", "--max-group", "8")
    assert result.exit_code == 0, result.output
    assert "a group of 4 cells ran out of cpu memory; retrying as 2 + 2" in result.stdout
    assert pd.read_parquet(tmp_path / "res" / "tiny")["cell"].nunique() == 8


def test_a_cell_that_alone_does_not_fit_is_recorded_and_the_rest_goes_on(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setenv(
        testhooks.OOM_ABOVE, "0"
    )  # every group, even of one cell, runs out of memory
    study = write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])")
    result = run("run", study, "--out", tmp_path / "res", "--max-group", "2")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "a group of 2 cells ran out of cpu memory; retrying as 1 + 1" in said
    assert said.count("alone does not fit in cpu memory") == 4
    assert (
        "4 cells failed (warnings above) and were not stored; run the same command to retry them"
        in said
    )
    monkeypatch.delenv(testhooks.OOM_ABOVE)
    rerun = run("run", study, "--out", tmp_path / "res")
    assert rerun.exit_code == 0 and "training 4 of 4 cells" in rerun.stdout


@pytest.mark.slow
def test_a_factor_added_later_keeps_the_stored_cells_and_reports_their_level(tmp_path, data_dir):
    out = tmp_path / "res"
    run("run", write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"), "--out", out)
    grown = run(
        "run",
        write_study(
            tmp_path, factors="dict(activation=['relu', 'sigmoid'], normalize=[False, True])"
        ),
        "--out",
        out,
    )
    assert grown.exit_code == 0 and "training 4 of 8 cells" in grown.stdout
    df = readback.read(
        out / "tiny"
    )  # the first files had no normalize column; their config says False
    assert df["normalize"].tolist().count(False) == 4 and df["normalize"].tolist().count(True) == 4
    plain = pd.read_parquet(
        out / "tiny"
    )  # the README's own read: every file now carries the column
    assert (
        plain["normalize"].tolist().count(False) == 4
        and plain["normalize"].tolist().count(True) == 4
    )
    report = run("report", out / "tiny")
    assert report.exit_code == 0, report.output
    assert "normalize" in report.stdout


def test_a_changed_study_keeps_unchanged_cells(tmp_path, data_dir):
    run(
        "run",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"),
        "--out",
        tmp_path / "res",
    )
    grown = run(
        "run",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid', 'tanh'])"),
        "--out",
        tmp_path / "res",
    )
    assert grown.exit_code == 0 and "training 2 of 6 cells" in grown.stdout
    assert pd.read_parquet(tmp_path / "res" / "tiny")["cell"].nunique() == 6


@pytest.mark.slow
def test_a_set_run_into_the_same_folder_is_left_out_of_the_report(tmp_path, data_dir):
    out, study = (
        tmp_path / "res",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"),
    )
    assert run("run", study, "--out", out).exit_code == 0  # 4 cells of 1 epoch
    quick = run("run", study, "--out", out, "--set", "lr=0.01", "--seeds", "1")
    assert quick.exit_code == 0 and "training 2 of 2 cells" in quick.stdout
    df = readback.read(
        out / "tiny", warn=None
    )  # the manifest now records lr=0.01: the 4 cells of lr 0.05 are not in it
    assert df["cell"].nunique() == 2 and {json.loads(c)["lr"] for c in df["config"]} == {0.01}
    shown = run("show", out / "tiny")
    assert (
        "2 cells" in shown.stdout
        and "4 stored cells are not in the study's current design" in shown.stderr
    )
    back = run(
        "run", study, "--out", out
    )  # the study as written: its 4 cells again, seeds 0 and 1 once each
    assert "nothing to train" in back.stdout
    report = run("report", out / "tiny")
    assert report.exit_code == 0 and "n=2" in report.stdout, report.output
    assert pd.read_csv(out / "tiny" / "_report" / "summary.csv")["n_seeds"].tolist() == [2, 2]


@pytest.mark.slow
def test_factor_columns_follow_the_seed_whatever_order_the_files_sort_in(tmp_path, data_dir):
    out = tmp_path / "res"
    run("run", write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"), "--out", out)
    run(
        "run",
        write_study(
            tmp_path, factors="dict(activation=['relu', 'sigmoid'], normalize=[False, True])"
        ),
        "--out",
        out,
    )
    for i, f in enumerate(
        sorted(
            (out / "tiny").glob("*.parquet"),
            key=lambda f: "normalize" in str(pd.read_parquet(f).columns.tolist()),
        )
    ):
        f.rename(
            f.with_name(f"{'ab'[i > 0]}{i}.parquet")
        )  # the file without `normalize` now sorts first
    assert list(readback.read(out / "tiny").columns[:6]) == [
        "study",
        "cell",
        "seed",
        "activation",
        "normalize",
        "epoch",
    ]
    assert run("report", out / "tiny").exit_code == 0
    summary = pd.read_csv(out / "tiny" / "_report" / "summary.csv")
    assert len(summary) == 4 and summary["n_seeds"].tolist() == [2, 2, 2, 2]


@pytest.mark.slow
def test_an_edited_claim_reaches_the_report_without_training(tmp_path, data_dir):
    out, study = (
        tmp_path / "res",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"),
    )
    run("run", study, "--out", out)
    study.write_text(study.read_text().replace("value=0.8,", "value=0.99, kind='at_least',"))
    again = run("run", study, "--out", out)
    assert again.exit_code == 0 and "nothing to train" in again.stdout
    manifest = json.loads((out / "tiny" / MANIFEST).read_text())
    assert (
        manifest["claims"][0]["kind"] == "at_least" and len(manifest["runs"]) == 1
    )  # no run was added
    said = " ".join(run("report", out / "tiny").stdout.split())  # Rich wraps at 80 columns here
    assert "claim tiny: at least 99.00; 0 of 2 runs keep to it" in said and "does not hold" in said


@pytest.mark.slow
def test_a_dropped_factor_and_a_switched_design_leave_one_column_per_factor(tmp_path, data_dir):
    out = tmp_path / "res"
    two = "dict(activation=['relu', 'sigmoid'], normalize=[False, True])"
    run("run", write_study(tmp_path, factors=two), "--out", out)  # 8 cells
    one = run(
        "run",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid', 'tanh'])"),
        "--out",
        out,
    )
    assert (
        "training 2 of 6 cells" in one.stdout
    )  # normalize=False cells are kept: same config, same ids
    df = readback.read(out / "tiny", warn=None)
    assert "normalize" not in df.columns and df["cell"].nunique() == 6  # its level stays in config
    assert run("report", out / "tiny").exit_code == 0
    assert len(pd.read_csv(out / "tiny" / "_report" / "summary.csv")) == 3
    oat = run("run", write_study(tmp_path, factors=two, design="one_at_a_time"), "--out", out)
    assert "nothing to train" in oat.stdout  # base, sigmoid, normalize=True: all stored
    df = readback.read(out / "tiny", warn=None)  # not relu+True: one-at-a-time has no such point
    assert sorted(df.groupby(["activation", "normalize"]).groups) == [
        ("relu", False),
        ("relu", True),
        ("sigmoid", False),
    ]


@pytest.mark.slow
def test_an_edited_dataset_under_the_same_name_is_not_pooled(tmp_path, data_dir):
    out, study = (
        tmp_path / "res",
        write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])"),
    )
    run("run", study, "--out", out)
    study.write_text(study.read_text().replace('dataset="mnist"', 'dataset="fashion_mnist"'))
    assert "training 4 of 4 cells" in run("run", study, "--out", out).stdout
    with pytest.warns(UserWarning, match="4 stored cells are not in the study's current design"):
        df = readback.read(out / "tiny")  # a library caller is warned too
    assert df["cell"].nunique() == 4


def test_a_set_that_strands_a_claim_says_so(tmp_path, data_dir):
    r = run("run", write_study(tmp_path), "--dry-run", "--set", "activation=sigmoid")
    assert r.exit_code == 0 and "claim tiny" in r.stderr and "selects no cell" in r.stderr


@pytest.mark.slow
def test_a_fractional_study_trains_half_the_grid_and_reports_main_effects(tmp_path, data_dir):
    four = (
        "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25], batchnorm=[False, True], "
        "normalize=[False, True])"
    )
    r = run(
        "run", write_study(tmp_path, factors=four, design="fractional"), "--out", tmp_path / "res"
    )
    assert r.exit_code == 0 and "training 16 of 16 cells" in r.stdout  # 8 of 16 points x 2 seeds
    report = run("report", tmp_path / "res" / "tiny")
    assert report.exit_code == 0, report.output
    effects = pd.read_csv(tmp_path / "res" / "tiny" / "_report" / "effects.csv")
    assert effects["factor"].tolist() == ["activation", "dropout", "batchnorm", "normalize"]
    assert effects["n_pairs"].tolist() == [2, 2, 2, 2] and effects["diff"].notna().all()
    assert not (
        tmp_path / "res" / "tiny" / "_report" / "interactions.csv"
    ).exists()  # aliased in a half
    page = (tmp_path / "res" / "tiny" / "_report" / "index.html").read_text()
    assert "A half fraction of the 2^4 grid (resolution 4, I = +ABCD)" in page
    assert (
        "plus the interaction of the other 3" in page and "Fitted per seed by least squares" in page
    )


@pytest.mark.slow
def test_columns_and_interactions_follow_the_studys_factor_order(tmp_path, data_dir):
    out = (
        tmp_path / "res"
    )  # dropout first: the manifest's JSON keys are sorted, factor_order is not
    run(
        "run",
        write_study(tmp_path, factors="dict(dropout=[0.0, 0.25], activation=['relu', 'sigmoid'])"),
        "--out",
        out,
    )
    assert list(readback.read(out / "tiny").columns[3:5]) == ["dropout", "activation"]
    assert run("report", out / "tiny").exit_code == 0
    inter = pd.read_csv(out / "tiny" / "_report" / "interactions.csv")
    assert inter[["factor", "by"]].values.tolist() == [["dropout", "activation"]]


@pytest.mark.slow
def test_one_at_a_time_reports_no_interactions_and_removes_a_stale_table(tmp_path, data_dir):
    out = tmp_path / "res"
    run(
        "run", write_study(tmp_path, design="one_at_a_time"), "--out", out
    )  # relu+0.0, sigmoid, dropout 0.25
    report_dir = out / "tiny" / "_report"
    report_dir.mkdir(parents=True)
    (report_dir / "interactions.csv").write_text("stale")
    assert run("report", out / "tiny").exit_code == 0
    assert (
        not (report_dir / "interactions.csv").exists()
        and len(pd.read_csv(report_dir / "effects.csv")) == 2
    )
    page = (
        report_dir / "index.html"
    ).read_text()  # a simple effect, not an average over other levels
    assert (
        "with every other factor at its baseline" in page and "averaged over the other" not in page
    )


def test_a_three_factor_fractional_study_warns_of_its_aliases(tmp_path):
    three = "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25], batchnorm=[False, True])"
    r = run("run", write_study(tmp_path, factors=three, design="fractional"), "--dry-run")
    assert r.exit_code == 0 and "8 cells" in r.stdout and "aliases each main effect" in r.stderr


OWN_STUDY = """
import torch
from ablate import Key, Study

def net(config):
    width = config["width"]
    norm = torch.nn.LayerNorm(width) if config["norm"] == "layer" else torch.nn.Identity()
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), norm,
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))

study = Study(
    name="own",
    dataset="digits",
    model=net,
    keys=dict(width=Key(16, lo=1, hi=1024, help="hidden units"),
              norm=Key("none", choices=["none", "layer"])),
    base=dict(epochs=2, lr=0.1, momentum=0.5, batch_size=32),
    factors=dict(width=[16, 64], norm=["none", "layer"]),
    seeds=2,
)
"""


@pytest.mark.slow
def test_a_studys_own_keys_run_as_typed_columns_reach_the_report_and_rerun_nothing(tmp_path):
    study = tmp_path / "own.py"
    study.write_text(OWN_STUDY)
    dry = run("run", study, "--out", tmp_path / "res", "--dry-run")
    assert dry.exit_code == 0 and "cell\tseed\twidth\tnorm\tdone" in dry.stdout, dry.output
    assert "\t64\tlayer\t" in dry.stdout, dry.stdout
    first = run("run", study, "--out", tmp_path / "res")
    assert first.exit_code == 0 and "trained 8 cells" in first.stdout, first.output
    df = pd.read_parquet(tmp_path / "res" / "own")
    assert list(df.columns[:5]) == ["study", "cell", "seed", "width", "norm"]
    assert df["width"].dtype == "int64" and pd.api.types.is_string_dtype(df["norm"])
    assert sorted(set(df["width"])) == [16, 64] and set(df["norm"]) == {"none", "layer"}
    assert json.loads(df["config"].iloc[0])["width"] in (16, 64)
    manifest = json.loads((tmp_path / "res" / "own" / MANIFEST).read_text())
    assert manifest["keys"]["norm"]["choices"] == ["none", "layer"]
    assert manifest["keys"]["width"] == dict(
        default=16, choices=None, lo=1, hi=1024, help=("hidden units")
    )

    again = run("run", study, "--out", tmp_path / "res")
    assert again.exit_code == 0 and "nothing to train: all 8 cells" in again.stdout, again.output
    report = run("report", tmp_path / "res" / "own")
    assert report.exit_code == 0, report.output
    effects = pd.read_csv(tmp_path / "res" / "own" / "_report" / "effects.csv")
    assert set(effects["factor"]) == {"width", "norm"}
    shown = run("show", tmp_path / "res" / "own")
    assert shown.exit_code == 0 and "layer" in shown.stdout

    # --set pins an own key; a cell at its default keeps its id (own keys enter ids off-default)
    pinned = run("run", study, "--out", tmp_path / "set", "--set", "width=16", "--dry-run")
    assert pinned.exit_code == 0 and "4 cells" in pinned.stdout, pinned.output
    ids = set(df[df["width"] == 16]["cell"])
    assert all(cell in pinned.stdout for cell in ids), pinned.stdout


@pytest.mark.slow
def test_a_dataset_callable_trains_once_per_setting_of_its_keys_and_its_sizes_are_recorded(
    tmp_path,
):
    study = tmp_path / "blobs.py"
    study.write_text(BLOBS_STUDY)
    first = run("run", study, "--out", tmp_path / "res")
    assert first.exit_code == 0 and "trained 8 cells" in first.stdout, first.output
    df = pd.read_parquet(tmp_path / "res" / "blobs")
    final = df[df["epoch"] == 2]
    clean = final[final["noise"] == 0.0]["test_acc"]
    assert clean.min() > 0.9, final  # separable blobs; chance is 1/3
    manifest = json.loads((tmp_path / "res" / "blobs" / MANIFEST).read_text())
    assert manifest["dataset"].startswith("callable:blobs@")
    assert manifest["classes"] == 3 and manifest["test_size"] == 300
    again = run("run", study, "--out", tmp_path / "res")
    assert "nothing to train: all 8 cells" in again.stdout, again.output
    report = run("report", tmp_path / "res" / "blobs")
    assert report.exit_code == 0, report.output

    # hflip mirrors images: on float features it is one line and nothing is written
    flipped = run("run", study, "--out", tmp_path / "flip", "--set", "hflip=True")
    assert flipped.exit_code == 2 and "hflip=True mirrors images" in flipped.stderr
    assert flipped.stderr.count("\n") == 1 and not (tmp_path / "flip").exists()


def test_a_dataset_callable_is_called_once_per_setting_of_the_studys_own_keys(tmp_path):
    from ablate import data as datasets
    from ablate.studyfile import load

    path = tmp_path / "blobs.py"
    path.write_text(BLOBS_STUDY)
    study = load(path)
    module = __import__("sys").modules["ablate_study_blobs"]
    module.CALLS.clear()
    for noise in (0.0, 0.3, 0.0):
        datasets.study_data(study.dataset, dict(width=16, noise=noise), "cpu", None, str(path))
    assert module.CALLS == [dict(width=16, noise=0.0), dict(width=16, noise=0.3)]


WIDE = """
import torch
from ablate import Key, Study

def net(config):
    width = int(config["width"])
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))

study = Study(name="wide", dataset="digits", model=net, keys=dict(width={key}),
              base=dict(epochs=1, train_subset=100), factors={factors}, seeds={seeds})
"""


@pytest.mark.parametrize(
    "key, factors, seeds, changed, old, new",
    [
        ("2", "dict()", 1, "256", "2", "256"),  # reused: "nothing to train" at width 256
        ("Key(1, choices=[1, 64])", "dict(width=[1, 64])", 3, "Key(64, choices=[1, 64])", 1, 64),
        ("1", "dict()", 1, "'1'", "1", "'1'"),  # a type: the Parquet reads back no more
    ],
)
def test_a_changed_own_key_default_is_refused_naming_the_key_and_both_defaults(
    tmp_path, key, factors, seeds, changed, old, new
):
    study, res = tmp_path / "wide.py", tmp_path / "res"
    study.write_text(WIDE.format(key=key, factors=factors, seeds=seeds))
    assert run("run", study, "--out", res).exit_code == 0
    files = sorted((res / "wide").glob("*.parquet"))
    study.write_text(WIDE.format(key=changed, factors=factors, seeds=seeds))
    for dry in ([], ["--dry-run"]):
        again = run("run", study, "--out", res, *dry)
        assert again.exit_code == 2 and again.stderr.count("\n") == 1, again.output
        assert "wide.py: own key 'width' has default" in again.stderr, again.stderr
        assert f"default {new}, but" in again.stderr and f"when it was {old};" in again.stderr
    assert sorted((res / "wide").glob("*.parquet")) == files


def test_the_way_out_of_a_changed_default_keeps_it_and_sets_the_new_value_in_base(tmp_path):
    study, res = tmp_path / "wide.py", tmp_path / "res"
    study.write_text(WIDE.format(key="2", factors="dict()", seeds=1))
    assert run("run", study, "--out", res).exit_code == 0
    study.write_text(
        WIDE.format(key="2", factors="dict()", seeds=1).replace("epochs=1", "epochs=1, width=256")
    )
    moved = run("run", study, "--out", res)
    assert moved.exit_code == 0 and "trained 1 cells" in moved.stdout, moved.output
    widths = pd.read_parquet(res / "wide")["config"].map(lambda c: json.loads(c)["width"])
    assert sorted(widths) == [2, 256]


def test_a_run_that_finds_every_cell_stored_once_it_holds_the_lock_trains_nothing(
    tmp_path, data_dir, monkeypatch
):
    from ablate import runner

    study = write_study(tmp_path, seeds=1, factors="dict(activation=['relu', 'sigmoid'])")
    assert run("run", study, "--out", tmp_path / "res").exit_code == 0
    # another run stored the rest between the unlocked look and the lock
    monkeypatch.setattr(runner, "finished", lambda path: set())
    again = run("run", study, "--out", tmp_path / "res")
    assert again.exit_code == 0 and "nothing to train: all 2 cells" in again.stdout, again.output


@pytest.mark.slow
def test_a_study_of_no_factors_reports_without_an_error(tmp_path, data_dir):
    study = write_study(tmp_path, seeds=2, factors="dict()")
    assert run("run", study, "--out", tmp_path / "res").exit_code == 0
    report = run("report", tmp_path / "res" / "tiny")
    assert report.exit_code == 0, report.output
    assert "Traceback" not in report.output and "report:" in report.stdout


POINTS = """
from pathlib import Path

import numpy as np
import torch
from ablate import Study

HERE = Path(__file__).parent

def points():
    rows = np.load(HERE / "points.npy")  # two features, then the label
    x, y = torch.tensor(rows[:, :2], dtype=torch.float32), torch.tensor(rows[:, 2]).long()
    return x, y, x, y

study = Study(name="pts", dataset=points, model="linear", base=dict(epochs=1), seeds={seeds})
"""


def _points(folder, n, classes):
    rows = np.random.default_rng(n).normal(size=(n, 3))
    rows[:, 2] = np.arange(n) % classes
    np.save(folder / "points.npy", rows)


def test_a_dataset_callable_whose_file_changed_is_refused_before_new_cells_join_the_old(tmp_path):
    study, res = tmp_path / "pts.py", tmp_path / "res"
    study.write_text(POINTS.format(seeds=1))
    _points(tmp_path, 50, 2)
    assert run("run", study, "--out", res).exit_code == 0
    study.write_text(POINTS.format(seeds=2))  # the same data, a seed more: trains
    more = run("run", study, "--out", res)
    assert more.exit_code == 0 and "trained 1 cells" in more.stdout, more.output
    _points(tmp_path, 150, 3)
    study.write_text(POINTS.format(seeds=3))
    changed = run("run", study, "--out", res)
    assert changed.exit_code == 2 and changed.stderr.count("\n") == 1, changed.output
    assert "pts.py: dataset callable:points@" in changed.stderr
    assert "(classes 2 -> 3, test rows 50 -> 150)" in changed.stderr, changed.stderr
    manifest = json.loads((res / "pts" / MANIFEST).read_text())
    assert (manifest["classes"], manifest["test_size"]) == (2, 50)
    assert len(pd.read_parquet(res / "pts")["cell"].unique()) == 2


def test_every_command_says_what_each_argument_and_option_is_for_in_a_one_line_summary():
    commands = typer.main.get_command(app).commands
    assert set(commands) == {"run", "show", "report", "noise", "plan", "compare"}
    missing = [f"{name} {p.name}" for name, c in commands.items() for p in c.params if not p.help]
    assert not missing, missing
    for name, command in commands.items():  # `ablate --help` lists the first paragraph
        summary = command.help.split("\n\n")[0]
        assert "\n" not in summary and len(summary) <= 88, (name, summary)


def test_the_metric_and_executor_choices_come_from_their_registries():
    params = {
        (name, p.name): p for name, c in typer.main.get_command(app).commands.items()
        for p in c.params
    }  # fmt: skip

    def choices(command: str, name: str) -> list[str]:
        annotation = params[command, name].type_descriptor.annotation
        enum = (typing.get_args(annotation) or (annotation,))[0]  # run's --metric: Enum | None
        return [choice.value for choice in enum]

    for command in ("report", "plan", "compare", "run"):
        assert choices(command, "metric") == list(OUTCOMES)
    assert choices("show", "metric") == list(BUILT_IN)  # seconds too
    assert choices("run", "executor") == list(KINDS)
    refused = run("report", REPO / "results" / "xor", "--metric", "seconds")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
    assert refused.stderr.startswith("error: ") and "'seconds' is not one of" in refused.stderr
    missing = run("show")  # click's own refusals: one line too, no usage box
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1, missing.output
    assert "Missing argument 'RESULTS_DIR'" in missing.stderr


def rich_table(text: str) -> tuple[list[str], list[str]]:
    """A printed Rich table's header lines (┃) and row lines (│)."""
    lines = text.splitlines()
    return [x for x in lines if x.startswith("┃")], [x for x in lines if x.startswith("│")]


def assert_whole(text: str, expected: list[list[str]]) -> None:
    """One header line, one line per row, and each row's cells whole on its line."""
    heads, rows = rich_table(text)
    assert "…" not in text and len(heads) == 1 and len(rows) == len(expected), text
    for cells in expected:
        assert any(all(f" {c} " in row for c in cells) for row in rows), (cells, text)


def points(value: float, signed: bool = False) -> str:
    return f"{100 * value:{'+' if signed else ''}.2f}"


def label(row) -> str:
    return f"{row.factor}: {row.level} vs {row.baseline}"


def test_piped_tables_keep_every_number_whole_and_every_row_on_one_line(tmp_path):
    # before: Rich fell back to 80 columns off a terminal and printed -18.29 as `-18.2…`
    results = REPO / "results"
    df = readback.read(results / "mnist_mlp", None)
    last = df.sort_values("epoch").groupby("cell").tail(1)
    shown = run("show", results / "mnist_mlp")
    assert_whole(
        shown.stdout,
        [[r.activation, str(r.batchnorm), r.init, str(r.seed), points(r.test_acc)]
         for r in last.itertuples()],
    )  # fmt: skip
    seconds = run("show", results / "mnist_mlp", "--metric", "seconds")
    assert_whole(seconds.stdout, [[f"{s:.4g}"] for s in last["seconds"]])

    reported = run("report", results / "mnist_mlp", "--out", tmp_path / "report")
    effects = pd.read_csv(tmp_path / "report" / "effects.csv")
    assert_whole(
        reported.stdout,
        [[label(r), points(r.diff, True), f"[{points(r.ci_low, True)},",
          f"{points(r.ci_high, True)}]", points(r.mde)] for r in effects.itertuples()],
    )  # fmt: skip

    planned = run("plan", results / "mnist_mlp")
    plan, _ = seeds.plan(results / "mnist_mlp", None, TEST_ACC)
    assert_whole(
        planned.stdout,
        [[label(r), str(r.n_pairs), points(r.halfwidth), points(r.std)]
         for r in plan.itertuples()],
    )  # fmt: skip

    a, b = results / "digits_mlp", results / "rerun" / "digits_mlp"
    compared = run("compare", a, b, "--out", tmp_path / "compare")
    table = pd.read_csv(tmp_path / "compare" / "compare.csv")
    assert_whole(
        compared.stdout,
        [[r.activation, str(r.batchnorm), f"{r.n_a}/{r.n_b}", points(r.mean_a), points(r.mean_b),
          points(r.diff, True), r.verdict] for r in table.itertuples()],
    )  # fmt: skip

    noise = run("report", results / "mnist_mlp-noise", "--out", tmp_path / "noise")
    streams = pd.read_csv(tmp_path / "noise" / "noise.csv")
    assert_whole(noise.stdout, [[r.stream, f"{r.variance:.3g}"] for r in streams.itertuples()])


def test_the_help_gives_each_command_one_line_at_80_columns():
    shown = cli.invoke(app, ["--help"], env={"COLUMNS": "80"}).output.splitlines()
    commands = shown.index(next(line for line in shown if "Commands" in line))
    rows = shown[commands + 1 : commands + 7]
    assert [row.split()[1] for row in rows] == ["run", "show", "report", "noise", "plan", "compare"]
    assert shown[commands + 7].startswith("╰"), "\n".join(shown)  # no summary wrapped
    assert len([line for line in shown[:commands] if line.strip()]) == 5, "\n".join(shown)
