"""Study files: validation, canonical values, stable cell ids, designs and --set overrides."""
import itertools
import math

import pytest

from ablate.study import Study, StudyError, cell_id, cells, load, override, parse_set, points, validate
from conftest import write_study


def make(**kw):
    args = dict(name="s", dataset="mnist", base=dict(activation="sigmoid", batchnorm=False, init="default"),
                factors=dict(activation=["sigmoid", "relu"], batchnorm=[False, True],
                             init=["default", "kaiming_uniform"]), seeds=5)
    args.update(kw)
    return validate(Study(**args))


def test_grid_counts_every_combination_times_seeds():
    st = make()
    assert len(points(st)) == 8
    assert len(cells(st)) == 40
    assert len({c.id for c in cells(st)}) == 40


def test_one_at_a_time_is_base_then_each_other_level_alone():
    st = make(design="one_at_a_time", factors=dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True]),
              seeds=[3, 7])
    pts = points(st)
    assert pts == [dict(activation="sigmoid", batchnorm=False), dict(activation="relu", batchnorm=False),
                   dict(activation="tanh", batchnorm=False), dict(activation="sigmoid", batchnorm=True)]
    assert [c.seed for c in cells(st)][:4] == [3, 7, 3, 7]
    assert len(cells(st)) == 8


def test_fractional_is_the_half_of_the_grid_with_an_even_number_of_factors_moved():
    st = make(design="fractional")  # 3 two-level factors: 4 of 8 points, resolution III
    assert points(st) == [dict(activation="sigmoid", batchnorm=False, init="default"),
                          dict(activation="sigmoid", batchnorm=True, init="kaiming_uniform"),
                          dict(activation="relu", batchnorm=False, init="kaiming_uniform"),
                          dict(activation="relu", batchnorm=True, init="default")]
    four = make(design="fractional", factors=dict(activation=["sigmoid", "relu"], batchnorm=[False, True],
                                                  init=["default", "kaiming_uniform"], dropout=[0.0, 0.5]))
    pts = points(four)  # 8 of 16: every level in half the points, every pair of factors balanced (resolution IV)
    names = list(four.factors)
    assert len(pts) == 8 and len({tuple(p.values()) for p in pts}) == 8
    assert all(pts[0][k] == four.base[k] for k in names)  # the baseline first
    code = [{k: 1 if p[k] != four.base[k] else -1 for k in names} for p in pts]
    for triple in itertools.combinations(names, 3):  # no word of length 3 in I = ABCD: every triple balanced
        assert sum(math.prod(c[k] for k in triple) for c in code) == 0
    assert {math.prod(c.values()) for c in code} == {1}  # the defining word ABCD is constant
    for i, a in enumerate(names):
        assert sum(p[a] == four.base[a] for p in pts) == 4
        for b in names[i + 1:]:
            combos = [(p[a] == four.base[a], p[b] == four.base[b]) for p in pts]
            assert all(combos.count(c) == 2 for c in set(combos)) and len(set(combos)) == 4
    with pytest.raises(StudyError, match="factor 'activation' has 3 levels; design='fractional' takes two-level"):
        make(design="fractional", factors=dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True]))
    pinned = override(make(design="fractional"), ["init='default'"])  # 2 two-level factors left: the full grid
    assert len(points(pinned)) == 4


def test_cell_id_is_stable_across_dict_order_other_cells_and_number_spelling():
    a = cell_id("mnist", "mlp", {"lr": 0.1, "epochs": 3}, 0)
    assert a == cell_id("mnist", "mlp", {"epochs": 3, "lr": 0.1}, 0)
    assert a != cell_id("mnist", "mlp", {"epochs": 3, "lr": 0.1}, 1)
    # the documented recipe, by hand: a changed recipe would orphan every stored result
    # printf '{"config":{"epochs":3,"lr":0.1},"dataset":"mnist","model":"mlp","seed":0}' | sha256sum
    assert a == "a31d61b2e47fe07c"
    small, big = make(), make(factors=dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True],
                                           init=["default", "kaiming_uniform"]))
    assert {c.id for c in cells(small)} <= {c.id for c in cells(big)}
    assert {c.id for c in cells(make(base=dict(lr=1)))} == {c.id for c in cells(make(base=dict(lr=1.0)))}


def test_defaults_fill_the_config_and_values_are_canonical():
    st = make(base=dict(hidden=[64, 32], lr=1))
    assert st.base["hidden"] == (64, 32) and st.base["lr"] == 1.0 and isinstance(st.base["lr"], float)
    assert st.base["train_subset"] is None and st.base["epochs"] == 10


@pytest.mark.parametrize("kw, words", [
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
])
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


@pytest.mark.parametrize("body, words", [
    ("from ablate import Study\nstudy = Study(name='x',\n", ["bad.py:2", "syntax error"]),
    ("x = 1\n", ["bad.py", "no `study`"]),
    ("study = 42\n", ["bad.py", "int", "ablate.Study"]),
    ("from ablate import Study\n\nstudy = Study(name='x', dataset='mnist', basee={})\n", ["bad.py:3", "basee"]),
])
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
