"""Cross-subject decoding: chance on null data, leakage audit, alignment gains, nested folds."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bids_affect.decoding.cross_subject import (
    RESULT_COLUMNS,
    NotEnoughSubjects,
    SubjectSamples,
    _decoder_factory,
    _folds,
    _refit_null_fold,
    _ridge_fold,
    _ridge_null_fold,
    _ridge_probabilities,
    check_cross_subject_spaces,
    decode_across_subjects,
    example_subjects,
    harmonise_subjects,
    label_timeline,
    make_segments,
    mask_digest,
)
from bids_affect.exceptions import EXIT_DATA_INVALID, InputDataError, UsageError


def with_labels(subjects, labels):
    """Copies of ``subjects`` whose labels are replaced (the data are shared, not copied)."""
    out = []
    for subject in subjects:
        subject = copy.copy(subject)
        subject.labels = labels
        out.append(subject)
    return out


# --------------------------------------------------------------------------- science


def test_null_data_stay_in_the_null_band_while_the_pooled_random_split_leaks():
    subjects = example_subjects(n_subjects=5, n_runs=3, n_volumes=60, n_voxels=60,
                                signal=0.0, noise_ar=0.9, random_state=11)
    result = decode_across_subjects(subjects, alignment="none,srm", n_components=6,
                                    n_permutations=200, random_state=0)
    for method in ("none", "srm"):
        summary = result.summary[method]
        low, high = summary["group_null_band"]
        assert low <= summary["mean_balanced_accuracy"] <= high
        assert summary["group_p_permutation"] > 0.05
        table = result.tables[method]
        inside = (table["balanced_accuracy"] >= table["null_low"]) & (
            table["balanced_accuracy"] <= table["null_high"])
        assert inside.sum() >= len(table) - 1
        # The peers' pooled random split of volumes leaks far above the null band.
        assert result.audit["pooled_balanced_accuracy"] > high + 0.15
        leaks = table["random_split_balanced_accuracy"] > table["null_high"]
        assert leaks.sum() >= len(table) - 1


@pytest.fixture(scope="module")
def planted_results():
    """LOSO of one planted signal with and without subject-specific voxel permutations."""
    out = {}
    for misaligned in (True, False):
        subjects = example_subjects(n_subjects=5, n_runs=3, n_volumes=60, n_voxels=80,
                                    n_latent=8, signal=1.0, misaligned=misaligned,
                                    random_state=1)
        out[misaligned] = decode_across_subjects(subjects, alignment="none,srm",
                                                 n_components=8, n_permutations=100,
                                                 random_state=0, audit=False)
    return out


def test_srm_beats_no_alignment_on_misaligned_subjects(planted_results):
    result = planted_results[True]
    srm, none = result.summary["srm"], result.summary["none"]
    assert srm["gain_over_none"]["mean"] > 0.2
    assert srm["gain_over_none"]["n_improved"] == 5
    assert srm["mean_balanced_accuracy"] > srm["group_null_band"][1]
    assert srm["group_p_permutation"] < 0.05
    assert (result.tables["srm"]["p_permutation"] < 0.05).all()
    assert none["mean_balanced_accuracy"] < srm["mean_balanced_accuracy"] - 0.2


def test_without_misalignment_srm_and_none_agree(planted_results):
    result = planted_results[False]
    srm, none = result.summary["srm"], result.summary["none"]
    assert abs(srm["gain_over_none"]["mean"]) < 0.07
    for summary in (srm, none):
        assert summary["mean_balanced_accuracy"] > summary["group_null_band"][1]


@pytest.mark.parametrize("method", ["procrustes", "ridge"])
def test_voxel_space_alignments_also_recover_misaligned_subjects(method):
    subjects = example_subjects(n_subjects=4, n_runs=3, n_volumes=60, n_voxels=50,
                                n_latent=6, signal=1.0, misaligned=True, random_state=2)
    result = decode_across_subjects(subjects, alignment=f"none,{method}", n_permutations=50,
                                    random_state=0, audit=False)
    assert result.summary[method]["gain_over_none"]["mean"] > 0.15
    assert result.summary[method]["mean_balanced_accuracy"] > \
        result.summary[method]["group_null_band"][1]


@pytest.mark.slow
def test_group_p_values_are_calibrated_on_null_data():
    """On data without signal, p < .05 for no more groups than chance allows."""
    group_p, subject_p = [], []
    for seed in range(100):
        subjects = example_subjects(n_subjects=4, n_runs=3, n_volumes=60, n_voxels=40,
                                    signal=0.0, noise_ar=0.8, random_state=1000 + seed)
        result = decode_across_subjects(subjects, n_permutations=100, random_state=seed,
                                        audit=False)
        group_p.append(result.summary["none"]["group_p_permutation"])
        subject_p.extend(result.tables["none"]["p_permutation"])
    # Binomial(100, .05): P(X >= 11) = 0.011.
    assert np.sum(np.array(group_p) < 0.05) <= 10
    assert np.mean(np.array(subject_p) < 0.05) < 0.09


# --------------------------------------------------------------------------- folds and null


def test_test_labels_never_reach_any_fit():
    """Predictions of run 3 do not change when every subject's run-3 labels change."""
    subjects = example_subjects(n_subjects=4, n_runs=3, n_volumes=40, n_voxels=30,
                                signal=1.0, misaligned=True, random_state=3)
    labels = np.array(subjects[0].labels, object)
    run3 = np.asarray(subjects[0].runs) == "task-movie_run-3"
    changed = labels.copy()
    changed[run3] = np.random.default_rng(0).choice(["fear", "happiness", "sadness"],
                                                    run3.sum())
    kwargs = {"alignment": "none,srm", "n_components": 5, "n_permutations": 5,
              "random_state": 0, "audit": False}
    first = decode_across_subjects(subjects, **kwargs)
    second = decode_across_subjects(with_labels(subjects, changed), **kwargs)
    for method in ("none", "srm"):
        for participant, table in first.predictions[method].items():
            other = second.predictions[method][participant]
            probabilities = [c for c in table.columns if c.startswith("prob_")]
            in_run3 = table["run"] == "task-movie_run-3"
            np.testing.assert_array_equal(table.loc[in_run3, probabilities].to_numpy(),
                                          other.loc[in_run3, probabilities].to_numpy())
            assert not np.array_equal(table.loc[~in_run3, probabilities].to_numpy(),
                                      other.loc[~in_run3, probabilities].to_numpy())


def test_folds_keep_the_test_segment_out_of_every_fit():
    subjects = example_subjects(n_subjects=3, n_runs=1, n_volumes=120, random_state=0)
    harmonised = harmonise_subjects(subjects)
    cv, segments = make_segments(harmonised, "auto", n_splits=4, gap=10.0)
    assert cv == "blocked" and len(segments) == 4
    for fold in _folds(harmonised, 0, segments, gap=10.0):
        start, stop = fold.segment.start, fold.segment.stop
        test_times = harmonised.times[0][fold.test_rows]
        assert test_times.min() >= start and test_times.max() <= stop
        for s, rows in fold.train_rows.items():
            times = harmonised.times[s][rows]
            assert np.all((times < start - 10.0) | (times > stop + 10.0))
        aligned_times = harmonised.timeline[fold.alignment_points, 1] / 1000.0
        assert np.all((aligned_times < start - 10.0) | (aligned_times > stop + 10.0))


@pytest.mark.parametrize("model", ["ridge", "ridge-pca"])
@pytest.mark.parametrize("n_features", [12, 150])
def test_ridge_null_equals_refitting_on_shifted_labels(model, n_features, rng):
    n_train, n_test, n_classes = 90, 20, 3
    X = rng.standard_normal((n_train + n_test, n_features)).astype(np.float32)
    train_keys = np.tile(np.arange(30), 3)        # three training subjects, 30 moments
    test_keys = np.arange(30, 50)
    codes = rng.integers(0, n_classes, 50)
    permuted = np.stack([codes, np.roll(codes, 7), rng.permutation(codes)])
    permuted[2, :30] = np.where(permuted[2, :30] == 2, 0, permuted[2, :30])  # class absent
    make = _decoder_factory(model, 0, None, None, n_features)
    algebra = _ridge_null_fold(make, X, n_train, train_keys, permuted, n_classes)
    refits = _refit_null_fold(make, X, n_train, train_keys, test_keys, permuted, n_classes,
                              np.zeros(len(X), int), False, "test")
    np.testing.assert_array_equal(algebra, refits)


@pytest.mark.parametrize("absent", [None, 2])
def test_ridge_algebra_gives_the_fitted_decoders_probabilities(absent, rng):
    """The observed ridge fold, done by algebra, equals scikit-learn's fitted pipeline."""
    from bids_affect.decoding import cross_validate

    n_train, n_test, n_classes = 90, 20, 3
    X = rng.standard_normal((n_train + n_test, 40)).astype(np.float32)
    train_keys = np.tile(np.arange(30), 3)
    codes = rng.integers(0, n_classes, 50)
    if absent is not None:
        codes[:30][codes[:30] == absent] = 0        # two classes trained, three tested
    make = _decoder_factory("ridge", 0, None, None, 40)
    fold = _ridge_fold(make, X, n_train, train_keys)
    scores, counts = fold.scores(codes[None, :], n_classes)
    algebra = _ridge_probabilities(scores[0], counts[0])
    labels = np.concatenate([codes[train_keys], codes[30:50]])
    fitted = cross_validate(make, X, labels, [(np.arange(n_train),
                                               np.arange(n_train, n_train + n_test))],
                            n_classes, warn=False).proba[n_train:]
    np.testing.assert_allclose(algebra, fitted, atol=1e-6)


def test_every_method_is_scored_on_the_same_folds_and_permutations():
    subjects = example_subjects(n_subjects=3, n_runs=3, n_volumes=40, n_voxels=30,
                                random_state=4)
    result = decode_across_subjects(subjects, alignment="none,srm", n_components=4,
                                    n_permutations=20, random_state=5)
    none, srm = result.summary["none"], result.summary["srm"]
    assert none["segments"] == srm["segments"] == [f"task-movie_run-{r}" for r in (1, 2, 3)]
    for participant in none["folds"]:
        assert [f["test"] for f in none["folds"][participant]] == \
            [f["test"] for f in srm["folds"][participant]]
        assert [f["n_train"] for f in none["folds"][participant]] == \
            [f["n_train"] for f in srm["folds"][participant]]
    timeline = label_timeline(harmonise_subjects(subjects), 3, random_state=0)
    again = label_timeline(harmonise_subjects(subjects), 3, random_state=0)
    np.testing.assert_array_equal(timeline.permuted, again.permuted)
    assert not np.array_equal(timeline.permuted[0], timeline.codes)


# --------------------------------------------------------------------------- outputs


def test_outputs_follow_the_contract():
    subjects = example_subjects(n_subjects=3, n_runs=2, n_volumes=40, n_voxels=30,
                                random_state=6)
    result = decode_across_subjects(subjects, alignment="srm", n_components=4,
                                    n_permutations=30, random_state=0)
    table = result.tables["srm"]
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert table["participant_id"].tolist() == ["01", "02", "03"]
    assert (table["n_permutations"] == 30).all() and (table["alignment"] == "srm").all()
    assert table["p_permutation"].between(1 / 31, 1).all()
    predictions = result.predictions["srm"]["02"]
    assert {"onset", "run", "volume", "fold", "true", "predicted"} <= set(predictions.columns)
    assert [c for c in predictions.columns if c.startswith("prob_")] == \
        [f"prob_{c}" for c in result.classes]
    np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1.0)
    summary = result.summary["srm"]
    for key in ("model", "classes", "cv", "fold_scheme", "permutation_scheme",
                "group_null_band", "group_p_permutation", "harmonisation", "random_split",
                "alignment_settings", "group_test"):
        assert key in summary
    assert "gain_over_none" not in summary   # no "none" scored beside it


def test_cnn_decoders_plug_into_the_same_folds():
    import torch.nn as nn

    from bids_affect.models.cnn3d import (
        GlobalPoolHead,
        VolumeClassifier,
        register_architecture,
        unregister_architecture,
    )

    @register_architecture("crosstiny", description="one convolution, for tests")
    def tiny(n_classes, input_shape):
        trunk = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        return VolumeClassifier(trunk, GlobalPoolHead(4, n_classes))

    try:
        subjects = example_subjects(n_subjects=3, n_runs=3, n_volumes=40, n_voxels=64,
                                    signal=2.0, random_state=7)
        mask = np.ones((4, 4, 4), bool)
        params = {"epochs": 3, "batch_size": 16, "validation_fraction": 0.0,
                  "device": "cpu"}
        result = decode_across_subjects(subjects, model="cnn-crosstiny",
                                        alignment="none,procrustes", n_permutations=2,
                                        random_state=0, volume_mask=mask, cnn_params=params)
        assert set(result.tables) == {"none", "procrustes"}
        assert len(result.predictions["procrustes"]["01"]) == 120
        with pytest.raises(UsageError, match="not a volume"):
            decode_across_subjects(subjects, model="cnn-crosstiny", alignment="srm",
                                   volume_mask=mask)
    finally:
        unregister_architecture("crosstiny")


# --------------------------------------------------------------------------- bad input


def test_one_subject_is_refused_with_an_error_callers_can_turn_into_a_warning():
    subjects = example_subjects(n_subjects=2, random_state=0)
    with pytest.raises(NotEnoughSubjects, match="at least 2 subjects, got 1") as caught:
        decode_across_subjects(subjects[:1])
    assert isinstance(caught.value, InputDataError)
    assert caught.value.exit_code == EXIT_DATA_INVALID


def test_native_space_is_refused_with_a_one_line_reason():
    subjects = example_subjects(n_subjects=2, random_state=0)
    subjects[1].space = "T1w"
    with pytest.raises(UsageError, match="02 is in 'T1w', a native space") as caught:
        decode_across_subjects(subjects)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputDataError, match="one space"):
        check_cross_subject_spaces({"01": "MNI152NLin2009cAsym", "02": "MNI152NLin6Asym"})


def test_different_masks_and_trs_are_refused():
    subjects = example_subjects(n_subjects=2, n_voxels=20, random_state=0)
    other = copy.copy(subjects[1])
    other.X = subjects[1].X[:, :15]
    with pytest.raises(InputDataError, match="differ in voxels"):
        harmonise_subjects([subjects[0], other])
    import nibabel as nib

    first = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    second = nib.Nifti1Image(np.pad(np.ones((2, 2, 1), np.uint8), ((0, 0), (0, 0), (0, 1))),
                             np.eye(4))
    subjects[0].mask_digest, subjects[1].mask_digest = mask_digest(first), mask_digest(second)
    with pytest.raises(InputDataError, match="different masks"):
        harmonise_subjects(subjects)
    subjects[1].mask_digest = subjects[0].mask_digest
    subjects[1].tr = 1.0
    with pytest.raises(InputDataError, match="different TRs"):
        harmonise_subjects(subjects)


def test_classes_missing_in_some_subjects_are_left_out_and_reported():
    subjects = example_subjects(n_subjects=3, n_runs=2, n_volumes=40, random_state=8)
    labels = np.array(subjects[1].labels, object).copy()
    labels[labels == "sadness"] = None        # sub-02 never labels sadness
    subjects[1] = with_labels([subjects[1]], labels)[0]
    harmonised = harmonise_subjects(subjects)
    assert harmonised.classes == ["fear", "happiness"]
    assert harmonised.dropped_classes == {"sadness": ["02"]}
    assert any("sadness (missing in 02)" in note for note in harmonised.notes)
    result = decode_across_subjects(subjects, n_permutations=10, random_state=0)
    assert set(result.predictions["none"]["01"]["true"]) == {"fear", "happiness"}
    assert result.summary["none"]["harmonisation"]["dropped_classes"] == {"sadness": ["02"]}


def test_labels_that_disagree_at_one_moment_are_refused():
    subjects = example_subjects(n_subjects=2, n_runs=2, n_volumes=40, random_state=9)
    labels = np.array(subjects[1].labels, object).copy()
    labels[5] = "fear" if labels[5] != "fear" else "sadness"
    subjects[1] = with_labels([subjects[1]], labels)[0]
    with pytest.raises(InputDataError, match="different labels to the same moment"):
        decode_across_subjects(subjects, n_permutations=5)


def test_cnn_settings_are_checked():
    subjects = example_subjects(n_subjects=2, random_state=0)
    with pytest.raises(UsageError, match="only used by CNN"):
        decode_across_subjects(subjects, volume_mask=np.ones((5, 5, 2), bool))
    with pytest.raises(UsageError, match="need the mask"):
        decode_across_subjects(subjects, model="cnn-deepemotion")


def test_subject_samples_from_a_participant_sample_set(tmp_path):
    from bids_affect.bold import build_samples
    from bids_affect.datasets import example_runs

    runs = example_runs(n_runs=2, n_volumes=30, folder=tmp_path / "bids")
    labels = {run.key: ["fear"] * 12 + ["love"] * 12 + [None] * 6 for run in runs}
    samples = build_samples(runs, labels, tmp_path / "samples", confounds="none")
    subject = SubjectSamples.from_sample_set("01", samples, space="MNI152NLin2009cAsym",
                                             min_volumes=5)
    assert subject.X.shape == (60, samples.X.shape[1])
    assert list(subject.labels[:13]) == ["fear"] * 12 + ["love"]
    assert subject.labels[29] is None
    assert sorted(set(subject.runs)) == sorted(run.key for run in runs)
    assert subject.tr == runs[0].tr and subject.mask_digest == mask_digest(samples.mask_img)
    np.testing.assert_allclose(subject.times[:3], [0.0, runs[0].tr, 2 * runs[0].tr])
