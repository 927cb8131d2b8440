"""Decoding: splitters, permutation null, the ridge shortcut, chance and planted signal."""

from __future__ import annotations

import numpy as np
import pytest

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
            assert shifts and all(6 <= s <= 54 for s in shifts)
    assert len({row.tobytes() for row in permuted}) > 20


def test_permutation_p_value_counts_ties_and_the_observed():
    assert permutation_p_value(0.5, np.array([0.1, 0.5, 0.9])) == pytest.approx(3 / 4)
    assert permutation_p_value(1.0, np.zeros(99)) == pytest.approx(0.01)


def test_ridge_shortcut_equals_refitting(rng):
    labels, runs = scene_labels(4, 50, CLASSES[:3], rng)
    X = planted(labels, CLASSES[:3], rng, p=80, strength=0.3)
    y = np.searchsorted(CLASSES[:3], labels)
    splits = list(LeaveOneRunOut().split(X, y, groups=runs))
    permuted = circular_shifts(y, runs, 6, random_state=3)

    def make(fold, n_train):
        return make_decoder("ridge", n_features=80, n_samples=n_train)

    fast = ridge_null(ridge_hat_matrices(make(0, 150), X, splits), splits, permuted, 3)
    from bids_affect.decoding import _pooled_balanced_accuracy

    refit = [_pooled_balanced_accuracy(row, cross_validate(make, X, row, splits, 3).predicted)
             for row in permuted]
    np.testing.assert_allclose(fast, refit)


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
def test_permutation_p_is_calibrated_on_null_data():
    false_positives = 0
    n_datasets = 40
    for seed in range(n_datasets):
        rng = np.random.default_rng(1000 + seed)
        labels, runs = scene_labels(3, 60, CLASSES[:4], rng, scene=(6, 18))
        X = ar_noise(len(labels), 60, 0.8, rng)
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
               n_permutations=0)
    labels = np.array(["a"] * 10 + ["b"] * 10)
    with pytest.raises(InputDataError, match="fewer than 2 classes"):
        decode(X, labels, np.repeat([1, 2], 10), n_permutations=0)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UsageError, match="cnn-neuro120fp") as info:
        check_models(["svn"])
    assert info.value.exit_code == 64
    assert "ridge" in list_models() and "cnn-deepemotion" in list_models()
