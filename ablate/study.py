"""Study declaration, validation, and its expansion into seeded cells."""
from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import itertools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AblateError(Exception):
    """A mistake the user can fix: the CLI prints it as one line and exits with `code`."""

    code = 2


class StudyError(AblateError):
    pass


DATASETS = ("mnist", "fashion_mnist", "cifar10", "xor", "digits")  # digits: scikit-learn's, offline
# classes and test images of each dataset: chance accuracy, and the step of test accuracy (one image)
DATASET_SIZES = {"mnist": (10, 10_000), "fashion_mnist": (10, 10_000), "cifar10": (10, 10_000), "xor": (2, 4),
                 "digits": (10, 899)}
MODELS = ("mlp", "cnn", "linear")  # linear: one Linear layer, the perceptron
LOSSES = ("cross_entropy", "softmax_then_cross_entropy")  # the latter: a tutorial's bug, kept to measure it
DESIGNS = ("grid", "one_at_a_time", "fractional")  # fractional: the half of a two-level grid
METRICS = ("test_acc", "test_loss", "train_loss")  # per epoch, as store.ROW_COLUMNS stores them
CLAIM_KINDS = ("point", "mean", "at_most", "at_least")
ACTIVATIONS = ("sigmoid", "relu", "tanh", "gelu")
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform")
OPTIMIZERS = ("sgd", "adam")
# fp32: TF32 off. tf32: fp32 weights, TF32 matmuls and convolutions where the GPU has them (on a CPU
# the same as fp32). bf16: fp32 weights, bfloat16 autocast for forward matmuls and convolutions.
# fp64: for checks of numerics; it is slow on GPUs.
PRECISIONS = ("fp32", "tf32", "bf16", "fp64")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


BAD = object()  # a checker's answer for a value outside its key's range


def _hidden(v):
    ok = isinstance(v, (tuple, list)) and all(_is_int(h) and h > 0 for h in v)  # (): no hidden layer
    return tuple(v) if ok else BAD


def _choice(options):
    return lambda v: v if isinstance(v, str) and v in options else BAD


def _flag(v):
    return v if isinstance(v, bool) else BAD


def _float(lo, hi=math.inf, lo_open=False):
    def check(v):
        if not _is_num(v) or not (lo < v if lo_open else lo <= v) or not v < hi:
            return BAD
        return float(v)
    return check


LAYER = re.compile(r"conv:\d+:\d+(:\d+(:\d+)?)?|maxpool:\d+|act|batchnorm|flatten|fc:\d+"
                   r"|dropout(2d)?:(0(\.\d+)?|\.\d+)")


def _layers(v):
    """CNN layers as data: conv:OUT:K[:STRIDE[:PAD]], maxpool:K, act (the `activation` key),
    batchnorm, dropout:P, dropout2d:P, flatten, fc:N; the classifier is appended."""
    ok = isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(x, str) and LAYER.fullmatch(x) for x in v)
    return tuple(v) if ok else BAD


def _int(lo, optional=False):
    return lambda v: v if (v is None and optional) or (_is_int(v) and v >= lo) else BAD


# key -> (default, normaliser returning the canonical value or None, what is allowed)
KEYS: dict[str, tuple[Any, Callable, str]] = {
    "hidden": ((512, 256), _hidden, "a tuple of positive ints, e.g. (512, 256), or () for none"),
    "activation": ("relu", _choice(ACTIVATIONS), "one of " + ", ".join(ACTIVATIONS)),
    "dropout": (0.0, _float(0.0, 1.0), "a number with 0 <= p < 1"),
    "batchnorm": (False, _flag, "True or False"),
    "init": ("default", _choice(INITS), "one of " + ", ".join(INITS)),
    "hflip": (False, _flag, "True or False"),
    "normalize": (False, _flag, "True or False"),
    "optimizer": ("sgd", _choice(OPTIMIZERS), "one of " + ", ".join(OPTIMIZERS)),
    "lr": (0.01, _float(0.0, lo_open=True), "a number > 0"),
    "momentum": (0.0, _float(0.0, 1.0), "a number with 0 <= m < 1"),
    "weight_decay": (0.0, _float(0.0), "a number >= 0"),
    "batch_size": (32, _int(1), "an int >= 1"),
    "epochs": (10, _int(1), "an int >= 1"),
    "train_subset": (None, _int(1, optional=True), "None or an int >= 1"),
    "precision": ("fp32", _choice(PRECISIONS), "one of " + ", ".join(PRECISIONS)),
    "layers": (("conv:10:5", "maxpool:2", "act", "conv:20:5", "dropout2d:0.5", "maxpool:2", "act", "flatten",
                "fc:50", "act", "dropout:0.5"), _layers,
               "a tuple of conv:OUT:K[:STRIDE[:PAD]], maxpool:K, act, batchnorm, dropout:P, dropout2d:P, "
               "flatten, fc:N (model='cnn')"),
    "loss": ("cross_entropy", _choice(LOSSES), "one of " + ", ".join(LOSSES)),
}


JSON_DEFAULTS = json.loads(json.dumps({k: default for k, (default, _, _) in KEYS.items()}))  # as `config` reads


def normalise(key: str, value: Any, where: str) -> Any:
    """The canonical form of one config value, or a StudyError naming `where` and the key."""
    if key not in KEYS:
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(KEYS)}"
        raise StudyError(f"{where}: unknown config key '{key}'{hint}")
    _, check, allowed = KEYS[key]
    out = check(value)
    if out is BAD:
        raise StudyError(f"{where}: {key}={value!r} is not allowed; expected {allowed}")
    return out


@dataclass(frozen=True)
class Claim:
    """A published number that the report puts beside the runs it describes."""

    where: dict
    value: float
    source: str = ""
    metric: str = "test_acc"
    epoch: int | None = None  # compare at this epoch (a shorter tutorial run is a prefix of a longer cell)
    kind: str = "point"  # "point": one run's value, judged by the 95% prediction interval of one run;
    # "mean": an average of runs, judged by the 95% CI of the mean; "at_most"/"at_least": a bound
    # ("cannot pass 75%") that holds when every run keeps to its side


@dataclass
class Study:
    """Plain data: what to train, which factors to vary, and over which seeds."""

    name: str
    dataset: str
    model: str | Callable = "mlp"
    base: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)
    design: str = "grid"
    seeds: int | list = 3
    claims: list = field(default_factory=list)
    source: str = "<study>"  # the file it came from, for error messages and the manifest


@dataclass
class Cell:
    """One level per factor and one seed: the unit that trains and gets a row per epoch."""

    id: str
    seed: int
    levels: dict
    config: dict


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def model_name(model) -> str:
    return model if isinstance(model, str) else "callable:" + getattr(model, "__qualname__", repr(model))


# Keys added after the first release enter a cell's id only when set away from their
# default, so a new key never orphans stored results.
FIRST_KEYS = frozenset({"hidden", "activation", "dropout", "batchnorm", "init", "hflip", "normalize", "optimizer",
                        "lr", "momentum", "weight_decay", "batch_size", "epochs", "train_subset"})


def cell_id(dataset: str, model, config: dict, seed: int) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys, tuples as lists) of
    dataset, model name, config and seed: stable across dict order, machines and the
    other cells of the study."""
    config = {k: v for k, v in config.items() if k in FIRST_KEYS or _canonical(v) != _canonical(KEYS[k][0])}
    blob = _canonical({"dataset": dataset, "model": model_name(model), "config": config, "seed": seed})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate(study: Study) -> Study:
    """Check every field and return a copy whose base and levels are canonical values."""
    src = study.source
    if not isinstance(study.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study.name):
        raise StudyError(f"{src}: name={study.name!r} is not allowed; expected letters, digits, '_', '-', '.'")
    if study.name.lower().endswith(".parquet"):  # its folder would read as a results file of its parent
        raise StudyError(f"{src}: name={study.name!r} is not allowed; a study's name may not end in .parquet")
    if study.dataset not in DATASETS:
        raise StudyError(f"{src}: unknown dataset {study.dataset!r}; expected one of {', '.join(DATASETS)}")
    if not (callable(study.model) or study.model in MODELS):
        raise StudyError(f"{src}: unknown model {study.model!r}; "
                         f"expected one of {', '.join(MODELS)} or a callable(config) -> nn.Module")
    if study.design not in DESIGNS:
        raise StudyError(f"{src}: unknown design {study.design!r}; expected one of {', '.join(DESIGNS)}")
    if not isinstance(study.base, dict) or not isinstance(study.factors, dict):
        raise StudyError(f"{src}: base and factors must be dicts")
    base = {k: default for k, (default, _, _) in KEYS.items()}
    base.update({k: normalise(k, v, f"{src}: base") for k, v in study.base.items()})
    factors = {}
    for key, levels in study.factors.items():
        where = f"{src}: factor '{key}'"
        if not isinstance(levels, (list, tuple)) or not levels:
            raise StudyError(f"{where} has no levels; expected a non-empty list")
        levels = [normalise(key, v, where) for v in levels]
        if len({_canonical(v) for v in levels}) < len(levels):
            raise StudyError(f"{where} lists a level twice: {levels!r}")
        if base[key] not in levels:
            raise StudyError(f"{where}: its baseline {base[key]!r} (from base, or the default) "
                             f"is not among its levels {levels!r}")
        if study.design == "fractional" and len(levels) > 2:
            raise StudyError(f"{where} has {len(levels)} levels; design='fractional' takes two-level factors "
                             "(use 'grid' or 'one_at_a_time')")
        factors[key] = levels
    seeds = _seeds(study.seeds, src)
    for claim in study.claims:
        if not isinstance(claim, Claim):
            raise StudyError(f"{src}: claims must be Claim(...) objects, got {claim!r}")
        for k, v in claim.where.items():
            normalise(k, v, f"{src}: claim where")
    return Study(study.name, study.dataset, study.model, base, factors, study.design, seeds,
                 list(study.claims), src)


def _seeds(seeds, src) -> list[int]:
    if _is_int(seeds):
        if seeds < 1:
            raise StudyError(f"{src}: seeds={seeds} is not allowed; expected an int >= 1 or a list of ints")
        return list(range(seeds))
    if isinstance(seeds, (list, tuple)) and seeds and all(_is_int(s) and s >= 0 for s in seeds):
        if len(set(seeds)) < len(seeds):
            raise StudyError(f"{src}: seeds {list(seeds)} lists a seed twice")
        return list(seeds)
    raise StudyError(f"{src}: seeds={seeds!r} is not allowed; expected an int >= 1 or a list of ints >= 0")


def points(study: Study) -> list[dict]:
    """The design's factor settings, baseline first: full grid, one-at-a-time, or fractional."""
    names = list(study.factors)
    if study.design == "grid":
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*study.factors.values())]
    if study.design == "fractional":
        return _half_fraction(study)
    baseline = {k: study.base[k] for k in names}
    out = [baseline]
    for k in names:
        out += [{**baseline, k: v} for v in study.factors[k] if v != baseline[k]]
    return out


def _half_fraction(study: Study) -> list[dict]:
    """The points of the two-level grid where an even number of factors are away from their
    baseline: 2^(k-1) of 2^k, the baseline among them. Its defining relation is I = +-AB...K
    (resolution k): no main effect is aliased with another, and from k = 4 none with a
    two-factor interaction. With fewer than three two-level factors (a --set pinned the
    rest) a half would alias main effects, so it is the full grid."""
    names = list(study.factors)
    pairs = [[study.base[k]] + [v for v in study.factors[k] if v != study.base[k]] for k in names]
    grid = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*pairs)]
    if sum(len(p) == 2 for p in pairs) < 3:
        return grid
    return [p for p in grid if sum(p[k] != study.base[k] for k in names) % 2 == 0]


def cells(study: Study) -> list[Cell]:
    """Every design point times every seed, in a stable order (point-major)."""
    out = []
    for levels in points(study):
        config = {**study.base, **levels}
        for seed in study.seeds:
            out.append(Cell(cell_id(study.dataset, study.model, config, seed), seed, levels, config))
    return out


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` with value a Python literal; a bare word is taken as a string."""
    key, eq, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not eq or not key:
        raise StudyError(f"--set {item!r}: expected key=value, e.g. --set lr=0.1")
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_][\w-]*", text):
            return key, text
        raise StudyError(f"--set {item!r}: the value {text!r} does not parse as a Python literal") from None


def override(study: Study, sets: list[str] = (), seeds: int | None = None) -> Study:
    """Apply `--set` and `--seeds`; setting a factor pins it to that one level."""
    base, factors = dict(study.base), dict(study.factors)
    for item in sets:
        key, value = parse_set(item)
        base[key] = value
        if key in factors:
            factors[key] = [value]
    out = Study(study.name, study.dataset, study.model, base, factors, study.design,
                study.seeds if seeds is None else seeds, study.claims, study.source)
    return validate(out)


def load(path: str | Path) -> Study:
    """Execute a study file and return its validated `study`; every failure is one StudyError line."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    try:
        code = compile(path.read_text(), str(path), "exec")
    except SyntaxError as e:
        raise StudyError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    spec = importlib.util.spec_from_loader(f"ablate_study_{path.stem}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[spec.name] = module  # so dataclasses and pickling inside the file work
    try:
        exec(code, module.__dict__)
    except AblateError:
        raise
    except Exception as e:
        line = _user_line(e, str(path))
        raise StudyError(f"{path}:{line}: {type(e).__name__}: {e}") from None
    study = getattr(module, "study", None)
    if study is None:
        raise StudyError(f"{path}: defines no `study`; expected `study = Study(...)`")
    if not isinstance(study, Study):
        raise StudyError(f"{path}: `study` is a {type(study).__name__}; expected an ablate.Study")
    study.source = str(path)
    study = validate(study)
    check_claims(study)
    return study


def _user_line(exc: BaseException, filename: str) -> str:
    tb, line = exc.__traceback__, "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = str(tb.tb_lineno)
        tb = tb.tb_next
    return line


def check_claims(study: Study) -> None:
    """Each claim must select cells of the design and compare like with like; a claim that
    selects nothing would otherwise show n=0 in the report without a word."""
    if problems := claim_problems(study):
        raise StudyError(problems[0])


def claim_problems(study: Study) -> list[str]:
    """One line per claim that cannot be checked against this (validated) study's design."""
    configs = [{**study.base, **levels} for levels in points(study)]
    out = []
    for c in study.claims:
        where = f"{study.source}: claim {c.source or c.where}"
        if c.metric not in METRICS:
            out.append(f"{where}: metric={c.metric!r} is not allowed; expected one of {', '.join(METRICS)}")
        elif c.kind not in CLAIM_KINDS:
            out.append(f"{where}: kind={c.kind!r} is not allowed; expected one of {', '.join(CLAIM_KINDS)}")
        elif not isinstance(c.value, (int, float)) or isinstance(c.value, bool) or not math.isfinite(c.value):
            out.append(f"{where}: value={c.value!r} is not a number")
        elif c.metric == "test_acc" and not 0 <= c.value <= 1:
            out.append(f"{where}: value={c.value!r} is not a fraction; accuracy is stored as a fraction, "
                       f"e.g. {c.value / 100:g} for {c.value:g}%")
        elif not (hits := _selected(study, c, configs, where)):
            levels = "; ".join(f"{k} in {study.factors[k]!r}" if k in study.factors else f"{k}={study.base[k]!r}"
                               for k in c.where)
            out.append(f"{where}: where={c.where!r} selects no cell of the design ({levels})")
        elif c.epoch is not None and not (_is_int(c.epoch) and 1 <= c.epoch <= max(h["epochs"] for h in hits)):
            out.append(f"{where}: epoch={c.epoch!r} is not allowed; expected an int from 1 to "
                       f"{max(h['epochs'] for h in hits)}, the epochs its cells train")
    return out


def _selected(study: Study, claim: Claim, configs: list[dict], where: str) -> list[dict]:
    want = {k: normalise(k, v, where) for k, v in claim.where.items()}
    return [cfg for cfg in configs if all(_canonical(cfg[k]) == _canonical(v) for k, v in want.items())]


def design_ids(manifest: dict, seeds) -> set[str] | None:
    """The ids of the cells of the design a results folder's manifest records, for `seeds`;
    None when the manifest cannot say (written before it recorded the design, or by a newer
    ablate with keys this one does not know)."""
    try:
        where = "manifest"
        base = {k: default for k, (default, _, _) in KEYS.items()}
        base.update({k: normalise(k, v, where) for k, v in manifest["base"].items()})
        factors = {k: [normalise(k, v, where) for v in levels] for k, levels in (manifest["factors"] or {}).items()}
        study = Study(manifest["study"], manifest["dataset"], manifest["model"], base, factors, manifest["design"])
        return {cell_id(study.dataset, study.model, {**base, **levels}, int(seed))
                for levels in points(study) for seed in seeds}
    except (KeyError, TypeError, AttributeError, AblateError):
        return None
