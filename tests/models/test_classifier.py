"""Tests of CNN3DClassifier: scikit-learn contract, validation, learning, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils import estimator_checks

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.models import training
from bids_affect.models.classifier import CNN3DClassifier
from bids_affect.models.training import load_checkpoint
from tests.helpers import run_until_killed
from tests.models.test_training import FAST, SHAPE, needs_no_gpu, parameters_equal, planted_volumes

FAST_CLASSIFIER = {**FAST, "validation_gap": 2, "validation_fraction": 0.2}


def classifier(**params) -> CNN3DClassifier:
    return CNN3DClassifier(**{**FAST_CLASSIFIER, "epochs": 2, "random_state": 0, **params})


@pytest.fixture
def planted(rng):
    """Labelled training volumes and an independent test set from the same distribution."""
    volumes, labels = planted_volumes(rng, n_samples=90)
    names = np.array(["anger", "fear", "joy"])[labels]
    return volumes[:60], names[:60], volumes[60:], names[60:]


# --------------------------------------------------------------------------- scikit-learn API


def test_clone_get_params_and_set_params():
    estimator = CNN3DClassifier(epochs=3, random_state=7, compile=False)
    assert is_classifier(estimator)
    params = estimator.get_params()
    assert params["epochs"] == 3 and params["architecture"] == "neuro120fp"
    assert params["random_state"] == 7 and params["device"] == "auto"
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == params
    copy.set_params(epochs=9, batch_size=4)
    assert copy.epochs == 9 and estimator.epochs == 3
    assert "epochs=3" in repr(estimator)
    with pytest.raises(ValueError, match="nope"):
        estimator.set_params(nope=1)


@pytest.mark.parametrize("check", [
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_tags_renamed,
    estimator_checks.check_valid_tag_types,
    estimator_checks.check_estimator_repr,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
    estimator_checks.check_mixin_order,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_estimators_unfitted,
], ids=lambda check: check.__name__)
def test_scikit_learn_checks_that_apply(check):
    # The other checks fit 2D arrays; this estimator takes volumes.
    check("CNN3DClassifier", CNN3DClassifier(random_state=0))


def test_fit_changes_no_parameter_and_returns_self(planted):
    X, y, _, _ = planted
    estimator = classifier(class_weight={"joy": 2.0})
    before = estimator.get_params()
    assert estimator.fit(X, y) is estimator
    assert estimator.get_params() == before


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "embed",
                                    "score", "save"])
def test_methods_need_a_fitted_estimator(method, tmp_path):
    arguments = {"score": (np.zeros((2, *SHAPE)), [0, 1]), "save": (tmp_path / "m.pt",)}
    with pytest.raises(NotFittedError):
        getattr(CNN3DClassifier(), method)(*arguments.get(method, (np.zeros((2, *SHAPE)),)))


# --------------------------------------------------------------------------- validation


@needs_no_gpu
def test_cuda_without_gpu_is_a_usage_error(planted):
    X, y, _, _ = planted
    with pytest.raises(UsageError, match="no CUDA GPU") as info:
        classifier(device="cuda").fit(X, y)
    assert info.value.exit_code == 64


@pytest.mark.parametrize(("params", "match"), [
    ({"epochs": 0}, "epochs"), ({"architecture": "vgg"}, "neuro120fp"),
    ({"validation_fraction": 1.5}, "validation_fraction"), ({"validation_gap": -1}, "gap"),
    ({"class_weight": {"surprise": 2.0}}, "surprise"), ({"class_weight": "equal"}, "balanced"),
    ({"random_state": "seed"}, "random_state"), ({"precision": "fp8"}, "precision"),
])
def test_invalid_parameters_fail_in_fit_with_exit_64(planted, params, match):
    X, y, _, _ = planted
    estimator = classifier(**params)   # __init__ only stores
    with pytest.raises(UsageError, match=match) as info:
        estimator.fit(X, y)
    assert info.value.exit_code == 64


def test_invalid_data_fails_with_exit_65(planted):
    X, y, _, _ = planted
    cases = [
        (X, np.full(len(y), "joy"), "at least 2 classes"),
        (X[:, 0], y, "shape"),
        (X, y[:-1], "labels for"),
        (X.astype(complex), y, "dtype"),
        (np.where(np.arange(len(X))[:, None, None, None] == 3, np.nan, X), y, "NaN"),
        (X[:4], y[:4], "leave 1 for training"),
    ]
    for volumes, labels, match in cases:
        with pytest.raises(InputDataError, match=match) as info:
            classifier().fit(volumes, labels)
        assert info.value.exit_code == 65
        assert "\n" not in str(info.value)


def test_class_only_in_the_validation_block_is_treated_as_missing(planted, tmp_path):
    X, _, X_test, _ = planted
    y = np.array(["anger", "fear"] * 25 + ["joy"] * 10)    # "joy" only at the end
    with pytest.warns(UserWarning, match=r"\['joy'\] have no training sample"):
        estimator = classifier().fit(X, y)
    assert estimator.classes_.tolist() == ["anger", "fear", "joy"]
    assert estimator.untrained_classes_.tolist() == ["joy"]
    proba = estimator.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3) and np.all(proba[:, 2] == 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    assert "joy" not in estimator.predict(X_test)
    loaded = CNN3DClassifier.load(estimator.save(tmp_path / "model.pt"))
    assert loaded.untrained_classes_.tolist() == ["joy"]
    np.testing.assert_array_equal(loaded.predict_proba(X_test), proba)
    run = ["anger", "fear"] * 12 + ["joy"] * 6             # "joy" ends each run
    with pytest.warns(UserWarning, match="joy"):
        estimator = classifier().fit(X, np.array(run * 2), groups=np.repeat([1, 2], 30))
    assert estimator.untrained_classes_.tolist() == ["joy"]
    # Classes seen in training: untrained_classes_ is empty, and nothing warns.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert classifier().fit(X, np.array(["anger", "fear"] * 30)).untrained_classes_.size == 0


def test_fewer_than_two_trained_classes_name_the_classes(planted):
    X, _, _, _ = planted
    y = np.array(["anger"] * 50 + ["joy"] * 10)
    with pytest.raises(InputDataError, match=r"only classes \['anger'\]"):
        classifier().fit(X, y)


def test_predict_rejects_other_volume_shapes(planted):
    X, y, _, _ = planted
    estimator = classifier(epochs=1).fit(X, y)
    with pytest.raises(InputDataError, match="trained on"):
        estimator.predict(np.zeros((2, 10, 10, 10), dtype=np.float32))


# --------------------------------------------------------------------------- behaviour


def test_learns_planted_classes_and_outputs_are_consistent(planted):
    X, y, X_test, y_test = planted
    estimator = classifier(epochs=6).fit(X, y)
    predicted = estimator.predict(X_test)
    assert balanced_accuracy_score(y_test, predicted) >= 0.7    # chance: 1/3

    assert estimator.classes_.tolist() == ["anger", "fear", "joy"]
    assert estimator.input_shape_ == SHAPE and not estimator.network_.training
    assert estimator.n_epochs_ == len(estimator.history_) <= 6
    assert {"train_loss", "val_loss", "val_balanced_accuracy"} <= set(estimator.history_[0])
    probabilities = estimator.predict_proba(X_test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    logits = estimator.decision_function(X_test)
    assert np.array_equal(estimator.classes_[logits.argmax(axis=1)], predicted)
    assert estimator.score(X_test, y_test) == pytest.approx(np.mean(predicted == y_test))
    assert estimator.embed(X_test[:5]).shape == (5, 128)
    # (n, 1, X, Y, Z) inputs are the same volumes.
    assert np.array_equal(estimator.predict_proba(X_test[:, None]), probabilities)


def test_neuro120fp_learns_planted_classes(planted):
    X, y, X_test, y_test = planted
    estimator = classifier(architecture="neuro120fp", batch_size=4, epochs=5).fit(X, y)
    assert balanced_accuracy_score(y_test, estimator.predict(X_test)) >= 0.6
    assert estimator.embed(X_test[:3]).shape == (3, 256)


def test_stays_near_chance_on_noise(rng):
    volumes, labels = planted_volumes(rng, n_samples=120, signal=0.0)
    estimator = classifier(epochs=6).fit(volumes[:60], labels[:60])
    assert balanced_accuracy_score(labels[60:], estimator.predict(volumes[60:])) < 0.55


def test_same_seed_same_model_other_seed_other_model(planted):
    X, y, X_test, _ = planted
    a, b, c = (classifier(random_state=seed).fit(X, y) for seed in (1, 1, 2))
    assert np.array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    assert parameters_equal(a.network_, b.network_)
    assert not parameters_equal(a.network_, c.network_)


def test_unseeded_fit_records_a_seed_that_reproduces_it(planted):
    X, y, _, _ = planted
    unseeded = classifier(random_state=None).fit(X, y)
    again = classifier(random_state=unseeded.random_seed_).fit(X, y)
    assert parameters_equal(unseeded.network_, again.network_)


def test_groups_give_one_validation_block_per_run(planted, monkeypatch):
    X, y, _, _ = planted
    seen = {}

    def spy(volumes, codes, train, validation, **kwargs):
        seen.update(train=train, validation=validation)
        raise KeyboardInterrupt

    monkeypatch.setattr("bids_affect.models.classifier.fit_network", spy)
    with pytest.raises(KeyboardInterrupt):
        classifier(validation_fraction=0.1, validation_gap=2).fit(X, y,
                                                                   groups=np.repeat([1, 2], 30))
    assert seen["validation"].tolist() == [27, 28, 29, 57, 58, 59]
    assert seen["train"].tolist() == list(range(25)) + list(range(30, 55))


def test_save_and_load_round_trip(planted, tmp_path):
    X, y, X_test, _ = planted
    estimator = classifier(class_weight={"fear": 2.0}).fit(X, y)
    path = estimator.save(tmp_path / "sub-01" / "models" / "model.pt")
    loaded = CNN3DClassifier.load(path)
    assert loaded.get_params() == estimator.get_params()
    assert loaded.classes_.tolist() == estimator.classes_.tolist()
    assert loaded.history_ == estimator.history_ and loaded.input_shape_ == SHAPE
    assert np.array_equal(loaded.predict_proba(X_test), estimator.predict_proba(X_test))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputDataError, match="cannot read"):
        CNN3DClassifier.load(tmp_path / "junk.pt")


def test_resume_after_interruption_gives_the_same_model(planted, tmp_path, monkeypatch):
    X, y, X_test, _ = planted
    uninterrupted = classifier(epochs=4).fit(X, y)
    path = tmp_path / "checkpoint.pt"
    calls = []
    real = training.train_one_epoch

    def crash_on_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        classifier(epochs=4, checkpoint_path=path).fit(X, y)
    monkeypatch.setattr(training, "train_one_epoch", real)
    assert load_checkpoint(path)["epoch"] == 2
    resumed = classifier(epochs=4, checkpoint_path=path).fit(X, y)
    assert parameters_equal(uninterrupted.network_, resumed.network_)
    assert np.array_equal(uninterrupted.predict_proba(X_test), resumed.predict_proba(X_test))


def test_resume_after_a_real_kill(planted, tmp_path):
    X, y, X_test, _ = planted
    params = {**FAST_CLASSIFIER, "epochs": 4, "random_state": 0,
              "checkpoint_path": str(tmp_path / "checkpoint.pt")}
    np.savez(tmp_path / "data.npz", X=X, y=y)
    run_until_killed(tmp_path, 3, f"""
        from bids_affect.models.classifier import CNN3DClassifier
        data = np.load(sys.argv[1])
        CNN3DClassifier(**{params!r}).fit(data["X"], data["y"])
    """, tmp_path / "data.npz", timeout=300)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    resumed = CNN3DClassifier(**params).fit(X, y)
    uninterrupted = CNN3DClassifier(**{**params, "checkpoint_path": None}).fit(X, y)
    assert parameters_equal(uninterrupted.network_, resumed.network_)
    assert np.array_equal(uninterrupted.predict(X_test), resumed.predict(X_test))
    # The published model files (less work paths and timings) are equal byte for byte.
    from bids_affect.io.derivatives import write_torch
    from bids_affect.models.classifier import load_network_payload, publishable_network

    published = []
    for name, estimator in (("resumed", resumed), ("uninterrupted", uninterrupted)):
        payload = load_network_payload(estimator.save(tmp_path / f"{name}.pt"))
        published.append(write_torch(tmp_path / f"{name}_published.pt",
                                     publishable_network(payload)).read_bytes())
    assert published[0] == published[1]
