"""Datasets by name or callable, loaded once into tensors on the device; batched preprocessing."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .errors import AblateError
from .keys import DATASET_SIZES
from .sources import (
    TORCHVISION,
    Data,
    DataError,
    DatasetError,
    cache_dir,
    from_arrays,
    image_moments,
    not_found,
    torchvision_data,
)
from .sources import check_flips as check_flips  # re-exported: the runner's one import

# name -> (torchvision folder and class, the four IDX files)
SOURCES = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
}
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}  # dataset-fashion-mnist


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) of unsigned bytes as a uint8 tensor."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"{path}: cannot read it ({e}); replace the file with the published one"
        ) from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        magic = raw[:4].hex() or "missing"
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (magic {magic}, expected 0000080X)"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != (n := int(torch.tensor(dims).prod())):
        raise DataError(f"{path}: truncated IDX file: header says {n} bytes, found {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(folder: str, roots: list[Path]) -> list[Path] | None:
    for root in roots:
        for d in (root / folder / "raw", root / folder, root):
            found = [
                next((p for p in (d / f, d / (f + ".gz")) if p.is_file()), None) for f in FILES
            ]
            if all(found):
                return found
    return None


def locate(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The four files of `name`: data_dir or $ABLATE_DATA_DIR, the cache, Debian's, a download."""
    folder, tv_class = SOURCES[name]
    given = data_dir or os.environ.get("ABLATE_DATA_DIR")
    roots = [Path(given)] if given else []
    roots += [cache_dir()] + ([DEBIAN[name]] if name in DEBIAN else [])
    if found := _find(folder, roots):
        return found
    try:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(str(cache_dir()), train=True, download=True)
        getattr(tvd, tv_class)(str(cache_dir()), train=False, download=True)
    except Exception as e:  # no network, a proxy page, a full disk: all end the same way
        put = f"put {folder}/raw/{FILES[0]}.gz and the other three files under a folder"
        raise not_found(f"dataset {name}: files not found", roots, e, put) from None
    return _find(folder, [cache_dir()])


def check_labels(y: torch.Tensor, name: str, path) -> None:
    """Every label a class of `name` (DATASET_SIZES): one corrupt byte would otherwise train a
    model with more outputs under the same cell id, or fail at the test set after training."""
    classes = DATASET_SIZES[name][0]
    if len(bad := ((y < 0) | (y >= classes)).nonzero()):
        i = int(bad[0])
        raise DataError(
            f"{path}: label {int(y[i])} at position {i} is not a class of {name} "
            f"(0..{classes - 1}; {len(bad)} such labels); "
            f"replace the file with the published one"
        )


def _data(name, train_x, train_y, test_x, test_y, origin: str, labels=None) -> Data:
    """`labels`: the files the train and test labels came from, for the error message."""
    for y, where in zip((train_y, test_y), labels or (origin, origin), strict=True):
        check_labels(y, name, where)
    mean, std = image_moments(train_x)
    classes = DATASET_SIZES[name][0]  # fixed: not the largest label seen + 1
    return Data(name, train_x, train_y.long(), test_x, test_y.long(), mean, std, classes, origin)


def _idx_set(name: str, data_dir: str | None) -> Data:
    paths = locate(name, data_dir)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for x, y, p in ((train_x, train_y, paths[0]), (test_x, test_y, paths[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{p}: images {tuple(x.shape)} and labels {tuple(y.shape)} do not match"
            )
    return _data(
        name,
        train_x[:, None],
        train_y,
        test_x[:, None],
        test_y,
        str(paths[0].parent),
        (paths[1], paths[3]),
    )


CIFAR = "cifar-10-batches-py"


def read_cifar(folder: Path) -> tuple[torch.Tensor, ...]:
    """The python-pickle CIFAR-10 batches: data_batch_1..5 and test_batch, each {data: uint8
    [N, 3072], labels: [N]}, as uint8 [N, 3, 32, 32] images and int64 labels."""
    import pickle

    def batch(name):
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            x = torch.as_tensor(d[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
            y = torch.as_tensor(d[b"labels"], dtype=torch.int64)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, RuntimeError, EOFError) as e:
            raise DataError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
        check_labels(y, "cifar10", path)  # here, to name the batch file
        return x, y

    train = [batch(f"data_batch_{i}") for i in range(1, 6) if (folder / f"data_batch_{i}").exists()]
    if not train:
        raise DataError(f"{folder}: no data_batch_1..5 files")
    test_x, test_y = batch("test_batch")
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y


def _cifar10(data_dir: str | None) -> Data:
    given = data_dir or os.environ.get("ABLATE_DATA_DIR")
    roots = ([Path(given)] if given else []) + [cache_dir()]
    folder = next((r / CIFAR for r in roots if (r / CIFAR / "test_batch").is_file()), None)
    if folder is None:
        try:
            import torchvision.datasets as tvd

            tvd.CIFAR10(str(cache_dir()), train=True, download=True)
            folder = cache_dir() / CIFAR
        except Exception as e:
            where = ", ".join(str(r) for r in roots)
            raise DataError(
                f"dataset cifar10: {CIFAR}/ not found in {where} and the download failed "
                f"({type(e).__name__}); put the extracted {CIFAR}/ folder under --data-dir"
            ) from None
    return _data("cifar10", *read_cifar(folder), str(folder))


def _xor() -> Data:
    """The four XOR points as 1x1x2 'images' (0 or 255); train and test are the same four."""
    x = torch.tensor([[0, 0], [0, 255], [255, 0], [255, 255]], dtype=torch.uint8).view(4, 1, 1, 2)
    y = torch.tensor([0, 1, 1, 0])
    return _data("xor", x, y, x.clone(), y.clone(), "generated")


# the first half trains, the second tests: scikit-learn's digits example splits so
DIGITS_TRAIN = 898


def _digits() -> Data:
    """scikit-learn's shipped 8x8 digits (1,797 images of 0..16, no download), scaled to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "dataset digits: needs scikit-learn, not installed: pip install scikit-learn"
        ) from None
    d = load_digits()
    x = torch.from_numpy(d.images * (255 / 16)).round_().to(torch.uint8)[:, None]
    y = torch.from_numpy(d.target)
    n = DIGITS_TRAIN
    return _data("digits", x[:n], y[:n], x[n:], y[n:], "scikit-learn")


# torchvision's MNIST family whose four files carry MNIST's names: read here, gzipped or not, as
# dataset="mnist" reads them (torchvision wants them extracted and refused the .gz files)
IDX_FAMILY = ("MNIST", "FashionMNIST", "KMNIST")


def _torchvision_idx(name: str, data_dir: str | None) -> Data | None:
    """torchvision:MNIST, FashionMNIST or KMNIST from <root>/NAME/raw/ (the four files, .gz or
    not) under data_dir or $ABLATE_DATA_DIR, then the cache; None when not found there."""
    folder = name.removeprefix(TORCHVISION)
    given = data_dir or os.environ.get("ABLATE_DATA_DIR")
    for root in ([Path(given)] if given else []) + [cache_dir()]:
        raw = root / folder / "raw"
        found = [
            next((p for p in (raw / f, raw / (f + ".gz")) if p.is_file()), None) for f in FILES
        ]
        if folder in IDX_FAMILY and all(found):
            train_x, train_y, test_x, test_y = (read_idx(p) for p in found)
            return from_arrays(
                name, (train_x, train_y, test_x, test_y), str(root), every_class=False
            )
    return None


@functools.lru_cache(maxsize=4)
def _load_cpu(name: str, data_dir: str | None) -> Data:
    if name == "xor":
        return _xor()
    if name == "digits":
        return _digits()
    if name == "cifar10":
        return _cifar10(data_dir)
    if name.startswith(TORCHVISION):
        return _torchvision_idx(name, data_dir) or torchvision_data(name, data_dir)
    return _idx_set(name, data_dir)


def load(name: str, device: torch.device | str = "cpu", data_dir: str | Path | None = None) -> Data:
    """Load once per process and device: files are read once, tensors copied once per device
    (a torch.device, or its name: "cpu", "cuda:0"). `name`: a built-in dataset or
    "torchvision:NAME[-VARIANT]" ("torchvision:KMNIST", "torchvision:EMNIST-letters")."""
    return _load(name, torch.device(device), str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=4)
def _load(name: str, device: torch.device, data_dir: str | None) -> Data:
    return to_device(_load_cpu(name, data_dir), device)


def to_device(d: Data, device: torch.device) -> Data:
    if device.type == "cpu" and d.train_x.device.type == "cpu":
        return d
    tensors = ("train_x", "train_y", "test_x", "test_y", "mean", "std")
    return dataclasses.replace(d, **{f: getattr(d, f).to(device) for f in tensors})


def takes_config(dataset: Callable, source: str) -> bool:
    """Whether a dataset callable is called with the config: it has a positional parameter
    (further ones need defaults); none: called without. DatasetError for other signatures."""
    try:
        params = list(inspect.signature(dataset).parameters.values())
    except (TypeError, ValueError):
        raise DatasetError(
            f"{source}: dataset {dataset!r} is not a callable ablate can call"
        ) from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [
        p.name
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    extra = [n for n in needed if not positional or n != positional[0].name]
    if extra:
        raise DatasetError(
            f"{source}: dataset {_name(dataset)} requires the arguments {', '.join(needed)}; "
            "expected none, or one: the config"
        )
    return bool(positional)


def _name(dataset: Callable) -> str:
    return getattr(dataset, "__qualname__", None) or type(dataset).__qualname__


def _line_in(error: BaseException, source: str) -> str:
    """ ":N", the last line of the study file the error passed through, or ""."""
    tb, line = error.__traceback__, ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == source:
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def _frozen(value):
    """A hashable form of a config value, its type included (True, 1 and 1.0 are one dict key)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple(_frozen(v) for v in value)
    plain = value is None or isinstance(value, (bool, int, float, str))
    return type(value).__name__, value if plain else repr(value)


# (the callable, its frozen config or None) -> CPU Data, and the same key + (device,) -> Data on
# it; unbounded: a callable that reads the config is called once per distinct config
_CALLED: dict[tuple, Data] = {}


def load_callable(
    dataset: Callable, config: Mapping | None, device: torch.device | str, source: str
) -> Data:
    """A study's dataset callable's data on `device`, checked (from_arrays). A callable taking
    the config (takes_config) is called with a copy of `config` once per distinct config; one
    taking none once per process, `config` ignored. Tensors go to each device once. DatasetError,
    naming `source` (the study file), for a return ablate cannot train on."""
    config = config if takes_config(dataset, source) else None
    try:
        key = (dataset, None if config is None else _frozen(config))
        hash(key)
    except TypeError:  # an unhashable callable object: its identity, while it lives
        key = (id(dataset), None if config is None else _frozen(config))
    if key not in _CALLED:
        try:
            arrays = dataset() if config is None else dataset(dict(config))
        except SystemExit as e:
            raise DatasetError(
                f"{source}: the dataset callable {_name(dataset)} called exit({e.code!r})"
            ) from None
        except (KeyboardInterrupt, AblateError):
            raise
        except Exception as e:  # the user's code: one line, as a model callable's (not 40 frames)
            raise DatasetError(
                f"{source}{_line_in(e, source)}: the dataset callable {_name(dataset)} failed: "
                f"{type(e).__name__}: {e}"
            ) from None
        _CALLED[key] = from_arrays(_name(dataset), arrays, source)
    on = key + (torch.device(device),)
    if on not in _CALLED:
        _CALLED[on] = to_device(_CALLED[key], torch.device(device))
    return _CALLED[on]


def to_float(data: Data, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """uint8 [..., C, H, W] to float in 0..1, or standardised by the dataset's mean and std [C];
    float32 features [..., *shape] as they are (a copy), or standardised per feature."""
    if not data.images:
        if normalize:
            return (x.float() - data.mean) / data.std
        return x.to(torch.float32, copy=True)  # a copy: a model's in-place op must not reach data
    x = torch.div(x, 255)  # float32, bitwise x.float() / 255, in one operation
    if normalize:
        shape = (-1, 1, 1)
        x = (x - data.mean.view(shape)) / data.std.view(shape)
    return x


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror along the width the images whose `flip` is True (flip: bool, x's leading dims)."""
    return torch.where(flip.view(*flip.shape, *([1] * (x.ndim - flip.ndim))), x.flip(-1), x)


def study_data(dataset, own: Mapping, device, data_dir, source: str) -> Data:
    """A study's dataset on `device` for one setting `own` of the study's own keys: a built-in
    or "torchvision:NAME" dataset (`own` unused), or a dataset callable, called with `own` when
    it takes a config (load_callable)."""
    if callable(dataset):
        return load_callable(dataset, dict(own), torch.device(device), source)
    return load(dataset, device, data_dir)


def fingerprint(d: Data) -> str:
    """16 hex digits of sha256 over what a dataset callable returned, as trained on: the class
    count, each split's dtype and shape and its bytes (a pass over data that fits in memory)."""
    h = hashlib.sha256(f"{d.classes}".encode())
    for t in (d.train_x, d.train_y, d.test_x, d.test_y):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
