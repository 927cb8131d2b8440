"""Encoding models: HRF, PLS/ridge/banded ridge, nulls, leakage audit, final model.

Science tests plant voxels driven by known features through the HRF and check
that they are found (and that the others, and unrelated features, stay inside
the null); identity tests compare with nilearn, scikit-learn and himalaya.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nilearn.glm.first_level import compute_regressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from bids_affect.encoding import (
    BandedRidgeEncoder,
    EncodingModel,
    PLSEncoder,
    RidgeEncoder,
    check_rois,
    convolve_features,
    cross_validated_fits,
    encode,
    inner_splits,
    make_encoder,
    pls_components,
    random_split_scores,
    refit_shift_null,
    run_shift_null,
    shifted_rows,
    voxel_scores,
)
from bids_affect.exceptions import InputDataError, UsageError

TR = 2.0


def ar1(rng: np.random.Generator, n: int, k: int, phi: float) -> np.ndarray:
    """Stationary AR(1) series with unit variance, ``(n, k)``."""
    noise = rng.normal(size=(n, k))
    out = np.empty((n, k))
    out[0] = noise[0]
    for t in range(1, n):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi ** 2) * noise[t]
    return out


def simulate(seed: int, *, n_runs: int = 4, n: int = 100, p: int = 12, q: int = 40,
             n_planted: int = 8, strength: float = 1.0, phi_noise: float = 0.5,
             driving: slice = slice(0, 3)):
    """Features per run (AR(1), one sample per volume) and BOLD whose first voxels they drive.

    Planted voxels are a random unit-norm mix of the ``driving`` features
    convolved with the SPM HRF (z-scored per run) times ``strength``, plus
    AR(1) noise of unit variance.
    """
    rng = np.random.default_rng(seed)
    n_planted = min(n_planted, q)
    mixing = np.zeros((p, q))
    n_driving = len(range(p)[driving])
    directions = rng.normal(size=(n_driving, n_planted))
    mixing[driving, :n_planted] = directions / np.linalg.norm(directions, axis=0)
    times = TR * np.arange(n)
    features, bold = [], []
    for _ in range(n_runs):
        values = ar1(rng, n, p, 0.8).astype(np.float32)
        design = convolve_features(values, times, times)
        design = (design - design.mean(axis=0)) / design.std(axis=0)
        bold.append((strength * design @ mixing + ar1(rng, n, q, phi_noise)).astype(np.float32))
        features.append((values, times))
    planted = np.arange(q) < n_planted
    return features, bold, planted


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- HRF


def nilearn_columns(values, times, frames, duration, hrf, fir_scans=None):
    """compute_regressor on each feature column, delay-major like convolve_features."""
    columns = []
    for column in values.T:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regressor, _ = compute_regressor(
                np.vstack([times, np.full(len(times), duration), column]), hrf, frames,
                fir_delays=fir_scans)
        columns.append(regressor)
    stacked = np.stack(columns, axis=1)                      # (n, features, kernels)
    return stacked.transpose(0, 2, 1).reshape(len(frames), -1)


@pytest.mark.parametrize("hrf, tr, frequency, first_sample, start_time", [
    ("spm", 2.0, 0.5, 0.0, 0.0),          # one sample per volume, as seed 000
    ("glover", 2.0, 0.5, 0.0, 0.0),
    ("spm", 1.5, 5.0, -0.3, 0.0),          # every 5th frame of a 25 fps movie
    ("glover", 0.8, 3.0, 0.1, 0.4),        # samples off the volume grid, StartTime 0.4 s
    ("spm", 2.0, 0.37, -3.0, 1.0),
])
def test_convolution_equals_nilearn_compute_regressor(rng, hrf, tr, frequency, first_sample,
                                                      start_time):
    frames = start_time + tr * np.arange(60)
    n_samples = int(np.ceil((frames[-1] + tr - first_sample) * frequency)) + 1
    times = first_sample + np.arange(n_samples) / frequency
    values = rng.normal(size=(n_samples, 6))
    ours = convolve_features(values, times, frames, sampling_frequency=frequency, hrf=hrf)
    theirs = nilearn_columns(values, times, frames, 1 / frequency, hrf)
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * np.abs(theirs).max())


def test_fir_delays_equal_nilearn_fir_and_lagged_copies(rng):
    frames = TR * np.arange(50)
    values = rng.normal(size=(50, 4))
    ours = convolve_features(values, frames, frames, hrf="fir", fir_delays=(0.0, 2.0, 4.0, 8.0))
    theirs = nilearn_columns(values, frames, frames, TR, "fir", fir_scans=[0, 1, 2, 4])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    # per-volume features: delay d gives the features of d / TR volumes before
    np.testing.assert_allclose(ours[4:, 12:16], values[:-4], atol=1e-9)


def test_samples_long_before_the_run_are_ignored(rng):
    frames = TR * np.arange(40)
    times = TR * np.arange(-30, 40)                  # the stimulus began 60 s before the run
    values = rng.normal(size=(70, 2))
    ours = convolve_features(values, times, frames)
    recent = times + TR > -24.0                       # nilearn's grid starts 24 s before
    theirs = nilearn_columns(values[recent], times[recent], frames, TR, "spm")
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_convolution_keeps_float32_and_shape(rng):
    frames = TR * np.arange(40)
    design = convolve_features(rng.normal(size=(40, 3)).astype(np.float32), frames, frames,
                               hrf="fir")
    assert design.dtype == np.float32 and design.shape == (40, 12)


def test_features_shorter_than_the_run_are_refused(rng):
    frames = TR * np.arange(50)
    with pytest.raises(InputDataError) as err:
        convolve_features(rng.normal(size=(40, 3)), frames[:40], frames, name="alexnet run 1")
    message = one_line(err)
    assert message.startswith("alexnet run 1:") and "cover 0.00-80.00 s" in message
    assert "0.00-100.00 s" in message and "fix:" in message


def test_nan_features_are_refused(rng):
    frames = TR * np.arange(30)
    values = rng.normal(size=(30, 3))
    values[7, 1] = np.nan
    with pytest.raises(InputDataError, match="row 7") as err:
        convolve_features(values, frames, frames)
    one_line(err)


def test_unknown_hrf_is_a_usage_error(rng):
    frames = TR * np.arange(30)
    with pytest.raises(UsageError, match="hrf: must be one of 'spm', 'glover', 'fir'"):
        convolve_features(rng.normal(size=(30, 2)), frames, frames, hrf="canonical")


# --------------------------------------------------------------------------- estimators


@parametrize_with_checks([PLSEncoder(n_components=1), RidgeEncoder(alphas=(1.0, 10.0), gap=0),
                          BandedRidgeEncoder(alphas=(1.0, 10.0), gap=0, n_iter=2,
                                             random_state=0)])
def test_scikit_learn_estimator_contract(estimator, check):
    check(estimator)


def low_rank_data(rng, n, p, q, rank=5):
    latent = rng.normal(size=(n, rank))
    X = latent @ rng.normal(size=(rank, p)) + rng.normal(size=(n, p))
    Y = latent @ rng.normal(size=(rank, q)) + rng.normal(size=(n, q))
    return X, Y


@pytest.mark.parametrize("n, p, q", [(120, 300, 20), (200, 60, 150), (150, 40, 3)])
@pytest.mark.parametrize("space", ["features", "samples", "targets"])
def test_pls_equals_scikit_learn(rng, n, p, q, space):
    X, Y = low_rank_data(rng, n, p, q)
    ours = PLSEncoder(n_components=6, space=space).fit(X[:100], Y[:100])
    theirs = PLSRegression(n_components=6, tol=1e-14, max_iter=10_000).fit(X[:100], Y[:100])
    expected = theirs.predict(X[100:])
    np.testing.assert_allclose(ours.predict(X[100:]), expected,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(np.abs(ours.x_weights_), np.abs(theirs.x_weights_), atol=1e-5)
    assert ours.space_ == space


def test_pls_float32_predictions_correlate_with_scikit_learn_defaults(rng):
    X, Y = low_rank_data(rng, 300, 500, 200, rank=10)
    ours = PLSEncoder(n_components=20).fit(X.astype(np.float32), Y.astype(np.float32))
    predicted = ours.predict(X.astype(np.float32))
    expected = PLSRegression(n_components=20).fit(X, Y).predict(X)
    assert predicted.dtype == np.float32
    r, _ = voxel_scores(expected, predicted)
    assert r.min() >= 0.9999


def test_pls_components_agree_across_spaces(rng):
    X, Y = low_rank_data(rng, 50, 30, 20)
    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    scores = [pls_components(X, Y, 4, space)[2] for space in ("features", "samples", "targets")]
    for other in scores[1:]:
        np.testing.assert_allclose(np.abs(other), np.abs(scores[0]), atol=1e-8)


def test_pls_more_components_than_the_rank_is_refused(rng):
    base = rng.normal(size=(60, 3))
    X = np.hstack([base, base, base @ rng.normal(size=(3, 4))])   # 10 columns, rank 3
    with pytest.raises(InputDataError) as err:
        PLSEncoder(n_components=5).fit(X, rng.normal(size=(60, 4)))
    message = one_line(err)
    assert "exceeds the rank of the features (3)" in message and "at most 3" in message
    with pytest.raises(InputDataError, match="rank bound"):
        PLSEncoder(n_components=11).fit(X, rng.normal(size=(60, 4)))


def brute_force_alphas(Xz, Y, splits, alphas):
    """Each voxel's penalty by the inner CV's mean squared error, with scikit-learn's Ridge."""
    errors = np.zeros((len(alphas), Y.shape[1]))
    for a, alpha in enumerate(alphas):
        for train, test in splits:
            fitted = Ridge(alpha=alpha).fit(Xz[train], Y[train])
            errors[a] += np.mean((fitted.predict(Xz[test]) - Y[test]) ** 2, axis=0)
    return np.asarray(alphas)[errors.argmin(axis=0)]


def test_ridge_alphas_and_predictions_equal_a_brute_force_search(rng):
    runs = np.repeat([1, 2, 3, 4], 30)
    X = rng.normal(size=(120, 8))
    Y = X[:, :3] @ rng.normal(size=(3, 6)) * np.array([3, 1, 0.3, 0.1, 0, 0])
    Y = Y + rng.normal(size=Y.shape)
    alphas = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)
    model = RidgeEncoder(alphas=alphas).fit(X, Y, runs=runs)
    Xz = (X - X.mean(axis=0)) / X.std(axis=0)
    splits = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in (1, 2, 3, 4)]
    expected = brute_force_alphas(Xz, Y, splits, alphas)
    np.testing.assert_allclose(model.best_alphas_, expected, rtol=1e-5)
    assert len(np.unique(model.best_alphas_)) > 1
    test = rng.normal(size=(10, 8))
    for voxel, alpha in enumerate(model.best_alphas_):
        reference = Ridge(alpha=alpha).fit(Xz, Y[:, voxel])
        np.testing.assert_allclose(model.predict(test)[:, voxel],
                                   reference.predict((test - X.mean(axis=0)) / X.std(axis=0)),
                                   rtol=1e-4, atol=1e-4)


def test_ridge_primal_and_dual_solvers_agree(rng):
    runs = np.repeat([1, 2, 3], 20)
    X = rng.normal(size=(60, 90))                                   # more features than volumes
    Y = X[:, :2] @ rng.normal(size=(2, 4)) + rng.normal(size=(60, 4))
    alphas = (1.0, 30.0, 1e3, 1e5)
    primal = RidgeEncoder(alphas=alphas, solver="primal").fit(X, Y, runs=runs)
    dual = RidgeEncoder(alphas=alphas).fit(X, Y, runs=runs)
    assert (primal.solver_, dual.solver_) == ("primal", "dual")
    np.testing.assert_allclose(dual.best_alphas_, primal.best_alphas_, rtol=1e-6)
    test = rng.normal(size=(7, 90))
    np.testing.assert_allclose(dual.predict(test), primal.predict(test), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_ridge_voxel_batches_do_not_change_the_fit(rng, solver):
    runs = np.repeat([1, 2, 3], 20)
    X = rng.normal(size=(60, 30))
    Y = X[:, :2] @ rng.normal(size=(2, 7)) * np.arange(7) + rng.normal(size=(60, 7))
    whole = RidgeEncoder(solver=solver, n_targets_batch=None).fit(X, Y, runs=runs)
    batched = RidgeEncoder(solver=solver, n_targets_batch=3).fit(X, Y, runs=runs)
    assert RidgeEncoder().n_targets_batch is not None                # bounded by default
    assert len(np.unique(whole.best_alphas_)) > 1
    np.testing.assert_array_equal(batched.best_alphas_, whole.best_alphas_)
    np.testing.assert_allclose(batched.weights_, whole.weights_, rtol=1e-6, atol=1e-9)


def test_ridge_torch_backend_equals_numpy_and_restores_the_backend(rng):
    import torch
    from himalaya.backend import get_backend

    runs = np.repeat([1, 2, 3], 20)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    Y = (X[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(60, 3))).astype(np.float32)
    numpy_fit = RidgeEncoder(alphas=(1.0, 10.0, 100.0)).fit(X, Y, runs=runs)
    torch_fit = RidgeEncoder(alphas=(1.0, 10.0, 100.0), backend="torch").fit(X, Y, runs=runs)
    assert isinstance(torch_fit.weights_, np.ndarray) and get_backend().name == "numpy"
    np.testing.assert_allclose(torch_fit.predict(X), numpy_fit.predict(X), atol=1e-4)
    np.testing.assert_allclose(torch_fit.best_alphas_, numpy_fit.best_alphas_, rtol=1e-5)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="cannot use backend 'torch_cuda'"):
            RidgeEncoder(backend="torch_cuda").fit(X, Y, runs=runs)
        assert get_backend().name == "numpy"


def test_banded_ridge_equals_himalaya(rng):
    from himalaya.ridge import BandedRidgeCV

    runs = np.repeat([1, 2, 3], 30)
    X = rng.normal(size=(90, 7))
    Y = X[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(90, 3))
    ours = BandedRidgeEncoder(bands=(4, 3), alphas=(0.1, 10.0, 1e3), n_iter=5,
                              random_state=3).fit(X, Y, runs=runs)
    Xz = (X - X.mean(axis=0)) / X.std(axis=0)
    seed = int(np.random.default_rng(3).integers(2**31 - 1))
    theirs = BandedRidgeCV(groups=np.repeat([0, 1], [4, 3]), cv=inner_splits(90, runs),
                           fit_intercept=True, random_state=seed,
                           solver_params={"n_iter": 5, "alphas": np.array([0.1, 10.0, 1e3]),
                                          "progress_bar": False, "warn": False}).fit(Xz, Y)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(Xz), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.predict_bands(X).sum(axis=0) + ours.intercept_,
                               ours.predict(X), atol=1e-8)


def test_inner_splits_are_blocked():
    splits = inner_splits(9, runs=[1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert [test.tolist() for _, test in splits] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    blocked = inner_splits(12, times=2.0 * np.arange(12), n_splits=3, gap=4.0)
    assert [train.tolist() for train, _ in blocked] == [[6, 7, 8, 9, 10, 11],
                                                        [0, 1, 10, 11], [0, 1, 2, 3, 4, 5]]
    with pytest.raises(InputDataError, match="empty training set"):
        inner_splits(10, n_splits=2, gap=20)


def test_make_encoder_refuses_unknown_names_and_parameters():
    assert make_encoder("pls", n_components=4).n_components == 4
    with pytest.raises(UsageError, match="model: must be one of 'banded-ridge', 'pls', 'ridge'"):
        make_encoder("svr")
    with pytest.raises(UsageError, match="pls has no parameter.s. alpha;"):
        make_encoder("pls", alpha=3)


# --------------------------------------------------------------------------- science


@pytest.mark.parametrize("model, params", [("ridge", {}), ("pls", {"n_components": 3})])
def test_planted_voxels_are_found_and_the_others_stay_in_the_null(model, params):
    features, bold, planted = simulate(1)
    result = encode(features, bold, TR, model=model, model_params=params, n_permutations=99,
                    rois={"planted": planted, "other": ~planted}, audit=False, random_state=0)
    assert result.r[planted].min() > 0.3
    assert result.p_fwe[planted].max() <= 0.02
    assert result.r[planted].min() > result.metrics["null"]["fwe_threshold_r"]
    assert result.p_fwe[~planted].min() > 0.05
    assert np.mean(result.p[~planted] < 0.05) <= 0.15
    table = result.roi_table.set_index("roi")
    assert table.loc["planted", "p"] <= 0.01
    assert table.loc["planted", "mean_r"] > table.loc["planted", "null_high"] + 0.2
    other = table.loc["other"]
    assert other["null_low"] <= other["mean_r"] <= other["null_high"] and other["p"] > 0.05


@pytest.mark.parametrize("model, params", [("ridge", {}), ("pls", {"n_components": 3})])
def test_unrelated_features_stay_inside_the_null_band(model, params):
    features, bold, _ = simulate(2, strength=0.0)
    result = encode(features, bold, TR, model=model, model_params=params, n_permutations=99,
                    audit=False, random_state=1)
    row = result.roi_table.iloc[0]
    assert row["null_low"] <= row["mean_r"] <= row["null_high"]
    assert row["p"] > 0.05 and result.p_fwe.min() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("model, params", [("ridge", {}), ("pls", {"n_components": 3})])
def test_p_values_are_calibrated_on_null_data(model, params):
    roi_p, voxel_p, fwe_p = [], [], []
    for seed in range(40):
        features, bold, _ = simulate(100 + seed, n_runs=3, n=80, q=20, strength=0.0,
                                     phi_noise=0.6)
        result = encode(features, bold, TR, model=model, model_params=params,
                        n_permutations=99, audit=False, random_state=seed)
        roi_p.append(result.roi_table["p"].iloc[0])
        voxel_p.append(result.p)
        fwe_p.append(result.p_fwe.min())
    assert 0.0 <= np.mean(np.array(roi_p) < 0.05) <= 0.15
    assert 0.0 <= np.mean(np.concatenate(voxel_p) < 0.05) <= 0.15
    assert 0.0 <= np.mean(np.array(fwe_p) < 0.05) <= 0.15
    # and the p-values are not degenerate: they spread over (0, 1]
    assert 0.2 < np.median(np.concatenate(voxel_p)) < 0.8


@pytest.mark.parametrize("model, params", [("ridge", {}), ("pls", {"n_components": 5})])
def test_random_split_audit_sees_the_leak_of_slow_drifts(rng, model, params):
    times = TR * np.arange(100)
    features, bold = [], []
    for _ in range(3):
        drift = np.cumsum(rng.normal(size=(100, 8)), axis=0)          # slow feature drift
        features.append(((drift + 0.1 * rng.normal(size=(100, 8))).astype(np.float32), times))
        bold.append(ar1(rng, 100, 10, 0.97).astype(np.float32))      # unrelated slow noise
    result = encode(features, bold, TR, model=model, model_params=params, n_permutations=0,
                    random_state=0)
    honest = result.metrics["mean_r"]
    assert result.metrics["audit"]["mean_r"] > honest + 0.2
    assert result.roi_table["random_split_r"].iloc[0] == pytest.approx(result.audit_r.mean())


def test_banded_ridge_credits_the_band_that_drives_the_voxels():
    features, bold, planted = simulate(3, p=12, driving=slice(0, 3))
    bands = {"vision": [(v[:, :6], t) for v, t in features],
             "audio": [(v[:, 6:], t) for v, t in features]}
    result = encode(bands, bold, TR, model="banded-ridge",
                    model_params={"n_iter": 8, "alphas": (1.0, 100.0, 1e4)},
                    n_permutations=0, audit=False, random_state=0)
    vision, audio = result.band_r2
    assert vision[planted].mean() > 0.15
    assert vision[planted].min() > audio[planted].max()
    assert abs(audio[planted].mean()) < 0.05
    assert [band["name"] for band in result.metrics["bands"]] == ["vision", "audio"]
    assert result.final_model.band_sizes == [6, 6]


# --------------------------------------------------------------------------- nulls


def test_shifted_rows_roll_each_run_by_at_least_a_tenth():
    runs = np.repeat([1, 2], [20, 30])
    index = shifted_rows(runs, 50, random_state=0)
    assert index.shape == (50, 50)
    for rows, offset in ((slice(0, 20), 0), (slice(20, 50), 20)):
        shift = (np.arange(index[:, rows].shape[1]) - (index[:, rows] - offset)) % (
            rows.stop - rows.start)
        assert np.all(shift == shift[:, :1])                            # one shift per run
        assert np.all((shift[:, 0] >= 0.1 * (rows.stop - rows.start))
                      & (shift[:, 0] <= 0.9 * (rows.stop - rows.start)))


@pytest.mark.parametrize("n_features", [12, 100])                 # fewer / more than volumes
def test_ridge_null_algebra_equals_refits_on_shifted_data(n_features):
    from himalaya.ridge import Ridge as HimalayaRidge

    features, bold, planted = simulate(4, n_runs=3, n=40, q=5, p=n_features)
    X = np.concatenate([convolve_features(v, t, t) for v, t in features])
    Y = np.concatenate(bold)
    runs = np.repeat([0, 1, 2], 40)
    splits = inner_splits(120, runs)
    clock = TR * np.arange(120.0)
    fits = cross_validated_fits(lambda: RidgeEncoder(), X, Y, splits, runs, clock)
    one_voxel_rois = {f"v{j}": np.arange(5) == j for j in range(5)}
    null = run_shift_null(X, Y, splits, runs, fits.fold_alphas, one_voxel_rois, 1,
                          random_state=7)
    # no shift: the algebra reproduces himalaya's cross-validated scores
    np.testing.assert_allclose(null["r"], fits.fold_r.mean(axis=0), atol=1e-4)  # float32 fits
    # one shift: equal to refitting each fold's ridge at its penalties on the shifted BOLD
    shifted = Y[shifted_rows(runs, 1, random_state=7)[0]]
    expected = np.zeros(5)
    for (train, test), alphas in zip(splits, fits.fold_alphas):
        mean, scale = X[train].mean(axis=0), X[train].std(axis=0)
        ridge = HimalayaRidge(alpha=alphas.astype(np.float64), fit_intercept=True,
                              solver_params={"warn": False})
        ridge.fit((X[train] - mean) / scale, shifted[train].astype(np.float64))
        expected += voxel_scores(shifted[test], ridge.predict((X[test] - mean) / scale))[0] / 3
    np.testing.assert_allclose(null["roi_r"][0], expected, atol=1e-4)
    assert np.all(null["p_fwe"] >= null["p"])


def test_refit_null_scores_each_shift_with_a_full_cross_validation(rng):
    X = rng.normal(size=(60, 4))
    Y = X[:, :1] + rng.normal(size=(60, 2))
    runs = np.repeat([1, 2, 3], 20)
    splits = inner_splits(60, runs)
    rois = {"v0": np.array([True, False]), "v1": np.array([False, True])}
    null = refit_shift_null(lambda: PLSEncoder(n_components=2), X, Y, splits, runs,
                            np.arange(60.0), rois, 3, random_state=5)
    index = shifted_rows(runs, 3, random_state=5)
    for k in range(3):
        fits = cross_validated_fits(lambda: PLSEncoder(n_components=2), X, Y[index[k]], splits,
                                    runs, np.arange(60.0))
        np.testing.assert_allclose(null["roi_r"][k], fits.fold_r.mean(axis=0), atol=1e-10)
    assert null["p"][0] == pytest.approx(1 / 4)


def test_random_split_scores_use_five_random_folds(rng):
    X = rng.normal(size=(50, 3))
    Y = X[:, :1] + 0.1 * rng.normal(size=(50, 1))
    r = random_split_scores(lambda: PLSEncoder(n_components=1), X, Y, np.zeros(50),
                            np.arange(50.0), random_state=0)
    assert r.shape == (1,) and r[0] > 0.95


# --------------------------------------------------------------------------- encode, model


def test_final_model_saves_loads_and_predicts_rois(tmp_path):
    features, bold, planted = simulate(5, n_runs=3, n=60, q=10)
    spec = {"network": "alexnet", "layer": "fc7", "weights": tmp_path / "emonet.pt",
            "frame_step": np.int64(5)}
    result = encode(features, bold, TR, model="ridge", n_permutations=0, audit=False,
                    feature_spec=spec, hrf="fir", fir_delays=(2.0, 4.0, 6.0))
    model = result.final_model
    X = np.concatenate([convolve_features(v, t, t, hrf="fir", fir_delays=(2.0, 4.0, 6.0))
                        for v, t in features])
    Y = np.concatenate(bold)
    runs = np.repeat([0, 1, 2], 60)
    direct = RidgeEncoder().fit(X, Y, runs=runs, times=TR * np.arange(180.0))
    np.testing.assert_allclose(model.predict(X), direct.predict(X), rtol=1e-5, atol=1e-5)
    path = model.save(tmp_path / "sub-01_task-movie_desc-features_model.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]     # nothing half-written
    loaded = EncodingModel.load(path)
    np.testing.assert_array_equal(loaded.weights, model.weights)
    np.testing.assert_array_equal(loaded.alphas, model.alphas)
    assert loaded.feature_spec == {**spec, "weights": str(spec["weights"]), "frame_step": 5}
    assert loaded.n_kernels == 3
    assert loaded.hrf["fir_delays"] == [2.0, 4.0, 6.0] and loaded.model == "ridge"
    # a still image: raw features repeated under every delay (steady state)
    image = np.ones((1, 12), np.float32)
    np.testing.assert_allclose(loaded.predict(image), loaded.predict(np.tile(image, 3)))
    table = loaded.predict_rois(np.tile(image, 3), {"planted": planted, "other": ~planted})
    assert list(table.columns) == ["planted", "other"] and table.shape == (1, 2)
    with pytest.raises(InputDataError, match="expected 36 design columns"):
        loaded.predict(np.ones((1, 5)))


def test_encode_reports_folds_alphas_and_audit():
    features, bold, planted = simulate(6, n_runs=3, n=60, q=10)
    result = encode(features, bold, TR, model="ridge", n_permutations=19, random_state=0,
                    run_labels=["01", "02", "03"])
    metrics = result.metrics
    assert metrics["cv"] == "loro" and metrics["folds"] == ["01", "02", "03"]
    assert [fold["n_test"] for fold in metrics["fold_scores"]] == [60, 60, 60]
    assert metrics["null"]["p_resolution"] == pytest.approx(1 / 20)
    assert metrics["null"]["method"].startswith("algebra")
    assert sum(metrics["alphas"]["counts"].values()) == 10
    assert set(result.roi_table.columns) >= {"roi", "n_voxels", "mean_r", "p",
                                             "random_split_r"}
    np.testing.assert_allclose(result.r, result.fold_r.mean(axis=0))


def test_single_run_uses_blocked_folds_with_a_gap():
    features, bold, planted = simulate(7, n_runs=1, n=200, q=6, n_planted=3, strength=1.5)
    result = encode(features, bold, TR, model="ridge", n_permutations=49, audit=False,
                    random_state=0, n_splits=4, gap=20.0)
    assert result.metrics["cv"] == "blocked" and result.metrics["n_folds"] == 4
    assert result.r[planted].min() > 0.3 and result.p[planted].max() <= 0.04


def test_mismatched_runs_are_refused(rng):
    features, bold, _ = simulate(8, n_runs=3, n=40, q=4)
    with pytest.raises(InputDataError, match="2 runs but the BOLD has 3") as err:
        encode(features[:2], bold, TR, n_permutations=0)
    one_line(err)


def test_nan_bold_is_refused():
    features, bold, _ = simulate(9, n_runs=3, n=40, q=4)
    bold[1][5, 2] = np.nan
    with pytest.raises(InputDataError, match="^bold run 2: holds NaN") as err:
        encode(features, bold, TR, n_permutations=0)
    one_line(err)


def test_features_shorter_than_a_run_are_refused_by_encode():
    features, bold, _ = simulate(10, n_runs=2, n=40, q=4)
    values, times = features[1]
    features[1] = (values[:30], times[:30])
    with pytest.raises(InputDataError, match="^features run 2: the features cover") as err:
        encode(features, bold, TR, n_permutations=0)
    one_line(err)


def test_bad_rois_and_models_are_refused():
    features, bold, _ = simulate(11, n_runs=2, n=40, q=4)
    with pytest.raises(InputDataError, match="ROI 'amygdala' must be a non-empty mask"):
        encode(features, bold, TR, rois={"amygdala": np.zeros(4, bool)}, n_permutations=0)
    with pytest.raises(UsageError, match="model: must be one of"):
        encode(features, bold, TR, model="lasso")
    assert check_rois(None, 4)["mask"].all()
