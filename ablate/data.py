"""Named datasets, loaded once into uint8 tensors on the device, and batched preprocessing there."""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .study import AblateError


class DataError(AblateError):
    code = 1


# name -> (torchvision folder and class, the four IDX files)
SOURCES = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}  # package dataset-fashion-mnist


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
        raise DataError(f"{path}: cannot read it ({e}); replace the file with the published one") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        magic = raw[:4].hex() or "missing"
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {magic}, expected 0000080X)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != (n := int(torch.tensor(dims).prod())):
        raise DataError(f"{path}: truncated IDX file: header says {n} bytes, found {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(folder: str, roots: list[Path]) -> list[Path] | None:
    for root in roots:
        for d in (root / folder / "raw", root / folder, root):
            found = [next((p for p in (d / f, d / (f + ".gz")) if p.is_file()), None) for f in FILES]
            if all(found):
                return found
    return None


def locate(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The four files of `name`: data_dir or $ABLATE_DATA_DIR, the cache, Debian's copy, a download."""
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
            f"dataset {name}: files not found in {where} and the download failed ({type(e).__name__}); "
            f"put {folder}/raw/{FILES[0]}.gz and the other three files under a folder "
            f"and pass --data-dir or set ABLATE_DATA_DIR") from None
    return _find(folder, [cache_dir()])


@functools.lru_cache(maxsize=4)
def _load_cpu(name: str, data_dir: str | None) -> Data:
    paths = locate(name, data_dir)
    xs = [read_idx(p) for p in paths]
    train_x, train_y, test_x, test_y = xs
    for x, y, p in ((train_x, train_y, paths[0]), (test_x, test_y, paths[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{p}: images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    train_x, test_x = train_x[:, None], test_x[:, None]  # [N, 1, 28, 28]
    scaled = train_x.float().div_(255)
    mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))
    return Data(name, train_x, train_y.long(), test_x, test_y.long(), mean, std,
                int(train_y.max()) + 1, str(paths[0].parent))


def load(name: str, device: str | torch.device = "cpu", data_dir: str | Path | None = None) -> Data:
    """Load once per process and device: files are read once, tensors copied once per device."""
    return _load(name, str(torch.device(device)), str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=4)
def _load(name: str, device: str, data_dir: str | None) -> Data:
    d = _load_cpu(name, data_dir)
    if device == "cpu":
        return d
    move = lambda t: t.to(device)  # noqa: E731
    return Data(d.name, move(d.train_x), move(d.train_y), move(d.test_x), move(d.test_y),
                move(d.mean), move(d.std), d.classes, d.origin)


def to_float(data: Data, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """uint8 [..., C, H, W] to float in 0..1, or standardised by the dataset's mean and std."""
    x = x.float().div_(255)
    if normalize:
        shape = (-1, 1, 1)
        x = (x - data.mean.view(shape)) / data.std.view(shape)
    return x


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror along the width the images whose `flip` entry is True (flip: bool, x's leading dims)."""
    return torch.where(flip.view(*flip.shape, *([1] * (x.ndim - flip.ndim))), x.flip(-1), x)
