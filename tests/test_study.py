"""Study files: validation, canonical values, stable cell ids, designs and --set overrides."""

import ast
import itertools
import json
import math

import pytest

from ablate.design import Design
from ablate.errors import StudyError
from ablate.study import (
    Claim,
    Study,
    cell_id,
    cells,
    points,
    validate,
)
from ablate.studyfile import load, override, parse_set
from helpers import TINY, write_study


def make(**kw):
    args = dict(
        name="s",
        dataset="mnist",
        base=dict(activation="sigmoid", batchnorm=False, init="default"),
        factors=dict(
            activation=["sigmoid", "relu"],
            batchnorm=[False, True],
            init=["default", "kaiming_uniform"],
        ),
        seeds=5,
    )
    args.update(kw)
    return validate(Study(**args))


def test_grid_counts_every_combination_times_seeds():
    st = make()
    assert len(points(st)) == 8
    assert len(cells(st)) == 40
    assert len({c.id for c in cells(st)}) == 40


def test_one_at_a_time_is_base_then_each_other_level_alone():
    st = make(
        design="one_at_a_time",
        factors=dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True]),
        seeds=[3, 7],
    )
    pts = points(st)
    assert pts == [
        dict(activation="sigmoid", batchnorm=False),
        dict(activation="relu", batchnorm=False),
        dict(activation="tanh", batchnorm=False),
        dict(activation="sigmoid", batchnorm=True),
    ]
    assert [c.seed for c in cells(st)][:4] == [3, 7, 3, 7]
    assert len(cells(st)) == 8


def test_fractional_is_the_half_of_the_grid_with_an_even_number_of_factors_moved():
    st = make(design="fractional")  # 3 two-level factors: 4 of 8 points, resolution III
    assert points(st) == [
        dict(activation="sigmoid", batchnorm=False, init="default"),
        dict(activation="sigmoid", batchnorm=True, init="kaiming_uniform"),
        dict(activation="relu", batchnorm=False, init="kaiming_uniform"),
        dict(activation="relu", batchnorm=True, init="default"),
    ]
    four = make(
        design="fractional",
        factors=dict(
            activation=["sigmoid", "relu"],
            batchnorm=[False, True],
            init=["default", "kaiming_uniform"],
            dropout=[0.0, 0.5],
        ),
    )
    pts = points(
        four
    )  # 8 of 16: every level in half the points, every pair of factors balanced (resolution IV)
    names = list(four.factors)
    assert len(pts) == 8 and len({tuple(p.values()) for p in pts}) == 8
    assert all(pts[0][k] == four.base[k] for k in names)  # the baseline first
    code = [{k: 1 if p[k] != four.base[k] else -1 for k in names} for p in pts]
    for triple in itertools.combinations(
        names, 3
    ):  # no word of length 3 in I = ABCD: every triple balanced
        assert sum(math.prod(c[k] for k in triple) for c in code) == 0
    assert {math.prod(c.values()) for c in code} == {1}  # the defining word ABCD is constant
    for i, a in enumerate(names):
        assert sum(p[a] == four.base[a] for p in pts) == 4
        for b in names[i + 1 :]:
            combos = [(p[a] == four.base[a], p[b] == four.base[b]) for p in pts]
            assert all(combos.count(c) == 2 for c in set(combos)) and len(set(combos)) == 4
    with pytest.raises(
        StudyError, match="factor 'activation' has 3 levels; design='fractional' takes two-level"
    ):
        make(
            design="fractional",
            factors=dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True]),
        )
    pinned = override(
        make(design="fractional"), ["init='default'"]
    )  # 2 two-level factors left: the full grid
    assert len(points(pinned)) == 4


def test_cell_id_is_stable_across_dict_order_other_cells_and_number_spelling():
    a = cell_id("mnist", "mlp", {"lr": 0.1, "epochs": 3}, 0)
    assert a == cell_id("mnist", "mlp", {"epochs": 3, "lr": 0.1}, 0)
    assert a != cell_id("mnist", "mlp", {"epochs": 3, "lr": 0.1}, 1)
    # the documented recipe, by hand: a changed recipe would orphan every stored result
    # printf '{"config":{"epochs":3,"lr":0.1},"dataset":"mnist","model":"mlp","seed":0}' | sha256sum
    assert a == "a31d61b2e47fe07c"
    small, big = (
        make(),
        make(
            factors=dict(
                activation=["sigmoid", "relu", "tanh"],
                batchnorm=[False, True],
                init=["default", "kaiming_uniform"],
            )
        ),
    )
    assert {c.id for c in cells(small)} <= {c.id for c in cells(big)}
    assert {c.id for c in cells(make(base=dict(lr=1)))} == {
        c.id for c in cells(make(base=dict(lr=1.0)))
    }


def test_defaults_fill_the_config_and_values_are_canonical():
    st = make(base=dict(hidden=[64, 32], lr=1))
    assert (
        st.base["hidden"] == (64, 32) and st.base["lr"] == 1.0 and isinstance(st.base["lr"], float)
    )
    assert st.base["train_subset"] is None and st.base["epochs"] == 10


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(base=dict(lrr=0.1)), ["lrr", "did you mean 'lr'"]),
        (dict(factors=dict(activation=["sigmoid", "swish"])), ["activation", "swish", "relu"]),
        (dict(base=dict(dropout=1.5)), ["dropout=1.5", "0 <= p < 1"]),
        (dict(base=dict(lr=-1)), ["lr=-1", "> 0"]),
        (dict(base=dict(epochs=0)), ["epochs=0", ">= 1"]),
        (dict(base=dict(batch_size=0)), ["batch_size=0"]),
        (dict(base=dict(batchnorm=1)), ["batchnorm=1", "True or False"]),
        (dict(seeds=0), ["seeds=0"]),
        (dict(factors=dict(activation=[])), ["activation", "no levels"]),
        (dict(factors=dict(activation=["sigmoid", "sigmoid"])), ["activation", "twice"]),
        (dict(factors=dict(activation=["relu", "tanh"])), ["activation", "baseline 'sigmoid'"]),
        (dict(dataset="imagenet"), ["imagenet", "mnist"]),
        (dict(design="latin"), ["latin", "grid"]),
    ],
)
def test_validation_names_the_key_and_what_is_allowed(kw, words):
    with pytest.raises(StudyError) as e:
        make(source="studies/x.py", **kw)
    msg = str(e.value)
    assert msg.startswith("studies/x.py") and "\n" not in msg
    for w in words:
        assert w in msg


def test_load_reads_a_study_file(tmp_path):
    st = load(write_study(tmp_path))
    assert st.name == "tiny" and st.source.endswith("tiny.py") and len(cells(st)) == 8


@pytest.mark.parametrize(
    "body, words",
    [
        ("from ablate import Study\nstudy = Study(name='x',\n", ["bad.py:2", "syntax error"]),
        ("x = 1\n", ["bad.py", "no `study`"]),
        ("study = 42\n", ["bad.py", "int", "ablate.Study"]),
        (
            "from ablate import Study\n\nstudy = Study(name='x', dataset='mnist', basee={})\n",
            ["bad.py:3", "basee"],
        ),
    ],
)
def test_load_turns_broken_files_into_one_line(tmp_path, body, words):
    with pytest.raises(StudyError) as e:
        load(write_study(tmp_path, name="bad", body=body))
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_study_file(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load(tmp_path / "nope.py")


def test_parse_set_reads_literals_and_bare_words():
    assert parse_set("lr=0.1") == ("lr", 0.1)
    assert parse_set("hidden=(64, 32)") == ("hidden", (64, 32))
    assert parse_set("activation=relu") == ("activation", "relu")
    assert parse_set("batchnorm=True") == ("batchnorm", True)
    for bad in ["hidden=(64,", "lr", "=3"]:
        with pytest.raises(StudyError, match="--set"):
            parse_set(bad)


def test_override_changes_base_pins_factors_and_seeds():
    st = override(make(), ["epochs=1", "activation=relu"], seeds=2)
    assert st.base["epochs"] == 1 and st.factors["activation"] == ["relu"] and st.seeds == [0, 1]
    assert len(cells(st)) == 8
    assert not {c.id for c in cells(st)} & {c.id for c in cells(make())}  # epochs changed every id
    with pytest.raises(StudyError, match="epochs=0"):
        override(make(), ["epochs=0"])


CALLABLE = """
import functools
import torch.nn as nn
from ablate import Study

def model(config, width=64):
    {doc}
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))

class Net:
    def __init__(self, width):
        self.width = width

    def __call__(self, config):
        return model(config, self.width)

study = Study(name="own", dataset="mnist", model={model}, base=dict(epochs=1), seeds=2)
"""


def ids_of(tmp_path, model="model", doc="", name="own"):
    path = write_study(tmp_path, name=name, body=CALLABLE.format(model=model, doc=doc))
    return [c.id for c in cells(load(path))]


def test_a_callable_models_id_changes_with_its_body_not_its_comments_or_docstring(tmp_path):
    first = ids_of(tmp_path)
    assert ids_of(tmp_path, doc='"""A docstring."""  # and a comment') == first
    assert ids_of(tmp_path, doc="pass") != first  # an edited body trains new cells
    assert ids_of(tmp_path, doc="pass", name="other") == ids_of(
        tmp_path, doc="pass"
    )  # nor the file's name


def test_a_callable_models_name_carries_its_hash_and_rebuilds_the_ids_from_the_manifest(tmp_path):
    from ablate.design import design_ids
    from ablate.runner import manifest
    from ablate.study import model_name

    st = load(write_study(tmp_path, name="own", body=CALLABLE.format(model="model", doc="")))
    assert (
        model_name(st.model).startswith("callable:model@") and len(model_name(st.model)) == 15 + 12
    )
    assert design_ids(manifest(st, {}, None), st.seeds) == {c.id for c in cells(st)}


@pytest.mark.parametrize(
    "model", ["functools.partial(model, width=32)", "Net(16)", "lambda config: model(config)"]
)
def test_partials_instances_and_lambdas_get_the_same_id_in_every_load(tmp_path, model):
    first = ids_of(tmp_path, model)  # a memory address in the id would never resume
    assert ids_of(tmp_path, model) == first
    other = (
        model.replace("32", "33").replace("16", "17").replace("model(config)", "model(config, 8)")
    )
    assert ids_of(tmp_path, other) != first


@pytest.mark.parametrize(
    "model, words",
    [
        ("functools.partial(model, width=nn.ReLU)", "partial of model"),
        ("len", "no source"),
        ("Net(nn.ReLU)", "Net instance"),
    ],
)
def test_a_model_with_no_stable_id_is_refused_in_one_line(tmp_path, model, words):
    with pytest.raises(StudyError) as e:
        ids_of(tmp_path, model)
    assert words in str(e.value) and "own.py: model" in str(e.value) and "\n" not in str(e.value)


def test_seeds_must_stay_below_2_to_the_32():
    assert make(seeds=[0, 2**32 - 1]).seeds == [0, 2**32 - 1]
    with pytest.raises(StudyError, match="seed 4294967297 is not allowed; expected 0 <= seed < 2"):
        make(seeds=[1, 2**32 + 1])  # would draw bitwise as seed 1
    with pytest.raises(StudyError, match="seeds=4294967297 is not allowed"):
        override(make(factors={}), seeds=2**32 + 1)
    with pytest.raises(StudyError, match="seed -1 is not allowed"):
        make(seeds=[-1])


def test_n_points_counts_each_design_without_building_it():
    from ablate.study import n_points

    three = dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True])
    assert n_points("grid", three) == 6 == len(points(make(factors=three)))
    one = make(factors=three, design="one_at_a_time")
    assert n_points("one_at_a_time", three) == 1 + 2 + 1 == len(points(one))
    assert n_points("fractional", make().factors) == 4 == len(points(make(design="fractional")))
    assert (
        n_points("fractional", dict(batchnorm=[False, True], init=["default"])) == 2
    )  # < 3 factors: the grid


def test_a_study_past_the_cell_limit_is_refused_before_it_is_built():
    assert len(make(factors={}, seeds=100_000).seeds) == 100_000
    with pytest.raises(
        StudyError, match=r"studies/x.py: 100,001 cells \(1 points x 100,001 seeds\) is mo"
    ):
        make(factors={}, seeds=100_001, source="studies/x.py")
    wide = dict(lr=[0.001 * (i + 1) for i in range(400)], dropout=[i / 1000 for i in range(300)])
    with pytest.raises(StudyError, match=r"120,000 cells \(120,000 points x 1 seeds\)"):
        make(base=dict(lr=0.001), factors=wide, seeds=1)
    assert (
        len(points(make(base=dict(lr=0.001), factors=wide, seeds=1, design="one_at_a_time"))) == 699
    )


def test_load_reads_a_bom_and_a_coding_line_as_python_does(tmp_path):
    text = TINY.format(name="tiny", epochs=1, seeds=1, design="grid", factors="{}").replace(
        '"tiny"', '"café"'
    )
    bom, latin = tmp_path / "bom.py", tmp_path / "latin.py"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    latin.write_bytes(("# -*- coding: latin-1 -*-" + text).encode("latin-1"))
    assert load(bom).claims[0].source == "café" == load(latin).claims[0].source


@pytest.mark.parametrize(
    "body, words",
    [
        (b'x = 1\n\nx = "\xff"\n', ["bad.py:3", "cannot decode it", "0xff", "save it as UTF-8"]),
        (b"# coding: klingon\nx = 1\n", ["bad.py", "cannot decode it", "klingon"]),
        (b"import sys\n\nsys.exit(0)\n", ["bad.py:3", "SystemExit(0)", "must define `study`"]),
    ],
)
def test_undecodable_or_exiting_study_files_are_one_line(tmp_path, body, words):
    (tmp_path / "bad.py").write_bytes(body)
    with pytest.raises(StudyError) as e:
        load(tmp_path / "bad.py")
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(claims=Claim(where={}, value=0.5)), ["claims is a Claim", "expected a list"]),
        (
            dict(claims=[Claim(where=["activation"], value=0.5)]),
            ["where=['activation']", "expected a dict"],
        ),
        (dict(claims=[Claim(where=None, value=0.5)]), ["where=None", "expected a dict"]),
        (dict(claims=[Claim(where="relu", value=0.5)]), ["where='relu'", "expected a dict"]),
        (
            dict(claims=[Claim(where={1: "relu"}, value=0.5)]),
            ["claim where", "config key 1 is not allowed"],
        ),
        (dict(factors={1: [1, 2]}), ["factor 1 is not allowed"]),
        (dict(base={1: 2}), ["base", "config key 1 is not allowed"]),
        (dict(factors={"activation", "batchnorm"}), ["factors is a set", "expected a dict"]),
        (
            dict(factors=dict(activation={"sigmoid", "relu"})),
            ["'activation'", "are a set", "expected a list"],
        ),
    ],
)
def test_mistyped_claims_and_factors_are_one_line(kw, words):
    with pytest.raises(StudyError) as e:
        make(source="studies/x.py", **kw)
    assert str(e.value).startswith("studies/x.py") and "\n" not in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_set_value_too_long_or_too_deep_is_one_line_naming_the_key(monkeypatch):
    with pytest.raises(
        StudyError, match="--set hidden: the value is 10,000 characters long; at most 1,000"
    ):
        parse_set("hidden=" + "-" * 9999 + "1")
    assert parse_set("init=" + "a" * 1000) == ("init", "a" * 1000)  # 1,000 characters are allowed
    with pytest.raises(StudyError, match="--set 'hidden={\\[1\\]: 2}'.*does not parse"):
        parse_set("hidden={[1]: 2}")
    monkeypatch.setattr(ast, "literal_eval", lambda text: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(
        StudyError, match="--set hidden: the value is nested too deeply"
    ):  # 10^4 minus signs
        parse_set("hidden=1")


def recorded(st, **changes) -> dict:
    """A manifest as runner.manifest writes it and store reads it back (JSON: tuples are lists)."""
    manifest = dict(
        study=st.name,
        dataset=st.dataset,
        model=st.model,
        design=st.design,
        base=st.base,
        factors=st.factors,
        factor_order=list(st.factors),
        seeds=st.seeds,
        claims=[vars(c) for c in st.claims],
        runs=[],
    )
    return json.loads(json.dumps({**manifest, **changes}, sort_keys=True))


def test_a_manifest_reads_once_into_a_design_that_lists_its_cells():
    factors = dict(init=["default", "kaiming_uniform"], activation=["sigmoid", "relu"])
    st = make(factors=factors, base=dict(hidden=(32,)), claims=[Claim(dict(init="default"), 0.9)])
    design = Design.from_manifest(recorded(st))
    assert list(design.factors) == ["init", "activation"]  # the study's order, not sorted keys
    assert design.kind == "grid" and design.base["hidden"] == [32] and design.unlisted == ""
    assert design.claims[0]["value"] == 0.9 and design.seeds == (0, 1, 2, 3, 4)
    assert design.cell_ids(st.seeds) == {c.id for c in cells(st)}
    assert Design.from_manifest(recorded(st, design="fractional")).cell_ids(st.seeds) == {
        c.id for c in cells(make(factors=factors, base=dict(hidden=(32,)), design="fractional"))
    }


@pytest.mark.parametrize("manifest", [{}, {"study": "s", "factors": {"lr": [0.1]}}])
def test_a_partial_manifest_lists_no_cells(manifest):  # {}: a folder with no manifest
    design = Design.from_manifest(manifest)
    assert design.unlisted == "it records no dataset" and design.cell_ids([0, 1]) is None


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"design": "latin_square"}, "design 'latin_square' is not one this ablate knows"),
        ({"base": {"warmup": 5}}, "warmup=5 is not a config value this ablate knows"),
        ({"factors": {"activation": ["swish"]}}, "activation='swish' is not a config value"),
        ({"factors": {"activation": "relu"}}, "not of the types ablate writes"),
        ({"base": None}, "not of the types ablate writes"),
    ],
)
def test_a_manifest_naming_what_this_ablate_does_not_know_lists_no_cells(changes, why):
    design = Design.from_manifest(recorded(make(), **changes))
    assert why in design.unlisted and design.cell_ids([0, 1]) is None
