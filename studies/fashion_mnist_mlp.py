# studies/fashion_mnist_mlp.py: the Fashion-MNIST MLP tutorial. Recipe: MLP 784-256-128-10, ReLU,
# SGD lr 0.01, batch 64, 30 epochs: 86.93%. Augmented: + dropout 0.2 + random h-flip + normalize,
# 50 epochs: 88.98%. Every cell trains 50 epochs; a 30-epoch run is the first 30 epochs of the
# same cell (same seed, same per-epoch order, no schedule), so that claim reads epoch 30.
from ablate import Claim, Study

SOURCE = "Fashion-MNIST MLP tutorial"

study = Study(
    name="fashion_mnist_mlp",
    dataset="fashion_mnist",
    model="mlp",
    base=dict(
        hidden=(256, 128),
        activation="relu",
        dropout=0.0,
        hflip=False,
        normalize=False,
        optimizer="sgd",
        lr=0.01,
        momentum=0.0,
        batch_size=64,
        epochs=50,
    ),
    factors=dict(dropout=[0.0, 0.2], hflip=[False, True], normalize=[False, True]),
    design="grid",
    seeds=5,
    claims=[
        Claim(
            where=dict(dropout=0.0, hflip=False, normalize=False),
            value=0.8693,
            epoch=30,
            source=f"{SOURCE}, plain, 30 epochs",
        ),
        Claim(
            where=dict(dropout=0.2, hflip=True, normalize=True),
            value=0.8898,
            source=f"{SOURCE}, dropout + flip + normalize, 50 epochs",
        ),
    ],
)
