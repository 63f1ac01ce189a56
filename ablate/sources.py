"""The Data record, and datasets from a user's arrays or torchvision checked into one."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import AblateError


class DataError(AblateError):
    code = 1


class DatasetError(DataError):
    """A dataset callable's return that ablate cannot train on, or a config its data cannot take:
    a mistake in the study file, so exit 2 (a missing or corrupt file stays DataError's 1)."""

    code = 2


@dataclass
class Data:
    """A dataset on one device: images uint8 [N, C, H, W] or features float32 [N, ...], labels
    int64 [N]."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # images: [C], of the training images scaled to 0..1; features: [*shape]
    std: torch.Tensor
    classes: int
    origin: str  # the folder the files came from (the study file for a dataset callable)
    images: bool = True  # False: float features, used as they are: no scaling by 255, no flips

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def not_found(what: str, roots: list, error: Exception, put: str) -> DataError:
    """The one line for a dataset found in none of `roots` and not downloadable either."""
    where = ", ".join(str(r) for r in roots)
    return DataError(
        f"{what} in {where} and the download failed ({type(error).__name__}); {put} "
        "and pass --data-dir or set ABLATE_DATA_DIR"
    )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("ABLATE_CACHE", Path(base) / "ablate"))


def image_moments(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [C] of uint8 images [N, C, H, W] scaled to 0..1."""
    scaled = train_x.float().div_(255)
    return scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))


def feature_moments(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std over the training rows, summed in float64, stored float32. The
    std is 1 where a feature is constant (or there is one row): dividing by 0 would make it
    inf or NaN, and a constant feature carries nothing to scale (scikit-learn's StandardScaler
    does the same)."""
    x = train_x.double()
    mean = x.mean(0)
    std = x.std(0) if len(x) > 1 else torch.ones_like(mean)
    return mean.float(), torch.where(std > 0, std, 1.0).float()


SPLITS = ("train_x", "train_y", "test_x", "test_y")


def _dims(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in x.shape) + "]"


def _row(x: torch.Tensor) -> str:
    """The shape of one sample, [C, H, W] or [features...]."""
    return "[" + ", ".join(str(n) for n in x.shape[1:]) + "]"


def _dtype(x) -> str:
    return str(x.dtype).removeprefix("torch.")


def _tensor(a, what: str, where: str) -> torch.Tensor:
    """A CPU copy of a tensor or NumPy array: the user's own object stays theirs to change."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", copy=True)
    if isinstance(a, np.ndarray):
        try:
            return torch.from_numpy(np.array(a))  # np.array: a writable copy
        except TypeError:
            raise DatasetError(
                f"{where}: {what} is a NumPy array of dtype {a.dtype}; expected uint8 images, "
                "float features or integer labels"
            ) from None
    raise DatasetError(
        f"{where}: {what} is a {type(a).__name__}; expected a torch tensor or a NumPy array"
    )


def _is_images(x: torch.Tensor, what: str, where: str) -> bool:
    """uint8 [N, H, W] or [N, C, H, W]: images; float [N, ...]: features."""
    if x.dtype == torch.uint8:
        if x.dim() not in (3, 4):
            raise DatasetError(
                f"{where}: {what} is uint8 of shape {_dims(x)}; uint8 is read as images "
                "[N, H, W] or [N, C, H, W] (pass features as a float dtype)"
            )
        return True
    if x.dtype.is_floating_point:
        if x.dim() < 2:
            raise DatasetError(
                f"{where}: {what} has shape {_dims(x)}; expected [N, ...], a row per sample "
                "with at least 2 dims (one feature: x[:, None])"
            )
        return False
    raise DatasetError(
        f"{where}: {what} has dtype {_dtype(x)}; expected uint8 images [N, H, W] or "
        "[N, C, H, W], or float features [N, ...]"
    )


def _check_labels(y: torch.Tensor, x: torch.Tensor, split: str, where: str) -> None:
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DatasetError(
            f"{where}: {split}_y has dtype {_dtype(y)}; expected integer class labels 0..K-1"
        )
    if y.dim() != 1:
        hint = " (one-hot? pass y.argmax(1))" if y.dim() == 2 else ""
        raise DatasetError(
            f"{where}: {split}_y has shape {_dims(y)}; expected 1-D labels [N]{hint}"
        )
    if len(y) != len(x):
        raise DatasetError(
            f"{where}: {split}_x has {len(x)} rows but {split}_y has {len(y)} labels; "
            "expected one label per row"
        )
    if len(x) == 0:
        raise DatasetError(
            f"{where}: {split}_x has no rows; expected at least one sample in each split"
        )
    if len(bad := (y < 0).nonzero()):
        i = int(bad[0])
        raise DatasetError(
            f"{where}: {split}_y holds label {int(y[i])} at position {i} ({len(bad)} negative "
            "labels); expected class labels 0..K-1"
        )


def _inputs(train_x: torch.Tensor, test_x: torch.Tensor, where: str):
    """Both splits of one kind and one row shape, features finite: (images?, train_x, test_x),
    images as [N, C, H, W] and features as float32."""
    images = _is_images(train_x, "train_x", where)
    if _is_images(test_x, "test_x", where) != images:
        raise DatasetError(
            f"{where}: train_x is {_dtype(train_x)} but test_x is {_dtype(test_x)}; expected "
            "both uint8 images or both float features"
        )
    if images:
        train_x, test_x = (x if x.dim() == 4 else x[:, None] for x in (train_x, test_x))
    else:
        train_x, test_x = train_x.float(), test_x.float()
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(
            f"{where}: train_x rows are {_row(train_x)} but test_x rows are "
            f"{_row(test_x)}; expected one shape"
        )
    if 0 in train_x.shape[1:]:
        raise DatasetError(f"{where}: rows of shape {_row(train_x)} hold no values")
    for x, what in ((train_x, "train_x"), (test_x, "test_x")):
        if not images and len(bad := (~torch.isfinite(x)).flatten(1).any(1).nonzero()):
            raise DatasetError(
                f"{where}: {what} holds NaN or infinity (first in row {int(bad[0])}); "
                "expected finite features"
            )
    return images, train_x, test_x


def from_arrays(name: str, arrays, source: str, every_class: bool = True) -> Data:
    """What a dataset callable returns, (train_x, train_y, test_x, test_y) as torch tensors or
    NumPy arrays, checked and made a CPU Data. uint8 [N, H, W] or [N, C, H, W]: images, scaled
    and normalised per channel as the built-in datasets are; float [N, ...]: features, stored
    float32 and standardised per feature. Labels: integers 0..K-1, K = the largest + 1 over both
    splits. DatasetError, one line naming `source` and `name`, for anything else."""
    where = f"{source}: dataset {name}"
    if not isinstance(arrays, (tuple, list)) or len(arrays) != 4:
        found = type(arrays).__name__
        if isinstance(arrays, (tuple, list)):
            found += f" of {len(arrays)}"
        raise DatasetError(
            f"{where} returned a {found}; expected a tuple (train_x, train_y, test_x, test_y)"
        )
    train_x, train_y, test_x, test_y = (
        _tensor(a, what, where) for a, what in zip(arrays, SPLITS, strict=True)
    )
    images, train_x, test_x = _inputs(train_x, test_x, where)
    _check_labels(train_y, train_x, "train", where)
    _check_labels(test_y, test_x, "test", where)
    mean, std = image_moments(train_x) if images else feature_moments(train_x)
    classes = _classes(train_y, test_y, where, every_class)
    train_y, test_y = train_y.long(), test_y.long()
    return Data(name, train_x, train_y, test_x, test_y, mean, std, classes, source, images)


MAX_CLASSES = 100_000  # a model's output layer; ImageNet-21k has 21,841 classes


def _classes(train_y: torch.Tensor, test_y: torch.Tensor, where: str, every_class: bool) -> int:
    """K, the largest label + 1 over both splits, every class 0..K-1 occurring in one of them:
    one stray label (y[0] = 5_000_000) built a model of that many outputs without a word."""
    top = max(int(train_y.max()), int(test_y.max()))
    split, y = ("train", train_y) if int(train_y.max()) == top else ("test", test_y)
    at = int((y == top).nonzero()[0])
    if top >= MAX_CLASSES:
        raise DatasetError(
            f"{where}: {split}_y holds label {top} at position {at}; expected class labels "
            f"0..K-1 with K at most {MAX_CLASSES:,}"
        )
    present = torch.unique(torch.cat([train_y.long(), test_y.long()])) if every_class else []
    if every_class and len(present) < top + 1:
        missing = top + 1 - len(present)
        raise DatasetError(
            f"{where}: {split}_y holds label {top} at position {at}, but {missing:,} of the "
            f"classes 0..{top} occur in neither split; expected class labels 0..K-1, each "
            "present"
        )
    return top + 1


def check_flips(data: Data, configs: Iterable[Mapping], source: str) -> None:
    """DatasetError when a config asks for hflip on float features: a flip mirrors an image's
    columns, and features have none."""
    if data.images or not any(c.get("hflip") for c in configs):
        return
    raise DatasetError(
        f"{source}: hflip=True mirrors images, but dataset {data.name} holds float features "
        f"{_row(data.train_x)} per sample; set hflip=False, or return uint8 images to flip"
    )


TORCHVISION = "torchvision:"
EXAMPLES = ("KMNIST", "EMNIST-letters", "CIFAR100", "SVHN")


def torchvision_class(name: str) -> tuple[type, str | None]:
    """torchvision's dataset class and variant named by torchvision:NAME or
    torchvision:NAME-VARIANT (EMNIST-letters: split="letters"); DatasetError for a name
    torchvision lacks."""
    import torchvision.datasets as tvd

    cls_name, _, variant = name.removeprefix(TORCHVISION).partition("-")
    cls = getattr(tvd, cls_name, None) if cls_name in tvd.__all__ else None
    if not inspect.isclass(cls):
        near = difflib.get_close_matches(cls_name, tvd.__all__, n=3, cutoff=0.6)
        near += [n for n in tvd.__all__ if n.lower() == cls_name.lower() and n not in near]
        mean = f"; did you mean {', '.join(TORCHVISION + n for n in near)}?" if near else ""
        raise DatasetError(
            f"dataset {name}: torchvision has no dataset {cls_name!r}{mean} "
            f"(valid: {', '.join(TORCHVISION + e for e in EXAMPLES)}, ...: "
            "the classes in torchvision.datasets.__all__)"
        )
    params = inspect.signature(cls).parameters
    by_keyword = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if variant and not ("split" in params and ("train" in params or by_keyword)):
        raise DatasetError(
            f"dataset {name}: torchvision's {cls_name} has no variants (-{variant}); "
            f"use {TORCHVISION}{cls_name}"
        )
    if variant and variant not in getattr(cls, "splits", (variant,)):
        raise DatasetError(
            f"dataset {name}: {cls_name} has no split {variant!r}; valid: "
            + ", ".join(f"{TORCHVISION}{cls_name}-{s}" for s in cls.splits)
        )
    if not variant and "train" not in params and "split" not in params:
        raise DatasetError(
            f"dataset {name}: torchvision's {cls_name} has no train and test split "
            "(neither train= nor split=)"
        )
    return cls, variant or None


def _split(cls: type, root: Path, variant: str | None, train: bool, download: bool):
    """torchvision's dataset object for the train or the test split; train= or split= as the
    class's constructor takes it (EMNIST takes both: split= names the variant)."""
    params = inspect.signature(cls).parameters
    kwargs = {}
    if variant:
        kwargs.update(split=variant, train=train)
    elif "train" in params:
        kwargs["train"] = train
    else:
        kwargs["split"] = "train" if train else "test"
    if "download" in params:
        kwargs["download"] = download
    elif download:
        raise RuntimeError("torchvision does not download it")
    return cls(str(root), **kwargs)


def _layout(cls: type) -> str:
    """Where torchvision looks for the class's files under its root, for the error message."""
    import torchvision.datasets as tvd

    if issubclass(cls, tvd.MNIST):
        return f"{cls.__name__}/raw/ with the extracted IDX files"
    if folder := getattr(cls, "base_folder", None):
        return f"{folder}/"
    return "its own layout"


def _images_and_labels(ds, name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision dataset's images as uint8 [N, H, W] or [N, C, H, W] and its labels. From its
    .data and .targets (or .labels) arrays where it has them, else read one sample at a time."""
    images = getattr(ds, "data", None)
    labels = next(
        (v for a in ("targets", "labels") if (v := getattr(ds, a, None)) is not None), None
    )
    if images is None or labels is None:  # datasets of image files (GTSRB, Food101)
        pairs = [ds[i] for i in range(len(ds))]
        try:
            images = np.stack([np.asarray(image) for image, _ in pairs])
        except ValueError:
            raise DataError(
                f"{root}: dataset {name}: its images differ in size; ablate needs one size"
            ) from None
        labels = [label for _, label in pairs]
    try:
        x, y = torch.as_tensor(np.asarray(images)), torch.as_tensor(np.asarray(labels))
    except (TypeError, ValueError, RuntimeError):  # file names, boxes, captions: not classification
        raise DataError(
            f"{root}: dataset {name}: not images with class labels (.data and .targets of "
            f"{type(images).__name__} and {type(labels).__name__})"
        ) from None
    if x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # HWC (CIFAR's arrays) -> CHW; SVHN's are CHW already
    return x.contiguous(), y


def torchvision_data(name: str, data_dir: str | None) -> Data:
    """A torchvision classification dataset, "torchvision:NAME[-VARIANT]", as a CPU Data of
    uint8 images. Looked for offline in torchvision's layout under data_dir or $ABLATE_DATA_DIR,
    then under the cache folder, then downloaded into the cache folder."""
    cls, variant = torchvision_class(name)
    given = data_dir or os.environ.get("ABLATE_DATA_DIR")
    roots = ([Path(given)] if given else []) + [cache_dir()]
    for root in roots:
        try:
            splits = [_split(cls, root, variant, train, False) for train in (True, False)]
            break
        except ImportError as e:  # SVHN reads with scipy: a download would not help
            raise DataError(
                f"dataset {name}: torchvision reads it with {e.name}, not installed: "
                f"pip install {e.name}"
            ) from None
        except Exception:  # absent, partial or corrupt here: the next folder, then a download
            continue
    else:
        root = cache_dir()
        before = _dirs(root)
        try:
            splits = [_split(cls, root, variant, train, True) for train in (True, False)]
        except Exception as e:  # no network, a proxy page, a full disk: all end the same way
            _remove_empty_since(root, before)
            put = f"put torchvision's {cls.__name__} files ({_layout(cls)}) under a folder"
            raise not_found(f"dataset {name}: not found", roots, e, put) from None
    arrays = [a for ds in splits for a in _images_and_labels(ds, name, root)]
    # every_class off: EMNIST-letters labels 1..26, class 0 unused, as torchvision ships it
    return from_arrays(name, arrays, str(root), every_class=False)


def _dirs(root: Path, depth: int = 3) -> set[Path]:
    """`root` and the folders under it to `depth` levels (<root>/NAME/raw), as they are now; not
    deeper, where a cached dataset of image files holds thousands."""
    found, level = set(), [root] if root.is_dir() and not root.is_symlink() else []
    for _ in range(depth + 1):
        found.update(level)
        level = [c for d in level for c in _subfolders(d)]
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir() and not c.is_symlink()]
    except OSError:
        return []


def _remove_empty_since(root: Path, before: set[Path]) -> None:
    """Remove the folders a failed download made under `root` that hold nothing (torchvision
    makes <root>/NAME/raw/ before it downloads): each failed lookup left one. Files, and
    folders that were there before, are never touched."""
    for folder in sorted(_dirs(root) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only an empty folder: rmdir refuses any other
        except OSError:
            pass
