"""Decoding: splitters, permutation null, the ridge shortcut, chance and planted signal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from bids_affect.decoding import (
    BalancedRidgeClassifier,
    BlockedKFold,
    LeaveOneRunOut,
    acquisition_clock,
    check_models,
    circular_shifts,
    cross_validate,
    decode,
    list_models,
    make_cv,
    make_decoder,
    permutation_p_value,
    ridge_hat_matrices,
    ridge_null,
)
from bids_affect.exceptions import InputDataError, UsageError


def scene_labels(n_runs: int, n_per_run: int, classes, rng, scene=(6, 16)):
    """Contiguous scenes of random length and class (like a movie), per run."""
    labels, runs = [], []
    for run in range(n_runs):
        row = []
        while len(row) < n_per_run:
            row += [rng.choice(classes)] * int(rng.integers(*scene))
        labels += row[:n_per_run]
        runs += [run + 1] * n_per_run
    return np.array(labels), np.array(runs)


def ar_noise(n: int, p: int, coefficient: float, rng) -> np.ndarray:
    noise = np.empty((n, p), np.float32)
    noise[0] = rng.standard_normal(p)
    scale = np.sqrt(1 - coefficient**2)
    for t in range(1, n):
        noise[t] = coefficient * noise[t - 1] + scale * rng.standard_normal(p)
    return noise


def planted(labels, classes, rng, p=120, strength=0.8, coefficient=0.6):
    X = ar_noise(len(labels), p, coefficient, rng)
    patterns = rng.standard_normal((len(classes), p)).astype(np.float32)
    for k, name in enumerate(classes):
        X[labels == name] += strength * patterns[k]
    return X


CLASSES = ["anger", "fear", "happiness", "love", "sadness"]


def test_leave_one_run_out_tests_each_run_once():
    runs = np.repeat([3, 1, 2], 4)
    tests = [test for _, test in LeaveOneRunOut().split(np.zeros(12), groups=runs)]
    assert [runs[t][0] for t in tests] == [3, 1, 2]
    assert sorted(np.concatenate(tests).tolist()) == list(range(12))
    for train, test in LeaveOneRunOut().split(np.zeros(12), groups=runs):
        assert not set(runs[train]) & set(runs[test])


def test_blocked_kfold_keeps_gap_and_contiguous_blocks():
    times = acquisition_clock(np.repeat([0, 1], 50), np.tile(np.arange(50) * 2.0, 2))
    cv = BlockedKFold(n_splits=4, gap=10.0)
    covered = []
    for train, test in cv.split(np.zeros(100), groups=times):
        assert np.all(np.diff(test) == 1)
        distance = np.abs(times[train][:, None] - times[test][None, :]).min()
        assert distance > 10.0
        covered += test.tolist()
    assert sorted(covered) == list(range(100))


def test_blocked_kfold_rejects_nonsense():
    with pytest.raises(UsageError):
        BlockedKFold(n_splits=1)
    with pytest.raises(UsageError):
        BlockedKFold(gap=-1)


def test_make_cv_defaults_and_single_run():
    assert make_cv("auto", np.array([1, 1, 2, 2]))[0] == "loro"
    assert make_cv("auto", np.array([1, 1, 1]))[0] == "blocked"
    with pytest.raises(UsageError, match="at least 2 runs"):
        make_cv("loro", np.array([1, 1, 1]))


def test_circular_shifts_keep_each_runs_labels_and_move_them(rng):
    labels, runs = scene_labels(3, 60, CLASSES, rng)
    y = np.searchsorted(CLASSES, labels)
    permuted = circular_shifts(y, runs, 30, random_state=1)
    for row in permuted:
        for run in np.unique(runs):
            original, shifted = y[runs == run], row[runs == run]
            assert sorted(original) == sorted(shifted)
            shifts = [s for s in range(60) if np.array_equal(np.roll(original, s), shifted)]
            assert shifts and all(1 <= s <= 59 for s in shifts)  # never the true one
    assert len({row.tobytes() for row in permuted}) > 20


def test_permutation_p_value_counts_ties_and_the_observed():
    assert permutation_p_value(0.5, np.array([0.1, 0.5, 0.9])) == pytest.approx(3 / 4)
    assert permutation_p_value(1.0, np.zeros(99)) == pytest.approx(0.01)


def assert_ridge_null_equals_refits(model, X, y, runs, n_classes, n_permutations, seed):
    """The hat-matrix null of ``model`` equals refitting every fold per permutation."""
    from sklearn.metrics import balanced_accuracy_score

    splits = list(LeaveOneRunOut().split(X, y, groups=runs))
    permuted = circular_shifts(y, runs, n_permutations, random_state=seed)

    def make(fold, n_train):
        return make_decoder(model, n_features=X.shape[1], n_samples=n_train)

    fast = ridge_null(ridge_hat_matrices(make, X, splits), splits, permuted, n_classes)
    refit = [balanced_accuracy_score(row, cross_validate(make, X, row, splits,
                                                         n_classes).predicted)
             for row in permuted]
    np.testing.assert_allclose(fast, refit)


def test_ridge_shortcut_equals_refitting(rng):
    labels, runs = scene_labels(4, 50, CLASSES[:3], rng)
    X = planted(labels, CLASSES[:3], rng, p=80, strength=0.3)
    assert_ridge_null_equals_refits("ridge", X, np.searchsorted(CLASSES[:3], labels), runs,
                                    3, 6, seed=3)


def test_ridge_pca_null_on_small_unequal_runs(rng):
    # Folds train on 70 to 90 samples: each fold's PCA keeps at most n_train - 1 components.
    runs = np.repeat([1, 2, 3], [30, 40, 50])
    labels = np.tile(["a", "b"], 60)
    X = rng.normal(size=(120, 200)).astype(np.float32)
    assert_ridge_null_equals_refits("ridge-pca", X, np.searchsorted(["a", "b"], labels), runs,
                                    2, 5, seed=0)
    result = decode(X, labels, runs, model="ridge-pca", n_permutations=10, random_state=0,
                    audit=False)
    assert len(result.null) == 10 and 0 <= result.metrics["p_permutation"] <= 1


@pytest.mark.parametrize("model", ["ridge", "logreg", "svm-anova", "ridge-pca"])
def test_planted_signal_is_found(rng, model):
    labels, runs = scene_labels(4, 80, CLASSES, rng)
    X = planted(labels, CLASSES, rng)
    n_permutations = 200 if model.startswith("ridge") else 30
    result = decode(X, labels, runs, model=model, n_permutations=n_permutations,
                    random_state=0)
    metrics = result.metrics
    assert metrics["balanced_accuracy"] >= 0.8
    assert metrics["p_permutation"] <= 1.5 / (n_permutations + 1)
    assert metrics["p_permutation"] < 0.01 or n_permutations < 100
    assert metrics["null_band"][1] < metrics["balanced_accuracy"]
    assert 0.1 < metrics["chance_balanced_accuracy"] < 0.3
    assert set(metrics["per_class"]) == set(CLASSES)
    assert len(metrics["fold_scores"]) == 4
    assert metrics["macro_auc"] > 0.9


def test_null_data_decode_at_chance_while_a_random_split_leaks(rng):
    labels, runs = scene_labels(4, 100, CLASSES, rng, scene=(10, 25))
    X = ar_noise(len(labels), 300, 0.95, rng)
    result = decode(X, labels, runs, model="ridge", n_permutations=300, random_state=0)
    metrics = result.metrics
    low, high = metrics["null_band"]
    assert low <= metrics["balanced_accuracy"] <= high
    assert metrics["p_permutation"] > 0.05
    # The peers' random split of volumes leaks neighbouring volumes across the split.
    assert metrics["random_split_balanced_accuracy"] > high


def test_balanced_ridge_scores_are_centred_balanced_ridge_predictions(rng):
    from sklearn.base import clone
    from sklearn.linear_model import Ridge

    X = rng.normal(size=(40, 6))
    y = np.array(["a"] * 25 + ["b"] * 10 + ["c"] * 5)
    clf = BalancedRidgeClassifier(alpha=2.0).fit(X, y)
    targets = np.eye(3)[np.searchsorted(["a", "b", "c"], y)] / np.sqrt([25, 10, 5])
    reference = Ridge(alpha=2.0).fit(X, targets)
    expected = (X - X.mean(axis=0)) @ reference.coef_.T
    np.testing.assert_allclose(clf.decision_function(X), expected, atol=1e-10)
    assert clf.predict(X).tolist() == np.array(["a", "b", "c"])[expected.argmax(1)].tolist()
    assert clone(clf).get_params() == {"alpha": 2.0}
    binary = BalancedRidgeClassifier().fit(X[:35], y[:35])
    scores = binary.decision_function(X)
    assert scores.shape == (40,)
    assert binary.predict(X).tolist() == np.where(scores > 0, "b", "a").tolist()


def test_null_of_the_ridge_centres_on_one_over_the_number_of_classes():
    # With a class prior in the scores (scikit-learn's RidgeClassifier), training-frequent
    # classes, rare in the left-out run, win: these datasets then average 0.15, not 0.20.
    chances = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        labels, runs = scene_labels(4, 100, CLASSES, rng, scene=(10, 25))
        X = ar_noise(len(labels), 300, 0.95, rng)
        chances.append(decode(X, labels, runs, model="ridge", n_permutations=300,
                              random_state=0, audit=False).metrics["chance_balanced_accuracy"])
    assert 0.17 <= np.mean(chances) <= 0.23


@pytest.mark.slow
@pytest.mark.parametrize("n_runs, n_per_run, scene, coefficient", [
    (3, 60, (6, 18), 0.8),
    (4, 100, (10, 40), 0.95),  # strong autocorrelation, long scenes
])
def test_permutation_p_is_calibrated_on_null_data(n_runs, n_per_run, scene, coefficient):
    # Runs are separate acquisitions: their noise is independent (see circular_shifts).
    false_positives = 0
    n_datasets = 40
    for seed in range(n_datasets):
        rng = np.random.default_rng(1000 + seed)
        labels, runs = scene_labels(n_runs, n_per_run, CLASSES[:4], rng, scene=scene)
        X = np.concatenate([ar_noise(n_per_run, 60, coefficient, rng)
                            for _ in range(n_runs)])
        metrics = decode(X, labels, runs, model="ridge", n_permutations=200,
                         random_state=seed, audit=False).metrics
        false_positives += metrics["p_permutation"] < 0.05
    assert 0 <= false_positives / n_datasets <= 0.15


def test_decode_is_reproducible(rng):
    labels, runs = scene_labels(3, 60, CLASSES[:3], rng)
    X = planted(labels, CLASSES[:3], rng, strength=0.3)
    first = decode(X, labels, runs, model="logreg", n_permutations=10, random_state=5)
    second = decode(X, labels, runs, model="logreg", n_permutations=10, random_state=5)
    assert first.metrics == second.metrics
    np.testing.assert_array_equal(first.null, second.null)


def test_class_missing_from_a_training_fold_is_handled(rng, caplog):
    labels, runs = scene_labels(3, 60, CLASSES[:3], rng)
    labels[runs == 1] = "anger"
    labels[(runs == 1)[: len(labels)] & (np.arange(len(labels)) < 10)] = "love"
    X = planted(labels, [*CLASSES[:3], "love"], rng)
    result = decode(X, labels, runs, model="ridge", n_permutations=5, random_state=0)
    missing = [fold for fold in result.metrics["folds"] if fold["missing_classes"]]
    assert missing and "absent from the training samples" in caplog.text
    assert result.metrics["per_class"]["love"]["recall"] == 0.0


def test_fewer_than_two_classes_and_too_few_volumes_are_refused(rng):
    X = rng.normal(size=(20, 5))
    with pytest.raises(InputDataError, match="at least 2 classes"):
        decode(X, ["a"] * 20, np.repeat([1, 2], 10), n_permutations=0)
    with pytest.raises(InputDataError, match="samples cannot make"):
        decode(X[:3], ["a", "b", "a"], np.ones(3), cv="blocked", n_splits=5,
               times=np.arange(3) * 2.0, n_permutations=0)
    labels = np.array(["a"] * 10 + ["b"] * 10)
    with pytest.raises(InputDataError, match="fewer than 2 classes"):
        decode(X, labels, np.repeat([1, 2], 10), n_permutations=0)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UsageError, match="cnn-neuro120fp") as info:
        check_models(["svn"])
    assert info.value.exit_code == 64
    assert "ridge" in list_models() and "cnn-deepemotion" in list_models()


def test_blocked_cv_needs_times_for_its_gap_in_seconds(rng):
    labels, runs = scene_labels(1, 120, CLASSES[:3], rng)
    X = planted(labels, CLASSES[:3], rng)
    with pytest.raises(UsageError, match="gap is in seconds") as info:
        decode(X, labels, runs, cv="blocked", gap=30.0, n_permutations=0)
    assert info.value.exit_code == 64
    # The gap is in seconds: at TR 2 s, 30 s leave 15 volumes out on each side.
    result = decode(X, labels, runs, cv="blocked", n_splits=4, gap=30.0,
                    times=np.arange(120) * 2.0, n_permutations=0, audit=False)
    assert [fold["n_train"] for fold in result.metrics["folds"]] == [75, 60, 60, 75]
    assert decode(X, labels, runs, cv="blocked", gap=0, n_permutations=0,
                  audit=False).metrics["cv"] == "blocked"


# The balanced logistic regression and SVM are checked in tests/decoding/test_linear.py.
@parametrize_with_checks([BalancedRidgeClassifier()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("model", ["ridge", "svm", "logreg", "ridge-pca", "svm-anova"])
def test_every_linear_decoder_has_predict_proba_consistent_with_decode(rng, model):
    from bids_affect.decoding.estimators import softmax_of_decision
    from bids_affect.decoding.fit import _scores

    X = rng.normal(size=(60, 20))
    y = np.repeat([0, 1, 2], 20)
    X[y == 1, :3] += 1.0
    decoder = make_decoder(model, n_features=20, n_samples=60).fit(X, y)
    # An SVM has no probabilities: decode scores it by the softmax of its decisions.
    proba = (decoder.predict_proba(X) if hasattr(decoder, "predict_proba")
             else softmax_of_decision(decoder.decision_function(X)))
    assert hasattr(decoder, "predict_proba") == (not model.startswith("svm"))
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(proba.argmax(axis=1), decoder.predict(X))
    np.testing.assert_allclose(_scores(decoder, X, 3), proba)
    if not model.startswith("logreg"):   # the ridge and SVM scores: softmax of decisions
        np.testing.assert_allclose(proba, softmax_of_decision(decoder.decision_function(X)))
    assert 0 <= decoder.score(X, y) <= 1


def test_binary_predict_proba_is_the_softmax_of_minus_and_plus_the_decision(rng):
    X = rng.normal(size=(30, 4))
    y = np.array(["a", "b"] * 15)
    clf = BalancedRidgeClassifier().fit(X, y)
    decision = clf.decision_function(X)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-2 * decision)))


def test_missing_classes_are_named_in_the_fold_records(rng):
    labels, runs = scene_labels(3, 60, CLASSES[:3], rng)
    labels[runs == 2] = "anger"
    labels[(runs == 2) & (np.arange(len(labels)) % 60 < 12)] = "love"   # only in run 2
    X = planted(labels, [*CLASSES[:3], "love"], rng)
    metrics = decode(X, labels, runs, model="ridge", n_permutations=0, audit=False).metrics
    folds = {fold["test"]: fold["missing_classes"] for fold in metrics["folds"]}
    assert folds["2"] == ["love"]
    assert all(name in CLASSES for names in folds.values() for name in names)


def test_coarse_p_resolution_and_costly_refits_are_announced(rng, caplog, monkeypatch):
    from bids_affect.decoding import null

    labels, runs = scene_labels(3, 40, CLASSES[:3], rng)
    X = planted(labels, CLASSES[:3], rng, p=30)
    decode(X, labels, runs, model="ridge", n_permutations=99, audit=False)
    assert "p-values no finer" not in caplog.text and "refits" not in caplog.text
    decode(X, labels, runs, model="ridge", n_permutations=20, audit=False)
    assert "20 permutations give p-values no finer than 1/21 = 0.048" in caplog.text
    monkeypatch.setattr(null, "REFIT_NULL_WARNING_S", 0.0)
    caplog.clear()
    # logreg's null is batched (no refits): no cost warning.
    decode(X, labels, runs, model="logreg", n_permutations=2, n_jobs=2, audit=False)
    assert "refits all" not in caplog.text
    # Decoders whose null refits (the CNNs) announce its cost.
    null.warn_about_cost("cnn-deepemotion", 100, 2, 3.0, 3, refits=True)
    warning = [r for r in caplog.records if "refits all 3 folds" in r.getMessage()]
    assert warning and warning[0].levelname == "WARNING"
    assert "2 parallel job(s)" in warning[0].getMessage()
