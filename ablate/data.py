"""Named datasets, loaded once into uint8 tensors on the device, and batched preprocessing there."""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .study import DATASET_SIZES, AblateError


class DataError(AblateError):
    code = 1


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


@dataclass
class Data:
    """A dataset on one device: images uint8 [N, C, H, W], labels int64 [N]."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # [C], of the training images scaled to 0..1
    std: torch.Tensor
    classes: int
    origin: str  # the folder the files came from

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("ABLATE_CACHE", Path(base) / "ablate"))


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
        where = ", ".join(str(r) for r in roots)
        raise DataError(
            f"dataset {name}: files not found in {where} and the download failed "
            f"({type(e).__name__}); "
            f"put {folder}/raw/{FILES[0]}.gz and the other three files under a folder "
            f"and pass --data-dir or set ABLATE_DATA_DIR"
        ) from None
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
    scaled = train_x.float().div_(255)
    mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))
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


@functools.lru_cache(maxsize=4)
def _load_cpu(name: str, data_dir: str | None) -> Data:
    if name == "xor":
        return _xor()
    if name == "digits":
        return _digits()
    if name == "cifar10":
        return _cifar10(data_dir)
    return _idx_set(name, data_dir)


def load(name: str, device: torch.device | str = "cpu", data_dir: str | Path | None = None) -> Data:
    """Load once per process and device: files are read once, tensors copied once per device
    (a torch.device, or its name: "cpu", "cuda:0")."""
    return _load(name, torch.device(device), str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=4)
def _load(name: str, device: torch.device, data_dir: str | None) -> Data:
    return to_device(_load_cpu(name, data_dir), device)


def to_device(d: Data, device: torch.device) -> Data:
    if device.type == "cpu" and d.train_x.device.type == "cpu":
        return d
    move = lambda t: t.to(device)  # noqa: E731
    return Data(
        d.name,
        move(d.train_x),
        move(d.train_y),
        move(d.test_x),
        move(d.test_y),
        move(d.mean),
        move(d.std),
        d.classes,
        d.origin,
    )


def to_float(data: Data, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """uint8 [..., C, H, W] to float in 0..1, or standardised by the dataset's mean and std."""
    x = x.float().div_(255)
    if normalize:
        shape = (-1, 1, 1)
        x = (x - data.mean.view(shape)) / data.std.view(shape)
    return x


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror along the width the images whose `flip` is True (flip: bool, x's leading dims)."""
    return torch.where(flip.view(*flip.shape, *([1] * (x.ndim - flip.ndim))), x.flip(-1), x)
