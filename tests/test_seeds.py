"""Seeds where they matter: `run --until-halfwidth` rounds, their resume after a kill, `plan`."""

import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from ablate import inference, seeds
from ablate.cli import app
from ablate.readback import read_manifest
from helpers import REPO, env, write_study
from helpers import command as faults_command

cli = CliRunner()


def stored_seeds(folder) -> dict:
    """Each design point's seeds, as the Parquet files hold them."""
    df = pd.read_parquet(folder)
    return {
        point: sorted(rows["seed"].unique())
        for point, rows in df.groupby(["activation", "dropout"])
    }


def stein_by_hand(sd, n_first, halfwidth) -> int:
    """Stein's total as its definition reads: the smallest n >= n_first with
    t(0.975, n_first - 1) * sd / sqrt(n) <= halfwidth."""
    t = scipy_stats.t.ppf(0.975, n_first - 1)
    return next(n for n in range(n_first, 10**6) if t * sd / np.sqrt(n) <= halfwidth)


def test_steins_rule_trains_once_to_what_the_widest_first_stage_spread_asks_for():
    for sd, first, h in [(1.0, 5, 0.7), (0.02, 3, 0.005), (0.3, 2, 0.5), (1.0, 10, 1)]:
        assert inference.stein_seeds(sd, first, h) == stein_by_hand(sd, first, h)
    # (t(0.975, 4) = 2.776 x 1 / 0.7)**2 = 15.7: 16 seeds; 0.5 sd asks for 4, so the 5 stand
    assert inference.stein_total([1.0, 0.5], [5, 5], 0.7, 30) == 16
    assert inference.stein_total([0.1, 0.5], [5, 5], 0.7, 30) == 5  # narrow enough already
    assert inference.stein_total([1.0, 0.5], [5, 5], 0.7, 12) == 12  # --max-seeds
    assert inference.stein_total([np.nan, 0.5], [1, 5], 0.7, 30) == 30  # no first-stage sd
    assert inference.stein_total([[1.0], [0.1]], 5, 0.7, 30).tolist() == [16, 5]  # per study
    assert np.isnan(inference.stein_seeds(1.0, 1, 0.7))
    assert seeds.seed_list(type("S", (), {"seeds": [3, 5]})(), 4) == [3, 5, 6, 7]


@pytest.mark.slow
def test_until_halfwidth_adds_seeds_to_every_point_alike_and_records_its_rounds(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    study = write_study(tmp_path, seeds=2)
    # 2 points: 0.02 as stored (a fraction)
    args = ["run", str(study), "--out", str(tmp_path / "res"), "--until-halfwidth", "2"]
    result = cli.invoke(app, [*args, "--max-seeds", "6"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "res" / "tiny"
    rule = read_manifest(folder)["until_halfwidth"]
    rounds = rule["rounds"]
    assert rounds[0] == 2 and rounds == sorted(set(rounds)) and rounds[-1] <= 6
    assert (rule["halfwidth"], rule["max_seeds"], rule["first"]) == (0.02, 6, [0, 1])
    assert len(rounds) <= 2  # Stein's rule: the first stage, then at most one round
    assert read_manifest(folder)["seeds"] == list(range(rounds[-1]))
    # pairing needs every point at every seed: 4 points, the same seeds 0..n-1
    points = stored_seeds(folder)
    assert len(points) == 4
    assert all(s == list(range(rounds[-1])) for s in points.values()), points
    # the total is Stein's from seeds 0 and 1 alone, and so is every interval's half-width
    first = seeds.analysed(folder, 0.02, seeds=[0, 1])[0]
    sd = seeds.spread(first)
    assert rounds[-1] == min(6, max(stein_by_hand(s, 2, 0.02) for s in sd)), (sd, rounds)
    widest = scipy_stats.t.ppf(0.975, 1) * sd.max() / np.sqrt(rounds[-1])
    assert widest <= 0.02 or rounds[-1] == 6, (widest, rounds)
    assert f"seeds per design point: {' -> '.join(map(str, rounds))}" in result.output
    shown = f"±{100 * widest:.4g} points"  # printed in points, as typed
    assert f"Stein's rule); every main effect within {shown}" in result.output or (
        f"capped; the widest is {shown}" in result.output
    ), result.output
    # the same command again: the rule is met, nothing trains, the record stands
    again = cli.invoke(app, [*args, "--max-seeds", "6"])
    assert again.exit_code == 0, again.output
    assert "nothing to train" in again.output
    assert read_manifest(folder)["until_halfwidth"]["rounds"] == rounds
    # the report says who chose the seeds, beside the effects
    report = cli.invoke(app, ["report", str(folder)])
    assert report.exit_code == 0, report.output
    assert "Seeds chosen by --until-halfwidth 2" in (folder / "_report" / "index.html").read_text()


def test_until_halfwidth_stops_at_max_seeds_and_says_so(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    study = write_study(tmp_path, seeds=2)
    out = tmp_path / "res"
    args = ["run", str(study), "--out", str(out), "--until-halfwidth", "1e-7", "--max-seeds", "3"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_manifest(out / "tiny")["until_halfwidth"]["rounds"] == [2, 3]
    assert "capped" in result.output
    assert all(s == [0, 1, 2] for s in stored_seeds(out / "tiny").values())


def test_until_halfwidth_mistakes_are_one_line(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    study = write_study(tmp_path, seeds=3)
    out = ["--out", str(tmp_path / "res")]
    for extra, said in (
        (["--max-seeds", "5"], "--max-seeds 5: only used with --until-halfwidth"),
        (["--until-halfwidth", "0"], "--until-halfwidth 0: expected a positive half-width"),
        (["--until-halfwidth", "1", "--max-seeds", "2"], "the study already has 3 seeds"),
        (["--seeds", "1", "--until-halfwidth", "1"], "--until-halfwidth 1: the study's 1 seed"),
    ):
        result = cli.invoke(app, ["run", str(study), *out, *extra])
        assert result.exit_code != 0 and said in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "res" / "tiny").exists()


@pytest.mark.slow
def test_a_round_killed_mid_way_is_finished_by_the_same_command(tmp_path, data_dir):
    study = write_study(tmp_path, seeds=2)

    def command(out):  # test_faults' run, with a rule of rounds [2, 4]
        return [*faults_command(study, out), "--until-halfwidth", "1e-7", "--max-seeds", "4"]

    # rounds [2, 4]: 4 groups of 2 cells each, then 4 more; the 6th write is mid-round 2
    killed = subprocess.run(
        command(tmp_path / "a"),
        env=env(data_dir, ABLATE_TEST_KILL="parquet:6:renamed"),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    rule = read_manifest(tmp_path / "a" / "tiny")["until_halfwidth"]
    assert (rule["rounds"], rule["first"]) == ([2, 4], [0, 1])
    assert len(pd.read_parquet(tmp_path / "a" / "tiny")["cell"].unique()) == 12
    for out in ("a", "b"):  # resumed, and uninterrupted
        done = subprocess.run(command(tmp_path / out), env=env(data_dir), capture_output=True)
        assert done.returncode == 0, done.stderr
    resumed, whole = (
        pd.read_parquet(tmp_path / out / "tiny").sort_values(["cell", "epoch"])
        for out in ("a", "b")
    )
    assert len(resumed) == len(whole) == 16  # 4 points x 4 seeds, 1 epoch
    assert resumed["cell"].tolist() == whole["cell"].tolist()
    assert resumed["test_acc"].tolist() == whole["test_acc"].tolist()  # bitwise
    assert read_manifest(tmp_path / "a" / "tiny")["until_halfwidth"]["rounds"] == [2, 4]


def test_cell_seconds_divide_a_groups_epochs_among_its_cells():
    rows = pd.DataFrame(
        dict(
            cell=["a", "a", "b", "b", "c"],
            epoch=[1, 2, 1, 2, 1],
            seconds=[1.0, 2.0, 1.0, 2.0, 3.0],  # a and b trained together: 3 s for two cells
        )
    )
    assert seeds.cell_seconds(rows).to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}


def test_plan_gives_each_effects_seeds_from_its_spread_as_scipy_counts_them(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    study = write_study(tmp_path, seeds=4)
    assert cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res")]).exit_code == 0
    folder = tmp_path / "res" / "tiny"
    effects, cost = seeds.plan(folder, 0.01)
    # by hand: activation sigmoid vs relu, each seed's mean over dropout, differenced
    final = pd.read_parquet(folder).query("epoch == 1")
    means = final.groupby(["activation", "seed"])["test_acc"].mean().unstack(0)
    diffs = (means["sigmoid"] - means["relu"]).to_numpy()
    sd, n = diffs.std(ddof=1), len(diffs)
    upper = sd * np.sqrt((n - 1) / scipy_stats.chi2.ppf(0.05, n - 1))

    def needed(spread):
        return next(
            k
            for k in range(2, 10**6)
            if scipy_stats.t.ppf(0.975, k - 1) * spread / np.sqrt(k) <= 0.01
        )

    def assured(spread):  # 80% of new studies of k seeds reach it: s_k**2 / sd**2 ~ F(k-1, n-1)
        return next(
            k
            for k in range(2, 10**6)
            if scipy_stats.f.cdf(
                0.01**2 * k / (scipy_stats.t.ppf(0.975, k - 1) * spread) ** 2, k - 1, n - 1
            )
            >= 0.8
        )

    row = effects.query("factor == 'activation'").iloc[0]
    assert abs(row["std"] - sd) < 1e-12 and abs(row["std_upper"] - upper) < 1e-12
    assert (row["seeds_needed"], row["seeds_upper"]) == (needed(sd), needed(upper))
    assert (row["seeds_80"], row["seeds_stein"]) == (assured(sd), stein_by_hand(sd, n, 0.01))
    most = int(effects["seeds_upper"].max())
    assert cost["points"] == 4 and cost["seeds"] == 4
    assert cost["upper"]["seeds"] == max(most, 4)
    assert cost["upper"]["cells"] == 4 * max(most, 4)
    assert cost["upper"]["to_train"] == 4 * max(most, 4) - 16
    # the command prints the table and the cost lines
    result = cli.invoke(app, ["plan", str(folder), "--halfwidth", "1"])  # 1 point: 0.01
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())  # Rich wraps at the test terminal's 80 columns
    assert "activation:" in flat and "dropout:" in flat
    assert f"{cost['upper']['seeds']} seeds for every effect within ±1" in flat
    assert "4 design points x 4 seeds stored" in flat
    assert f"in 80% of studies: {cost['assured']['seeds']} seeds for every effect" in flat
    assert "(about half of new studies of that many seeds reach it)" in flat
    assert f"--until-halfwidth 1 from these seeds: {cost['stein']['seeds']} seeds" in flat


def test_added_seeds_stay_below_2_to_the_32_and_never_repeat_one_in_use():
    def study(listed):
        return type("S", (), {"seeds": listed})()

    # 2**32 would train bit-for-bit as seed 0 (rng.key folds a seed to its low 32 bits)
    assert seeds.seed_list(study([0, 2**32 - 1]), 4) == [0, 2**32 - 1, 1, 2]
    assert seeds.seed_list(study([2**32 - 2, 1]), 5) == [2**32 - 2, 1, 2**32 - 1, 0, 2]


def test_until_halfwidth_past_the_cell_limit_is_refused_before_a_seed_list_is_built(tmp_path):
    study = write_study(tmp_path, seeds=2, factors="dict(activation=['relu', 'sigmoid'])")
    args = ["--until-halfwidth", "1e-7", "--max-seeds", "100000000"]
    result = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res"), *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "--max-seeds 100,000,000: 2 design points x 100,000,000 seeds" in result.stderr
    assert "at most 50,000" in result.stderr and not (tmp_path / "res").exists()


def test_the_report_credits_each_round_to_the_halfwidth_that_chose_it(tmp_path, data_dir):
    from ablate.design import chosen_halfwidths

    study = write_study(tmp_path, seeds=2, factors="dict(activation=['relu', 'sigmoid'])")
    out = ["run", str(study), "--out", str(tmp_path / "res"), "--max-seeds", "3"]
    assert cli.invoke(app, [*out, "--until-halfwidth", "1e-4"]).exit_code == 0  # points: 1e-6
    # met at once by a wider H: no round added, so 1e-6 still chose the seeds
    again = cli.invoke(app, [*out, "--until-halfwidth", "50"])
    assert again.exit_code == 0 and "nothing to train" in again.output, again.output
    rule = read_manifest(tmp_path / "res" / "tiny")["until_halfwidth"]
    assert (rule["halfwidth"], rule["rounds"], rule["by"]) == (1e-6, [2, 3], [None, 1e-6])
    assert chosen_halfwidths(rule) == "0.0001"
    mixed = dict(halfwidth=0.01, rounds=[2, 4, 5, 9], by=[None, 0.02, 0.02, 0.01])
    assert chosen_halfwidths(mixed) == "2 (to 5 seeds), then 1 (to 9 seeds)"
    assert chosen_halfwidths(dict(halfwidth=0.02, rounds=[2, 5])) == "2"  # before `by`


@pytest.fixture(scope="module")
def pilot(tmp_path_factory, data_dir):
    """A pilot of 2 seeds and one of 1, each 2 points of 1 epoch."""
    tmp = tmp_path_factory.mktemp("pilot")
    folders = {}
    for n in (1, 2):
        study = write_study(
            tmp, name=f"p{n}", seeds=n, factors="dict(activation=['relu', 'sigmoid'])"
        )
        assert cli.invoke(app, ["run", str(study), "--out", str(tmp / "res")]).exit_code == 0
        folders[n] = tmp / "res" / f"p{n}"
    return folders


def test_plan_on_a_one_seed_pilot_says_a_spread_needs_two_seeds(pilot):
    result = cli.invoke(app, ["plan", str(pilot[1])])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert str(pilot[1]) in result.stderr and "a spread needs at least 2 seeds" in result.stderr


@pytest.mark.parametrize("metric", ["epoch", "seed", "seconds", "config", "status"])
def test_plan_refuses_what_the_report_refuses_as_a_metric(pilot, metric):
    planned = cli.invoke(app, ["plan", str(pilot[2]), "--metric", metric])
    reported = cli.invoke(app, ["report", str(pilot[2]), "--metric", metric])
    assert planned.exit_code == reported.exit_code == 2, planned.output
    said = f"'{metric}' is not one of"  # --metric's choices are metrics.OUTCOMES: click refuses
    assert said in planned.stderr and planned.stderr == reported.stderr.replace("report", "plan")


def test_plan_for_a_halfwidth_past_reach_says_so_not_that_no_spread_was_seen(pilot):
    result = cli.invoke(app, ["plan", str(pilot[2]), "--halfwidth", "1e-7"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "no spread estimate" not in flat
    assert "at the observed spread: more than 100,000 seeds for some effect" in flat, flat


def test_the_first_stage_is_the_recorded_one_else_the_first_round_of_an_older_record():
    from ablate.design import Design, first_stage

    seeds_ = (0, 1, 2, 3, 4)
    assert first_stage(Design(seeds=seeds_)) is None  # no rule: no first stage
    assert first_stage(Design(seeds=seeds_, rule=dict(rounds=[2, 5], first=[0, 3]))) == {0, 3}
    assert first_stage(Design(seeds=seeds_, rule=dict(rounds=[2, 5]))) == {0, 1}  # before `first`
    for junk in ("0,1", [True, 1], [-1, 0], []):  # a received manifest is untrusted
        assert first_stage(Design(seeds=seeds_, rule=dict(rounds=[3], first=junk))) == {0, 1, 2}
    assert first_stage(Design(seeds=seeds_, rule=dict(rounds="2"))) is None


def test_until_halfwidth_from_a_pilot_trains_to_the_seeds_plan_says(tmp_path, data_dir):
    study = write_study(tmp_path, seeds=3, factors="dict(activation=['relu', 'sigmoid'])")
    out = ["run", str(study), "--out", str(tmp_path / "res")]
    assert cli.invoke(app, out).exit_code == 0
    folder = tmp_path / "res" / "tiny"
    effects, cost = seeds.plan(folder, 0.05)
    planned = cost["stein"]["seeds"]
    assert planned == max(3, stein_by_hand(effects["std"].max(), 3, 0.05))
    result = cli.invoke(app, [*out, "--until-halfwidth", "5", "--max-seeds", "40"])  # 0.05
    assert result.exit_code == 0, result.output
    rule = read_manifest(folder)["until_halfwidth"]
    assert rule["rounds"] == ([3] if planned == 3 else [3, min(planned, 40)]), (rule, planned)
    assert rule["first"] == [0, 1, 2]


def test_plan_without_a_halfwidth_takes_the_reports_default_for_the_metric_and_says_so():
    # issue 28: 0.005 for every metric asked xor (4 test samples) for 3,097 seeds
    result = cli.invoke(app, ["plan", str(REPO / "results" / "xor")])
    assert result.exit_code == 0, result.output
    assert "--halfwidth 25: the default for test_acc: one test sample" in result.stdout  # points
    loss = cli.invoke(app, ["plan", str(REPO / "results" / "mnist_mlp"), "--metric", "test_loss"])
    assert "the default for test_loss: 1% of its mean" in loss.stdout, loss.output
