"""kill -9 at seeded moments, full disks, users' folders: nothing lost, repeated or half-written."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from ablate.cli import app
from ablate.readback import MANIFEST, parquet_files, read_manifest
from ablate.report import MARKER, REPORT
from helpers import REPO, command, default_sigint, env, write_study

cli = CliRunner()

KILLS = 12  # 4 per phase: 173 s for 20 on this machine, the slowest test
FACTORS = "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25])"


def finish(study, out, data_dir) -> pd.DataFrame:
    done = subprocess.run(command(study, out), env=env(data_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = out / "tiny"
    for f in parquet_files(folder):
        pd.read_parquet(f)  # every file a reader sees is whole
    assert read_manifest(folder)["study"] == "tiny"
    assert not (folder / "_quarantine").exists()
    return pd.read_parquet(folder).sort_values(["cell", "epoch"]).reset_index(drop=True)


@pytest.mark.slow
def test_kill_9_anywhere_then_rerun_loses_and_duplicates_nothing(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=2, factors=FACTORS)
    start = time.perf_counter()
    reference = finish(study, tmp_path / "ref", data_dir)
    whole = time.perf_counter() - start
    assert reference["cell"].nunique() == 8 and len(reference) == 16
    rng = random.Random(20261123)
    landed, phases = Counter(), ["training", "parquet", "manifest"]
    for i in range(KILLS):
        phase, out = phases[i % 3], tmp_path / f"run{i}"
        point = rng.choice(["written", "renamed"])
        hook = {
            "parquet": f"parquet:{rng.randint(1, 4)}:{point}",
            "manifest": f"manifest:1:{point}",
        }.get(phase)
        proc = subprocess.Popen(
            command(study, out),
            env=env(data_dir, **({"ABLATE_TEST_KILL": hook} if hook else {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if phase == "training":
            while "training" not in (proc.stdout.readline() or "training"):
                pass  # startup done: the run has begun training
            time.sleep(rng.uniform(0, whole * 0.3))
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            landed[f"{phase}:{point}" if hook else phase] += 1
        df = finish(study, out, data_dir)
        assert (
            df["cell"].nunique() == 8 and df.groupby("cell").size().eq(2).all()
        )  # each cell exactly once
        assert df.drop(columns="seconds").equals(reference.drop(columns="seconds")), (
            f"attempt {i} ({phase})"
        )
        assert (out / "tiny" / MANIFEST).is_file()
    print(
        f"kills landed by phase: {dict(landed)}; {sum(landed.values())} of {KILLS}; "
        "cells lost 0, duplicated 0, corrupt 0"
    )
    assert sum(landed.values()) >= KILLS - 2, dict(landed)
    assert landed["manifest:written"] + landed["manifest:renamed"] > 0
    assert landed["parquet:written"] + landed["parquet:renamed"] > 0 and landed["training"] > 0


@pytest.mark.parametrize(
    "signals, code",
    [
        ((signal.SIGINT,), 130),
        ((signal.SIGINT, signal.SIGINT), 130),
        ((signal.SIGTERM,), 143),
        ((signal.SIGHUP,), 129),
    ],
)
@pytest.mark.slow
def test_a_signal_stops_fast_keeps_finished_cells_and_says_so(tmp_path, data_dir, signals, code):
    # before: SIGTERM and SIGHUP exited 143/129 without the line; a second Ctrl-C printed a
    # traceback
    study = write_study(tmp_path, epochs=30, factors=FACTORS)  # long enough to be mid-training
    out = tmp_path / "res"
    proc = subprocess.Popen(
        command(study, out)[:-2] + ["--max-group", "1"],
        env=env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    while "training" not in (proc.stdout.readline() or "training"):
        pass
    deadline = time.time() + 60
    while not parquet_files(out / "tiny") and time.time() < deadline:
        time.sleep(0.05)  # wait for the first finished cell
    sent = time.perf_counter()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - sent < 5
    assert proc.returncode == code, err
    done = pd.read_parquet(out / "tiny")["cell"].nunique()
    assert f"stopped: {done} of 8 cells done; run the same command to finish" in err
    assert 1 <= done < 8 and "Traceback" not in err


# ---- nothing of the user's is deleted or moved, and nothing is left half-written ----


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("harm")
    r = cli.invoke(
        app,
        [
            "run",
            str(write_study(tmp, factors="dict(activation=['relu', 'sigmoid'])")),
            "--out",
            str(tmp / "res"),
        ],
    )
    assert r.exit_code == 0, r.output
    return tmp / "res" / "tiny"


def one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_report_into_a_users_folder_is_refused_and_deletes_nothing(tiny_results, tmp_path):
    users = tmp_path / "u"
    users.mkdir()
    (users / "claims.csv").write_text("precious")
    line = one_line(cli.invoke(app, ["report", str(tiny_results), "--out", str(users)]), 2)
    assert str(users) in line and "not a report folder ablate wrote" in line
    assert [p.name for p in users.iterdir()] == ["claims.csv"] and (
        users / "claims.csv"
    ).read_text() == "precious"


@pytest.mark.slow
def test_a_report_folder_keeps_files_ablate_did_not_write(tiny_results, tmp_path):
    out = tmp_path / "r"
    assert cli.invoke(app, ["report", str(tiny_results), "--out", str(out)]).exit_code == 0
    (out / "notes.txt").write_text("mine")
    assert (
        cli.invoke(
            app, ["report", str(tiny_results), "--out", str(out), "--metric", "test_loss"]
        ).exit_code
        == 0
    )
    assert (out / "notes.txt").read_text() == "mine" and not (out / "claims.png").exists()
    assert not list(tmp_path.glob(".r.tmp-*"))


def test_run_refuses_a_folder_it_did_not_make_and_moves_nothing(tmp_path, data_dir):
    users = tmp_path / "proj" / "data"
    users.mkdir(parents=True)
    pd.DataFrame({"sales": [1, 2]}).to_parquet(users / "sales_2025.parquet")
    (users / ".draft.tmp-1").write_text("half a thought")
    study = write_study(tmp_path, name="data", factors="dict(activation=['relu', 'sigmoid'])")
    line = one_line(cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "proj")]), 2)
    assert str(users) in line and "sales_2025.parquet" in line
    assert sorted(p.name for p in users.iterdir()) == [".draft.tmp-1", "sales_2025.parquet"]


def test_run_refuses_to_nest_a_study_inside_another_studys_results(tiny_results, tmp_path):
    study = write_study(tmp_path, name="other", factors="dict(activation=['relu', 'sigmoid'])")
    before = sorted(p.name for p in tiny_results.iterdir())
    line = one_line(cli.invoke(app, ["run", str(study), "--out", str(tiny_results)]), 2)
    assert (
        "is a study's results folder" in line
        and sorted(p.name for p in tiny_results.iterdir()) == before
    )


def fail_on(monkeypatch, target, attribute, errno_, after=0):
    """Make target.attribute raise OSError(errno_) from its (after+1)-th call on."""
    real, calls = getattr(target, attribute), []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(errno_, os.strerror(errno_))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, boom)


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EROFS])
@pytest.mark.slow
def test_a_full_disk_or_read_only_folder_leaves_the_old_report_whole(
    tiny_results, tmp_path, monkeypatch, errno_
):
    out = tmp_path / "r"
    assert cli.invoke(app, ["report", str(tiny_results), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fail_on(monkeypatch, Figure, "savefig", errno_, after=2)  # the third chart file finds no room
    line = one_line(cli.invoke(app, ["report", str(tiny_results), "--out", str(out)]), 1)
    assert str(out) in line and os.strerror(errno_) in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".r.tmp-*"))


def test_two_studies_of_one_name_do_not_share_a_folder(tmp_path, data_dir):
    first = write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])")
    assert cli.invoke(app, ["run", str(first), "--out", str(tmp_path / "res")]).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    other = write_study(tmp_path / "elsewhere", factors="dict(dropout=[0.0, 0.25])")
    line = one_line(cli.invoke(app, ["run", str(other), "--out", str(tmp_path / "res")]), 2)
    assert str(first) in line and str(other) in line
    assert read_manifest(tmp_path / "res" / "tiny")["source"]["path"] == str(first)
    (tmp_path / "moved").mkdir()  # the same study moved: the same cells, so it may go on
    moved = tmp_path / "moved" / "tiny.py"
    moved.write_text(first.read_text())
    again = cli.invoke(app, ["run", str(moved), "--out", str(tmp_path / "res")])
    assert again.exit_code == 0 and "nothing to train" in again.stdout


def test_a_full_disk_during_a_run_is_one_line_and_keeps_what_was_stored(
    tmp_path, data_dir, monkeypatch
):
    study = write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])")
    # the labels, then the first group's predictions and rows find room; the second group not
    fail_on(monkeypatch, pq, "write_table", errno.ENOSPC, after=3)
    args = ["run", str(study), "--out", str(tmp_path / "res"), "--max-group", "1"]
    line = one_line(cli.invoke(app, args), 1)
    assert "No space left on device" in line and "run the same command" in line
    folder = tmp_path / "res" / "tiny"
    assert len(parquet_files(folder)) == 1 and not list(folder.glob(".*.tmp-*"))
    monkeypatch.undo()
    again = cli.invoke(app, args)
    assert again.exit_code == 0 and "training 3 of 4 cells" in again.stdout


OWN = """
import sys
import torch
from ablate import Study

def {name}(config):
    {body}
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, {outputs}))

study = Study(name="own", dataset="mnist", model={name},
              base=dict(epochs=1, train_subset=256, batch_size=64),
              factors=dict(lr=[0.01, 0.05]), seeds=1)
"""


@pytest.mark.parametrize(
    "name, body, outputs, words",
    [
        ("wide", "pass", 50, ["returns (2, 50)", "expected (2, 10)"]),  # before: trained silently
        (
            "quits",
            "sys.exit(0)",
            10,
            ["the model callable called exit(0)"],
        ),  # before: exit 0, nothing trained
    ],
)
def test_a_study_model_that_cannot_train_is_one_line_before_anything_is_written(
    tmp_path, data_dir, name, body, outputs, words
):
    study = tmp_path / "own.py"
    study.write_text(OWN.format(name=name, body=body, outputs=outputs))
    line = one_line(cli.invoke(app, ["run", str(study), "--out", str(tmp_path / "res")]), 2)
    assert str(study) in line and all(w in line for w in words), line
    assert not (tmp_path / "res").exists()


# ---- a results folder received from someone else: links, traversal names, users' files ----


def received(tiny_results, folder):
    """A copy of the tiny results as another machine would send them: rows and manifest only."""
    skip = shutil.ignore_patterns("_report", "_compare", ".lock", ".*.tmp-*")
    shutil.copytree(tiny_results, folder, ignore=skip)
    return folder


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("form", ["hashes", "names"])  # names: the marker before the hashes
@pytest.mark.slow
def test_a_report_marker_listing_paths_outside_the_folder_deletes_nothing(
    tiny_results, tmp_path, form
):
    results, out = received(tiny_results, tmp_path / "res"), tmp_path / "rep"
    assert cli.invoke(app, ["report", str(results), "--out", str(out)]).exit_code == 0
    victim, elsewhere = tmp_path / "victim.txt", tmp_path / "abs_victim.txt"
    victim.write_text("precious")
    elsewhere.write_text("precious too")
    ours = {p.name: [digest(p)] for p in out.iterdir() if p.name != MARKER}
    hostile = {"../victim.txt": [digest(victim)], str(elsewhere): [digest(elsewhere)]}
    files = {**ours, **hostile} if form == "hashes" else [*ours, *hostile]
    (out / MARKER).write_text(json.dumps({"files": files}))
    again = ["report", str(results), "--out", str(out), "--metric", "test_loss"]
    assert cli.invoke(app, again).exit_code == 0  # no claims for test_loss: listed names go
    assert victim.read_text() == "precious" and elsewhere.read_text() == "precious too"


@pytest.mark.slow
def test_a_received_folder_whose_report_marker_names_a_users_file_deletes_nothing(
    tiny_results, tmp_path
):
    results = received(tiny_results, tmp_path / "recv" / "tiny")
    thesis = tmp_path / "recv" / "thesis.tex"
    thesis.write_text("four years")
    (results / REPORT).mkdir()
    (results / REPORT / MARKER).write_text(json.dumps({"files": ["../../thesis.tex"]}))
    assert cli.invoke(app, ["report", str(results)]).exit_code == 0
    assert thesis.read_text() == "four years"


def test_a_lock_linked_to_a_users_file_is_refused_and_the_file_keeps_its_text(tmp_path, data_dir):
    out = tmp_path / "proj"
    (out / "tiny").mkdir(parents=True)
    victim = out / "victim2.txt"
    victim.write_text("my notes")
    (out / "tiny" / ".lock").symlink_to("../victim2.txt")
    study = write_study(tmp_path, factors="dict(activation=['relu', 'sigmoid'])")
    line = one_line(cli.invoke(app, ["run", str(study), "--out", str(out)]), 2)
    assert str(out / "tiny" / ".lock") in line and "symbolic link" in line
    assert victim.read_text() == "my notes" and os.listdir(out / "tiny") == [".lock"]


def test_a_report_folder_that_is_a_link_is_refused_and_its_target_kept(tiny_results, tmp_path):
    results = received(tiny_results, tmp_path / "res")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my home page")
    (results / REPORT).symlink_to(site)
    line = one_line(cli.invoke(app, ["report", str(results)]), 2)
    assert str(results / REPORT) in line and "symbolic link" in line
    assert (
        os.listdir(site) == ["index.html"] and (site / "index.html").read_text() == "my home page"
    )


@pytest.mark.slow
def test_a_report_refuses_to_replace_files_the_user_added_and_keeps_them(tiny_results, tmp_path):
    results, out = received(tiny_results, tmp_path / "res"), tmp_path / "rep"
    first = ["report", str(results), "--out", str(out), "--metric", "test_loss"]
    assert cli.invoke(app, first).exit_code == 0  # no claims drawn for test_loss
    (out / "claims.csv").write_text("my own table")
    (out / "claims.png").write_bytes(b"my own chart")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line(cli.invoke(app, ["report", str(results), "--out", str(out)]), 2)
    assert str(out / "claims.csv") in line and "not a file ablate wrote" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-way
    assert not list(tmp_path.glob(".rep.tmp-*"))


@pytest.mark.slow
def test_a_terminated_report_leaves_no_temp_folder_and_a_killed_ones_goes_next_time(
    tiny_results, tmp_path, data_dir
):
    results = received(tiny_results, tmp_path / "res")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ablate", "report", str(results)], env=env(data_dir)
    )
    deadline = time.time() + 120
    while not list(results.glob("._report.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)  # the report is drawing into its temp folder
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    assert not list(results.glob("._report.tmp-*"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process holds: as kill -9 would leave it
    (results / f"._report.tmp-{gone.pid}-x").mkdir()
    (results / f"._report.tmp-{gone.pid}-x" / "final.png").write_bytes(b"half")
    assert cli.invoke(app, ["report", str(results)]).exit_code == 0
    assert not list(results.glob("._report.tmp-*"))


def sent(tmp_path, name="digits_mlp"):
    """A copy of a committed results folder's rows and manifest, as a collaborator sends it."""
    folder = tmp_path / name
    shutil.copytree(
        REPO / "results" / name, folder, ignore=shutil.ignore_patterns("_report", "_compare")
    )
    return folder


@pytest.mark.parametrize(
    "out, expected",
    [("rep", 2), (".", 2), ("_mine", 0)],
    ids=["a-subfolder", "the-folder-itself", "an-underscore-name"],
)
@pytest.mark.slow
def test_a_report_or_compare_out_inside_a_results_folder_is_refused_unless_readers_skip_it(
    tmp_path, out, expected
):
    # pyarrow and DuckDB read every file and subfolder of a results folder as rows, except
    # names beginning with _ or .: a report there would break pd.read_parquet(folder)
    folder = sent(tmp_path)
    target = folder / out
    cli = CliRunner()
    report = cli.invoke(app, ["report", str(folder), "--out", str(target)])
    assert report.exit_code == expected, report.output
    if expected:
        assert report.output.count("\n") == 1 and "inside the results folder" in report.output
        cmp = cli.invoke(
            app, ["compare", str(folder), str(REPO / "results/digits_mlp"), "--out", str(target)]
        )
        assert cmp.exit_code == 2 and "inside the results folder" in cmp.output, cmp.output
    assert len(pd.read_parquet(folder)) > 0  # the folder still reads as rows


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("study", 5, "'study' is 5, not a name"),
        ("factors", {"activation": "relu"}, "'factors' is not a mapping"),
        ("claims", [{"where": {}, "value": "high", "source": "x"}], "a claim reads"),
        ("claims", [{"where": "relu", "value": 0.9}], "a claim reads"),
        ("factors", None, "factor 'ghost' is in none of the stored rows"),
    ],
    ids=["study-a-number", "levels-not-a-list", "claim-value-text", "claim-where-text", "ghost"],
)
def test_a_received_manifest_with_malformed_fields_is_one_line_not_a_traceback(
    tmp_path, field, value, said
):
    folder = sent(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    if field == "factors" and value is None:  # a factor no stored row holds
        manifest["factors"] = {**manifest["factors"], "ghost": ["a", "b"]}
    else:
        manifest[field] = value
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert (
        result.exit_code != 0
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    ), result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert said in result.output and not (folder / REPORT).exists()
