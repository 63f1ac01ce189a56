# studies/digits_screen.py: a screening study with no download: six two-level factors of the
# digits MLP (64-64-10, SGD lr 0.1, batch 32, 30 epochs) in a half fraction, 32 of the 64
# points, 5 seeds. The half is resolution VI: every main effect is clear of every interaction
# of fewer than five factors. No tutorial claim: it shows what a fractional design buys.
from ablate import Study

study = Study(
    name="digits_screen",
    dataset="digits",
    model="mlp",
    base=dict(
        hidden=(64,),
        activation="sigmoid",
        batchnorm=False,
        dropout=0.0,
        normalize=False,
        init="default",
        optimizer="sgd",
        lr=0.1,
        momentum=0.0,
        batch_size=32,
        epochs=30,
    ),
    factors=dict(
        activation=["sigmoid", "relu"],
        batchnorm=[False, True],
        dropout=[0.0, 0.2],
        normalize=[False, True],
        init=["default", "kaiming_uniform"],
        momentum=[0.0, 0.9],
    ),
    design="fractional",
    seeds=5,
)
