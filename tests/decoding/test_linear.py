"""Balanced, prior-free logistic regression and linear SVM, and their batched permutation null.

What is proved here:
- the estimators follow scikit-learn's contract, fit scikit-learn's balanced
  model and leave its intercept out of the scores;
- the batched fits equal scikit-learn refits of the same estimators (predictions,
  coefficients), with shared features, PCA, per-permutation ANOVA selection and
  classes missing from a permutation's training labels;
- on null data whose class frequencies differ across runs, the balanced
  estimators' null mean sits at 1 / n_classes while scikit-learn's plain
  estimators fall below it;
- the batched null gives the refit null's p-values, and finds planted signal.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectPercentile, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from bids_affect.decoding.linear import (
    BalancedLinearSVC,
    BalancedLogisticRegression,
    anova_masks,
    class_balance_weights,
    contrast_basis,
    fit_permutations,
    permutation_null_predictions,
)
from bids_affect.stats.permutation import circular_shifts

ESTIMATORS = {"logistic": BalancedLogisticRegression, "squared_hinge": BalancedLinearSVC}
TIGHT = {"tol": 1e-10, "max_iter": 100_000}


def movie_labels(n_runs: int, n_per_run: int, n_classes: int, rng, concentration: float = 0.3,
                 scene=(6, 16)) -> tuple[np.ndarray, np.ndarray]:
    """Scenes of random length whose class frequencies differ from run to run.

    Each run draws its own class probabilities (Dirichlet), as the scenes of a
    movie do, and holds at least one scene of every class, so that every
    training set of leave-one-run-out holds every class.
    """
    labels, runs = [], []
    for run in range(n_runs):
        probability = rng.dirichlet(np.full(n_classes, concentration))
        row = []
        while len(set(row)) < n_classes:     # every class in every run, at least once
            scenes = [*range(n_classes), *rng.choice(
                n_classes, max(0, n_per_run // 10 - n_classes), p=probability)]
            row = []
            for label in rng.permutation(scenes):
                row += [label] * int(rng.integers(*scene))
            while len(row) < n_per_run:
                row += [rng.choice(n_classes, p=probability)] * int(rng.integers(*scene))
            row = row[:n_per_run]
        labels += row
        runs += [run] * n_per_run
    return np.array(labels), np.array(runs)


def run_noise(runs: np.ndarray, n_features: int, rng, coefficient: float = 0.9) -> np.ndarray:
    """AR(1) noise, z-scored per run as cleaned BOLD is."""
    blocks = []
    for run in np.unique(runs):
        n = int(np.sum(runs == run))
        block = np.empty((n, n_features))
        block[0] = rng.standard_normal(n_features)
        for t in range(1, n):
            block[t] = (coefficient * block[t - 1]
                        + np.sqrt(1 - coefficient ** 2) * rng.standard_normal(n_features))
        blocks.append((block - block.mean(0)) / block.std(0))
    return np.concatenate(blocks).astype(np.float32)


def loro(runs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.flatnonzero(runs != run), np.flatnonzero(runs == run))
            for run in np.unique(runs)]


def refit_predictions(make, X, labels, splits) -> np.ndarray:
    """Cross-validated predictions of fresh scikit-learn fits (the reference)."""
    predicted = np.full(len(labels), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in splits:
            predicted[test] = make().fit(X[train], labels[train]).predict(X[test])
    return predicted


def null_scores(permuted, predicted) -> np.ndarray:
    return np.array([balanced_accuracy_score(row, guess)
                     for row, guess in zip(permuted, predicted)])


# --------------------------------------------------------------------------- estimators


@parametrize_with_checks([BalancedLogisticRegression(), BalancedLinearSVC()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_balanced_weights_give_each_class_the_same_total():
    codes = np.array([[0, 0, 0, 0, 1, 2], [2, 2, 1, 1, 1, 1]])
    weights = class_balance_weights(codes, n_classes=3)
    for row, weight in zip(codes, weights):
        totals = np.bincount(row, weights=weight, minlength=3)
        present = np.bincount(row, minlength=3) > 0
        np.testing.assert_allclose(totals[present], len(row) / present.sum())
        assert weight.sum() == pytest.approx(len(row))


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_scores_leave_out_the_intercept_of_scikit_learns_balanced_fit(rng, loss):
    X = rng.normal(2.0, 1.0, size=(90, 12))
    y = rng.choice(["a", "b", "c"], size=90, p=[0.6, 0.3, 0.1])
    clf = ESTIMATORS[loss](C=0.5, **TIGHT).fit(X, y)
    scores = clf.decision_function(X)
    np.testing.assert_allclose(scores, (X - X.mean(0)) @ clf.coef_.T)
    codes = np.unique(y, return_inverse=True)[1]
    reference = (LogisticRegression(C=0.5, class_weight="balanced", **TIGHT)
                 if loss == "logistic" else LinearSVC(C=0.5, intercept_scaling=10, **TIGHT))
    reference.fit(X - X.mean(0), y,
                  sample_weight=None if loss == "logistic" else class_balance_weights(codes))
    np.testing.assert_allclose(clf.coef_, reference.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(clf.dropped_intercept_, reference.intercept_, rtol=1e-3,
                               atol=1e-5)
    # Without the intercept, the scores of the frequent class are not pushed up.
    np.testing.assert_allclose(scores + clf.dropped_intercept_,
                               reference.decision_function(X - X.mean(0)), rtol=1e-4,
                               atol=1e-5)
    if loss == "logistic":
        proba = clf.predict_proba(X)
        np.testing.assert_allclose(proba.sum(1), 1.0)
        assert np.array_equal(clf.classes_[proba.argmax(1)], clf.predict(X))
    else:
        assert not hasattr(clf, "predict_proba")


def test_binary_logistic_probabilities_are_the_sigmoid_of_the_score(rng):
    X = rng.normal(size=(40, 5))
    y = (X[:, 0] > 0).astype(int)
    clf = BalancedLogisticRegression(C=1.0).fit(X, y)
    score = clf.decision_function(X)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-score)))


# --------------------------------------------------------------------------- batched fits


@pytest.mark.parametrize("loss", list(ESTIMATORS))
@pytest.mark.parametrize("n_features, n_classes", [(300, 4), (20, 3), (50, 2)])
def test_batched_fits_equal_scikit_learn_refits(rng, loss, n_features, n_classes):
    n_train, n_test, n_perm = 80, 60, 6
    X = rng.normal(size=(n_train + n_test, n_features)).astype(np.float32)
    X[:, : n_features // 2] += 0.5 * X[:, [0]]       # correlated features
    y = rng.integers(0, n_classes, size=n_train + n_test)
    X += 0.4 * rng.normal(size=(n_classes, n_features))[y]
    Y = np.stack([rng.permutation(y[:n_train]) for _ in range(n_perm)])
    C = 1.0 / n_features
    for dtype, tol, agreement, rtol in (("float64", 1e-8, 1.0, 1e-4),
                                        ("float32", 1e-5, 0.99, 1e-2)):
        decision = fit_permutations(X[:n_train], Y, X[n_train:], loss=loss, C=C,
                                    dtype=dtype, tol=tol)
        for row, labels in enumerate(Y):
            clf = ESTIMATORS[loss](C=C, **TIGHT).fit(X[:n_train].astype(np.float64), labels)
            expected = clf.decision_function(X[n_train:].astype(np.float64))
            got = decision[row]
            if n_classes == 2:   # scikit-learn's single column: class 1 against class 0
                got = got[:, 1] - got[:, 0]
                if loss == "squared_hinge":
                    got = got / 2
            assert np.mean(clf.predict(X[n_train:]) == decision[row].argmax(1)) >= agreement
            scale = np.abs(expected).max()
            np.testing.assert_allclose(got / scale, expected / scale, atol=rtol)


def test_contrast_basis_is_orthonormal_and_sums_to_zero():
    for k in (2, 3, 5, 9):
        basis = contrast_basis(k)
        np.testing.assert_allclose(basis @ basis.T, np.eye(k - 1), atol=1e-12)
        np.testing.assert_allclose(basis.sum(dim=1), np.zeros(k - 1), atol=1e-12)


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_split_newton_steps_reach_the_exact_newton_answer(rng, loss, monkeypatch):
    """The split only makes steps cheaper: every split gives the same optimum.

    More voxels than samples and C = 1 / voxels, as the decoders; 20 strong
    directions and weak noise: the weak directions add little curvature, so the
    default split solves them by their diagonal step. Threshold 0 solves every
    coordinate by conjugate gradients; a huge one leaves only the last column to
    them.
    """
    import bids_affect.decoding.linear as linear

    X = rng.normal(size=(110, 20)) @ rng.normal(size=(20, 400))
    X += 0.1 * rng.normal(size=X.shape)
    y = np.repeat(np.arange(4), [20, 30, 15, 15])
    X[:80] += 0.3 * rng.normal(size=(4, 400))[y]
    Y = np.stack([np.roll(y, shift) for shift in (0, 7, 33)])
    C = 1.0 / X.shape[1]
    objective_columns = []
    original = linear._Objective.first_exact_column

    def record(self):
        objective_columns.append((original(self), self.Z.shape[1]))
        return objective_columns[-1][0]

    monkeypatch.setattr(linear._Objective, "first_exact_column", record)
    objective = {"logistic": linear._Multinomial, "squared_hinge": linear._SquaredHinge}[loss]
    answers = {}
    for threshold in (0.0, objective.exact_curvature, 1e12):
        monkeypatch.setattr(objective, "exact_curvature", threshold)
        objective_columns.clear()
        # Slower steps with the extreme split (more of them), the same optimum.
        answers[threshold] = fit_permutations(X[:80], Y, X[80:], loss=loss, C=C,
                                              dtype="float64", tol=1e-10, max_iter=1000)
        first, width = objective_columns[0]
        if threshold == 0.0:
            assert first == 0
        elif threshold == 1e12:
            assert first == width - 1
        else:
            assert 0 < first < width - 1             # a true split by default
    reference = answers[0.0]
    for answer in answers.values():
        np.testing.assert_allclose(answer, reference, rtol=1e-7, atol=1e-9)
    for row, labels in enumerate(Y[:, :80]):
        clf = ESTIMATORS[loss](C=C, **TIGHT).fit(X[:80], labels)
        assert np.array_equal(clf.predict(X[80:]), reference[row].argmax(1))


def test_gauss_seidel_sweep_brings_split_steps_closer_to_the_optimum(rng, monkeypatch):
    """The sweep only speeds up the multinomial's split steps (the gradient is exact):
    after 3 of them, the decisions lie closer to the optimum with it than without
    (a wrong sign of the cross terms leaves them farther)."""
    import bids_affect.decoding.linear as linear

    labels, runs = movie_labels(3, 60, 5, rng)
    X = StandardScaler().fit_transform(run_noise(runs, 500, rng))
    train, test = runs != 0, runs == 0
    Y = circular_shifts(labels, runs, 40, random_state=2)[:, train]
    C = 1.0 / X.shape[1]
    exact = fit_permutations(X[train], Y, X[test], C=C, dtype="float64", tol=1e-10)
    error = {}
    for sweep in (False, True):
        monkeypatch.setattr(linear._Multinomial, "gauss_seidel", sweep)
        three_steps = fit_permutations(X[train], Y, X[test], C=C, dtype="float64", max_iter=3,
                                       tol=1e-12)
        error[sweep] = np.abs(three_steps - exact).mean()
    assert error[True] < 0.9 * error[False]          # 0.80 here; 1.40 with the wrong sign


def test_shared_design_batches_take_equal_shares(rng, monkeypatch):
    import bids_affect.decoding.linear as linear

    X = rng.normal(size=(40, 10))
    Y = np.stack([rng.permutation(np.arange(30) % 3) for _ in range(10)])
    sizes = []
    original = linear._solve_batch
    monkeypatch.setattr(linear, "_solve_batch",
                        lambda *args: sizes.append(len(args[2])) or original(*args))
    batched = fit_permutations(X[:30], Y, X[30:], C=0.1, batch_size=4)
    assert sorted(sizes) == [3, 3, 4]
    np.testing.assert_allclose(batched, fit_permutations(X[:30], Y, X[30:], C=0.1), atol=1e-4)


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_default_tolerance_predicts_as_the_exact_optimum(rng, loss):
    """float32 at the default tolerance: >= 99% of test predictions of the exact fit."""
    labels, runs = movie_labels(3, 60, 5, rng)
    X = StandardScaler().fit_transform(run_noise(runs, 500, rng))
    train, test = runs != 0, runs == 0
    Y = circular_shifts(labels, runs, 40, random_state=2)[:, train]
    C = 1.0 / X.shape[1]
    exact = fit_permutations(X[train], Y, X[test], loss=loss, C=C, dtype="float64",
                             tol=1e-10).argmax(2)
    default = fit_permutations(X[train], Y, X[test], loss=loss, C=C).argmax(2)
    assert np.mean(default == exact) >= 0.99
    assert np.mean(default == exact, axis=1).min() >= 0.95        # 3 of 60 test volumes


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_classes_missing_from_a_permutations_training_labels(rng, loss):
    X = rng.normal(size=(70, 30))
    y = rng.integers(0, 4, size=70)
    X += rng.normal(size=(4, 30))[y]
    Y = np.stack([y[:50], np.where(y[:50] == 3, 0, y[:50]),        # 3 classes of 4
                  np.where(y[:50] >= 2, 1, y[:50])])                 # 2 classes of 4
    decision = fit_permutations(X[:50], Y, X[50:], loss=loss, C=0.05, n_classes=4,
                                dtype="float64", tol=1e-9)
    assert np.all(np.isneginf(decision[1][:, 3]))
    assert np.all(np.isneginf(decision[2][:, 2:]))
    for row, labels in enumerate(Y):
        clf = ESTIMATORS[loss](C=0.05, **TIGHT).fit(X[:50], labels)
        assert np.array_equal(clf.predict(X[50:]), decision[row].argmax(1))
        expected = clf.decision_function(X[50:])
        got = decision[row][:, clf.classes_]
        if got.shape[1] == 2:
            got = (got[:, 1] - got[:, 0]) / (2 if loss == "squared_hinge" else 1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_repeated_label_rows_are_solved_once_and_give_equal_results(rng, monkeypatch):
    import bids_affect.decoding.linear as linear

    X = rng.normal(size=(40, 10))
    y = rng.integers(0, 3, size=40)
    Y = np.stack([y[:30], np.roll(y[:30], 5), y[:30]])
    seen = []
    original = linear._solve_batch
    monkeypatch.setattr(linear, "_solve_batch",
                        lambda *args: seen.append(len(args[2])) or original(*args))
    decision = fit_permutations(X[:30], Y, X[30:], C=0.1)
    assert sum(seen) == 2
    np.testing.assert_array_equal(decision[0], decision[2])


def test_anova_masks_equal_select_percentile_per_permutation(rng):
    X = StandardScaler().fit_transform(rng.normal(size=(60, 137)))
    y = rng.integers(0, 3, size=60)
    X[:, :5] += y[:, None]
    X[:, 7] = 0.0                                    # constant: F is NaN, never kept first
    Y = np.stack([y, *(rng.permutation(y) for _ in range(5))])
    masks = anova_masks(X, Y, percentile=10)
    for row, labels in zip(masks, Y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = SelectPercentile(f_classif, percentile=10).fit(X, labels).get_support()
        np.testing.assert_array_equal(row, expected)
    assert masks[0, :5].all()


@pytest.mark.parametrize("loss", list(ESTIMATORS))
@pytest.mark.parametrize("reduction", [None, "pca", "anova"])
def test_null_predictions_equal_refits_of_the_whole_pipeline(rng, loss, reduction):
    labels, runs = movie_labels(3, 50, 4, rng)
    X = run_noise(runs, 120, rng)
    X += 0.3 * rng.normal(size=(4, 120)).astype(np.float32)[labels]
    permuted = circular_shifts(labels, runs, 5, random_state=1)
    splits = loro(runs)

    def make(fold=0, n_train=100):
        steps = [StandardScaler()]
        if reduction == "pca":
            steps.append(PCA(n_components=30, svd_solver="full"))
        if reduction == "anova":
            steps.append(SelectPercentile(f_classif, percentile=10))
        return make_pipeline(*steps, ESTIMATORS[loss](C=1 / 30))

    predicted = permutation_null_predictions(make, X, permuted, splits, 4)
    for row, guess in zip(permuted, predicted):
        assert np.mean(refit_predictions(make, X, row, splits) == guess) >= 0.99


def test_device_argument_accepts_torch_devices_and_names(rng):
    X = rng.normal(size=(30, 8))
    Y = rng.integers(0, 3, size=(2, 20))
    on_cpu = fit_permutations(X[:20], Y, X[20:], device=torch.device("cpu"))
    np.testing.assert_array_equal(on_cpu, fit_permutations(X[:20], Y, X[20:], device="cpu"))
    if torch.cuda.is_available():  # the same fits on the GPU
        on_gpu = fit_permutations(X[:20], Y, X[20:], device="cuda", dtype="float64", tol=1e-9)
        reference = fit_permutations(X[:20], Y, X[20:], dtype="float64", tol=1e-9)
        np.testing.assert_allclose(on_gpu, reference, rtol=1e-6, atol=1e-8)


def test_bad_arguments_name_the_parameter(rng):
    X = rng.normal(size=(30, 8))
    Y = rng.integers(0, 3, size=(2, 20))
    with pytest.raises(ValueError, match="loss: must be one of 'logistic', 'squared_hinge'"):
        fit_permutations(X[:20], Y, X[20:], loss="hinge")
    with pytest.raises(ValueError, match="C: must be a finite number > 0"):
        fit_permutations(X[:20], Y, X[20:], C=-1)
    with pytest.raises(ValueError, match="20 training samples"):
        fit_permutations(X[:20], Y[:, :10], X[20:])
    with pytest.raises(ValueError, match="dtype: must be one of"):
        fit_permutations(X[:20], Y, X[20:], dtype="float16")
    with pytest.raises(ValueError, match="C: must be a finite number > 0"):
        BalancedLogisticRegression(C=0).fit(X, np.arange(30) % 2)
    with pytest.raises(ValueError, match="cannot batch the step"):
        permutation_null_predictions(
            lambda fold, n: make_pipeline(SelectPercentile(), PCA(3),
                                          BalancedLogisticRegression()),
            X, Y[:, :15].repeat(2, axis=1), [(np.arange(20), np.arange(20, 30))], 3)


# --------------------------------------------------------------------------- science


@pytest.mark.parametrize("loss, plain", [
    ("logistic", lambda C: LogisticRegression(C=C, max_iter=1000)),
    ("squared_hinge", lambda C: LinearSVC(C=C)),
])
def test_null_mean_is_one_over_k_for_balanced_and_lower_for_plain_estimators(loss, plain):
    # Null data whose class frequencies differ across runs (a class frequent in the
    # training runs is rare in the left-out one): scikit-learn's estimators, whose
    # intercept favours training-frequent classes, anti-learn; the balanced,
    # prior-free ones stay at 1 / 5. Paired on the same datasets and shifts.
    balanced, plain_scores = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        labels, runs = movie_labels(4, 80, 5, rng)
        X = run_noise(runs, 100, rng)
        permuted = circular_shifts(labels, runs, 6, random_state=seed)
        splits = loro(runs)
        predicted = permutation_null_predictions(
            lambda fold, n: ESTIMATORS[loss](C=0.01), X, permuted, splits, 5)
        balanced.append(null_scores(permuted, predicted).mean())
        plain_scores.append(np.mean([
            balanced_accuracy_score(row, refit_predictions(lambda: plain(0.01), X, row, splits))
            for row in permuted]))
    balanced, plain_scores = np.array(balanced), np.array(plain_scores)
    assert 0.185 <= balanced.mean() <= 0.215
    assert plain_scores.mean() < 0.19
    assert np.mean(balanced - plain_scores) > 0.01


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_batched_and_refit_nulls_give_the_same_p_values(loss):
    # Weak planted signal, so that p is neither 1 / (n + 1) nor 1. Same permutations:
    # the p-values must agree within Monte Carlo error (here, exactly, since each
    # permutation's balanced accuracy is the same up to a rare tied prediction).
    rng = np.random.default_rng(3)
    labels, runs = movie_labels(3, 60, 3, rng)
    X = run_noise(runs, 80, rng)
    X += 0.12 * rng.normal(size=(3, 80)).astype(np.float32)[labels]
    splits = loro(runs)
    n_perm = 40
    permuted = circular_shifts(labels, runs, n_perm, random_state=0)

    def make(fold=0, n_train=0):
        return make_pipeline(StandardScaler(), ESTIMATORS[loss](C=1 / 80))

    observed = balanced_accuracy_score(labels, refit_predictions(make, X, labels, splits))
    batched = null_scores(permuted, permutation_null_predictions(make, X, permuted, splits, 3))
    refits = null_scores(permuted, [refit_predictions(make, X, row, splits)
                                    for row in permuted])
    p_batched = (1 + np.sum(batched >= observed)) / (1 + n_perm)
    p_refit = (1 + np.sum(refits >= observed)) / (1 + n_perm)
    assert 0.02 < p_refit < 0.98                      # the comparison is informative
    standard_error = np.sqrt(p_refit * (1 - p_refit) / n_perm)
    assert abs(p_batched - p_refit) <= 2 * standard_error
    assert np.mean(np.isclose(batched, refits)) >= 0.95


@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_planted_signal_is_found_and_null_data_stay_inside_the_null_band(loss):
    rng = np.random.default_rng(11)
    labels, runs = movie_labels(3, 60, 4, rng)
    noise = run_noise(runs, 100, rng)
    signal = noise + 0.6 * rng.normal(size=(4, 100)).astype(np.float32)[labels]
    splits = loro(runs)
    permuted = circular_shifts(labels, runs, 99, random_state=2)

    def make(fold=0, n_train=0):
        return make_pipeline(StandardScaler(), ESTIMATORS[loss](C=0.01))

    for X, found in ((signal, True), (noise, False)):
        observed = balanced_accuracy_score(labels, refit_predictions(make, X, labels, splits))
        null = null_scores(permuted, permutation_null_predictions(make, X, permuted,
                                                                  splits, 4))
        p_value = (1 + np.sum(null >= observed)) / (1 + len(null))
        assert 0.18 <= null.mean() <= 0.32
        if found:
            assert observed > 0.6 and p_value == 0.01
        else:
            assert np.percentile(null, 1) <= observed <= np.percentile(null, 99)


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(ESTIMATORS))
def test_null_mean_stays_at_one_over_k_after_a_pca_where_the_fit_is_weakly_penalised(loss):
    # After 20 PCA components, C = 1 / 20 penalises little: there, a fit without
    # intercept (tried first) centred the null on 0.188 (logistic) and 0.190 (SVM);
    # fitting the intercept and leaving it out of the scores gives 0.200.
    means = []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        labels, runs = movie_labels(3, 100, 5, rng, concentration=0.5)
        X = run_noise(runs, 300, rng, coefficient=0.8)
        X += 0.1 * X @ rng.normal(size=(300, 300)).astype(np.float32)   # correlated voxels
        permuted = circular_shifts(labels, runs, 100, random_state=seed)

        def make(fold, n_train):
            return make_pipeline(StandardScaler(), PCA(20, svd_solver="full"),
                                 ESTIMATORS[loss](C=1 / 20))

        predicted = permutation_null_predictions(make, X, permuted, loro(runs), 5)
        means.append(null_scores(permuted, predicted).mean())
    assert 0.193 <= np.mean(means) <= 0.207
