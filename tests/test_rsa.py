"""Tests of bids_affect.rsa: RDMs, their TSV form, comparisons and Mantel tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from bids_affect import rsa
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError

CLASSES = ["anger", "fear", "happiness", "love", "sadness", "surprise"]


def _rdm(values: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    names = names or [f"c{i}" for i in range(len(values))]
    return pd.DataFrame(values, index=names, columns=names)


def _random_rdm(rng: np.random.Generator, k: int, dims: int = 3) -> pd.DataFrame:
    """Euclidean distances of random points: a hollow, symmetric RDM without ties."""
    return _rdm(squareform(pdist(rng.normal(size=(k, dims)))))


def _upper(matrix) -> list[float]:
    matrix = np.asarray(matrix)
    return [matrix[i, j] for i in range(len(matrix)) for j in range(i + 1, len(matrix))]


def _brute_tau_a(x, y) -> float:
    """Kendall tau-a by counting every pair: (concordant - discordant) / all pairs."""
    score, n_pairs = 0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        product = (x[i] - x[j]) * (y[i] - y[j])
        score += int(product > 0) - int(product < 0)
        n_pairs += 1
    return score / n_pairs


def _brute_correlation(x, y, method: str) -> float:
    if method == "pearson":
        return stats.pearsonr(x, y).statistic
    if method == "spearman":
        return stats.spearmanr(x, y).statistic
    return _brute_tau_a(x, y)


def _brute_mantel_p(a: np.ndarray, b: np.ndarray, method: str, alternative: str) -> float:
    """Exact Mantel p by enumerating every relabelling of ``a`` with plain loops."""
    k = len(a)
    observed = _brute_correlation(_upper(a), _upper(b), method)
    n_extreme = 0
    for perm in itertools.permutations(range(k)):
        permuted = [[a[perm[i]][perm[j]] for j in range(k)] for i in range(k)]
        r = _brute_correlation(_upper(permuted), _upper(b), method)
        if alternative == "greater":
            n_extreme += r >= observed - 1e-12
        elif alternative == "less":
            n_extreme += r <= observed + 1e-12
        else:
            n_extreme += abs(r) >= abs(observed) - 1e-12
    return n_extreme / math.factorial(k)


# --------------------------------------------------------------------------- RDMs


def _planted_samples(rng, n_runs=4, per_cell=10, n_voxels=200, noise=6.0, signal=True):
    """Samples x voxels whose class means lie on a 3-D structure, plus their true means."""
    latent = rng.normal(size=(len(CLASSES), 3))
    means = latent @ rng.normal(size=(3, n_voxels)) + rng.normal(size=n_voxels)
    if not signal:
        means = np.zeros_like(means)
    labels = np.tile(np.repeat(CLASSES, per_cell), n_runs)
    runs = np.repeat(np.arange(1, n_runs + 1), len(CLASSES) * per_cell)
    X = means[np.searchsorted(CLASSES, labels)] + noise * rng.normal(size=(len(labels), n_voxels))
    return X.astype(np.float32), labels, runs, means


@pytest.mark.parametrize("distance", ["correlation", "euclidean", "cv_euclidean", "crossnobis"])
def test_planted_geometry_is_recovered(rng, distance):
    X, labels, runs, means = _planted_samples(rng)
    planted = {"correlation": pdist(means, "correlation"),
               "euclidean": pdist(means, "euclidean"),
               "cv_euclidean": pdist(means, "sqeuclidean"),
               "crossnobis": pdist(means, "sqeuclidean")}[distance]
    measured = rsa.compute_rdm(X, labels, distance=distance, runs=runs)
    assert list(measured.index) == CLASSES == list(measured.columns)
    assert np.allclose(measured, measured.T) and (np.diag(measured) == 0).all()
    assert stats.spearmanr(planted, _upper(measured)).statistic >= 0.9
    shuffled = rsa.compute_rdm(X, rng.permutation(labels), distance=distance, runs=runs)
    assert stats.spearmanr(planted, _upper(shuffled)).statistic < 0.7


def test_crossvalidated_distance_is_unbiased_without_signal(rng):
    X, labels, runs, _ = _planted_samples(rng, signal=False, noise=1.0)
    crossvalidated = np.array(_upper(rsa.compute_rdm(X, labels, distance="cv_euclidean",
                                                     runs=runs)))
    euclidean = np.array(_upper(rsa.compute_rdm(X, labels, distance="euclidean")))
    standard_error = crossvalidated.std(ddof=1) / np.sqrt(crossvalidated.size)
    assert abs(crossvalidated.mean()) < 3 * standard_error
    assert (crossvalidated < 0).any()
    assert (euclidean > 0.5).all()  # noise alone separates plain class means


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("distance", ["cv_euclidean", "crossnobis", "correlation", "euclidean"])
def test_distances_match_rsatoolbox(rng, distance):
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    X, labels, runs, _ = _planted_samples(rng, n_runs=3, per_cell=4, n_voxels=12, noise=2.0)
    X = X.astype(np.float64)
    dataset = Dataset(X, obs_descriptors={"emotion": labels, "run": runs})
    if distance in ("cv_euclidean", "crossnobis"):
        noise = None
        if distance == "crossnobis":
            cells = pd.DataFrame(X).groupby([runs, labels]).transform("mean").to_numpy()
            n_cells = len(np.unique(runs)) * len(CLASSES)
            noise = np.diag(1 / (((X - cells) ** 2).sum(axis=0) / (len(X) - n_cells)))
        reference = calc_rdm(dataset, method="crossnobis", descriptor="emotion",
                             cv_descriptor="run", noise=noise)
    else:
        reference = calc_rdm(dataset, method=distance, descriptor="emotion")
    order = list(reference.pattern_descriptors["emotion"])
    expected = reference.get_matrices()[0]
    ours = rsa.compute_rdm(X, labels, distance=distance, runs=runs).loc[order, order]
    if distance == "euclidean":  # rsatoolbox: squared distance per channel
        ours = ours**2 / X.shape[1]
    np.testing.assert_allclose(ours.to_numpy(), expected, rtol=1e-10, atol=1e-12)


def test_crossvalidated_distance_with_classes_missing_from_runs(rng):
    X, labels, runs, _ = _planted_samples(rng, n_runs=3)
    keep = ~((labels == "anger") & (runs == 1))  # a movie run without anger
    rdm = rsa.compute_rdm(X[keep], labels[keep], distance="cv_euclidean", runs=runs[keep])
    assert np.isfinite(rdm.to_numpy()).all()
    only_run_one = ~((labels == "fear") & (runs != 1))  # fear never held out with training data
    with pytest.raises(InputDataError, match="'fear'"):
        rsa.compute_rdm(X[only_run_one], labels[only_run_one], distance="cv_euclidean",
                        runs=runs[only_run_one])


def test_class_patterns_are_float64_class_means(rng):
    X = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.choice(["b", "a", "c"], size=30)
    patterns = rsa.class_patterns(X, labels, classes=["c", "a"])
    expected = pd.DataFrame(X.astype(np.float64)).groupby(labels).mean().loc[["c", "a"]]
    assert list(patterns.index) == ["c", "a"]
    np.testing.assert_allclose(patterns.to_numpy(), expected.to_numpy(), rtol=1e-12)


def test_compute_rdm_refuses_bad_input(rng):
    X, labels, runs, _ = _planted_samples(rng, n_runs=2, per_cell=3, n_voxels=5)
    with pytest.raises(UsageError, match="cv_euclidean"):
        rsa.compute_rdm(X, labels, distance="mahalanobis")
    with pytest.raises(UsageError, match="runs"):
        rsa.compute_rdm(X, labels, distance="crossnobis")
    with pytest.raises(InputDataError, match="'joy' has no samples"):
        rsa.compute_rdm(X, labels, classes=["anger", "joy", "fear"])
    with pytest.raises(InputDataError, match="at least 2 runs; got 1"):
        rsa.compute_rdm(X, labels, distance="cv_euclidean", runs=np.ones(len(X)))
    with pytest.raises(InputDataError, match="one label for each"):
        rsa.compute_rdm(X, labels[1:])
    broken = X.copy()
    broken[np.flatnonzero(labels == "love")[0], 2] = np.nan
    with pytest.raises(InputDataError, match="'love' hold non-finite"):
        rsa.compute_rdm(broken, labels)


#: Classes of each cross-validation fold in the fold-averaged tests: every pair meets in one.
FOLD_CLASSES = [(0, 1, 2, 3), (2, 3, 4, 5), (0, 1, 4, 5)]


def _fold_features(rng, means, transform: str, per_class=10, noise=1.0):
    """Per fold: noisy samples of its classes, in a feature space of the fold's own.

    ``rotation``: a random orthogonal map of the features plus a large offset
    (as two networks' units are); ``permutation``: shuffled units, rescaled.
    """
    n_features = means.shape[1]
    features, labels = [], []
    for fold in FOLD_CLASSES:
        names = np.repeat([CLASSES[c] for c in fold], per_class)
        X = means[np.searchsorted(CLASSES, names)] + noise * rng.normal(size=(len(names),
                                                                               n_features))
        if transform == "rotation":
            q, r = np.linalg.qr(rng.normal(size=(n_features, n_features)))
            X = X @ (q * np.sign(np.diag(r))) + 5 * rng.normal(size=n_features)
        else:
            X = X[:, rng.permutation(n_features)] * rng.uniform(0.5, 2.0)
        features.append(X)
        labels.append(names)
    return features, labels


@pytest.mark.parametrize(("distance", "transform"), [("euclidean", "rotation"),
                                                     ("correlation", "permutation")])
def test_fold_averaged_rdm_recovers_geometry_across_feature_spaces(rng, distance, transform):
    means = rng.normal(size=(len(CLASSES), 3)) @ rng.normal(size=(3, 40))
    planted = pdist(means, distance)
    features, labels = _fold_features(rng, means, transform)
    rdm, n_folds = rsa.fold_averaged_rdm(features, labels, distance=distance)
    assert list(rdm.index) == CLASSES == list(n_folds.columns)
    assert stats.spearmanr(planted, _upper(rdm)).statistic >= 0.9
    pooled = rsa.compute_rdm(np.concatenate(features), np.concatenate(labels),
                             distance=distance)
    if transform == "rotation":  # class means pooled across feature spaces lose the geometry
        assert stats.spearmanr(planted, _upper(pooled)).statistic < 0.7
    assert n_folds.loc["anger", "fear"] == 2 and n_folds.loc["anger", "happiness"] == 1
    assert (np.diag(n_folds) == 2).all()


def test_fold_averaged_rdm_averages_each_pair_over_the_folds_holding_it(rng):
    means = rng.normal(size=(len(CLASSES), 8))
    features, labels = _fold_features(rng, means, "permutation")
    rdm, n_folds = rsa.fold_averaged_rdm(features, labels, classes=CLASSES[::-1])
    per_fold = [rsa.compute_rdm(X, names) for X, names in zip(features, labels)]
    # anger and fear meet in folds 1 and 3, anger and happiness in fold 1 only
    assert rdm.loc["anger", "fear"] == pytest.approx(
        (per_fold[0].loc["anger", "fear"] + per_fold[2].loc["anger", "fear"]) / 2)
    assert rdm.loc["anger", "happiness"] == pytest.approx(per_fold[0].loc["anger", "happiness"])
    assert list(rdm.index) == CLASSES[::-1] and np.allclose(rdm, rdm.T)
    single, counts = rsa.fold_averaged_rdm(features[:1], labels[:1])
    pd.testing.assert_frame_equal(single, per_fold[0])
    assert (counts.to_numpy() == 1).all()


def test_fold_averaged_rdm_refuses_pairs_no_fold_holds(rng):
    means = rng.normal(size=(len(CLASSES), 8))
    features, labels = _fold_features(rng, means, "permutation")
    with pytest.raises(InputDataError, match="'happiness' and 'sadness' never occur in the same"):
        rsa.fold_averaged_rdm(features[::2], labels[::2])  # folds 1 and 3
    with pytest.raises(InputDataError, match="'joy' has no samples in any fold"):
        rsa.fold_averaged_rdm(features, labels, classes=["anger", "joy", "fear"])
    with pytest.raises(UsageError, match="per fold"):
        rsa.fold_averaged_rdm(features, labels[:2])


# --------------------------------------------------------------------------- TSV form


def test_rdm_table_round_trip(rng, tmp_path):
    rdm = rsa.compute_rdm(*_planted_samples(rng)[:2])
    table = rsa.rdm_to_table(rdm)
    assert list(table.columns) == ["class", *CLASSES]
    assert list(table["class"]) == CLASSES
    path = tmp_path / "sub-01_task-movie_desc-brain_rdm.tsv"
    table.to_csv(path, sep="\t", index=False)
    pd.testing.assert_frame_equal(rsa.read_rdm(path), rdm)


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, problem", [
    ("class\ta\tb\tc\na\t0\t1\t2\nb\t1\t0\t3\nc\t2\t3.5\t0\n", "not symmetric"),
    ("class\ta\tb\tc\na\t0\t1\t2\nb\t1\t0.1\t3\nc\t2\t3\t0\n", "diagonal must be zero"),
    ("class\ta\tb\tc\na\t0\t1\t2\nb\t1\t0\t3\nd\t2\t3\t0\n", "do not match the class names"),
    ("class\ta\tc\tb\na\t0\t1\t2\nb\t1\t0\t3\nc\t2\t3\t0\n", "do not match the class names"),
    ("name\ta\tb\tc\na\t0\t1\t2\nb\t1\t0\t3\nc\t2\t3\t0\n", "first column must be 'class'"),
    ("class\ta\tb\tc\na\t0\t1\t2\nb\t1\t0\t3\n", "must be square"),
    ("class\ta\tb\tc\na\t0\tfar\t2\nb\t1\t0\t3\nc\t2\t3\t0\n", "is not a number: 'far'"),
    ("class\ta\tb\tc\na\t0\tn/a\t2\nb\tn/a\t0\t3\nc\t2\t3\t0\n", "is not a number"),
    ("class\ta\tb\tc\na\t0\tinf\t2\nb\tinf\t0\t3\nc\t2\t3\t0\n", "non-finite"),
])
def test_read_rdm_refuses_bad_files_naming_them(tmp_path, text, problem):
    path = _write(tmp_path / "valence.tsv", text)
    with pytest.raises(InputDataError, match=problem) as caught:
        rsa.read_rdm(path)
    assert str(caught.value).startswith(str(path))
    assert caught.value.exit_code == 65


def test_read_rdm_accepts_rounding_and_missing_file(tmp_path):
    path = _write(tmp_path / "ok.tsv", "class\ta\tb\tc\na\t0\t1\t2\nb\t1.000000001\t0\t3\n"
                                        "c\t2\t3\t1e-12\n")
    rdm = rsa.read_rdm(path)
    assert rdm.loc["a", "b"] == rdm.loc["b", "a"] and rdm.loc["c", "c"] == 0
    with pytest.raises(InputMissingError, match="not found"):
        rsa.read_rdm(tmp_path / "absent.tsv")


# --------------------------------------------------------------------------- comparisons


def test_kendall_tau_a_equals_pair_count_with_ties(rng):
    x, y = rng.integers(0, 4, size=60), rng.integers(0, 3, size=60)
    tau_a = rsa.kendall_tau_a(x, y)
    assert tau_a == pytest.approx(_brute_tau_a(x, y), abs=1e-15)
    assert abs(tau_a - stats.kendalltau(x, y).statistic) > 1e-3  # not tau-b
    assert rsa.kendall_tau_a(np.ones(5), np.arange(5)) == 0.0
    a, b = _rdm(squareform(rng.integers(1, 4, 15))), _rdm(squareform(rng.integers(1, 3, 15)))
    assert rsa.compare_rdms(a, b, "kendall_tau_a") == pytest.approx(
        _brute_tau_a(_upper(a), _upper(b)), abs=1e-15)


@pytest.mark.parametrize("method", list(rsa.METHODS))
def test_compare_rdms_aligns_classes_by_name(rng, method):
    a, b = _random_rdm(rng, 6), _random_rdm(rng, 6)
    order = list(rng.permutation(a.index))
    expected = _brute_correlation(_upper(a), _upper(b), method)
    assert rsa.compare_rdms(a, b.loc[order, order], method) == pytest.approx(expected, abs=1e-12)
    renamed = b.rename(index={"c5": "other"}, columns={"c5": "other"})
    with pytest.raises(InputDataError, match="no class 'c5'"):
        rsa.compare_rdms(a, renamed, method)


def test_constant_rdm_gives_nan_with_warning(rng):
    a = _rdm(1 - np.eye(4))
    with pytest.warns(RuntimeWarning, match="all equal"):
        result = rsa.mantel_test(a, _random_rdm(rng, 4))
    assert np.isnan(result.statistic) and np.isnan(result.p_value)


# --------------------------------------------------------------------------- Mantel test


@pytest.mark.parametrize("method", list(rsa.METHODS))
@pytest.mark.parametrize("alternative", rsa.ALTERNATIVES)
def test_exact_p_equals_brute_force_enumeration(rng, method, alternative):
    a = _random_rdm(rng, 5)
    b = _rdm(a.to_numpy() ** 2 + rng.normal(scale=0.5, size=(5, 5)) * (1 - np.eye(5)))
    b = (b + b.T) / 2
    ties = _rdm(squareform(rng.integers(1, 4, 10)))  # tied entries: ranks and tau-a ties
    for first, second in ((a, b), (ties, b), (a, ties)):
        result = rsa.mantel_test(first, second, method=method, alternative=alternative)
        assert result.exact and result.n_permutations == 120
        expected = _brute_mantel_p(first.to_numpy(), second.to_numpy(), method, alternative)
        assert result.p_value == pytest.approx(expected, abs=1e-12)
        assert result.statistic == pytest.approx(
            _brute_correlation(_upper(first), _upper(second), method), abs=1e-12)


def test_exact_p_counts_the_identity(rng):
    a = _random_rdm(rng, 5)
    result = rsa.mantel_test(a, a)
    assert result.p_value == pytest.approx(1 / 120)
    assert rsa.mantel_test(a, a, alternative="less").p_value == 1.0


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_monte_carlo_agrees_with_scikit_bio(rng, method, alternative):
    from skbio import DistanceMatrix
    from skbio.stats.distance import mantel

    a = _random_rdm(rng, 11)
    b = _rdm(_random_rdm(rng, 11).to_numpy() + 0.3 * a.to_numpy())  # p between .05 and .2
    ours = rsa.mantel_test(a, b, method=method, alternative=alternative, random_state=11)
    statistic, p_value, _ = mantel(DistanceMatrix(a.to_numpy()), DistanceMatrix(b.to_numpy()),
                                   method=method, permutations=10000, alternative=alternative,
                                   seed=11)
    assert not ours.exact and ours.n_permutations == 10000
    assert ours.statistic == pytest.approx(statistic, abs=1e-10)
    # The same seed draws the same permutations as scikit-bio: the p-values are equal.
    assert ours.p_value == p_value
    assert 0.01 < p_value < 0.5


def test_monte_carlo_is_reproducible(rng):
    a, b = _random_rdm(rng, 10), _random_rdm(rng, 10)
    first = rsa.mantel_test(a, b, n_permutations=99, random_state=3)
    assert first == rsa.mantel_test(a, b, n_permutations=99, random_state=3)
    assert round(first.p_value * 100) == pytest.approx(first.p_value * 100) and first.p_value > 0
    others = {rsa.mantel_test(a, b, n_permutations=99, random_state=s).p_value for s in range(8)}
    assert len(others) > 1


def test_no_structure_gives_calibrated_p_values(rng):
    p_values = np.array([rsa.mantel_test(_random_rdm(rng, 6), _random_rdm(rng, 6),
                                         method="spearman").p_value for _ in range(200)])
    assert 0.01 <= (p_values < 0.05).mean() < 0.1
    assert 0.4 < p_values.mean() < 0.6


@pytest.mark.parametrize("call", [
    lambda a, b: rsa.mantel_test(a, b),
    lambda a, b: rsa.compare_rdms(a, b),
    lambda a, b: rsa.compare_rdms_table({"brain": a, "model": b}),
])
def test_fewer_than_three_classes_refused(call):
    a = _rdm(np.array([[0.0, 1.0], [1.0, 0.0]]), ["fear", "joy"])
    with pytest.raises(InputDataError, match=r"needs at least 3 classes; got 2 \(fear, joy\)"):
        call(a, a * 2)


def test_bad_parameters_refused(rng):
    a = _random_rdm(rng, 11)
    with pytest.raises(UsageError, match="limited to 10 classes; got 11"):
        rsa.mantel_test(a, a, exact=True)
    with pytest.raises(UsageError, match="alternative"):
        rsa.mantel_test(a, a, alternative="bigger")
    with pytest.raises(UsageError, match="method"):
        rsa.mantel_test(a, a, method="kendall")
    with pytest.raises(UsageError, match="n_permutations"):
        rsa.mantel_test(a, a, n_permutations=-1)
    assert np.isnan(rsa.mantel_test(a, a, n_permutations=0).p_value)


# --------------------------------------------------------------------------- tables


def test_compare_rdms_table(rng):
    X, labels, runs, means = _planted_samples(rng)
    rdms = {"brain": rsa.compute_rdm(X, labels),
            "cnnfc7": rsa.compute_rdm(means, CLASSES, distance="euclidean"),
            "valence": _rdm(squareform(pdist(rng.normal(size=(6, 1)))), CLASSES[::-1])}
    table = rsa.compare_rdms_table(rdms, methods=("spearman", "kendall_tau_a"))
    assert tuple(table.columns) == rsa.TABLE_COLUMNS
    assert list(zip(table.rdm_a, table.rdm_b, table.method)) == [
        (a, b, m) for a, b in itertools.combinations(rdms, 2)
        for m in ("spearman", "kendall_tau_a")]
    assert (table.n_permutations == 720).all() and table.exact.all()
    for row in table.itertuples():
        result = rsa.mantel_test(rdms[row.rdm_a], rdms[row.rdm_b], method=row.method)
        assert (row.r, row.p) == (result.statistic, result.p_value)
    assert table.p.iloc[0] < 0.05  # planted brain geometry against the true means


def test_compare_rdms_table_on_shared_classes(rng):
    brain = _random_rdm(rng, 6)
    brain.index = brain.columns = CLASSES
    model = brain.loc[CLASSES[:5], CLASSES[:5]] ** 2  # a model without surprise
    valence = _rdm(squareform(pdist(rng.normal(size=(4, 1)))), ["joy", *CLASSES[3:0:-1]])
    with pytest.raises(InputDataError, match="has no class 'surprise'"):
        rsa.compare_rdms_table({"brain": brain, "model": model})
    table = rsa.compare_rdms_table({"brain": brain, "model": model, "valence": valence},
                                   shared_classes=True)
    assert table.n_permutations.tolist() == [120, 6, 6]  # 5, 3 and 3 shared classes
    shared = rsa.shared_class_names({"brain": brain, "valence": valence}, "brain", "valence")
    assert shared == ["fear", "happiness", "love"]
    assert table.r.iloc[1] == rsa.mantel_test(brain.loc[shared, shared],
                                              valence.loc[shared, shared],
                                              method="spearman").statistic
    assert table.r.iloc[0] == pytest.approx(1.0)
    with pytest.raises(InputDataError, match="at least 3 classes; got 2"):
        rsa.compare_rdms_table({"brain": brain, "other": valence.iloc[:3, :3]},
                               shared_classes=True)
    same = {name: _random_rdm(rng, 9) for name in ("a", "b", "c")}
    pd.testing.assert_frame_equal(
        rsa.compare_rdms_table(same, n_permutations=99, random_state=1),
        rsa.compare_rdms_table(same, n_permutations=99, random_state=1, shared_classes=True))


def test_compare_rdms_table_monte_carlo_and_empty(rng):
    rdms = {name: _random_rdm(rng, 9) for name in ("a", "b", "c")}
    table = rsa.compare_rdms_table(rdms, n_permutations=199, random_state=2)
    assert (table.n_permutations == 199).all() and not table.exact.any()
    pd.testing.assert_frame_equal(
        table, rsa.compare_rdms_table(rdms, n_permutations=199, random_state=2))
    empty = rsa.compare_rdms_table({"a": rdms["a"]})
    assert empty.empty and tuple(empty.columns) == rsa.TABLE_COLUMNS
