# studies/xor.py: the XOR lesson: a single-layer perceptron cannot separate the four XOR points
# (at most 3 of 4, 75%), a 2-layer MLP reaches 100%. Full-batch SGD on the four points.
from ablate import Claim, Study

study = Study(
    name="xor",
    dataset="xor",
    model="mlp",  # hidden=() is the perceptron: one Linear layer from the 2 inputs to the 2 classes
    base=dict(
        hidden=(4,),
        activation="tanh",
        optimizer="sgd",
        lr=0.5,
        momentum=0.9,
        batch_size=4,
        epochs=500,
    ),
    factors=dict(hidden=[(), (4,)]),
    seeds=10,
    claims=[
        Claim(
            where=dict(hidden=()),
            value=0.75,
            kind="at_most",
            source="perceptron: cannot pass 75% on XOR",
        ),
        Claim(where=dict(hidden=(4,)), value=1.0, source="2-layer MLP: solves XOR (100%)"),
    ],
)
