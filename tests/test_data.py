"""Datasets: IDX parsing, the search order for local copies, device-side normalisation and flips."""

import gzip

import pytest
import torch

from ablate import data
from ablate.data import DataError, hflip, load, read_idx, to_float


def test_real_mnist_loads_as_uint8_in_canonical_order(data_dir):
    d = load("mnist", "cpu", data_dir)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (10000, 1, 28, 28) and d.test_y.shape == (10000,)
    assert d.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert d.classes == 10 and d.shape == (1, 28, 28)
    # the widely quoted MNIST normalisation constants
    assert d.mean.item() == pytest.approx(0.1307, abs=1e-4) and d.std.item() == pytest.approx(
        0.3081, abs=1e-4
    )
    assert load("mnist", "cpu", data_dir) is d  # read once per process


def test_real_fashion_mnist_loads(data_dir):
    d = load("fashion_mnist", "cpu", data_dir)
    assert d.train_x.shape == (60000, 1, 28, 28) and set(d.train_y.unique().tolist()) == set(
        range(10)
    )
    assert d.mean.item() == pytest.approx(0.2860, abs=1e-3)


def _idx(path, payload: bytes, header: bytes):
    with gzip.open(path, "wb") as f:
        f.write(header + payload)
    return path


def test_read_idx_round_trip_and_bad_files(tmp_path):
    dims = (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    good = _idx(tmp_path / "a.gz", bytes(range(6)), b"\x00\x00\x08\x02" + dims)
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    wrong_magic = _idx(tmp_path / "b.gz", b"\x00" * 4, b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big"))
    with pytest.raises(
        DataError, match=r"b.gz: not an IDX file of unsigned bytes \(magic 00000d01"
    ):
        read_idx(wrong_magic)
    short = _idx(tmp_path / "c.gz", b"\x00" * 3, b"\x00\x00\x08\x01" + (4).to_bytes(4, "big"))
    with pytest.raises(DataError, match="c.gz: truncated"):
        read_idx(short)
    (tmp_path / "d.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="d.gz: cannot read it"):
        read_idx(tmp_path / "d.gz")


def test_missing_files_and_failed_download_give_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN", {})

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(DataError) as e:
        data.locate("mnist", tmp_path / "empty")
    msg = str(e.value)
    assert (
        "dataset mnist" in msg
        and str(tmp_path / "empty") in msg
        and "ABLATE_DATA_DIR" in msg
        and "\n" not in msg
    )


def test_locate_accepts_flat_and_unzipped_layouts(tmp_path, data_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in data.FILES:
        (flat / f).write_bytes(
            gzip.decompress((data_dir / "MNIST" / "raw" / (f + ".gz")).read_bytes())
        )
    paths = data.locate("mnist", flat)
    assert [p.name for p in paths] == list(data.FILES)
    assert read_idx(paths[1])[:3].tolist() == [5, 0, 4]


def test_hflip_mirrors_only_the_chosen_images():
    x = torch.tensor([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]])
    out = hflip(x, torch.tensor([True, False]))
    assert out.tolist() == [[[[2, 1], [4, 3]]], [[[5, 6], [7, 8]]]]


def test_to_float_scales_and_normalises(data_dir):
    d = load("mnist", "cpu", data_dir)
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert to_float(d, x, False).tolist() == [[[[0.0, 1.0]]]]
    z = to_float(d, d.train_x[:5000], True)
    assert z.mean().item() == pytest.approx(0.0, abs=0.02) and z.std().item() == pytest.approx(
        1.0, abs=0.02
    )


def _mnist_with_a_bad_label(folder, data_dir, labels_file: str):
    """The real MNIST files, gzipped as the loader expects, with label 7 of `labels_file` set to
    200."""
    folder.mkdir()
    for f in data.FILES:
        src = data_dir / "MNIST" / "raw" / (f + ".gz")
        if f != labels_file:
            (folder / (f + ".gz")).symlink_to(src)
            continue
        raw = bytearray(gzip.decompress(src.read_bytes()))
        raw[8 + 7] = 200  # after the magic and the one dimension, 4 bytes each: a byte per label
        (folder / (f + ".gz")).write_bytes(gzip.compress(bytes(raw)))
    return folder / (labels_file + ".gz")


@pytest.mark.parametrize("labels_file", ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"])
def test_a_label_outside_the_classes_is_refused_at_load_naming_the_file(
    tmp_path, data_dir, labels_file
):
    bad = _mnist_with_a_bad_label(tmp_path / "bad", data_dir, labels_file)
    with pytest.raises(DataError) as e:
        load("mnist", "cpu", tmp_path / "bad")
    msg = str(e.value)
    assert msg.startswith(
        f"{bad}: label 200 at position 7 is not a class of mnist (0..9; 1 such labels)"
    )
    assert "\n" not in msg


def test_the_class_count_is_the_datasets_not_the_largest_label_seen():
    x = torch.zeros(3, 1, 1, 1, dtype=torch.uint8)
    d = data._data("mnist", x, torch.tensor([0, 1, 4]), x, torch.tensor([2, 3, 0]), "here")
    assert d.classes == 10  # not 4 + 1
    assert load("xor").classes == 2 and load("digits").classes == 10
    with pytest.raises(
        DataError, match=r"^here: label -1 at position 2 is not a class of xor \(0..1"
    ):
        data._data("xor", x, torch.tensor([0, 1, -1]), x, torch.tensor([0, 1, 1]), "here")
