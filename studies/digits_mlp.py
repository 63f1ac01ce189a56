# studies/digits_mlp.py: a demo that needs no download: scikit-learn's 8x8 digits (898 images
# train, 899 test, the split of scikit-learn's "Recognizing hand-written digits" example),
# an MLP 64-64-10 with sigmoid or ReLU, with and without batchnorm, 5 seeds; 25 s for
# its 20 cells on a 2-core CPU. No tutorial claim: that example's 97% is an SVM's, not an MLP's.
from ablate import Study

study = Study(
    name="digits_mlp",
    dataset="digits",
    model="mlp",
    base=dict(
        hidden=(64,),
        activation="sigmoid",
        batchnorm=False,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        batch_size=32,
        epochs=30,
        normalize=True,
    ),
    factors=dict(activation=["sigmoid", "relu"], batchnorm=[False, True]),
    seeds=5,
)
