"""Study declaration, validation, designs and seeded cells."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import fingerprint
from .errors import StudyError
from .keys import (
    CLAIM_KINDS,
    DATASETS,
    DEFAULTS,
    DESIGNS,
    FIRST_KEYS,
    MAX_CELLS,
    MODELS,
    is_int,
    is_num,
    normalise,
    normalise_seeds,
    own_keys,
    table,
)
from .metrics import OUTCOMES


@dataclass(frozen=True)
class Claim:
    """A published number that the report puts beside the runs it describes."""

    where: dict
    value: float
    source: str = ""
    metric: str = "test_acc"
    # compare at this epoch (a shorter tutorial run is a prefix of a longer cell)
    epoch: int | None = None
    # "point": one run's value, judged by the 95% prediction interval of one run; "mean": an
    # average of runs, judged by the 95% CI of the mean; "at_most"/"at_least": a bound
    # ("cannot pass 75%") that holds when every run keeps to its side
    kind: str = "point"


@dataclass
class Study:
    """Plain data: what to train, which factors to vary, and over which seeds."""

    name: str
    dataset: str | Callable  # a built-in name, "torchvision:NAME", or a callable (own data)
    model: str | Callable = "mlp"
    base: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)
    design: str = "grid"
    seeds: int | list = 3
    claims: list = field(default_factory=list)
    source: str = "<study>"  # the file it came from, for error messages and the manifest
    keys: dict = field(default_factory=dict)  # the study's own config keys: name -> default or Key


STREAMS = ("init", "order", "dropout", "flip")  # a cell's draws; dropout's seeds torch's too


@dataclass
class Cell:
    """One level per factor and one seed: the unit that trains and gets a row per epoch."""

    id: str
    seed: int
    levels: dict
    config: dict
    fixed: dict = field(default_factory=dict)  # stream -> the seed it is held at, else `seed`
    stream: str = ""  # a noise cell's: the stream its seed varies ("all": every stream)

    def seed_for(self, stream: str) -> int:
        """The seed this stream draws from: the cell's own, unless the cell holds it fixed."""
        return self.fixed.get(stream, self.seed)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def model_name(model, where: str = "model") -> str:
    """How a cell id and the manifest name the model: "mlp", "cnn", "linear" as given; a callable
    as callable:<qualname>@<12 hex digits of its source's syntax tree's hash>, so an edited body
    makes new cells (fingerprint.py). A StudyError naming `where` when it has no stable name."""
    if isinstance(model, str):
        return model
    try:
        return fingerprint.name(model, where)
    except fingerprint.NoStableId as e:
        raise StudyError(str(e)) from None


def cell_id(
    dataset, model, config: dict, seed: int, defaults: dict = DEFAULTS, fixed: dict | None = None
) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys, tuples as lists) of
    dataset and model names, config and seed: stable across dict order, machines and the
    other cells of the study. `model` may be model_name's answer already (cells() names it once).
    A key added after the first release, or a study's own key, enters only away from its default
    (`defaults`: the study's), so adding one keeps the stored cells; streams held `fixed` enter
    only where some are."""
    config = {
        k: v
        for k, v in config.items()
        if k in FIRST_KEYS or k not in defaults or _canonical(v) != _canonical(defaults[k])
    }
    blob = _canonical(
        {
            "dataset": model_name(dataset),
            "model": model_name(model),
            "config": config,
            "seed": seed,
            **({"fixed": fixed} if fixed else {}),
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a study's: its results folder's name


def validate(study: Study) -> Study:
    """Check every field and return a copy whose keys, base and levels are canonical values."""
    src = study.source
    _check_names(study)
    model_name(study.model, f"{src}: model")  # a callable with no stable id stops here
    model_name(study.dataset, f"{src}: dataset")
    own = own_keys(study.keys, src)
    allowed = table(own)
    given = {k: normalise(k, v, f"{src}: base", allowed) for k, v in study.base.items()}
    base = {**DEFAULTS, **{k: key.default for k, key in own.items()}, **given}
    factors = {
        key: _levels(study, key, levels, base, allowed) for key, levels in study.factors.items()
    }
    seeds = normalise_seeds(study.seeds, src)
    if (n := n_points(study.design, factors) * len(seeds)) > MAX_CELLS:  # counted, not built
        raise StudyError(
            f"{src}: {n:,} cells ({n_points(study.design, factors):,} points x "
            f"{len(seeds):,} seeds) is more than the {MAX_CELLS:,} one study may hold; "
            "use fewer levels or seeds"
        )
    _check_claim_fields(study, allowed)
    out = replace(
        study,
        base=base,
        factors=factors,
        seeds=list(seeds),
        claims=list(study.claims),
        keys=own,
    )
    # batchnorm cannot normalise one sample: the plain path raised mid-run
    for levels in points(out):
        cfg = {**out.base, **levels}
        if cfg["batchnorm"] and 1 in (cfg["batch_size"], cfg["train_subset"]):
            raise StudyError(
                f"{src}: batchnorm=True with batch_size={cfg['batch_size']}, train_subset="
                f"{cfg['train_subset']} is not allowed; batchnorm needs batches of 2 or more "
                "samples"
            )
    return out


def _check_names(study: Study) -> None:
    """The study's name, dataset, model and design, and the types of base and factors."""
    src = study.source
    if not isinstance(study.name, str) or not NAME.fullmatch(study.name):
        raise StudyError(
            f"{src}: name={study.name!r} is not allowed; expected letters, digits, '_', '-', '.'"
        )
    if study.name.lower().endswith(".parquet"):  # its folder would read as its parent's results
        raise StudyError(
            f"{src}: name={study.name!r} is not allowed; a study's name may not end in .parquet"
        )
    torchvision = isinstance(study.dataset, str) and study.dataset.startswith("torchvision:")
    if not (callable(study.dataset) or study.dataset in DATASETS or torchvision):
        raise StudyError(
            f"{src}: unknown dataset {study.dataset!r}; expected one of {', '.join(DATASETS)}, "
            "'torchvision:NAME' or a callable returning (train_x, train_y, test_x, test_y)"
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
    if study.design == "noise" and study.factors:  # `ablate noise` sets the design
        raise StudyError(f"{src}: design 'noise' takes no factors (got {', '.join(study.factors)})")
    for what, value in (("base", study.base), ("factors", study.factors)):
        if not isinstance(value, dict):
            raise StudyError(
                f"{src}: {what} is a {type(value).__name__}; expected a dict of config keys"
            )


def _levels(study: Study, key, levels, base: dict, allowed: dict) -> list:
    """One factor's levels, canonical, checked against its baseline and the design."""
    if not isinstance(key, str):
        raise StudyError(
            f"{study.source}: factor {key!r} is not allowed; factors are config keys, e.g. 'lr'"
        )
    where = f"{study.source}: factor '{key}'"
    if not isinstance(levels, (list, tuple)):
        raise StudyError(
            f"{where}: levels {levels!r} are a {type(levels).__name__}; expected a list"
        )
    if not levels:
        raise StudyError(f"{where} has no levels; expected a non-empty list")
    levels = [normalise(key, v, where, allowed) for v in levels]
    if len({_canonical(v) for v in levels}) < len(levels):
        raise StudyError(f"{where} lists a level twice: {levels!r}")
    _check_tuple_items(levels, where)
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
    return levels


ITEM_KINDS = {bool: "booleans", int: "numbers", float: "numbers", str: "strings"}


def _check_tuple_items(levels: list, where: str) -> None:
    """A factor's tuple levels become one Parquet list column after training, of one item type:
    mixed items ((1, 2) and ('a',), or 1 and True) crashed the store then, and None read back
    as NaN, splitting its design point. Refused here, before anything trains."""
    items = [x for v in levels if isinstance(v, tuple) for x in v]
    if any(x is None for x in items):
        level = next(v for v in levels if isinstance(v, tuple) and None in v)
        raise StudyError(
            f"{where}: level {level!r} holds None, which its Parquet column would read back as "
            "NaN; use a string such as 'none' in a tuple level"
        )
    if len(kinds := sorted({ITEM_KINDS[type(x)] for x in items})) > 1:
        raise StudyError(
            f"{where}: levels {levels!r} mix {' and '.join(kinds)} in their tuples; a factor's "
            "tuple levels are stored as one Parquet list column, so their items must be all "
            "numbers, all strings or all booleans"
        )


def _check_claim_fields(study: Study, allowed: dict) -> None:
    src = study.source
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
            normalise(k, v, f"{src}: claim where", allowed)


def own_values(study: Study, config: dict) -> dict:
    """The study's own keys' values in `config`: what a dataset callable that takes a config
    sees, and what decides which cells share one call of it."""
    return {k: config[k] for k in study.keys}


def defaults(study: Study) -> dict:
    """Every key's default: the built-in ones and the study's own (validated: Key values)."""
    return {**DEFAULTS, **{k: key.default for k, key in study.keys.items()}}


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
    out, name = [], model_name(study.model, f"{study.source}: model")  # its source: read once
    dataset, known = model_name(study.dataset, f"{study.source}: dataset"), defaults(study)
    for levels in points(study):
        config = {**study.base, **levels}
        if study.design == "noise":
            out += _noise_cells(study, dataset, name, config, known)
            continue
        for seed in study.seeds:
            out.append(Cell(cell_id(dataset, name, config, seed, known), seed, levels, config))
    return out


NOISE_HELD = 0  # the seed a noise cell holds its other streams at


def noise_streams(config: dict, model) -> list[str]:
    """The streams a recipe draws from: init and order always, dropout where it drops (a study's
    own model may: nn.Dropout draws from the dropout stream), flip where it mirrors."""
    # the MLP drops by the dropout key, the CNN by its layers (the other's is ignored): a
    # dropout=0 MLP trained a dropout stream whose variance was rounding noise
    if model == "cnn":
        drops = any(
            x.startswith("dropout") and float(x.split(":")[1]) > 0 for x in config["layers"]
        )
    else:
        drops = callable(model) or (model == "mlp" and config["dropout"] > 0)
    return ["init", "order", *(["dropout"] * drops), *(["flip"] * bool(config["hflip"]))]


def _noise_cells(study: Study, dataset: str, name: str, config: dict, known: dict) -> list[Cell]:
    """Per stream, a cell per seed varying that stream alone (the others at NOISE_HELD), then a
    cell per seed varying them all: "all", the ordinary cells of those seeds."""
    out, used = [], noise_streams(config, study.model)
    for stream in [*used, "all"]:
        held = {} if stream == "all" else {s: NOISE_HELD for s in used if s != stream}
        out += [
            Cell(cell_id(dataset, name, config, seed, known, held), seed, {}, config, held, stream)
            for seed in study.seeds
        ]
    return out


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
        if not isinstance(c.metric, str) or c.metric not in OUTCOMES:
            allowed = ", ".join(OUTCOMES)
            out.append(f"{where}: metric={c.metric!r} is not allowed; expected one of {allowed}")
        elif c.kind not in CLAIM_KINDS:
            out.append(
                f"{where}: kind={c.kind!r} is not allowed; expected one of {', '.join(CLAIM_KINDS)}"
            )
        elif not is_num(c.value):  # a finite int or float; True is not a number here
            out.append(f"{where}: value={c.value!r} is not a number")
        elif OUTCOMES[c.metric].fraction and not 0 <= c.value <= 1:
            out.append(
                f"{where}: value={c.value!r} is not a fraction; accuracy is stored as a fraction, "
                f"e.g. {c.value / 100:g} for {c.value:g}%"
            )
        elif not (hits := _selected(c, configs, where, table(study.keys))):
            levels = "; ".join(
                f"{k} in {study.factors[k]!r}" if k in study.factors else f"{k}={study.base[k]!r}"
                for k in c.where
            )
            out.append(f"{where}: where={c.where!r} selects no cell of the design ({levels})")
        elif c.epoch is not None and not (
            is_int(c.epoch) and 1 <= c.epoch <= max(h["epochs"] for h in hits)
        ):
            out.append(
                f"{where}: epoch={c.epoch!r} is not allowed; expected an int from 1 to "
                f"{max(h['epochs'] for h in hits)}, the epochs its cells train"
            )
    return out


def _selected(claim: Claim, configs: list[dict], where: str, allowed: dict) -> list[dict]:
    want = {k: normalise(k, v, where, allowed) for k, v in claim.where.items()}
    return [
        cfg for cfg in configs if all(_canonical(cfg[k]) == _canonical(v) for k, v in want.items())
    ]
