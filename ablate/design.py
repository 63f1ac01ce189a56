"""The design a results folder records: its manifest read once into a Design value."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import StudyError
from .keys import DESIGNS, JSON_DEFAULTS, Key, normalise, own_keys, table, unknown_setting
from .metrics import BUILT_IN, TEST_ACC
from .study import Study, cell_id, cells, defaults, points

# What a manifest must record to list its cells (every one ablate wrote does; a partial one not).
RECORDED = ("dataset", "model", "design", "base", "factors")


@dataclass(frozen=True)
class Design:
    """A results folder's study as its manifest records it, read once (readback.read_design): what
    store, `ablate show` and the report take instead of each reading the JSON its own way."""

    study: str = ""
    dataset: str = ""
    model: str = ""  # model_name's answer
    kind: str = ""  # grid, one_at_a_time or fractional as recorded; "" when not
    base: dict = field(default_factory=dict)  # config key -> baseline as JSON (tuples are lists)
    factors: dict | None = None  # factor -> levels as JSON, in the study's order; None: unrecorded
    seeds: tuple = ()
    claims: tuple = ()  # each a dict of Claim's fields
    classes: int | None = None  # as recorded (analysis.dataset_sizes falls back to the dataset's)
    test_size: int | None = None
    runs: tuple = ()  # each run's start, device, host and versions, the first first
    unlisted: str = ""  # why the manifest cannot list its cells (_why_unlisted), or ""
    keys: dict = field(default_factory=dict)  # the study's own keys: name -> keys.key_spec
    rule: dict = field(default_factory=dict)  # `run --until-halfwidth`'s: halfwidth, rounds, ...

    @property
    def json_defaults(self) -> dict:
        """Every key's default as a row's config JSON holds it: built-in and the study's own."""
        return {**JSON_DEFAULTS, **{k: spec["default"] for k, spec in self.keys.items()}}

    @classmethod
    def from_manifest(cls, manifest: dict) -> Design:
        """The manifest's JSON as written by runner.manifest; {} (no manifest) reads as empty."""
        base = manifest.get("base")
        return cls(
            study=manifest.get("study") or "",
            dataset=manifest.get("dataset", ""),
            model=manifest.get("model", ""),
            kind=manifest.get("design", ""),
            base=base if isinstance(base, dict) else {},
            factors=_recorded_factors(manifest),
            seeds=_recorded_list(manifest, "seeds"),
            claims=_recorded_list(manifest, "claims"),
            classes=manifest.get("classes"),
            test_size=manifest.get("test_size"),
            runs=_recorded_list(manifest, "runs"),
            unlisted=_why_unlisted(manifest),
            keys=keys if isinstance(keys := manifest.get("keys"), dict) else {},
            rule=rule if isinstance(rule := manifest.get("until_halfwidth"), dict) else {},
        )

    def cell_ids(self, seeds) -> set[str] | None:
        """The ids of the design's cells for `seeds`; None when the manifest cannot say."""
        if self.unlisted:
            return None
        own = _own(self.keys)
        allowed = table(own)
        known = defaults(Study(self.study, self.dataset, keys=own))
        base = {**known, **{k: normalise(k, v, "manifest", allowed) for k, v in self.base.items()}}
        factors = {
            k: [normalise(k, v, "manifest", allowed) for v in levels]
            for k, levels in self.factors.items()
        }
        study = Study(self.study, self.dataset, self.model, base, factors, self.kind, keys=own)
        if self.kind == "noise":
            return {c.id for c in cells(replace(study, seeds=[int(s) for s in seeds]))}
        return {
            cell_id(self.dataset, self.model, {**base, **levels}, int(seed), known)
            for levels in points(study)
            for seed in seeds
        }


def _own(specs: dict) -> dict[str, Key]:
    """The own keys a manifest records (keys.key_spec), as validated Key values."""
    return own_keys({k: Key(**spec) for k, spec in specs.items()}, "manifest")


def _recorded_list(manifest: dict, key: str) -> tuple:
    return tuple(value) if isinstance(value := manifest.get(key), list) else ()


def _recorded_factors(manifest: dict) -> dict | None:
    """Factor -> its levels in the study's order (factor_order: the JSON's keys are sorted);
    None when the manifest records no factors (no manifest, or one from before it did)."""
    recorded = manifest.get("factors") or {}  # null: a study of no factors
    if "factors" not in manifest or not isinstance(recorded, dict):
        return None
    order = manifest.get("factor_order")  # absent before it was recorded: the sorted keys
    if not isinstance(order, list) or sorted(order, key=str) != sorted(recorded):
        order = list(recorded)
    return {f: levels if isinstance(levels := recorded[f], list) else [] for f in order}


def _why_unlisted(manifest: dict) -> str:
    """Why the manifest cannot say which cells its design holds, or "", from what it records: a
    partial one lacks part of the design; a newer ablate's may name what this one does not know."""
    if missing := [k for k in RECORDED if k not in manifest]:
        return f"it records no {missing[0]}"
    base, factors = manifest["base"], manifest["factors"] or {}
    shapes = [(manifest["dataset"], str), (manifest["model"], str), (base, dict), (factors, dict)]
    shapes += [(levels, list) for levels in (factors.values() if isinstance(factors, dict) else ())]
    if not all(isinstance(value, kind) for value, kind in shapes):
        return "its dataset, model, base or factors are not of the types ablate writes"
    if manifest["design"] not in DESIGNS:
        return f"design {manifest['design']!r} is not one this ablate knows"
    specs = manifest.get("keys", {})
    fields = set(Key.__dataclass_fields__)
    if not isinstance(specs, dict) or not all(
        isinstance(spec, dict) and set(spec) <= fields for spec in specs.values()
    ):
        return "its own keys are not recorded as ablate writes them"
    try:
        allowed = table(_own(specs))
    except StudyError as e:  # a spec this ablate refuses: say which
        return f"its own keys do not read back ({e})"
    if setting := unknown_setting(base, factors, allowed):
        return f"{setting} is not a config value this ablate knows"
    return ""


def design_ids(manifest: dict, seeds) -> set[str] | None:
    """The ids of the cells a manifest's design holds for `seeds`; None when it cannot say."""
    return Design.from_manifest(manifest).cell_ids(seeds)


def chosen_halfwidths(rule: dict) -> str:
    """The --until-halfwidth H that chose a folder's seeds, as the report names it and the user
    typed it (points for accuracy): one H, or each H with the seeds it chose ("2 (to 5 seeds),
    then 1 (to 9 seeds)"), from the manifest's `by` (the H of each round in the metric's stored
    units; a record from before it: its one `halfwidth`)."""
    named = rule.get("metric")  # a record from before `metric`: accuracy
    metric = BUILT_IN.get(named, TEST_ACC) if isinstance(named, str) else TEST_ACC
    rounds, by = rule.get("rounds"), rule.get("by")
    chosen = []  # (H, the seeds of the last round it chose), one per run of equal H
    if isinstance(rounds, list) and isinstance(by, list) and len(by) == len(rounds):
        for h, seeds in zip(by, rounds, strict=True):
            if isinstance(h, (int, float)) and not isinstance(h, bool):
                if chosen and chosen[-1][0] == h:
                    chosen[-1] = (h, seeds)
                else:
                    chosen.append((h, seeds))
    if len(chosen) < 2:
        h = rule.get("halfwidth")
        h = h if isinstance(h, (int, float)) and not isinstance(h, bool) else 0
        return f"{metric.shown(h):g}"
    return ", then ".join(f"{metric.shown(h):g} (to {seeds} seeds)" for h, seeds in chosen)


def first_stage(design: Design) -> frozenset | None:
    """The seeds of `run --until-halfwidth`'s first stage, whose spreads chose the total (the
    report's Stein interval takes its sd from them): the rule's `first`; for a record from
    before it, the first rounds[0] of the seeds (seed_list puts the study's own first); None
    without a rule."""
    rule = design.rule
    first, rounds = rule.get("first"), rule.get("rounds")
    if isinstance(first, list) and first and all(map(_is_seed, first)):
        return frozenset(first)
    if isinstance(rounds, list) and rounds and _is_seed(rounds[0]):
        return frozenset(design.seeds[: rounds[0]])
    return None


def _is_seed(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
