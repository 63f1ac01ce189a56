"""The Python API: ablate.run / ablate.load on real stores, its errors, Ctrl-C, the notebook."""

import shutil
import signal
import subprocess
import sys
import time
import traceback

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

import ablate
from ablate.cli import app
from ablate.readback import parquet_files
from helpers import REPO, TINY, default_sigint, env, write_study

cli = CliRunner()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The committed reference study's rows (real Parquet), without its committed report."""
    folder = tmp_path_factory.mktemp("api") / "mnist_mlp"
    shutil.copytree(REPO / "results" / "mnist_mlp", folder, ignore=shutil.ignore_patterns("_r*"))
    return folder


@pytest.mark.slow
def test_load_gives_the_rows_and_the_reports_own_tables(reference, tmp_path):
    res = ablate.load(reference)
    assert res.frame.shape[0] == 40 * 10 and res.frame["cell"].nunique() == 40
    final = res.final()
    assert len(final) == 40 and (final["epoch"] == 10).all()
    result = cli.invoke(app, ["report", str(reference), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    for name in ("effects", "interactions", "anova", "summary"):
        from_cli = pd.read_csv(tmp_path / "cli" / f"{name}.csv")
        ours = getattr(res, name)()
        assert list(ours.columns) == list(from_cli.columns), name
        numbers = [  # alias and note: empty strings here, NaN from the CSV
            c for c in from_cli.select_dtypes("number") if pd.api.types.is_numeric_dtype(ours[c])
        ]
        assert len(numbers) >= 4, (name, numbers)
        assert ours[numbers].to_numpy() == pytest.approx(from_cli[numbers].to_numpy(), nan_ok=True)
    assert list(res.claims()["source"]) == list(
        pd.read_csv(tmp_path / "cli" / "claims.csv")["source"]
    )
    page = res.report(tmp_path / "api")
    assert page == tmp_path / "api" / "index.html" and page.is_file()


def test_a_notebook_shows_the_study_its_cells_and_the_effects_with_their_chart(reference):
    res = ablate.load(reference)
    text = repr(res)
    assert "mnist_mlp: mnist, model mlp, design grid: 8 points x 5 seeds (40 cells)" in text
    shown = res._repr_html_()
    assert shown.count("<img") == 1 and "relu" in shown and "+7.47" in shown
    assert "Holm over 6 tests" in shown


def test_a_users_mistake_is_an_ablate_error_of_one_line_without_ablates_frames(tmp_path):
    with pytest.raises(ablate.AblateError) as caught:
        ablate.load(tmp_path / "nowhere")
    message = str(caught.value)
    assert "nowhere: no such results directory" in message and "\n" not in message
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert [f.name for f in frames][-2:] == ["wrapper", "_one_line"], frames  # at the API's edge
    assert len(frames) <= 3, frames
    with pytest.raises(ablate.AblateError, match="no metric 'bogus'"):
        ablate.load(REPO / "results" / "mnist_mlp").effects(metric="bogus")


def test_margins_and_half_widths_are_typed_in_points_for_accuracy_as_on_the_command_line(
    reference, tmp_path
):
    res = ablate.load(reference)
    rep = res.analysis(margin=0.5, halfwidth=0.25)  # half a point, a quarter of one
    assert (rep.margin, rep.halfwidth) == (0.005, 0.0025)
    result = cli.invoke(app, ["report", str(reference), "--out", str(tmp_path), "--margin", "0.5"])
    assert result.exit_code == 0, result.output
    from_cli = pd.read_csv(tmp_path / "effects.csv")
    assert res.effects(margin=0.5)["p_equivalence"].to_numpy() == pytest.approx(
        from_cli["p_equivalence"].to_numpy(), nan_ok=True
    )
    loss = res.analysis("test_loss", margin=0.01)  # a loss in its own units
    assert loss.margin == 0.01


def test_run_warns_as_the_command_does_of_a_three_factor_fractional_design(tmp_path, capsys):
    three = "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25], batchnorm=[False, True])"
    study = write_study(tmp_path, factors=three, design="fractional")
    (tmp_path / "file").write_text("")  # no folder can be made in it: stops before training
    with pytest.raises(ablate.AblateError):
        ablate.run(study, out=tmp_path / "file", progress=False)
    assert "aliases each main effect" in capsys.readouterr().err


@pytest.mark.slow
def test_run_trains_a_study_declared_in_python_and_a_second_run_trains_nothing(tmp_path, data_dir):
    namespace = {}
    exec(TINY.format(name="inline", epochs=1, seeds=2, design="grid",
                     factors="dict(activation=['relu', 'sigmoid'])"), namespace)  # fmt: skip
    study = namespace["study"]
    res = ablate.run(study, out=tmp_path, sets="epochs=2", seeds=3, progress=False,
                     data_dir=data_dir)  # fmt: skip
    assert res.path == tmp_path / "inline" and res.frame["cell"].nunique() == 2 * 3
    assert set(res.frame["epoch"]) == {1, 2} and set(res.frame["seed"]) == {0, 1, 2}
    assert res.final()["activation"].tolist() == ["relu"] * 3 + ["sigmoid"] * 3
    started = time.perf_counter()
    again = ablate.run(study, out=tmp_path, sets=["epochs=2"], seeds=3, progress=False)
    assert again.frame.equals(res.frame) and time.perf_counter() - started < 30


SCRIPT = """
import sys, ablate
try:
    ablate.run(sys.argv[1], out=sys.argv[2], max_group=1, progress=False)
except KeyboardInterrupt as e:
    print("interrupted:", e)
"""


@pytest.mark.slow
def test_an_interrupt_keeps_the_finished_cells_and_says_how_many(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=30)  # long enough to be mid-training
    out = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(study), str(out)],
        env=env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.time() + 120
    while not parquet_files(out / "tiny") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what a kernel interrupt sends
    stdout, stderr = proc.communicate(timeout=120)
    kept = len(parquet_files(out / "tiny"))
    assert proc.returncode == 0 and 1 <= kept < 8, stderr
    assert f"interrupted: stopped: {kept} of 8 cells stored in {out / 'tiny'}" in stdout, stdout
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_the_quickstart_notebook_runs_in_a_real_kernel(tmp_path):
    shutil.copy(REPO / "examples" / "quickstart.ipynb", tmp_path)
    notebook = nbformat.read(tmp_path / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    run = cells[1].outputs
    # one progress display updated in place, not a line per epoch; then the Results
    assert [o.output_type for o in run] == ["display_data", "execute_result"], run
    assert run[0].data["text/plain"].startswith("12/12 cells on ")
    assert "<progress value=12 max=12>" in run[0].data["text/html"]
    shown = run[1].data["text/html"]
    assert "quickstart: digits, model mlp, design grid: 4 points x 3 seeds (12 cells)" in shown
    assert shown.count("<img") == 1 and "activation" in shown and "batchnorm" in shown
    effects = cells[2].outputs[0].data["text/plain"]
    assert "activation" in effects and "batchnorm" in effects
    printed = "".join(o.get("text", "") for o in cells[4].outputs)
    assert "runs/quickstart/_report/index.html" in printed
    assert "| activation: relu vs sigmoid | 3 |" in printed
    assert (tmp_path / "runs" / "quickstart" / "_report" / "effects.tex").is_file()


def test_what_the_store_warns_about_reaches_the_notebook_as_a_warning_line(reference, capsys):
    copy = reference.parent / "copied"
    shutil.copytree(reference, copy)
    first = parquet_files(copy)[0]
    shutil.copy(first, copy / f"z{first.name}")  # the same rows twice, as a copied file
    res = ablate.load(copy)
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "stored twice with identical rows" in err, err
    assert res.frame["cell"].nunique() == 40


@pytest.mark.parametrize(
    "arguments, said",
    [
        (dict(max_group=-3), "max_group=-3 is not allowed; expected an int >= 1"),
        (dict(max_group="2"), "max_group='2' is not allowed"),
        (dict(seeds="3"), "seeds='3' is not allowed"),
        (dict(deterministic="no"), "deterministic='no' is not allowed; expected True or False"),
        (dict(sets=[("epochs", 1)]), "sets=[('epochs', 1)] is not allowed; expected 'key=value'"),
    ],
)
def test_bad_arguments_to_run_are_an_ablate_error_of_one_line(tmp_path, data_dir, arguments, said):
    study = write_study(tmp_path)
    with pytest.raises(ablate.AblateError) as caught:
        ablate.run(study, out=tmp_path / "res", progress=False, **arguments)
    assert said in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "res").exists()


def test_the_notebook_api_gives_the_test_set_counted_columns_and_a_last_k_analysis():
    res = ablate.load(REPO / "results" / "rerun" / "digits_mlp")  # stored with its predictions
    effects = res.effects()
    assert {"ci_low_examples", "share_examples", "p_greater"} <= set(effects.columns)
    page = pd.read_csv(REPO / "results" / "rerun" / "digits_mlp" / "_report" / "effects.csv")
    assert effects["ci_high_examples"].to_numpy() == pytest.approx(page["ci_high_examples"])
    last = res.analysis(final="last-5")
    assert last.last == 5 and "ci_low_examples" not in last.effects  # the final epoch's only
