"""The metrics registry by hand: steps, default half-widths, lookups, units; no name tests."""

import ast
import math
from pathlib import Path

import pytest

from ablate import readback
from ablate.errors import AblateError
from ablate.metrics import (
    BUILT_IN,
    HALF_POINT,
    OUTCOMES,
    SECONDS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_LOSS,
    Metric,
    lookup,
)

ABLATE = Path(__file__).resolve().parent.parent / "ablate"
NAMES = {"test_acc", "test_loss", "train_loss", "seconds"}


def test_accuracy_steps_by_one_test_example_and_a_loss_by_nothing_known():
    assert TEST_ACC.step(4) == 0.25 and TEST_ACC.step(10_000) == 1e-4
    assert TEST_ACC.step(None) == 0.0 and TEST_ACC.step(0) == 0.0  # test size unknown
    assert TEST_LOSS.step(4) == 0.0 and TRAIN_LOSS.step(None) == 0.0
    assert Metric("bleu", "BLEU", resolution=0.01).step(4) == 0.01  # a fixed resolution


def test_a_fractions_default_halfwidth_is_half_a_point_or_one_test_sample_where_coarser():
    assert TEST_ACC.default_halfwidth(0.97, 1 / 10_000) == (
        HALF_POINT,
        "the default for test_acc: half a point",
    )
    # xor's 4 test samples: half a point asked for 3,097 seeds; one sample is 0.25
    assert TEST_ACC.default_halfwidth(0.75, 0.25) == (
        0.25,
        "the default for test_acc: one test sample, its resolution",
    )


def test_another_metrics_default_halfwidth_is_one_percent_of_its_mean_to_one_figure():
    # 1% of 0.2347 is 0.002347: 0.002 to one significant figure; the sign does not count
    assert TEST_LOSS.default_halfwidth(0.2347, 0.0) == (
        0.002,
        "the default for test_loss: 1% of its mean",
    )
    assert TRAIN_LOSS.default_halfwidth(-3.0, 0.0)[0] == 0.03
    for mean in (0.0, math.nan, math.inf):
        halfwidth, said = TEST_LOSS.default_halfwidth(mean, 0.0)
        assert math.isnan(halfwidth) and said == (
            "no default for test_loss: its mean is 0; give --halfwidth"
        )


def test_lookup_returns_the_registered_value_and_passes_a_known_metric_through():
    assert lookup("test_acc", "--metric") is TEST_ACC
    assert lookup(TEST_LOSS, "--metric") is TEST_LOSS
    assert lookup("seconds", "show", known=BUILT_IN) is SECONDS  # show lists every column


def test_lookup_says_in_one_line_where_and_the_choices():
    with pytest.raises(AblateError) as e:
        lookup("acc", "--metric")
    assert str(e.value) == "--metric: no metric 'acc'; try train_loss, test_loss, test_acc"
    with pytest.raises(AblateError, match="^results/x: no metric 'epoch'; try train_loss"):
        lookup("epoch", "results/x")
    with pytest.raises(AblateError, match="^here: no metric 'bleu'"):
        lookup(Metric("bleu", "BLEU"), "here")  # a value the registry does not hold


def test_seconds_is_refused_as_an_outcome_by_name_and_as_a_value():
    said = (
        "--metric: 'seconds' is not a per-cell outcome (cells trained together share one wall "
        "time); try train_loss, test_loss, test_acc"
    )
    for name in ("seconds", SECONDS):
        with pytest.raises(AblateError) as e:
            lookup(name, "--metric")
        assert str(e.value) == said and "\n" not in said
    assert "seconds" not in OUTCOMES and set(OUTCOMES) == {"train_loss", "test_loss", "test_acc"}


def test_a_fraction_is_shown_in_points_and_typed_points_are_stored_as_fractions():
    assert TEST_ACC.shown(0.9730) == pytest.approx(97.30) and TEST_ACC.stored(0.5) == 0.005
    assert TEST_LOSS.shown(0.3) == 0.3 and TEST_LOSS.stored(0.3) == 0.3
    assert TEST_ACC.stored(None) is None
    for value in (0.0, 0.005, 0.9730, 1.0):
        assert TEST_ACC.stored(TEST_ACC.shown(value)) == pytest.approx(value, abs=1e-15)
    assert TEST_ACC.unit == " points" and TEST_LOSS.unit == ""


def test_direction_is_read_from_the_value():
    assert TEST_ACC.sign * 0.01 > 0 and not TEST_ACC.sign * -0.01 > 0
    assert TEST_LOSS.sign * -0.01 > 0 and not TRAIN_LOSS.sign * 0.01 > 0


def test_the_store_schema_holds_the_built_in_metrics_in_their_order():
    assert readback.ROW_COLUMNS == ("epoch", *BUILT_IN, "status")
    assert list(BUILT_IN) == ["train_loss", "test_loss", "test_acc", "seconds"]
    assert all(name == metric.column for name, metric in BUILT_IN.items())


def _name_tests(tree: ast.AST) -> list[int]:
    """Lines that compare a value to a metric's name (==, !=, in, not in, a tuple of names) or
    test a name's suffix (.endswith("acc"))."""

    def names(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names(e) for e in node.elts)
        return False

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(map(names, [node.left, *node.comparators])):
            found.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "endswith"
            and any(isinstance(a, ast.Constant) and a.value == "acc" for a in node.args)
        ):
            found.append(node.lineno)
    return found


def test_the_name_check_finds_what_it_looks_for():
    code = 'a == "test_acc"\nb in ("seconds", "x")\nc.endswith("acc")\nd == "epoch"\n'
    assert _name_tests(ast.parse(code)) == [1, 2, 3]


def test_no_module_tests_a_metrics_name():
    found = {
        path.name: lines
        for path in sorted(ABLATE.glob("*.py"))
        if (lines := _name_tests(ast.parse(path.read_text(), str(path))))
    }
    assert not found, f"read metric.fraction, .higher, .step or .outcome instead: {found}"
