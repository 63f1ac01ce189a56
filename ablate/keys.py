"""The config keys and seeds a study may set: defaults, checks, canonical values; user errors."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StudyError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "xor", "digits")  # digits: scikit-learn's, offline
# classes and test images of each dataset: chance accuracy, and the step of test accuracy (1 image)
DATASET_SIZES = {
    "mnist": (10, 10_000),
    "fashion_mnist": (10, 10_000),
    "cifar10": (10, 10_000),
    "xor": (2, 4),
    "digits": (10, 899),
}
# linear: one Linear layer, the perceptron; each name's builder is models.KINDS' (same order)
MODELS = ("mlp", "cnn", "linear")
LOSSES = (
    "cross_entropy",
    "softmax_then_cross_entropy",
)  # the latter: a tutorial's bug, kept to measure it
# fractional: the half of a two-level grid; noise: `ablate noise`'s seeds stream by stream
DESIGNS = ("grid", "one_at_a_time", "fractional", "noise")
CLAIM_KINDS = ("point", "mean", "at_most", "at_least")
ACTIVATIONS = ("sigmoid", "relu", "tanh", "gelu")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform")
# each name's torch.optim class and fused rule are optim.RULES' (same order). adamw: Adam with
# decoupled weight decay (torch.optim.AdamW). sgd_nesterov: torch.optim.SGD(nesterov=True), a name
# as torchvision's train.py has it rather than a `nesterov` key, which adam would ignore: one
# factor, optimizer=["sgd", "sgd_nesterov"], ablates it (at momentum=0 both are plain SGD)
OPTIMIZERS = ("sgd", "adam", "adamw", "sgd_nesterov")
# fp32: TF32 off. tf32: fp32 weights, TF32 matmuls and convolutions where the GPU has them (on a CPU
# the same as fp32). bf16: fp32 weights, bfloat16 autocast for forward matmuls and convolutions.
# fp64: for checks of numerics; it is slow on GPUs.
PRECISIONS = ("fp32", "tf32", "bf16", "fp64")
SEED_LIMIT = 2**32  # rng.key folds a seed to its low 32 bits: seed 2**32 + 1 would draw as seed 1
MAX_CELLS = 100_000  # a dry run of 10^5 cells took 98 s; 10^9 seeds filled 24 GB before training
MAX_SET = 1_000  # characters of one --set value; deeply nested literals exhaust the parser's memory


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


INT64 = 2**63  # Parquet's ints: an own key's int past it crashed the store after training


def _is_int64(v):
    return is_int(v) and -INT64 <= v < INT64


BAD = object()  # a checker's answer for a value outside its key's range


def _hidden(v):
    # (): no hidden layer
    ok = isinstance(v, (tuple, list)) and all(is_int(h) and h > 0 for h in v)
    return tuple(v) if ok else BAD


def _choice(options):
    return lambda v: v if isinstance(v, str) and v in options else BAD


def _flag(v):
    return v if isinstance(v, bool) else BAD


def _float(lo, hi=math.inf, lo_open=False):
    def check(v):
        if not is_num(v) or not (lo < v if lo_open else lo <= v) or not v < hi:
            return BAD
        return float(v)

    return check


LAYER = re.compile(
    r"conv:\d+:\d+(:\d+(:\d+)?)?|maxpool:\d+|act|batchnorm|flatten|fc:\d+"
    r"|dropout(2d)?:(0(\.\d+)?|\.\d+)"
)


def _layers(v):
    """CNN layers as data: conv:OUT:K[:STRIDE[:PAD]], maxpool:K, act (the `activation` key),
    batchnorm, dropout:P, dropout2d:P, flatten, fc:N; the classifier is appended."""
    ok = (
        isinstance(v, (tuple, list))
        and len(v) > 0
        and all(isinstance(x, str) and LAYER.fullmatch(x) for x in v)
    )
    return tuple(v) if ok else BAD


def _int(lo, optional=False):
    return lambda v: v if (v is None and optional) or (is_int(v) and v >= lo) else BAD


# key -> (default, normaliser returning the canonical value or None, what is allowed)
KEYS: dict[str, tuple[Any, Callable, str]] = {
    "hidden": ((512, 256), _hidden, "a tuple of positive ints, e.g. (512, 256), or () for none"),
    "activation": ("relu", _choice(ACTIVATIONS), "one of " + ", ".join(ACTIVATIONS)),
    "dropout": (0.0, _float(0.0, 1.0), "a number with 0 <= p < 1"),
    "batchnorm": (False, _flag, "True or False"),
    "init": ("default", _choice(INITS), "one of " + ", ".join(INITS)),
    "hflip": (False, _flag, "True or False"),
    "normalize": (False, _flag, "True or False"),
    "optimizer": (
        "sgd",
        _choice(OPTIMIZERS),
        "one of " + ", ".join(OPTIMIZERS) + " (adamw: Adam with decoupled weight decay; "
        "sgd_nesterov: SGD with Nesterov momentum, plain SGD at momentum=0)",
    ),
    "lr": (0.01, _float(0.0, lo_open=True), "a number > 0"),
    "momentum": (0.0, _float(0.0, 1.0), "a number with 0 <= m < 1"),
    "weight_decay": (0.0, _float(0.0), "a number >= 0"),
    "batch_size": (32, _int(1), "an int >= 1"),
    "epochs": (10, _int(1), "an int >= 1"),
    "train_subset": (None, _int(1, optional=True), "None or an int >= 1"),
    "precision": ("fp32", _choice(PRECISIONS), "one of " + ", ".join(PRECISIONS)),
    "layers": (
        (
            "conv:10:5",
            "maxpool:2",
            "act",
            "conv:20:5",
            "dropout2d:0.5",
            "maxpool:2",
            "act",
            "flatten",
            "fc:50",
            "act",
            "dropout:0.5",
        ),
        _layers,
        "a tuple of conv:OUT:K[:STRIDE[:PAD]], maxpool:K, act, batchnorm, dropout:P, dropout2d:P, "
        "flatten, fc:N (model='cnn')",
    ),
    "loss": ("cross_entropy", _choice(LOSSES), "one of " + ", ".join(LOSSES)),
}


# Keys added after the first release enter a cell's id only when set away from their
# default, so a new key never orphans stored results.
FIRST_KEYS = frozenset(
    "hidden activation dropout batchnorm init hflip normalize optimizer lr momentum weight_decay "
    "batch_size epochs train_subset".split()
)
DEFAULTS = {k: default for k, (default, _, _) in KEYS.items()}  # read-only: copy to change
JSON_DEFAULTS = json.loads(json.dumps(DEFAULTS))  # as `config` reads


def normalise(key: str, value: Any, where: str, table: dict = KEYS) -> Any:
    """The canonical form of one config value, or a StudyError naming `where` and the key.
    `table`: the study's keys (own_keys added to KEYS)."""
    if not isinstance(key, str):
        raise StudyError(f"{where}: config key {key!r} is not allowed; keys are strings, e.g. 'lr'")
    if key not in table:
        close = difflib.get_close_matches(key, table, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(table)}"
        raise StudyError(f"{where}: unknown config key '{key}'{hint}")
    _, check, allowed = table[key]
    out = check(value)
    if out is BAD:
        raise StudyError(f"{where}: {key}={value!r} is not allowed; expected {allowed}")
    return out


def unknown_setting(base: dict, factors: dict, table: dict = KEYS) -> str:
    """The first `key=value` of a recorded base or factor levels that this ablate does not know
    or allow (a newer ablate's key or level: normalise would raise), or ""."""
    settings = [*base.items(), *((k, v) for k, levels in factors.items() for v in levels)]
    for key, value in settings:
        if not (isinstance(key, str) and key in table and table[key][1](value) is not BAD):
            return f"{key}={value!r}"
    return ""


@dataclass(frozen=True)
class Key:
    """A study's own config key: its default, whose type (bool, int, float, str or tuple) every
    value must have (a float key takes ints too), and optionally the choices or the closed range
    [lo, hi] it allows, and a line of help for `ablate run --dry-run` and the report."""

    default: Any
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    help: str = ""


OWN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a Python identifier: config["width"]
# a plain default's type -> (the checker, what is allowed); tuples hold plain literals only
OWN_TYPES = {
    bool: (_flag, "True or False"),
    int: (lambda v: v if _is_int64(v) else BAD, "an int"),
    float: (lambda v: float(v) if is_num(v) else BAD, "a number"),
    str: (lambda v: v if isinstance(v, str) else BAD, "a string"),
    tuple: (
        lambda v: (
            tuple(v)
            if isinstance(v, (tuple, list))
            and all(x is None or _is_int64(x) or type(x) in (bool, float, str) for x in v)
            else BAD
        ),
        "a tuple of numbers (ints within 64 bits), strings, booleans or None",
    ),
}


def own_keys(keys: Any, src: str) -> dict[str, Key]:
    """A study's own keys as canonical Key values (a plain default becomes Key(default)), each
    checked: a name that is an identifier and not a built-in key, a default of a known type, and
    choices and a range its values can meet."""
    if not isinstance(keys, dict):
        raise StudyError(
            f"{src}: keys is a {type(keys).__name__}; expected a dict of name: default"
        )
    out = {}
    for name, spec in keys.items():
        where = f"{src}: keys: {name!r}"
        if not isinstance(name, str) or not OWN_NAME.fullmatch(name):
            raise StudyError(f"{where} is not allowed; a key's name is an identifier, e.g. 'width'")
        if name in KEYS:
            raise StudyError(f"{where} is a built-in key; give your own key another name")
        key = spec if isinstance(spec, Key) else Key(spec)
        kind = tuple if isinstance(key.default, list) else type(key.default)
        if kind not in OWN_TYPES or (kind is float and not is_num(key.default)):
            raise StudyError(
                f"{where}: default {key.default!r} is not allowed; expected True/False, an int, "
                "a finite float, a string or a tuple of those"
            )
        check, allowed = OWN_TYPES[kind]
        if check(key.default) is BAD:  # an int past 64 bits, alone or in a tuple
            raise StudyError(
                f"{where}: default {key.default!r} is not allowed; expected {allowed} within 64 "
                "bits (-2**63 to 2**63 - 1, as Parquet stores it)"
            )
        choices = None if key.choices is None else _own_choices(key.choices, check, where)
        if (key.lo is not None or key.hi is not None) and kind not in (int, float):
            raise StudyError(f"{where}: lo and hi bound numbers; its default is a {kind.__name__}")
        for bound in (key.lo, key.hi):
            if bound is not None and not is_num(bound):
                raise StudyError(f"{where}: lo/hi {bound!r} is not allowed; expected a number")
        out[name] = Key(check(key.default), choices, key.lo, key.hi, str(key.help))
        _, own_check, allowed = own_entry(out[name])
        if own_check(out[name].default) is BAD:
            raise StudyError(f"{where}: default {key.default!r} is not allowed; expected {allowed}")
    return out


def _own_choices(choices: Any, check: Callable, where: str) -> tuple:
    if not isinstance(choices, (tuple, list)) or not choices:
        raise StudyError(f"{where}: choices={choices!r} is not allowed; expected a non-empty list")
    out = tuple(check(c) for c in choices)
    if any(c is BAD for c in out):
        raise StudyError(f"{where}: choices {list(choices)!r} are not all of its default's type")
    return out


def own_entry(key: Key) -> tuple[Any, Callable, str]:
    """A Key as KEYS holds a built-in one: (default, checker, what is allowed)."""
    typed, allowed = OWN_TYPES[type(key.default)]
    lo = -math.inf if key.lo is None else key.lo
    hi = math.inf if key.hi is None else key.hi
    if key.choices is not None:
        allowed = "one of " + ", ".join(repr(c) for c in key.choices)
    elif key.lo is not None and key.hi is not None:
        allowed = f"{allowed} from {key.lo} to {key.hi}"
    elif key.lo is not None or key.hi is not None:
        allowed = f"{allowed} >= {key.lo}" if key.lo is not None else f"{allowed} <= {key.hi}"
    if type(key.default) is int and key.choices is None and (key.lo is None or key.hi is None):
        allowed += " within 64 bits (-2**63 to 2**63 - 1, as Parquet stores it)"

    def check(value):
        value = typed(value)
        if value is BAD or (key.choices is not None and value not in key.choices):
            return BAD
        if isinstance(value, (int, float)) and not lo <= value <= hi:  # bools: no bounds
            return BAD
        return value

    return key.default, check, allowed


def table(keys: dict[str, Key]) -> dict[str, tuple[Any, Callable, str]]:
    """Every key a study may set: the built-in KEYS and its own."""
    return {**KEYS, **{name: own_entry(key) for name, key in keys.items()}}


def key_spec(key: Key) -> dict:
    """A Key as the manifest records it (and Key(**spec) reads back)."""
    return {
        "default": key.default,
        "choices": key.choices,
        "lo": key.lo,
        "hi": key.hi,
        "help": key.help,
    }


def normalise_seeds(seeds: Any, src: str) -> range | list[int]:
    """Seeds 0..n-1 as a range (a list only once the count is checked), or the listed seeds."""
    if is_int(seeds):
        if not 1 <= seeds <= SEED_LIMIT:
            raise StudyError(
                f"{src}: seeds={seeds} is not allowed; expected an int >= 1 and <= 2**32 "
                "(seeds 0..n-1 must stay below 2**32)"
            )
        return range(seeds)
    if isinstance(seeds, (list, tuple)) and seeds and all(is_int(s) for s in seeds):
        if bad := [s for s in seeds if not 0 <= s < SEED_LIMIT]:
            raise StudyError(
                f"{src}: seed {bad[0]} is not allowed; expected 0 <= seed < 2**32 "
                "(the random streams use its low 32 bits)"
            )
        if len(set(seeds)) < len(seeds):
            raise StudyError(f"{src}: seeds {list(seeds)} lists a seed twice")
        return list(seeds)
    raise StudyError(
        f"{src}: seeds={seeds!r} is not allowed; expected an int >= 1 or a list of ints >= 0"
    )
