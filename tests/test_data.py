"""Datasets: IDX parsing, the search order for local copies, device-side normalisation and flips."""

import gzip
import hashlib
import pickle
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from ablate import data, loop, sources
from ablate.data import hflip, load, read_idx, to_float
from ablate.sources import DataError


def test_real_mnist_loads_as_uint8_in_canonical_order(data_dir, mnist_facts):
    d = load("mnist", "cpu", data_dir)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (10000, 1, 28, 28) and d.test_y.shape == (10000,)
    assert d.train_y[:10].tolist() == mnist_facts["first_labels"]
    assert d.classes == 10 and d.shape == (1, 28, 28)
    # the widely quoted MNIST normalisation constants (the stand-ins': NumPy's answer)
    tolerance = mnist_facts["tolerance"]
    assert d.mean.item() == pytest.approx(mnist_facts["mean"], abs=tolerance)
    assert d.std.item() == pytest.approx(mnist_facts["std"], abs=tolerance)
    assert load("mnist", "cpu", data_dir) is d  # read once per process


def test_real_fashion_mnist_loads(data_dir, mnist_facts):
    d = load("fashion_mnist", "cpu", data_dir)
    assert d.train_x.shape == (60000, 1, 28, 28) and set(d.train_y.unique().tolist()) == set(
        range(10)
    )
    assert d.mean.item() == pytest.approx(mnist_facts["fashion_mean"], abs=1e-3)


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


def test_locate_accepts_flat_and_unzipped_layouts(tmp_path, data_dir, mnist_facts):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in data.FILES:
        (flat / f).write_bytes(
            gzip.decompress((data_dir / "MNIST" / "raw" / (f + ".gz")).read_bytes())
        )
    paths = data.locate("mnist", flat)
    assert [p.name for p in paths] == list(data.FILES)
    assert read_idx(paths[1])[:3].tolist() == mnist_facts["first_labels"][:3]


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


# --- a study's own data: a dataset callable's arrays, torchvision's datasets ----------------------


def _blobs(train_x=None, train_y=None, test_x=None, test_y=None):
    """Four float rows of two features and three classes, any part replaced."""
    parts = (
        np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0], [7.0, 2.0]]),
        np.array([0, 2, 1, 0]),
        np.array([[0.0, 0.0]]),
        np.array([1]),
    )
    given = (train_x, train_y, test_x, test_y)
    return tuple(p if g is None else g for p, g in zip(parts, given, strict=True))


def test_float_features_are_kept_as_float32_and_standardised_per_feature():
    train_x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # float64: stored float32
    arrays = (train_x, np.array([0, 2, 1], dtype=np.int32), np.zeros((1, 2)), np.array([3]))
    d = data.from_arrays("blobs", arrays, "study.py")
    assert not d.images and d.shape == (2,) and d.classes == 4  # the largest label, 3, + 1
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.train_x.tolist() == train_x.tolist() and d.origin == "study.py"
    # column 0: 1, 3, 5: mean 3, sample std 2; column 1 is constant: std 1, not 0 (no division by 0)
    assert d.mean.tolist() == [3.0, 2.0] and d.std.tolist() == [2.0, 1.0]
    z = to_float(d, torch.tensor([[5.0, 2.0], [1.0, 4.0]]), True)
    assert z.tolist() == [[1.0, 0.0], [-1.0, 2.0]]
    raw, same = d.train_x[:2], to_float(d, d.train_x[:2], False)
    assert torch.equal(same, raw) and same.data_ptr() != raw.data_ptr()  # a copy: data stays safe
    train_x[0, 0] = 99.0  # the caller's array is not the dataset
    assert d.train_x[0, 0].item() == 1.0


def test_uint8_images_are_scaled_and_normalised_per_channel_by_hand():
    x = torch.tensor([[[0, 255]], [[255, 255]]], dtype=torch.uint8)  # [N=2, H=1, W=2]
    d = data.from_arrays("pics", (x, torch.tensor([0, 1]), x[:1], torch.tensor([1])), "s.py")
    assert d.images and d.train_x.shape == (2, 1, 1, 2) and d.train_x.dtype == torch.uint8
    assert d.classes == 2 and d.shape == (1, 1, 2)
    # scaled 0, 1, 1, 1: mean 0.75, sample variance (0.5625 + 3 * 0.0625) / 3 = 0.25
    assert d.mean.tolist() == [0.75] and d.std.tolist() == [0.5]
    assert to_float(d, d.test_x, False).tolist() == [[[[0.0, 1.0]]]]
    assert to_float(d, d.test_x, True).tolist() == [[[[-1.5, 0.5]]]]
    rgb = torch.zeros(3, 3, 4, 4, dtype=torch.uint8).index_fill_(1, torch.tensor([1]), 255)
    d = data.from_arrays("rgb", (rgb, torch.tensor([0, 1, 2]), rgb, torch.tensor([0, 0, 0])), "s")
    assert d.shape == (3, 4, 4) and d.mean.tolist() == [0.0, 1.0, 0.0] and d.classes == 3


def test_images_from_arrays_equal_the_built_in_loaders_bitwise(data_dir):
    d = load("mnist", "cpu", data_dir)
    mine = data.from_arrays("m", (d.train_x[:, 0].numpy(), d.train_y, d.test_x, d.test_y), "s")
    assert torch.equal(mine.train_x, d.train_x) and torch.equal(mine.mean, d.mean)
    assert torch.equal(mine.std, d.std) and mine.classes == 10 and d.images
    assert torch.equal(to_float(mine, d.test_x[:50], True), to_float(d, d.test_x[:50], True))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": 1}, "returned a dict; expected a tuple (train_x, train_y, test_x, test_y)"),
        (_blobs()[:3], "returned a tuple of 3; expected a tuple (train_x, train_y, test_x"),
        (_blobs(train_y=[0, 2, 1, 0]), "train_y is a list; expected a torch tensor or a NumPy"),
        (_blobs(train_x=np.array([["a"]] * 4, dtype=object)), "train_x is a NumPy array of dtype"),
        (_blobs(train_y=np.array([0.0, 2.0, 1.0, 0.0])), "train_y has dtype float64; expected int"),
        (_blobs(train_x=torch.zeros(4, 1, 8, 8, dtype=torch.int64)), "train_x has dtype int64; ex"),
        (_blobs(train_x=torch.zeros(4, 2, dtype=torch.uint8)), "train_x is uint8 of shape [4, 2]"),
        (_blobs(train_x=np.arange(4.0)), "train_x has shape [4]; expected [N, ...], a row per"),
        (_blobs(test_y=np.array([-1])), "test_y holds label -1 at position 0 (1 negative labels)"),
        (_blobs(train_y=np.eye(4, 3, dtype=np.int64)), "train_y has shape [4, 3]; expected 1-D"),
        (_blobs(train_y=np.array([0, 1, 2])), "train_x has 4 rows but train_y has 3 labels"),
        (_blobs(test_x=np.zeros((1, 3))), "train_x rows are [2] but test_x rows are [3]; expected"),
        (_blobs(test_x=np.zeros((0, 2)), test_y=np.zeros(0, int)), "test_x has no rows; expected"),
        (_blobs(test_x=np.zeros((1, 1, 2), np.uint8)), "train_x is float64 but test_x is uint8"),
        (_blobs(train_x=np.array([[0.0, 1], [2, 3], [4, np.nan], [5, 6]])), "NaN or infinity (fi"),
    ],
)
def test_a_dataset_callables_bad_return_is_one_line_naming_the_study_file(arrays, message):
    with pytest.raises(data.DatasetError) as e:
        data.from_arrays("blobs", arrays, "study.py")
    msg = str(e.value)
    assert msg.startswith("study.py: dataset blobs") and message in msg and "\n" not in msg, msg
    assert isinstance(e.value, DataError) and e.value.code == 2  # a study file's mistake


def test_hflip_on_features_is_refused_in_one_line():
    features = data.from_arrays("blobs", _blobs(), "study.py")
    data.check_flips(features, [{"hflip": False}, {"normalize": True}], "study.py")
    data.check_flips(load("xor"), [{"hflip": True}], "study.py")
    with pytest.raises(data.DatasetError) as e:
        data.check_flips(features, [{"hflip": False}, {"hflip": True}], "study.py")
    assert str(e.value) == (
        "study.py: hflip=True mirrors images, but dataset blobs holds float features [2] per "
        "sample; set hflip=False, or return uint8 images to flip"
    )


def test_a_callable_with_config_is_called_once_per_distinct_config_and_one_without_once():
    calls = []

    def noisy(config):
        calls.append(dict(config))
        return _blobs(train_y=np.array([0, 2, 1, round(config["noise"] * 10)]))

    def plain():
        calls.append(None)
        return _blobs()

    first = data.load_callable(noisy, {"noise": 0.0}, "cpu", "study.py")
    assert data.load_callable(noisy, {"noise": 0.3}, "cpu", "study.py").classes == 4
    assert data.load_callable(noisy, {"noise": 0.0}, torch.device("cpu"), "s.py") is first
    assert calls == [{"noise": 0.0}, {"noise": 0.3}] and first.classes == 3
    assert first.name.endswith("noisy") and first.origin == "study.py"
    calls.clear()
    a = data.load_callable(plain, {"noise": 0.0}, "cpu", "study.py")
    assert data.load_callable(plain, {"noise": 0.3}, "cpu", "study.py") is a
    assert data.load_callable(plain, None, "cpu", "study.py") is a and calls == [None]
    with pytest.raises(data.DatasetError, match=r"^s.py: dataset .*\.<lambda>: test_x is a str;"):
        data.load_callable(lambda: (*_blobs()[:2], "x", None), None, "cpu", "s.py")
    with pytest.raises(data.DatasetError, match=r"^s.py: the dataset callable .* called exit\(3\)"):
        data.load_callable(lambda config: exit(3), {}, "cpu", "s.py")
    assert data.takes_config(lambda config: None, "s.py")
    assert data.takes_config(lambda config, n=3: None, "s.py")
    assert not data.takes_config(lambda: None, "s.py")
    with pytest.raises(data.DatasetError, match=r"^s.py: dataset .*requires the arguments a, b;"):
        data.takes_config(lambda a, b: None, "s.py")


def test_prepare_takes_features_with_per_cell_normalisation():
    d = data.from_arrays("blobs", _blobs(), "study.py")  # mean [4, 2], std [2.58.., 1]
    raw = d.train_x[:3]  # [B, 2], shared by all cells, as evaluate passes it
    assert loop.prepare(d, raw, False, None).shape == (1, 3, 2)
    mask = loop.normalization([{"normalize": True}, {"normalize": False}], "cpu")
    x = loop.prepare(d, raw, mask, None)
    assert x.shape == (2, 3, 2)
    assert torch.equal(x[0], (raw - d.mean) / d.std) and torch.equal(x[1], raw)
    per_cell = torch.stack([raw, raw.flip(0)])  # [G, B, 2], as a training step passes it
    assert torch.equal(loop.prepare(d, per_cell, mask, None)[1], raw.flip(0))
    assert torch.equal(loop.prepare(d, per_cell, True, None), (per_cell - d.mean) / d.std)


def test_prepare_keeps_the_image_numbers():
    d = load("xor")
    raw = d.train_x[torch.tensor([[0, 1, 2], [3, 2, 1]])]  # [G, B, 1, 1, 2]
    mask = loop.normalization([{"normalize": True}, {"normalize": False}], "cpu")
    old = torch.where(mask, to_float(d, raw, True), to_float(d, raw, False))  # before features
    assert torch.equal(loop.prepare(d, raw, mask, None), old)
    assert loop.prepare(d, d.test_x, mask, None).shape == (2, 4, 1, 1, 2)


# --- torchvision:NAME from generated files in torchvision's layout, never downloaded -------------


def _write_idx(path, array: np.ndarray):
    """An extracted IDX file of unsigned bytes, as torchvision's MNIST family reads them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(
        b"\x00\x00\x08" + bytes([array.ndim]) + dims + array.astype(np.uint8).tobytes()
    )


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty cache folder, and every URL torchvision opens recorded and refused."""
    opened = []

    def refuse(request, *a, **k):
        opened.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    return opened


def test_torchvision_kmnist_and_emnist_letters_load_offline_from_the_data_dir(tmp_path, offline):
    gen = np.random.default_rng(0)
    images = {s: gen.integers(0, 256, (n, 28, 28)) for s, n in (("train", 5), ("t10k", 3))}
    labels = {"train": np.array([0, 9, 3, 3, 1]), "t10k": np.array([2, 0, 4])}
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"KMNIST/raw/{split}-images-idx3-ubyte", images[split])
        _write_idx(tmp_path / f"KMNIST/raw/{split}-labels-idx1-ubyte", labels[split])
        emnist = f"EMNIST/raw/emnist-letters-{split.replace('t10k', 'test')}"
        _write_idx(tmp_path / f"{emnist}-images-idx3-ubyte", images[split])
        _write_idx(tmp_path / f"{emnist}-labels-idx1-ubyte", labels[split] + 1)  # letters: 1..26
    d = load("torchvision:KMNIST", "cpu", tmp_path)
    assert d.train_x.shape == (5, 1, 28, 28) and d.train_x.dtype == torch.uint8 and d.images
    assert d.train_x[:, 0].numpy().tolist() == images["train"].tolist()
    assert d.train_y.tolist() == [0, 9, 3, 3, 1] and d.test_y.tolist() == [2, 0, 4]
    assert d.classes == 10 and d.name == "torchvision:KMNIST" and d.origin == str(tmp_path)
    assert d.mean.shape == (1,) and load("torchvision:KMNIST", "cpu", tmp_path) is d
    e = load("torchvision:EMNIST-letters", "cpu", tmp_path)
    assert e.test_y.tolist() == [3, 1, 5] and e.classes == 11  # the largest label, 10, + 1
    assert offline == []  # found offline: no download tried


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def test_torchvision_cifar100_loads_offline_from_the_cache_folder(tmp_path, offline, monkeypatch):
    import torchvision.datasets as tvd

    gen = np.random.default_rng(1)
    train = gen.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    test = gen.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / "cache" / "cifar-100-python"  # the cache folder: ABLATE_CACHE
    files = {
        "train": _pickle(folder / "train", {"data": train.reshape(2, -1), "fine_labels": [0, 99]}),
        "test": _pickle(folder / "test", {"data": test.reshape(2, -1), "fine_labels": [7, 1]}),
        "meta": _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}),
    }
    md5 = {k: hashlib.md5(p.read_bytes()).hexdigest() for k, p in files.items()}
    # torchvision checks each file's md5: these files' own, so its integrity check still runs
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": md5["meta"]})
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "empty"))  # looked at first, in vain
    d = sources.torchvision_data("torchvision:CIFAR100", None)
    assert d.train_x.shape == (2, 3, 32, 32) and d.test_x.shape == (2, 3, 32, 32)
    assert np.array_equal(d.train_x.numpy(), train) and np.array_equal(d.test_x.numpy(), test)
    assert d.train_y.tolist() == [0, 99] and d.classes == 100 and d.mean.shape == (3,)
    assert d.origin == str(tmp_path / "cache") and offline == []


def test_torchvision_absent_and_not_downloadable_is_one_line(tmp_path, offline):
    with pytest.raises(DataError) as e:
        load("torchvision:KMNIST", "cpu", tmp_path / "empty")
    assert str(e.value) == (
        f"dataset torchvision:KMNIST: not found in {tmp_path / 'empty'}, {tmp_path / 'cache'} and "
        "the download failed (RuntimeError); put torchvision's KMNIST files (KMNIST/raw/ with the "
        "extracted IDX files) under a folder and pass --data-dir or set ABLATE_DATA_DIR"
    )
    assert offline and e.value.code == 1  # the download was tried, and refused


@pytest.mark.parametrize(
    "name, message",
    [
        ("torchvision:KMINST", "torchvision has no dataset 'KMINST'; did you mean torchvision:KMN"),
        ("torchvision:cifar100", "did you mean torchvision:CIFAR100?"),
        ("torchvision:EMNIST-letter", "EMNIST has no split 'letter'; valid: torchvision:EMNIST-by"),
        ("torchvision:SVHN-extra", "torchvision's SVHN has no variants (-extra); use torchvision:"),
        ("torchvision:utils", "torchvision has no dataset 'utils' (valid: torchvision:KMNIST, t"),
    ],
)
def test_an_unknown_torchvision_name_is_one_line_with_valid_names(name, message):
    with pytest.raises(data.DatasetError) as e:
        load(name)
    assert str(e.value).startswith(f"dataset {name}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_torchvision_mnist_reads_the_gz_files_dataset_mnist_reads_from_the_same_folder(
    tmp_path, offline
):
    gen = np.random.default_rng(1)
    for split, n in (("train", 6), ("t10k", 4)):
        for kind, array in (
            ("images-idx3", gen.integers(0, 256, (n, 28, 28))),
            ("labels-idx1", np.arange(n) % 3),
        ):
            plain = tmp_path / f"MNIST/raw/{split}-{kind}-ubyte"
            _write_idx(plain, array)
            plain.with_name(plain.name + ".gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()  # only the .gz files, as the published ones come
    tv = load("torchvision:MNIST", "cpu", tmp_path)
    builtin = data._idx_set("mnist", str(tmp_path))
    assert torch.equal(tv.train_x, builtin.train_x) and torch.equal(tv.test_y, builtin.test_y)
    assert tv.classes == 3 and offline == []  # found offline: no download tried


def test_a_failed_torchvision_lookup_leaves_no_empty_folder_in_the_cache(tmp_path, offline):
    (tmp_path / "cache" / "mine").mkdir(parents=True)  # a folder that was there stays
    for _ in range(2):
        with pytest.raises(DataError):
            load("torchvision:KMNIST", "cpu", tmp_path / "empty")
    assert offline  # the download was tried
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["mine"]
