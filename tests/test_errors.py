"""The catalogue of user mistakes: each is one line on stderr naming the file and the key or
value and what was expected, exit 2 (1 for runtime failures), no traceback, nothing written.

Mistakes that need a stored folder first are tested beside their feature: an own key's changed
default and a dataset callable whose data changed (test_cli.py), plan's metrics and one-seed
pilots and --max-seeds past the cell limit (test_seeds.py), ablate.run's arguments
(test_api.py)."""

import gzip
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from helpers import REPO, TINY, write_study

cli = CliRunner()


def tiny(**over) -> str:
    args = dict(
        name="tiny",
        epochs=1,
        seeds=2,
        design="grid",
        factors="dict(activation=['relu', 'sigmoid'])",
    )
    args.update(over)
    return TINY.format(**args)


OWN = """
import torch
from ablate import Key, Study

def net(config):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, config["width"]),
                               torch.nn.ReLU(), torch.nn.Linear(config["width"], 10))

study = Study(name="own", dataset="digits", model=net, keys={keys},
              base={base}, factors={factors}, seeds=1)
"""


def own(
    keys="dict(width=Key(16, lo=1, hi=1024), norm=Key('none', choices=['none', 'layer']))",
    base="dict(epochs=1)",
    factors="dict(width=[16, 32])",
) -> str:
    return OWN.format(keys=keys, base=base, factors=factors)


def bad_base(key_value: str) -> str:
    return tiny().replace("train_subset=512", f"train_subset=512, {key_value}")


# a dataset callable of 64 features and 10 classes whose `body` ends it (line 7 is its first)
DATA = """
import torch
from ablate import Study

def wine():
    x, y = torch.rand(40, 64), torch.arange(40) % 10
{body}

study = Study(name="wine", dataset=wine, model="linear", base=dict(epochs=1), seeds=1)
"""


STUDIES = {  # id: (study text, exit code, words the line must hold)
    "a name ending in .parquet": (
        tiny(name="x.parquet"),
        2,
        ["study.py", "'x.parquet'", "may not end in .parquet"],
    ),
    "syntax error": (
        "from ablate import Study\nstudy = Study(name='x',\n",
        2,
        ["study.py:2", "syntax error"],
    ),
    "no study": ("x = 1\n", 2, ["study.py", "defines no `study`"]),
    "study of the wrong type": ("study = {'name': 'x'}\n", 2, ["study.py", "dict", "ablate.Study"]),
    "error inside the file": (
        "from ablate import Study\n\nstudy = Study(name=nme)\n",
        2,
        ["study.py:3", "nme"],
    ),
    "unknown key": (bad_base("lrr=0.1"), 2, ["study.py", "lrr", "did you mean 'lr'"]),
    "unknown level": (
        tiny(factors="dict(activation=['relu', 'swish'])"),
        2,
        ["study.py", "activation", "'swish'", "sigmoid, relu, tanh, gelu"],
    ),
    "batchnorm on batches of one": (
        bad_base("batchnorm=True").replace("batch_size=64", "batch_size=1"),
        2,
        ["study.py", "batchnorm=True with batch_size=1", "2 or more samples"],
    ),
    "dropout out of range": (
        bad_base("dropout=1.5").replace("dropout=0.0, ", ""),
        2,
        ["study.py", "dropout=1.5", "0 <= p < 1"],
    ),
    "negative lr": (tiny().replace("lr=0.05", "lr=-1"), 2, ["study.py", "lr=-1", "> 0"]),
    "zero epochs": (tiny(epochs=0), 2, ["study.py", "epochs=0", ">= 1"]),
    "zero batch": (
        tiny().replace("batch_size=64", "batch_size=0"),
        2,
        ["study.py", "batch_size=0", ">= 1"],
    ),
    "zero seeds": (tiny(seeds=0), 2, ["study.py", "seeds=0", "int >= 1"]),
    "empty factor": (
        tiny(factors="dict(activation=[])"),
        2,
        ["study.py", "activation", "no levels"],
    ),
    "duplicate levels": (
        tiny(factors="dict(activation=['relu', 'relu'])"),
        2,
        ["study.py", "activation", "twice"],
    ),
    "baseline not a level": (
        tiny(factors="dict(activation=['sigmoid', 'tanh'])"),
        2,
        ["study.py", "activation", "baseline 'relu'", "not among its levels"],
    ),
    "unknown dataset": (
        tiny().replace('dataset="mnist"', 'dataset="imagenet"'),
        2,
        ["study.py", "'imagenet'", "mnist, fashion_mnist"],
    ),
    "wrong type": (
        bad_base("batchnorm='yes'"),
        2,
        ["study.py", "batchnorm='yes'", "True or False"],
    ),
    "claim in percent": (
        tiny().replace("value=0.8", "value=97.26"),
        2,
        ["study.py", "claim tiny", "value=97.26", "not a fraction", "0.9726"],
    ),
    "claim selecting nothing": (
        tiny().replace('where=dict(activation="relu")', 'where=dict(activation="tanh")'),
        2,
        ["study.py", "claim tiny", "selects no cell", "activation in ['relu', 'sigmoid']"],
    ),
    "claim past the last epoch": (
        tiny().replace("value=0.8,", "value=0.8, epoch=3,"),
        2,
        ["study.py", "claim tiny", "epoch=3", "from 1 to 1"],
    ),
    "claim of an unknown metric": (
        tiny().replace("value=0.8,", "value=0.8, metric='accuracy',"),
        2,
        ["study.py", "claim tiny", "metric='accuracy'", "train_loss, test_loss, test_acc"],
    ),
    "claim of an unknown kind": (
        tiny().replace("value=0.8,", "value=0.8, kind='about',"),
        2,
        ["study.py", "claim tiny", "kind='about'", "point, mean, at_most, at_least"],
    ),
    "cnn layers that do not fit the images": (
        tiny()
        .replace('dataset="mnist"', 'dataset="xor", model="cnn"')
        .replace("train_subset=512", "train_subset=4")
        .replace('where=dict(activation="relu")', "where=dict()"),
        2,
        ["study.py", "model 'cnn'", "layers=", "xor inputs of shape"],
    ),
    "exit at import": (
        "import sys\n\nsys.exit(0)\n",
        2,
        ["study.py:3", "SystemExit(0)", "must define `study`"],
    ),
    "claims not a list": (
        tiny().replace("claims=[", "claims=").replace('"tiny")]', '"tiny")'),
        2,
        ["study.py", "claims is a Claim", "expected a list"],
    ),
    "claim where a list": (
        tiny().replace('where=dict(activation="relu")', "where=['activation']"),
        2,
        ["study.py", "claim tiny", "where=['activation']", "expected a dict"],
    ),
    "claim where None": (
        tiny().replace('where=dict(activation="relu")', "where=None"),
        2,
        ["study.py", "claim tiny", "where=None", "expected a dict"],
    ),
    "claim where keyed by an int": (
        tiny().replace('where=dict(activation="relu")', "where={1: 'relu'}"),
        2,
        ["study.py", "claim where", "config key 1 is not allowed"],
    ),
    "factor named by an int": (
        tiny(factors="{1: [1, 2]}"),
        2,
        ["study.py", "factor 1 is not allowed"],
    ),
    "factors as a set": (
        tiny(factors="{'activation', 'dropout'}"),
        2,
        ["study.py", "factors is a set"],
    ),
    "a seed past 2**32": (
        tiny(seeds="[1, 2**32 + 1]"),
        2,
        ["study.py", "seed 4294967297", "2**32"],
    ),
    "an own key misspelt": (
        own(base="dict(widht=32)"),
        2,
        ["study.py: base", "unknown config key 'widht'", "did you mean 'width'"],
    ),
    "an own key of the wrong type": (
        own(base="dict(width='big')"),
        2,
        ["study.py: base", "width='big'", "expected an int"],
    ),
    "an own key outside its choices": (
        own(factors="dict(norm=['none', 'batch'])"),
        2,
        ["study.py: factor 'norm'", "norm='batch'", "one of 'none', 'layer'"],
    ),
    "an own key outside its range": (
        own(factors="dict(width=[16, 4096])"),
        2,
        ["study.py: factor 'width'", "width=4096", "an int from 1 to 1024"],
    ),
    "an own key shadowing a built-in key": (
        own(keys="dict(lr=0.1)"),
        2,
        ["study.py: keys: 'lr'", "built-in key"],
    ),
    "an own key with a default of no known type": (
        own(keys="dict(width=16, table={'a': 1})"),
        2,
        ["study.py: keys: 'table'", "default {'a': 1}", "tuple of those"],
    ),
    "an own key whose default is outside its choices": (
        own(keys="dict(width=16, norm=Key('batch', choices=['none', 'layer']))"),
        2,
        ["study.py: keys: 'norm'", "default 'batch'", "one of 'none', 'layer'"],
    ),
    "an own int level past 64 bits": (
        own(keys="dict(width=16, x=1)", factors="dict(x=[1, 2**70])"),
        2,
        ["study.py: factor 'x'", "x=1180591620717411303424", "within 64 bits"],
    ),
    "an own int default past 64 bits": (
        own(keys="dict(width=16, x=2**64)"),
        2,
        ["study.py: keys: 'x'", "default 18446744073709551616", "within 64 bits"],
    ),
    "a tuple level holding None": (
        own(keys="dict(width=16, t=(1,))", factors="dict(t=[(1,), (None,)])"),
        2,
        ["study.py: factor 't'", "(None,)", "NaN"],
    ),
    "tuple levels of numbers and strings": (
        own(keys="dict(width=16, t=(1, 2))", factors="dict(t=[(1, 2), ('a',)])"),
        2,
        ["study.py: factor 't'", "numbers and strings", "one Parquet list column"],
    ),
    "tuple levels of numbers and booleans": (
        own(keys="dict(width=16, t=(1,))", factors="dict(t=[(1,), (True,)])"),
        2,
        ["study.py: factor 't'", "booleans and numbers"],
    ),
    "a dataset callable that raises": (
        DATA.format(body="    raise ValueError('no such file: x.csv')"),
        2,
        ["study.py:7", "dataset callable wine failed", "ValueError: no such file: x.csv"],
    ),
    "a dataset callable with a stray label": (
        DATA.format(body="    y[0] = 5_000\n    return x, y, x, y"),
        2,
        ["study.py", "dataset wine", "train_y holds label 5000 at position 0", "each present"],
    ),
}


def check(result, code, words, tmp_path):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in result.stderr, (w, result.stderr)
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("case", list(STUDIES))
def test_bad_study_files(tmp_path, case):
    text, code, words = STUDIES[case]
    path = tmp_path / "study.py"
    path.write_text(text)
    check(
        cli.invoke(app, ["run", str(path), "--out", str(tmp_path / "res")]), code, words, tmp_path
    )


def test_missing_study_file(tmp_path):
    r = cli.invoke(app, ["run", str(tmp_path / "nope.py"), "--out", str(tmp_path / "res")])
    check(r, 2, ["nope.py", "no such study file"], tmp_path)


@pytest.mark.parametrize(
    "value, words",
    [
        ("hidden=(64,", ["--set", "does not parse"]),
        ("epochs", ["--set", "key=value"]),
        ("hidden={[1]: 2}", ["--set", "does not parse"]),
        ("hidden=" + "-" * 9999 + "1", ["--set hidden", "10,000 characters"]),
    ],
)
def test_set_values_that_do_not_parse(tmp_path, value, words):
    r = cli.invoke(
        app, ["run", str(write_study(tmp_path)), "--out", str(tmp_path / "res"), "--set", value]
    )
    check(r, 2, words, tmp_path)


def test_seeds_from_the_command_line_past_2_to_the_32(tmp_path):
    r = cli.invoke(
        app,
        [
            "run",
            str(write_study(tmp_path)),
            "--out",
            str(tmp_path / "res"),
            "--seeds",
            "4294967297",
        ],
    )
    check(r, 2, ["tiny.py", "seeds=4294967297", "below 2**32"], tmp_path)


def test_a_dry_run_past_the_cell_limit_is_refused_before_it_is_built(tmp_path):
    r = cli.invoke(
        app,
        [
            "run",
            str(write_study(tmp_path, factors="{}", seeds=100_001)),
            "--dry-run",
            "--out",
            str(tmp_path / "res"),
        ],
    )
    check(r, 2, ["tiny.py", "100,001 cells", "100,000"], tmp_path)


@pytest.mark.parametrize(
    "body, words",
    [
        (b'x = 1\nx = "\xe9"\n', ["study.py:2", "cannot decode it", "0xe9"]),
        (b"# coding: klingon\n", ["study.py", "unknown encoding: klingon"]),
    ],
)
def test_study_files_python_cannot_decode(tmp_path, body, words):
    (tmp_path / "study.py").write_bytes(
        body
    )  # a latin-1 file with no coding line, a coding Python lacks
    r = cli.invoke(app, ["run", str(tmp_path / "study.py"), "--out", str(tmp_path / "res")])
    check(r, 2, words, tmp_path)


def _copy_mnist(src, dst):
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (src / "MNIST" / "raw").iterdir():
        shutil.copy(f, raw / f.name)
    return raw


@pytest.mark.parametrize(
    "damage, words",
    [
        ("missing", ["dataset mnist", "files not found"]),
        ("bad gzip", ["train-images-idx3-ubyte.gz", "cannot read it"]),
        ("wrong magic", ["train-images-idx3-ubyte.gz", "not an IDX file", "magic 00000d03"]),
    ],
)
def test_dataset_files_missing_or_corrupt(tmp_path, data_dir, monkeypatch, damage, words):
    import torchvision.datasets as tvd

    from ablate import data

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN", {})
    monkeypatch.setattr(tvd, "MNIST", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    raw = _copy_mnist(data_dir, tmp_path / "data")
    images = raw / "train-images-idx3-ubyte.gz"
    if damage == "missing":
        images.unlink()
    elif damage == "bad gzip":
        images.write_bytes(b"not gzip at all")
    else:
        images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 64))
    r = cli.invoke(
        app,
        [
            "run",
            str(write_study(tmp_path)),
            "--out",
            str(tmp_path / "res"),
            "--data-dir",
            str(tmp_path / "data"),
        ],
    )
    check(r, 1, words, tmp_path)


def test_results_directory_not_writable(tmp_path, data_dir):
    (tmp_path / "file").write_text("")
    r = cli.invoke(
        app, ["run", str(write_study(tmp_path)), "--out", str(tmp_path / "file" / "res")]
    )
    check(r, 1, [str(tmp_path / "file" / "res" / "tiny"), "cannot write results here"], tmp_path)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_and_show_on_a_missing_or_empty_directory(tmp_path, make):
    if make == "empty":
        (tmp_path / "d").mkdir()
    for command in ("report", "show"):
        r = cli.invoke(app, [command, str(tmp_path / "d")])
        check(r, 1, [str(tmp_path / "d")], tmp_path)


def test_a_cuda_device_that_is_not_there(tmp_path, data_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli.invoke(
        app, ["run", str(write_study(tmp_path)), "--out", str(tmp_path / "res"), "--device", "cuda"]
    )
    check(r, 2, ["--device cuda", "no GPU"], tmp_path)


@pytest.mark.parametrize(
    "device, executor", [("gpu", "local"), ("cuda:x", "local"), ("meta", "local"), ("gpu", "ray")]
)
def test_a_device_name_that_is_not_a_device(tmp_path, data_dir, device, executor):
    r = cli.invoke(
        app,
        [
            "run",
            str(write_study(tmp_path)),
            "--out",
            str(tmp_path / "res"),
            "--device",
            device,
            "--executor",
            executor,
        ],
    )
    check(r, 2, [f"--device {device}", "try auto, cpu, cuda or cuda:N"], tmp_path)


def test_show_with_a_column_that_is_not_a_metric(tmp_path, data_dir):
    res = tmp_path / "res"
    assert (
        cli.invoke(app, ["run", str(write_study(tmp_path, seeds=1)), "--out", str(res)]).exit_code
        == 0
    )
    for column in ("config", "status", "nope", "seed", "epoch", "activation"):
        r = cli.invoke(app, ["show", str(res / "tiny"), "--metric", column])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, (
            r.output
        )
        assert f"'{column}' is not one of" in r.stderr, r.stderr
        assert all(m in r.stderr for m in ("train_loss", "test_loss", "test_acc")), r.stderr


@pytest.mark.slow
def test_a_study_file_calling_os_exit_is_one_line_and_exit_2_not_a_silent_success(tmp_path):
    # os._exit ends a process at once: a CliRunner would take pytest with it, so a real process
    (tmp_path / "study.py").write_text("import os\n\nos._exit(0)\n")
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "run", "study.py", "--out", "res"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: study.py:3: ") and done.stderr.count("\n") == 1
    assert "os._exit(0)" in done.stderr and "must define `study`" in done.stderr
    assert not (tmp_path / "res").exists()


def test_a_set_that_pins_a_tuple_level_of_mixed_items_is_refused_before_training(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(own(keys="dict(width=16, t=(1, 2))", factors="dict(t=[(1, 2), (3,)])"))
    r = cli.invoke(app, ["run", str(path), "--out", str(tmp_path / "res"), "--set", "t=(1, 'a')"])
    check(r, 2, ["factor 't'", "(1, 'a')", "numbers and strings"], tmp_path)


def test_a_dataset_callables_labels_past_the_class_limit_are_one_line():
    import torch

    from ablate.sources import DatasetError, from_arrays

    x, y = torch.rand(40, 4), torch.arange(40) % 4
    y[3] = 5_000_000  # no model of 5M outputs is built
    with pytest.raises(
        DatasetError,
        match=r"study.py: dataset d: train_y holds label 5000000 at "
        r"position 3; expected class labels 0..K-1 with K at most 100,000",
    ):
        from_arrays("d", (x, y, x, torch.arange(40) % 4), "study.py")
    # EMNIST-letters' labels are 1..26: torchvision's sets may leave a class out
    y = torch.arange(40) % 4 + 1
    assert from_arrays("d", (x, y, x, y), "tv", every_class=False).classes == 5


def test_an_ok_row_with_a_nan_metric_leaves_its_cell_out_with_one_line_naming_file_and_cell():
    import numpy as np
    import pandas as pd

    from ablate import readback

    rows = pd.DataFrame(
        dict(
            cell=["a", "a", "b", "b", "c"],
            epoch=[1, 2, 1, 2, 1],
            test_acc=[0.5, np.nan, 0.6, 0.7, np.nan],
            test_loss=[1.0, 1.0, 1.0, 1.0, np.nan],
            train_loss=[1.0, 1.0, 1.0, 1.0, np.nan],
            status=["ok", "ok", "ok", "ok", "diverged"],
        )
    )
    said = []
    kept = readback.unmeasured(rows, "res/x/g1.parquet", said.append)
    assert list(kept["cell"]) == ["b", "b", "c"]  # a diverged cell stays, counted as diverged
    assert said == [
        "res/x/g1.parquet: cell a is marked ok but its test_acc is NaN at epoch 2; the cell is "
        "left out of report, compare and plan alike"
    ]
