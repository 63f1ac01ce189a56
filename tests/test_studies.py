"""Every shipped study loads and dry-runs; each model kind, loss and dataset trains a little."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ablate import loop, models
from ablate.cli import app
from ablate.data import load, read_cifar
from ablate.keys import KEYS
from ablate.studyfile import load as load_study

cli = CliRunner()
STUDIES = sorted(Path(__file__).resolve().parents[1].glob("studies/*.py"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_shipped_study_dry_runs(path, tmp_path):
    r = cli.invoke(app, ["run", str(path), "--dry-run", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    st = load_study(path)
    # a tutorial's study carries its claims; digits demos and studies of one's own idea need none
    assert (st.claims or st.dataset == "digits" or st.keys) and all(c.source for c in st.claims)
    assert path.read_text().startswith(f"# studies/{path.name}:")  # opens by naming its source


def test_the_committed_reference_results_are_found_by_the_study(tmp_path):
    r = cli.invoke(app, ["run", "studies/mnist_mlp.py", "--dry-run"])
    assert (
        "40 cells, 40 done, 0 to train" in r.stdout
    )  # a new config key must not orphan stored cells


def test_the_examples_cnn_has_the_tutorials_shape():
    cfg = {k: v[0] for k, v in KEYS.items()}
    net = models.build("cnn", cfg, (1, 28, 28), 10, seed=0)
    # conv1 10*25+10, conv2 20*10*25+20, fc1 320*50+50, fc2 50*10+10
    assert sum(p.numel() for p in net.parameters()) == 260 + 5020 + 16050 + 510
    strided = {
        **cfg,
        "layers": ("conv:16:3:2", "act", "conv:32:3:2", "act", "conv:64:3", "act", "fc:256"),
    }
    assert models.build("cnn", strided, (1, 28, 28), 10, 0)(torch.zeros(3, 1, 28, 28)).shape == (
        3,
        10,
    )


def test_dropout2d_drops_whole_channels_from_the_seed():
    d = models.Dropout2d(0.5, seed=1, layer=0)
    out = d(torch.ones(4, 6, 3, 3))
    per_channel = out.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all()
    assert torch.equal(out, models.Dropout2d(0.5, seed=1, layer=0)(torch.ones(4, 6, 3, 3)))


def test_softmax_before_the_loss_is_cross_entropy_of_probabilities():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    p = torch.softmax(logits, 1)
    by_hand = -torch.log(torch.exp(p[0, 0]) / torch.exp(p[0]).sum())
    assert loop.criterion(logits, y, "softmax_then_cross_entropy").item() == pytest.approx(
        by_hand.item()
    )
    assert loop.criterion(logits, y, "cross_entropy").item() == pytest.approx(
        -torch.log(p[0, 0]).item()
    )


@pytest.mark.parametrize(
    "over",
    [
        ["--set", "epochs=1", "--set", "train_subset=512"],
        ["--set", "epochs=1", "--set", "train_subset=512", "--set", "loss=cross_entropy"],
    ],
)
@pytest.mark.slow
def test_the_strided_cnn_study_trains_on_a_subset(tmp_path, data_dir, over):
    r = cli.invoke(
        app, ["run", "studies/mnist_cnn.py", "--out", str(tmp_path), "--seeds", "1", *over]
    )
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "mnist_cnn")
    assert len(df) >= 1 and df["status"].eq("ok").all() and df["test_acc"].between(0, 1).all()


@pytest.mark.slow
def test_xor_perceptron_cannot_pass_75_and_the_mlp_solves_it(tmp_path):
    r = cli.invoke(app, ["run", "studies/xor.py", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    final = pd.read_parquet(tmp_path / "xor").query("epoch == 500")
    perceptron = final[final["hidden"].map(len) == 0]["test_acc"]
    mlp = final[final["hidden"].map(len) == 1]["test_acc"]
    assert len(perceptron) == len(mlp) == 10
    assert perceptron.max() <= 0.75 and (mlp == 1.0).all()


def write_cifar(folder: Path, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar10_reads_the_python_batches_and_the_lenet_study_trains(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    x, y, tx, ty = read_cifar(tmp_path / "data" / "cifar-10-batches-py")
    assert (
        x.shape == (20, 3, 32, 32)
        and x.dtype == torch.uint8
        and y.dtype == torch.int64
        and tx.shape[0] == 20
    )
    d = load("cifar10", "cpu", tmp_path / "data")
    assert d.shape == (3, 32, 32) and d.mean.shape == (3,)
    r = cli.invoke(
        app,
        [
            "run",
            "studies/cifar10_cnn.py",
            "--out",
            str(tmp_path / "res"),
            "--seeds",
            "1",
            "--set",
            "epochs=1",
            "--data-dir",
            str(tmp_path / "data"),
            "--set",
            "hflip=True",
            "--set",
            "normalize=True",
        ],
    )
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(tmp_path / "res" / "cifar10_cnn")["cell"].nunique() == 2


def test_a_file_that_is_not_a_cifar_batch_is_one_line(tmp_path):
    from ablate.sources import DataError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"junk")
    (folder / "test_batch").write_bytes(b"junk")
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 batch"):
        read_cifar(folder)


def test_digits_loads_offline_and_its_demo_study_learns(tmp_path):
    d = load("digits")  # scikit-learn's shipped 8x8 digits: 1,797 images, the first 898 train
    assert (
        d.train_x.shape == (898, 1, 8, 8) and d.test_x.shape == (899, 1, 8, 8) and d.classes == 10
    )
    assert d.train_x.dtype == torch.uint8 and d.train_x.max() == 255 and d.origin == "scikit-learn"
    r = cli.invoke(
        app,
        [
            "run",
            "studies/digits_mlp.py",
            "--out",
            str(tmp_path),
            "--seeds",
            "1",
            "--set",
            "epochs=5",
        ],
    )
    assert r.exit_code == 0, r.output
    final = pd.read_parquet(tmp_path / "digits_mlp").query("epoch == 5")
    assert len(final) == 4 and final["test_acc"].min() > 0.8  # chance is 0.1
