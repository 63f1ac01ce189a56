# studies/wine_noise.py: your own data. scikit-learn's wine measurements (13 chemical features,
# 3 cultivars, 178 bottles; shipped, no download) through a dataset callable with a key of its
# own: the share of training labels redrawn at random. How much label noise does a small MLP
# absorb, and does standardising the features (normalize) matter more?
import numpy as np

from ablate import Key, Study

TEST = 60  # bottles held out, the same ones for every cell: 1/60 is the accuracy's step


def wine(config):
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))  # a fixed split, not the cell's seed
    x, y = x[order].astype(np.float32), y[order]
    train_y = y[TEST:].copy()
    noisy = np.random.default_rng(1).random(len(train_y)) < config["label_noise"]
    train_y[noisy] = np.random.default_rng(2).integers(0, 3, noisy.sum())
    return x[TEST:], train_y, x[:TEST], y[:TEST]


study = Study(
    name="wine_noise",
    dataset=wine,
    model="mlp",
    keys=dict(label_noise=Key(0.0, lo=0.0, hi=1.0, help="share of training labels redrawn")),
    base=dict(hidden=(32,), activation="relu", optimizer="adam", lr=0.01, batch_size=16, epochs=40),
    factors=dict(label_noise=[0.0, 0.2, 0.4], normalize=[False, True]),
    seeds=5,
)
