# studies/mnist_mlp.py: the MNIST MLP tutorial's variants
# (sigmoid 88.16%, ReLU 97.41%, +BN 97.91%, +BN+He 97.26%).
# Recipe: MLP 784-512-256-10, dropout 0.5, SGD lr 0.01 momentum 0.5, batch 32, 10 epochs.
from ablate import Claim, Study

SOURCE = "MNIST MLP tutorial"

study = Study(
    name="mnist_mlp",
    dataset="mnist",
    model="mlp",
    base=dict(
        hidden=(512, 256),
        activation="sigmoid",
        dropout=0.5,
        batchnorm=False,
        init="default",
        optimizer="sgd",
        lr=0.01,
        momentum=0.5,
        batch_size=32,
        epochs=10,
    ),
    factors=dict(
        activation=["sigmoid", "relu"], batchnorm=[False, True], init=["default", "kaiming_uniform"]
    ),
    design="grid",
    seeds=5,
    claims=[
        Claim(
            where=dict(activation="sigmoid", batchnorm=False, init="default"),
            value=0.8816,
            source=f"{SOURCE}, sigmoid",
        ),
        Claim(
            where=dict(activation="relu", batchnorm=False, init="default"),
            value=0.9741,
            source=f"{SOURCE}, ReLU",
        ),
        Claim(
            where=dict(activation="relu", batchnorm=True, init="default"),
            value=0.9791,
            source=f"{SOURCE}, ReLU + batchnorm",
        ),
        Claim(
            where=dict(activation="relu", batchnorm=True, init="kaiming_uniform"),
            value=0.9726,
            source=f"{SOURCE}, ReLU + batchnorm + He init",
        ),
    ],
)
