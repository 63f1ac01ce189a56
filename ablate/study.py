"""Study declaration, validation, and its expansion into seeded cells."""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import itertools
import json
import linecache
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fingerprint


class AblateError(Exception):
    """A mistake the user can fix: the CLI prints it as one line and exits with `code`."""

    code = 2


class StudyError(AblateError):
    pass


DATASETS = ("mnist", "fashion_mnist", "cifar10", "xor", "digits")  # digits: scikit-learn's, offline
# classes and test images of each dataset: chance accuracy, and the step of test accuracy (one image)
DATASET_SIZES = {
    "mnist": (10, 10_000),
    "fashion_mnist": (10, 10_000),
    "cifar10": (10, 10_000),
    "xor": (2, 4),
    "digits": (10, 899),
}
MODELS = ("mlp", "cnn", "linear")  # linear: one Linear layer, the perceptron
LOSSES = (
    "cross_entropy",
    "softmax_then_cross_entropy",
)  # the latter: a tutorial's bug, kept to measure it
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
SEED_LIMIT = 2**32  # rng.key folds a seed to its low 32 bits: seed 2**32 + 1 would draw as seed 1
MAX_CELLS = 100_000  # a dry run of 10^5 cells took 98 s; 10^9 seeds filled 24 GB before training
MAX_SET = 1_000  # characters of one --set value; deeply nested literals exhaust the parser's memory


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


BAD = object()  # a checker's answer for a value outside its key's range


def _hidden(v):
    ok = isinstance(v, (tuple, list)) and all(
        _is_int(h) and h > 0 for h in v
    )  # (): no hidden layer
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


JSON_DEFAULTS = json.loads(
    json.dumps({k: default for k, (default, _, _) in KEYS.items()})
)  # as `config` reads


def normalise(key: str, value: Any, where: str) -> Any:
    """The canonical form of one config value, or a StudyError naming `where` and the key."""
    if not isinstance(key, str):
        raise StudyError(f"{where}: config key {key!r} is not allowed; keys are strings, e.g. 'lr'")
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
    epoch: int | None = (
        None  # compare at this epoch (a shorter tutorial run is a prefix of a longer cell)
    )
    kind: str = (
        "point"  # "point": one run's value, judged by the 95% prediction interval of one run;
    )
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


def model_name(model, where: str = "model") -> str:
    """How a cell id and the manifest name the model: "mlp", "cnn", "linear" as given; a callable
    as callable:<qualname>@<12 hex digits of the hash of its source's syntax tree>, so an edited
    body makes new cells (fingerprint.py). A StudyError naming `where` when it has no stable name."""
    if isinstance(model, str):
        return model
    try:
        return fingerprint.name(model, where)
    except fingerprint.NoStableId as e:
        raise StudyError(str(e)) from None


# Keys added after the first release enter a cell's id only when set away from their
# default, so a new key never orphans stored results.
FIRST_KEYS = frozenset(
    {
        "hidden",
        "activation",
        "dropout",
        "batchnorm",
        "init",
        "hflip",
        "normalize",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "batch_size",
        "epochs",
        "train_subset",
    }
)


def cell_id(dataset: str, model, config: dict, seed: int) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys, tuples as lists) of
    dataset, model name, config and seed: stable across dict order, machines and the
    other cells of the study. `model` may be model_name's answer already (cells() names it once)."""
    config = {
        k: v
        for k, v in config.items()
        if k in FIRST_KEYS or _canonical(v) != _canonical(KEYS[k][0])
    }
    blob = _canonical(
        {"dataset": dataset, "model": model_name(model), "config": config, "seed": seed}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate(study: Study) -> Study:
    """Check every field and return a copy whose base and levels are canonical values."""
    src = study.source
    if not isinstance(study.name, str) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_.-]*", study.name
    ):
        raise StudyError(
            f"{src}: name={study.name!r} is not allowed; expected letters, digits, '_', '-', '.'"
        )
    if study.name.lower().endswith(
        ".parquet"
    ):  # its folder would read as a results file of its parent
        raise StudyError(
            f"{src}: name={study.name!r} is not allowed; a study's name may not end in .parquet"
        )
    if study.dataset not in DATASETS:
        raise StudyError(
            f"{src}: unknown dataset {study.dataset!r}; expected one of {', '.join(DATASETS)}"
        )
    if not (callable(study.model) or study.model in MODELS):
        raise StudyError(
            f"{src}: unknown model {study.model!r}; "
            f"expected one of {', '.join(MODELS)} or a callable(config) -> nn.Module"
        )
    if study.design not in DESIGNS:
        raise StudyError(
            f"{src}: unknown design {study.design!r}; expected one of {', '.join(DESIGNS)}"
        )
    for what, value in (("base", study.base), ("factors", study.factors)):
        if not isinstance(value, dict):
            raise StudyError(
                f"{src}: {what} is a {type(value).__name__}; expected a dict of config keys"
            )
    model_name(study.model, f"{src}: model")  # a callable with no stable id stops here
    base = {k: default for k, (default, _, _) in KEYS.items()}
    base.update({k: normalise(k, v, f"{src}: base") for k, v in study.base.items()})
    factors = {}
    for key, levels in study.factors.items():
        if not isinstance(key, str):
            raise StudyError(
                f"{src}: factor {key!r} is not allowed; factors are config keys, e.g. 'lr'"
            )
        where = f"{src}: factor '{key}'"
        if not isinstance(levels, (list, tuple)):
            raise StudyError(
                f"{where}: levels {levels!r} are a {type(levels).__name__}; expected a list"
            )
        if not levels:
            raise StudyError(f"{where} has no levels; expected a non-empty list")
        levels = [normalise(key, v, where) for v in levels]
        if len({_canonical(v) for v in levels}) < len(levels):
            raise StudyError(f"{where} lists a level twice: {levels!r}")
        if base[key] not in levels:
            raise StudyError(
                f"{where}: its baseline {base[key]!r} (from base, or the default) "
                f"is not among its levels {levels!r}"
            )
        if study.design == "fractional" and len(levels) > 2:
            raise StudyError(
                f"{where} has {len(levels)} levels; design='fractional' takes two-level factors "
                "(use 'grid' or 'one_at_a_time')"
            )
        factors[key] = levels
    seeds = _seeds(study.seeds, src)
    if (n := n_points(study.design, factors) * len(seeds)) > MAX_CELLS:  # counted, not built
        raise StudyError(
            f"{src}: {n:,} cells ({n_points(study.design, factors):,} points x "
            f"{len(seeds):,} seeds) is more than the {MAX_CELLS:,} one study may hold; "
            "use fewer levels or seeds"
        )
    if not isinstance(study.claims, (list, tuple)):
        raise StudyError(
            f"{src}: claims is a {type(study.claims).__name__}; expected a list of Claim(...)"
        )
    for claim in study.claims:
        if not isinstance(claim, Claim):
            raise StudyError(f"{src}: claims must be Claim(...) objects, got {claim!r}")
        if not isinstance(claim.where, dict):
            raise StudyError(
                f"{src}: claim {claim.source or claim.where}: where={claim.where!r} is not "
                "allowed; expected a dict of config keys and levels, "
                "e.g. dict(activation='relu')"
            )
        for k, v in claim.where.items():
            normalise(k, v, f"{src}: claim where")
    out = Study(
        study.name,
        study.dataset,
        study.model,
        base,
        factors,
        study.design,
        list(seeds),
        list(study.claims),
        src,
    )
    defaults = {k: default for k, (default, _, _) in KEYS.items()}
    for levels in points(
        out
    ):  # batchnorm cannot normalise one sample: the plain path raised mid-run
        cfg = {**defaults, **out.base, **levels}
        if cfg["batchnorm"] and 1 in (cfg["batch_size"], cfg["train_subset"]):
            raise StudyError(
                f"{src}: batchnorm=True with batch_size={cfg['batch_size']}, train_subset="
                f"{cfg['train_subset']} is not allowed; batchnorm needs batches of 2 or more samples"
            )
    return out


def _seeds(seeds, src) -> range | list[int]:
    """Seeds 0..n-1 as a range (a list only once the count is checked), or the listed seeds."""
    if _is_int(seeds):
        if not 1 <= seeds <= SEED_LIMIT:
            raise StudyError(
                f"{src}: seeds={seeds} is not allowed; expected an int >= 1 and <= 2**32 "
                "(seeds 0..n-1 must stay below 2**32)"
            )
        return range(seeds)
    if isinstance(seeds, (list, tuple)) and seeds and all(_is_int(s) for s in seeds):
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


def n_points(design: str, factors: dict) -> int:
    """How many settings points() gives, from the level counts alone (validated factors)."""
    sizes = [len(levels) for levels in factors.values()]
    if design == "one_at_a_time":
        return 1 + sum(n - 1 for n in sizes)
    if design == "fractional" and sum(n == 2 for n in sizes) >= 3:
        return math.prod(sizes) // 2
    return math.prod(sizes)


def points(study: Study) -> list[dict]:
    """The design's factor settings, baseline first: full grid, one-at-a-time, or fractional."""
    names = list(study.factors)
    if study.design == "grid":
        return [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*study.factors.values())
        ]
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
    out, name = (
        [],
        model_name(study.model, f"{study.source}: model"),
    )  # a callable's source: read once
    for levels in points(study):
        config = {**study.base, **levels}
        for seed in study.seeds:
            out.append(Cell(cell_id(study.dataset, name, config, seed), seed, levels, config))
    return out


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` with value a Python literal; a bare word is taken as a string."""
    key, eq, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not eq or not key:
        raise StudyError(f"--set {item!r}: expected key=value, e.g. --set lr=0.1")
    if len(text) > MAX_SET:
        raise StudyError(
            f"--set {key}: the value is {len(text):,} characters long; at most {MAX_SET:,}"
        )
    try:
        return key, ast.literal_eval(text)
    except (MemoryError, RecursionError):
        raise StudyError(f"--set {key}: the value is nested too deeply to parse") from None
    except (ValueError, SyntaxError, TypeError):  # TypeError: {[1]: 2}, an unhashable key
        if re.fullmatch(r"[A-Za-z_][\w-]*", text):
            return key, text
        raise StudyError(
            f"--set {item!r}: the value {text!r} does not parse as a Python literal"
        ) from None


def override(study: Study, sets: list[str] = (), seeds: int | None = None) -> Study:
    """Apply `--set` and `--seeds`; setting a factor pins it to that one level."""
    base, factors = dict(study.base), dict(study.factors)
    for item in sets:
        key, value = parse_set(item)
        base[key] = value
        if key in factors:
            factors[key] = [value]
    out = Study(
        study.name,
        study.dataset,
        study.model,
        base,
        factors,
        study.design,
        study.seeds if seeds is None else seeds,
        study.claims,
        study.source,
    )
    return validate(out)


def load(path: str | Path) -> Study:
    """Execute a study file and return its validated `study`; every failure is one StudyError line."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    code = _compile(path)
    spec = importlib.util.spec_from_loader(f"ablate_study_{path.stem}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[spec.name] = module  # so dataclasses and pickling inside the file work
    try:
        exec(code, module.__dict__)
    except AblateError:
        raise
    except SystemExit as e:  # exit 0 with nothing trained would pass a CI job
        line = _user_line(e, str(path))
        raise StudyError(
            f"{path}:{line}: the study file exited (SystemExit({e.code!r})) while loading; "
            "it must define `study`, not exit"
        ) from None
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


def _compile(path: Path):
    """The file's code, its bytes decoded as Python decodes them (a BOM, a coding line, else UTF-8).
    The text it ran goes to linecache, so inspect.getsource finds a model callable's source even
    after the file is edited (mtime None: linecache.checkcache keeps the entry)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StudyError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        code = compile(data, str(path), "exec")
    except SyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        if "codec" in e.msg or "encoding" in e.msg:
            raise StudyError(f"{where}: cannot decode it: {e.msg}; save it as UTF-8") from None
        raise StudyError(f"{where}: syntax error: {e.msg}") from None
    except ValueError as e:  # null bytes, on Python 3.11
        raise StudyError(f"{path}: syntax error: {e}") from None
    text = importlib.util.decode_source(data)
    linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    return code


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
            out.append(
                f"{where}: metric={c.metric!r} is not allowed; expected one of {', '.join(METRICS)}"
            )
        elif c.kind not in CLAIM_KINDS:
            out.append(
                f"{where}: kind={c.kind!r} is not allowed; expected one of {', '.join(CLAIM_KINDS)}"
            )
        elif (
            not isinstance(c.value, (int, float))
            or isinstance(c.value, bool)
            or not math.isfinite(c.value)
        ):
            out.append(f"{where}: value={c.value!r} is not a number")
        elif c.metric == "test_acc" and not 0 <= c.value <= 1:
            out.append(
                f"{where}: value={c.value!r} is not a fraction; accuracy is stored as a fraction, "
                f"e.g. {c.value / 100:g} for {c.value:g}%"
            )
        elif not (hits := _selected(study, c, configs, where)):
            levels = "; ".join(
                f"{k} in {study.factors[k]!r}" if k in study.factors else f"{k}={study.base[k]!r}"
                for k in c.where
            )
            out.append(f"{where}: where={c.where!r} selects no cell of the design ({levels})")
        elif c.epoch is not None and not (
            _is_int(c.epoch) and 1 <= c.epoch <= max(h["epochs"] for h in hits)
        ):
            out.append(
                f"{where}: epoch={c.epoch!r} is not allowed; expected an int from 1 to "
                f"{max(h['epochs'] for h in hits)}, the epochs its cells train"
            )
    return out


def _selected(study: Study, claim: Claim, configs: list[dict], where: str) -> list[dict]:
    want = {k: normalise(k, v, where) for k, v in claim.where.items()}
    return [
        cfg for cfg in configs if all(_canonical(cfg[k]) == _canonical(v) for k, v in want.items())
    ]


def design_ids(manifest: dict, seeds) -> set[str] | None:
    """The ids of the cells of the design a results folder's manifest records, for `seeds`;
    None when the manifest cannot say (written before it recorded the design, or by a newer
    ablate with keys this one does not know)."""
    try:
        where = "manifest"
        base = {k: default for k, (default, _, _) in KEYS.items()}
        base.update({k: normalise(k, v, where) for k, v in manifest["base"].items()})
        factors = {
            k: [normalise(k, v, where) for v in levels]
            for k, levels in (manifest["factors"] or {}).items()
        }
        study = Study(
            manifest["study"],
            manifest["dataset"],
            manifest["model"],
            base,
            factors,
            manifest["design"],
        )
        return {
            cell_id(study.dataset, study.model, {**base, **levels}, int(seed))
            for levels in points(study)
            for seed in seeds
        }
    except (KeyError, TypeError, AttributeError, AblateError):
        return None
