# studies/mnist_mlp_width.py: two MNIST MLP tutorials. 784-100-100-10 ReLU, SGD lr 0.1, batch 100,
# 15 epochs: 97.25%. 784-2352-1568-10 sigmoid, SGD lr 0.1, batch 128, 15 epochs: about 90%.
# The grid crosses width, activation and batch size, so each recipe's difference is taken apart.
from ablate import Claim, Study

study = Study(
    name="mnist_mlp_width",
    dataset="mnist",
    model="mlp",
    base=dict(
        hidden=(100, 100),
        activation="relu",
        optimizer="sgd",
        lr=0.1,
        momentum=0.0,
        batch_size=100,
        epochs=15,
    ),
    factors=dict(
        hidden=[(100, 100), (2352, 1568)], activation=["relu", "sigmoid"], batch_size=[100, 128]
    ),
    design="grid",
    seeds=5,
    claims=[
        Claim(
            where=dict(hidden=(100, 100), activation="relu", batch_size=100),
            value=0.9725,
            source="MNIST MLP 784-100-100-10 ReLU tutorial",
        ),
        Claim(
            where=dict(hidden=(2352, 1568), activation="sigmoid", batch_size=128),
            value=0.90,
            source="MNIST MLP 784-2352-1568-10 sigmoid tutorial (about 90%)",
        ),
    ],
)
