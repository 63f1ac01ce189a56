# studies/cifar10_cnn.py: the CIFAR-10 tutorials. LeNet-style CNN (conv 6,5 - pool - conv 16,5 -
# pool - fc120 - fc84 - fc10), SGD lr 0.001 momentum 0.9, batch 4, 2 epochs: 56%. A deeper CNN
# (32, 64, 128 filters, 3x3, padding 1, pooling after each) with dropout 0.5, 20 epochs: 74%.
# Every cell trains 20 epochs; the 2-epoch claim reads epoch 2 of the LeNet cells. Needs CIFAR-10
# (torchvision's download into ~/.cache/ablate, or cifar-10-batches-py/ under --data-dir).
from ablate import Claim, Study

LENET = (
    "conv:6:5",
    "act",
    "maxpool:2",
    "conv:16:5",
    "act",
    "maxpool:2",
    "flatten",
    "fc:120",
    "act",
    "fc:84",
    "act",
)
DEEPER = (
    "conv:32:3:1:1",
    "act",
    "maxpool:2",
    "conv:64:3:1:1",
    "act",
    "maxpool:2",
    "conv:128:3:1:1",
    "act",
    "maxpool:2",
    "flatten",
    "dropout:0.5",
    "fc:256",
    "act",
    "dropout:0.5",
)

study = Study(
    name="cifar10_cnn",
    dataset="cifar10",
    model="cnn",
    base=dict(
        layers=LENET,
        activation="relu",
        optimizer="sgd",
        lr=0.001,
        momentum=0.9,
        batch_size=4,
        epochs=20,
    ),
    factors=dict(layers=[LENET, DEEPER]),
    seeds=5,
    claims=[
        Claim(
            where=dict(layers=LENET),
            value=0.56,
            epoch=2,
            source="PyTorch CIFAR-10 tutorial, LeNet, 2 epochs",
        ),
        Claim(
            where=dict(layers=DEEPER),
            value=0.74,
            source="deeper CIFAR-10 CNN with dropout, 20 epochs",
        ),
    ],
)
