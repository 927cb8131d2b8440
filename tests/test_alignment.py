"""Functional alignment: SRM, Procrustes and ridge against fmralign, streaming, misalignment."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from bids_affect.alignment import (
    BlockRidgeAlignment,
    GroupAlignment,
    check_alignment,
    contiguous_parcels,
)
from bids_affect.exceptions import InputDataError, UsageError


def misaligned_subjects(rng, n_subjects=4, n_timepoints=120, n_latent=5, n_voxels=40,
                        noise=0.1):
    """Shared latent responses seen through one mixing, each subject's voxels permuted."""
    latent = rng.standard_normal((n_timepoints, n_latent))
    mixing = rng.standard_normal((n_latent, n_voxels))
    clean = latent @ mixing
    subjects, permutations = [], []
    for _ in range(n_subjects):
        order = rng.permutation(n_voxels)
        data = clean + noise * rng.standard_normal(clean.shape)
        subjects.append(data[:, order].astype(np.float32))
        permutations.append(order)
    return subjects, clean, permutations


def mean_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over time points of the correlation of two patterns (rows)."""
    a = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    b = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    return float((a * b).mean())


@pytest.mark.parametrize("method", ["srm", "procrustes", "ridge"])
def test_new_subject_lands_on_the_template_at_unseen_time_points(method, rng):
    subjects, _, _ = misaligned_subjects(rng)
    aligner = GroupAlignment(method, n_components=5, random_state=0).fit(subjects[:3])
    new = subjects[3]
    train, test = np.arange(80), np.arange(80, 120)   # its map never sees the test points
    own = aligner.fit_subject(new[train], train)
    aligned = aligner.apply(own, new[test])
    template = aligner.template_[test]
    assert mean_correlation(aligned, template) > 0.9
    if method != "srm":
        # Without alignment the voxels do not correspond: the same comparison fails.
        assert mean_correlation(new[test], template) < 0.5


def test_training_subjects_agree_after_srm_but_not_before(rng):
    subjects, _, _ = misaligned_subjects(rng)
    srm = GroupAlignment("srm", n_components=5, random_state=0).fit(subjects)
    aligned = [srm.transform(X, subject=k) for k, X in enumerate(subjects)]
    assert mean_correlation(aligned[0], aligned[1]) > 0.95
    assert abs(mean_correlation(subjects[0], subjects[1])) < 0.5
    assert srm.loss_[-1] <= srm.loss_[0]


def test_srm_is_fmralign_srm_given_the_same_start(rng, monkeypatch):
    """Our streamed SRM loop = fmralign's template SRM (same initial shared response)."""
    from fmralign import GroupAlignment as FmralignGroupAlignment
    from fmralign.alignment import group_alignment as fmralign_group
    from fmralign.methods import DetSRM

    subjects, _, _ = misaligned_subjects(rng, n_voxels=30)
    ours = GroupAlignment("srm", n_components=4, n_iter=5, random_state=3).fit(subjects)
    start = np.random.default_rng(3).standard_normal((120, 4)).astype(np.float32)
    # fmralign draws its start from NumPy's global generator; give it ours instead.
    monkeypatch.setattr(fmralign_group, "_fit_template",
                        _fit_template_from(fmralign_group._fit_template, start))
    theirs = FmralignGroupAlignment(method=DetSRM(n_components=4), n_iter=5)
    theirs.fit({f"s{k}": X.astype(np.float64) for k, X in enumerate(subjects)})
    np.testing.assert_allclose(ours.template_, theirs.template, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours.transform(subjects[2], 2),
                               theirs.transform({"s2": subjects[2]})["s2"], atol=1e-3)


def _fit_template_from(original, start):
    from fmralign.alignment import utils

    def fit_template(X, method, labels, n_jobs=1, verbose=0, n_iter=2, scale_template=False):
        real = utils._init_template
        utils._init_template = lambda *args, **kwargs: start.astype(np.float64)
        try:
            return utils._fit_template(X, method, labels, n_jobs, verbose, n_iter,
                                       scale_template)
        finally:
            utils._init_template = real
    return fit_template


@pytest.mark.parametrize("alphas", [None, [1e-3, 1.0, 1e3]])
def test_block_ridge_equals_fmralign_ridge_alignment(alphas, rng):
    from fmralign.methods import RidgeAlignment

    X = rng.standard_normal((90, 25))
    Y = X @ rng.standard_normal((25, 25)) * 0.3 + rng.standard_normal((90, 25))
    theirs = RidgeAlignment(alphas=alphas).fit(X, Y)
    ours = BlockRidgeAlignment(alphas=alphas).fit(X, Y)
    assert ours.alpha_ == theirs.R.alpha_
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), atol=1e-10)


def test_streamed_memory_maps_give_the_same_fit(rng, tmp_path):
    subjects, _, _ = misaligned_subjects(rng)
    paths = []
    for k, X in enumerate(subjects):
        paths.append(tmp_path / f"sub-{k}.npy")
        np.save(paths[-1], X)

    def stream():
        for path in paths:
            yield np.load(path, mmap_mode="r")

    streamed = GroupAlignment("srm", n_components=5, random_state=0).fit(stream)
    listed = GroupAlignment("srm", n_components=5, random_state=0).fit(subjects)
    np.testing.assert_array_equal(streamed.template_, listed.template_)
    assert streamed.n_subjects_ == 4


def test_piecewise_procrustes_undoes_permutations_within_parcels(rng):
    n_voxels, parcels = 40, np.repeat([0, 1], 20)
    base = rng.standard_normal((100, n_voxels)).astype(np.float32)
    subjects = []
    for _ in range(3):
        order = np.concatenate([rng.permutation(20), 20 + rng.permutation(20)])
        subjects.append(base[:, order])
    aligner = GroupAlignment("procrustes", parcels=parcels).fit(subjects)
    aligned = [aligner.transform(X, k) for k, X in enumerate(subjects)]
    assert mean_correlation(aligned[0], aligned[2]) > 0.99
    np.testing.assert_array_equal(aligner.parcels_, parcels)


def test_voxel_space_methods_go_piecewise_above_the_parcel_size(rng):
    subjects = [rng.standard_normal((30, 25)).astype(np.float32) for _ in range(2)]
    aligner = GroupAlignment("procrustes", max_parcel_size=10).fit(subjects)
    assert aligner.parcels_.max() + 1 == 3
    assert np.bincount(contiguous_parcels(25, 10)).tolist() == [9, 8, 8]
    assert GroupAlignment("srm", n_components=3, max_parcel_size=10).fit(subjects).parcels_ \
        is None


def test_none_is_the_identity_and_clone_keeps_parameters(rng):
    X = rng.standard_normal((10, 6)).astype(np.float32)
    aligner = GroupAlignment("none").fit([X, X])
    np.testing.assert_array_equal(aligner.transform(X, 1), X)
    np.testing.assert_array_equal(aligner.apply(aligner.fit_subject(X, np.arange(10)), X), X)
    assert clone(GroupAlignment("srm", n_components=7)).get_params()["n_components"] == 7


def test_bad_input_gets_clear_errors(rng):
    X = rng.standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(UsageError, match="--alignment: 'hyper' is unknown"):
        GroupAlignment("hyper").fit([X, X])
    with pytest.raises(InputDataError, match="same time points and voxels"):
        GroupAlignment("procrustes").fit([X, X[:, :5]])
    with pytest.raises(UsageError, match="n_components"):
        GroupAlignment("srm", n_components=30).fit([X, X])
    with pytest.raises(InputDataError, match="NaN"):
        GroupAlignment("srm", n_components=2).fit([X, np.full_like(X, np.nan)])
    aligner = GroupAlignment("srm", n_components=4).fit([X, X])
    with pytest.raises(InputDataError, match="cannot fit 4 shared components"):
        aligner.fit_subject(X[:3], np.arange(3))
    with pytest.raises(InputDataError, match="template rows"):
        aligner.fit_subject(X[:5], np.arange(30, 35))
    assert check_alignment(" srm, none,srm") == ["srm", "none"]
