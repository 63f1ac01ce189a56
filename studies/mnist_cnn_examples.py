# studies/mnist_cnn_examples.py: the PyTorch examples MNIST CNN:
# conv(10,5)-maxpool-relu-conv(20,5)-dropout2d-maxpool-relu-fc50-relu-dropout-fc10,
# SGD lr 0.01 momentum 0.5, batch 64, 40 epochs: 99.09%.
# The example standardises the images (Normalize((0.1307,), (0.3081,))); the factor `normalize`
# measures what that is worth against the plain 0..1 scaling.
from ablate import Claim, Study

EXAMPLES = (
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
)

study = Study(
    name="mnist_cnn_examples",
    dataset="mnist",
    model="cnn",
    base=dict(
        layers=EXAMPLES,
        activation="relu",
        optimizer="sgd",
        lr=0.01,
        momentum=0.5,
        batch_size=64,
        epochs=40,
    ),
    factors=dict(normalize=[False, True]),
    seeds=5,
    claims=[
        Claim(
            where=dict(normalize=True), value=0.9909, source="PyTorch examples MNIST CNN, 40 epochs"
        )
    ],
)
