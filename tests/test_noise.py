"""Where the seed-to-seed noise comes from: `ablate noise` cells, rows and noise.csv."""

import json

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from ablate import noise, report
from ablate.cli import app
from ablate.store import MANIFEST, Store
from ablate.study import Study, cells, validate
from conftest import write_study

cli = CliRunner()


def test_ablate_noise_varies_one_stream_at_a_time_and_its_all_cells_are_the_ordinary_ones(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    study = write_study(tmp_path, factors="dict(lr=[0.05, 0.1])")
    text = study.read_text().replace("dropout=0.0,", "dropout=0.25, hflip=True,")
    study.write_text(text)
    args = ["noise", str(study), "--seeds", "3", "--out", str(tmp_path / "res")]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "res" / "tiny-noise"
    rows = pd.read_parquet(folder)
    assert sorted(rows["stream"].unique()) == ["all", "dropout", "flip", "init", "order"]
    assert rows.groupby("stream")["seed"].apply(sorted).map(list).tolist() == [[1, 2, 3]] * 5
    assert "stream" not in list(rows.columns[: list(rows.columns).index("epoch")])  # no factor
    # the "all" cells are the study's own cells of seeds 1..3 at its base point
    base = validate(
        Study(
            name="tiny",
            dataset="mnist",
            base=dict(
                hidden=(32,),
                activation="relu",
                dropout=0.25,
                hflip=True,
                lr=0.05,
                momentum=0.5,
                batch_size=64,
                epochs=1,
                train_subset=512,
            ),
            seeds=[1, 2, 3],
        )
    )
    ordinary = {c.id for c in cells(base)}
    assert set(rows.loc[rows["stream"] == "all", "cell"]) == ordinary
    assert not set(rows.loc[rows["stream"] != "all", "cell"]) & ordinary
    again = cli.invoke(app, args)
    assert "nothing to train" in again.output, again.output
    shown = cli.invoke(app, ["report", str(folder)])
    assert shown.exit_code == 0, shown.output
    table = pd.read_csv(folder / "_report" / "noise.csv")
    assert table["stream"].tolist() == ["init", "order", "dropout", "flip", "all"]
    assert list(table.columns[:6]) == ["stream", "variance", "share", "ci_low", "ci_high", "n"]
    assert table.loc[table.stream == "all", "share"].item() == 1.0


def test_noise_csv_recovers_planted_stream_variances_inside_their_intervals(tmp_path):
    # a generated store: 300 seeds per stream, sd 0.02 (init), 0.01 (order), 0.005 (dropout),
    # and the three adding up in "all"; real Parquet, read by the real report
    rng = np.random.default_rng(7)
    planted = {"init": 0.02**2, "order": 0.01**2, "dropout": 0.005**2}
    planted["all"] = sum(planted.values())
    folder = tmp_path / "planted-noise"
    store = Store(folder).open()
    for stream, variance in planted.items():
        values = 0.9 + rng.normal(0, np.sqrt(variance), 300)
        store.write(
            [
                dict(
                    study="planted-noise",
                    cell=f"{stream}{seed}",
                    seed=seed,
                    epoch=1,
                    train_loss=0.1,
                    test_loss=0.2,
                    test_acc=float(value),
                    seconds=1.0,
                    status="ok",
                    config="{}",
                    stream=stream,
                )
                for seed, value in enumerate(values, start=1)
            ],
            stream,
        )
    store.close()
    (folder / MANIFEST).write_text(json.dumps({"study": "planted-noise", "design": "noise"}))
    rep = report.build(folder)
    table = pd.read_csv(folder / "_report" / "noise.csv").set_index("stream")
    for stream, variance in planted.items():
        row = table.loc[stream]
        assert row.ci_low <= variance <= row.ci_high, (stream, variance, row.to_dict())
        # by hand: the sample variance and scipy's chi-square quantiles
        values = pd.read_parquet(folder / f"{stream}.parquet")["test_acc"]
        assert abs(row.variance - values.var(ddof=1)) < 1e-15
        low = 299 * values.var(ddof=1) / scipy_stats.chi2.ppf(0.975, 299)
        assert abs(row.ci_low - low) < 1e-15 and row.n == 300
    assert abs(table.loc["init", "share"] - 0.02**2 / planted["all"]) < 0.15
    assert "consistent with streams that simply add" in noise.adds_up(rep.noise)


def test_a_noise_design_takes_no_factors(tmp_path):
    study = write_study(tmp_path, design="noise")
    result = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res")])
    assert result.exit_code == 2, result.output
    assert "design 'noise' takes no factors (got activation, dropout)" in result.output


def test_adds_up_tells_adding_streams_from_each_giving_the_whole_spread_and_from_interacting():
    def table(variances):  # n = 8 seeds per stream, intervals from noise.interval
        rows = [
            dict(
                stream=s,
                variance=v,
                ci_low=noise.interval(v, 8)[0],
                ci_high=noise.interval(v, 8)[1],
            )
            for s, v in variances.items()
        ]
        return pd.DataFrame(rows)

    # 1 + 2 + 1 = 4: inside the interval of 4
    assert "simply add" in noise.adds_up(table(dict(init=1.0, order=2.0, dropout=1.0, all=4.0)))
    # each alone about the whole (8 seeds: an interval of 0.44x to 4.1x the variance), and
    # their sum 12.4 past all's interval (up to 10.4)
    said = noise.adds_up(table(dict(init=4.4, order=4.0, dropout=4.0, all=2.5)))
    assert "496%" in said and "no stream dominates" in said, said
    # the sum past all's interval, one stream's interval far above it: they interact
    said = noise.adds_up(table(dict(init=40.0, order=0.5, all=4.0)))
    assert "interact" in said and "dominates" not in said, said


def test_the_dropout_stream_varies_only_where_the_recipe_drops():
    from ablate.study import DEFAULTS, noise_streams

    # an MLP reads the dropout key, the CNN its layers (the default layers drop; an MLP's ignore)
    assert noise_streams({**DEFAULTS, "dropout": 0.0}, "mlp") == ["init", "order"]
    assert noise_streams({**DEFAULTS, "dropout": 0.5}, "mlp") == ["init", "order", "dropout"]
    assert noise_streams({**DEFAULTS, "dropout": 0.5}, "linear") == ["init", "order"]
    assert noise_streams(DEFAULTS, "cnn") == ["init", "order", "dropout"]
    plain = {**DEFAULTS, "dropout": 0.5, "layers": ("conv:4:3", "act", "dropout:0.0", "flatten")}
    assert noise_streams(plain, "cnn") == ["init", "order"]
    assert noise_streams({**DEFAULTS, "hflip": True}, "mlp") == ["init", "order", "flip"]
