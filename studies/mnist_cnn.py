# studies/mnist_cnn.py: the strided MNIST CNN tutorial:
# conv(16,3,s2)-conv(32,3,s2)-conv(64,3)-fc256-fc64-fc10, Adam lr 0.00025, batch 128, 10 epochs,
# with a softmax applied before the cross-entropy loss: 89.16%.
# The factor `loss` measures that bug against the plain cross-entropy.
# The PyTorch examples CNN (conv(10,5)-pool-conv(20,5)-dropout2d-pool-fc50-fc10, SGD lr 0.01 m 0.5,
# 40 epochs: 99.09%) is studies/mnist_cnn_examples.py.
from ablate import Claim, Study

STRIDED = (
    "conv:16:3:2",
    "act",
    "conv:32:3:2",
    "act",
    "conv:64:3",
    "act",
    "flatten",
    "fc:256",
    "act",
    "fc:64",
    "act",
)

study = Study(
    name="mnist_cnn",
    dataset="mnist",
    model="cnn",
    base=dict(
        layers=STRIDED,
        activation="relu",
        optimizer="adam",
        lr=0.00025,
        batch_size=128,
        epochs=10,
        loss="softmax_then_cross_entropy",
    ),
    factors=dict(loss=["softmax_then_cross_entropy", "cross_entropy"]),
    seeds=5,
    claims=[
        Claim(
            where=dict(loss="softmax_then_cross_entropy"),
            value=0.8916,
            source="strided MNIST CNN tutorial (softmax before the loss)",
        )
    ],
)
