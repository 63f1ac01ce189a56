"""Model builders: MLP layers, init from the seed alone, the He bound, dropout masks, own models."""

import pytest
import torch
from torch import nn

from ablate import keys, models
from ablate.errors import AblateError

CFG = dict(hidden=(64, 32), activation="relu", dropout=0.5, batchnorm=True, init="default")


def test_mlp_layers_follow_the_config():
    net = models.build("mlp", CFG, (1, 28, 28), 10, seed=0)
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    cfg = {**CFG, "dropout": 0.0, "batchnorm": False, "activation": "sigmoid"}
    plain = models.build("mlp", cfg, (1, 28, 28), 10, 0)
    assert [type(m).__name__ for m in plain] == [
        "Flatten",
        "Linear",
        "Sigmoid",
        "Linear",
        "Sigmoid",
        "Linear",
    ]


def test_init_comes_from_the_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = models.build("mlp", CFG, (1, 28, 28), 10, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    b = models.build("mlp", CFG, (1, 28, 28), 10, seed=0)
    c = models.build("mlp", CFG, (1, 28, 28), 10, seed=1)
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)


def test_kaiming_uniform_has_the_he_bound():
    net = models.build("mlp", {**CFG, "init": "kaiming_uniform"}, (1, 28, 28), 10, seed=0)
    w = net[1].weight  # fan_in 784: bound sqrt(6 / 784) = 0.0875
    assert w.abs().max().item() <= (6 / 784) ** 0.5 and w.abs().max().item() > 0.08


def test_dropout_masks_follow_seed_and_step_and_vanish_in_eval():
    d1, d2 = models.Dropout(0.5, seed=3, layer=0), models.Dropout(0.5, seed=3, layer=0)
    x = torch.ones(8, 100)
    first = d1(x)
    assert torch.equal(first, d2(x))  # same seed, same step
    assert not torch.equal(first, d1(x))  # next step, new mask
    assert set(first.unique().tolist()) == {0.0, 2.0}
    d1.eval()
    assert torch.equal(d1(x), x)


def test_a_study_callable_builds_the_model():
    def net(config):
        width = config["hidden"][0]
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))

    m = models.build(net, CFG, (1, 28, 28), 10, seed=0)
    assert m[1].out_features == 64


def test_a_study_callable_with_more_outputs_than_classes_is_refused():
    def three(config):
        return nn.Linear(4, 3)

    with pytest.raises(
        ValueError,
        match=r"model 'test_.*three' returns \(2, 3\) for a batch of "
        r"shape \(2, 4\); the dataset has 2 classes, so expected \(2, 2\)",
    ):
        models.build(three, CFG, (4,), 2, seed=0)
    assert models.build(three, CFG, (4,), 3, seed=0).out_features == 3


def test_the_output_check_leaves_batchnorm_statistics_and_training_mode_alone():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    nn.init.constant_(net[0].bias, 5.0)  # a zero batch gives activations 5 everywhere
    models.check_output(net, "'bn'", (4,), 3)
    assert net.training and net[1].running_mean.tolist() == [0.0, 0.0, 0.0]
    assert net[1].num_batches_tracked.item() == 0


def test_every_activation_the_study_file_accepts_has_a_module_and_no_other():
    assert set(models.ACTIVATIONS) == set(keys.ACTIVATIONS)


def test_every_model_kind_the_study_file_accepts_has_a_builder_and_no_other():
    assert keys.MODELS == tuple(models.KINDS)
    for name in keys.MODELS:
        cfg = {**CFG, "layers": ("conv:2:3", "act"), "init": "default"}
        assert models.build(name, cfg, (1, 6, 6), 3, seed=0)(torch.zeros(2, 1, 6, 6)).shape == (
            2,
            3,
        )


def test_an_unknown_model_kind_is_one_line_naming_the_known_ones():
    with pytest.raises(AblateError) as e:
        models.build("resnet", CFG, (1, 6, 6), 3, seed=0)
    known = ", ".join(keys.MODELS)  # mlp, cnn, linear
    assert str(e.value) == f"unknown model 'resnet'; expected one of {known}"
