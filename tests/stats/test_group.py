"""Group statistics: prevalence, FDR, group maps, mixed model, sign flips, consensus voxels."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.stats.group import (
    TTEST_CAVEAT,
    accuracy_ttest,
    check_standard_space,
    cluster_table,
    consensus_top_voxels,
    consensus_umap,
    decoding_group_inference,
    fdr_bh,
    fisher_z,
    group_mean_rdms,
    group_permutation_map,
    group_rsa,
    group_ttest_map,
    prevalence_inference,
    region_mixed_model,
    sign_flip_test,
)

MNI = "MNI152NLin2009cAsym"


# --------------------------------------------------------------------------- decoding scores


def first_level(rng, strength: float, n_permutations: int = 100):
    """One subject's within-subject decoding: balanced accuracy and its permutation null."""
    from bids_affect.decoding import decode

    runs = np.repeat([1, 2, 3], 40)
    labels = np.tile(np.repeat(["a", "b"], 20), 3)
    X = rng.normal(size=(120, 20)).astype(np.float32)
    X[labels == "a", :5] += strength
    result = decode(X, labels, runs, model="ridge", n_permutations=n_permutations,
                    random_state=int(rng.integers(2**31)), audit=False)
    return result.metrics["balanced_accuracy"], result.null


def test_prevalence_bound_brackets_the_share_of_subjects_with_signal(rng):
    """gamma_0 is a lower bound: never above the true share k/n, near its ceiling at k = n.

    The minimum statistic is set by the weakest subject, so with subjects
    without signal the bound is low or 0 (conservative), never above k/n.
    """
    n = 12
    bounds = {}
    for k in (12, 9, 3):
        subjects = [first_level(rng, 1.5 if index < k else 0.0) for index in range(n)]
        result = prevalence_inference([s[0] for s in subjects], [s[1] for s in subjects],
                                      n_second_level=20_000, random_state=0)
        bounds[k] = float(result.gamma0[0])
        assert 0.0 <= bounds[k] <= k / n
        assert bounds[k] <= result.gamma0_max + 1e-12
        assert (result.p_global[0] <= 0.05) == (bounds[k] > 0)
    assert bounds[12] > 0.5 and bounds[12] >= result.gamma0_max - 0.05
    assert bounds[3] == 0.0


def test_prevalence_against_exact_enumeration_by_hand():
    observed = [0.8, 0.6]
    nulls = [[0.5, 0.9], [0.7, 0.4, 0.6]]
    # Every combination of (neutral or null) for each subject: 3 x 4 = 12 minima.
    tables = [[0.8, 0.5, 0.9], [0.6, 0.7, 0.4, 0.6]]
    minima = [min(a, b) for a, b in itertools.product(*tables)]
    expected = np.mean(np.array(minima) >= 0.6 - 1e-12)
    result = prevalence_inference(observed, nulls, n_second_level=100, random_state=0)
    assert result.exact and result.n_second_level == 12
    assert result.p_global[0] == pytest.approx(expected)
    # Eq. 23 and Eq. 19 by hand, N = 2.
    alpha, p = 0.5, 0.0625
    many = prevalence_inference([0.9, 0.9], [[0.1] * 7, [0.1] * 7], alpha=alpha,
                                n_second_level=64)
    assert many.p_global[0] == pytest.approx(1 / 64 + 14 / 64 * 0 + 0)
    monte_carlo = prevalence_inference([0.9, 0.9], [[0.1] * 7, [0.1] * 7], alpha=alpha,
                                       n_second_level=63, random_state=1)
    assert not monte_carlo.exact
    gamma = (alpha ** 0.5 - p ** 0.5) / (1 - p ** 0.5)
    # min >= 0.5 needs 0.9 or 0.95 for the first subject, 0.5 or 0.95 for the second: 4/64.
    fake = prevalence_inference([0.9, 0.5], [[0.95, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]] * 2,
                                alpha=alpha, n_second_level=64)
    assert fake.p_global[0] == pytest.approx(p)
    assert fake.gamma0[0] == pytest.approx(gamma)
    assert fake.p_majority[0] == pytest.approx((0.5 * p ** 0.5 + 0.5) ** 2)


def test_prevalence_with_several_tests_corrects_for_them(rng):
    observed = np.column_stack([np.full(8, 0.9), np.full(8, 0.45)])
    nulls = [rng.normal(0.5, 0.05, size=(200, 2)) for _ in range(8)]
    result = prevalence_inference(observed, nulls, n_second_level=5000, random_state=0)
    assert result.p_global.shape == (2,)
    assert result.p_global[0] < 0.01 < result.p_global[1]
    assert np.all(result.p_global_fwe >= result.p_global - 1e-12)
    assert result.gamma0_fwe[0] <= result.gamma0[0] and result.gamma0[1] == 0.0


@pytest.mark.slow
def test_prevalence_global_null_holds_its_level_on_null_data():
    """Subjects without signal: the global null is rejected in about 5% of studies."""
    rng = np.random.default_rng(2024)
    rejected = 0
    n_studies = 150
    for seed in range(n_studies):
        subjects = [first_level(rng, 0.0) for _ in range(5)]
        result = prevalence_inference([s[0] for s in subjects], [s[1] for s in subjects],
                                      n_second_level=5000, random_state=seed)
        rejected += bool(result.p_global[0] <= 0.05)
    # Binomial(150, .05): P(X >= 15) = 0.02.
    assert rejected <= 14


def test_ttest_is_scipys_and_carries_its_caveat(rng):
    scores = 0.25 + rng.normal(0.05, 0.005, size=10)
    chances = np.full(10, 0.25) + rng.normal(0, 0.005, size=10)
    result = accuracy_ttest(scores, chances)
    reference = stats.ttest_1samp(scores - chances, 0.0, alternative="greater")
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)
    assert result["caveat"] == TTEST_CAVEAT and "global null" in TTEST_CAVEAT
    with pytest.raises(InputDataError, match="at least 2"):
        accuracy_ttest([0.5], 0.5)
    both = decoding_group_inference(scores, chances,
                                    [rng.normal(0.25, 0.01, 100) for _ in range(10)],
                                    random_state=0)
    assert both["ttest"]["t"] == result["t"]
    assert both["prevalence"]["p_global_null"] < 0.01


def test_fdr_equals_statsmodels_and_skips_missing_tests(rng):
    from statsmodels.stats.multitest import multipletests

    p = rng.uniform(size=40) ** 3
    rejected, adjusted = fdr_bh(p, q=0.1)
    reference = multipletests(p, alpha=0.1, method="fdr_bh")
    np.testing.assert_array_equal(rejected, reference[0])
    np.testing.assert_allclose(adjusted, reference[1])
    with_nan = np.append(p, np.nan)
    rejected_nan, adjusted_nan = fdr_bh(with_nan, q=0.1)
    np.testing.assert_array_equal(rejected_nan[:-1], reference[0])
    assert not rejected_nan[-1] and np.isnan(adjusted_nan[-1])
    with pytest.raises(UsageError, match="q"):
        fdr_bh(p, q=2)


# --------------------------------------------------------------------------- sign flips, RSA


def test_sign_flip_exact_p_by_hand():
    # Means of all 8 sign patterns of (1, 2, 4): only (+, +, +) reaches 7/3.
    assert sign_flip_test([1.0, 2.0, 4.0]).p_value == 1 / 8
    # Observed sum 5: of the 8 sums +-1 +-2 +-4, only 7 and 5 reach it.
    assert sign_flip_test([-1.0, 2.0, 4.0]).p_value == 2 / 8
    result = sign_flip_test([0.5, -0.1, 0.3, 0.2], alternative="two-sided")
    sums = [abs(np.dot(signs, [0.5, -0.1, 0.3, 0.2]))
            for signs in itertools.product([1, -1], repeat=4)]
    assert result.exact and result.n_permutations == 16
    assert result.p_value == pytest.approx(np.mean(np.array(sums) >= 0.9 - 1e-12))


def test_sign_flip_monte_carlo_approaches_the_exact_p(rng):
    values = rng.normal(0.3, 1.0, size=18)
    exact = sign_flip_test(values, max_exact=18)
    drawn = sign_flip_test(values, n_permutations=20_000, random_state=0, max_exact=10)
    assert exact.exact and not drawn.exact
    assert drawn.p_value == pytest.approx(exact.p_value, abs=0.01)


def test_group_rsa_tests_each_comparison_and_corrects_across():
    table = pd.DataFrame({
        "participant_id": [f"{s:02d}" for s in range(1, 7)] * 2,
        "rdm_a": ["brain"] * 12, "rdm_b": ["cnn"] * 6 + ["valence"] * 6,
        "method": ["spearman"] * 12,
        "r": [0.3, 0.4, 0.2, 0.5, 0.35, 0.25, 0.1, -0.2, 0.05, -0.1, 0.15, -0.05]})
    result = group_rsa(table).set_index("rdm_b")
    assert result.loc["cnn", "p"] == 1 / 64 and result.loc["cnn", "exact"]
    assert result.loc["cnn", "mean_r"] == pytest.approx(2.0 / 6)
    assert result.loc["valence", "p"] > 0.2
    assert result.loc["cnn", "p_fdr"] == pytest.approx(2 / 64)
    with pytest.raises(InputDataError, match="appears twice"):
        group_rsa(pd.concat([table, table.iloc[:1]]))


def test_group_mean_rdm_uses_the_classes_every_subject_has(caplog):
    classes = ["a", "b", "c"]
    first = pd.DataFrame(np.ones((3, 3)) - np.eye(3), index=classes, columns=classes)
    second = first.loc[["a", "b"], ["a", "b"]] * 3
    means = group_mean_rdms({"01": {"brain": first}, "02": {"brain": second}})
    assert list(means["brain"].index) == ["a", "b"]
    assert means["brain"].loc["a", "b"] == 2.0
    assert "classes ['c']" in caplog.text


# --------------------------------------------------------------------------- group maps


def planted_maps(rng, n_subjects=12, effect=1.5, shape=(8, 8, 8)):
    """Subject maps of noise, with ``effect`` added in the corner cube [:3, :3, :3]."""
    region = np.zeros(shape, bool)
    region[:3, :3, :3] = True
    maps = []
    for _ in range(n_subjects):
        data = rng.normal(size=shape).astype(np.float32)
        data[region] += effect
        maps.append(nib.Nifti1Image(data, np.eye(4)))
    return maps, region


def test_fdr_t_map_finds_the_planted_region(rng):
    """Survivors fill the planted region; false discoveries stay near the FDR q (.05)."""
    proportions = []
    for _ in range(4):
        maps, region = planted_maps(rng)
        result = group_ttest_map(maps, spaces=[MNI] * 12, atlas=None)
        survivors = np.asarray(result.thresholded_map.dataobj) != 0
        assert survivors[region].mean() > 0.9
        proportions.append(survivors[~region].sum() / survivors.sum())
    assert np.mean(proportions) <= 0.1
    # The t map is the voxelwise one-sample t-test.
    data = np.stack([np.asarray(m.dataobj) for m in maps])
    np.testing.assert_allclose(np.asarray(result.stat_map.dataobj),
                               stats.ttest_1samp(data, 0.0).statistic, rtol=1e-4, atol=1e-4)
    assert result.n_significant == int(survivors.sum()) and len(result.clusters) >= 1


def test_fdr_t_map_of_null_maps_stays_within_the_nominal_rate(rng):
    studies_with_survivors = 0
    for _ in range(20):
        maps, _ = planted_maps(rng, effect=0.0, shape=(6, 6, 6))
        studies_with_survivors += group_ttest_map(maps, atlas=None).n_significant > 0
    # Under the global null BH controls the chance of any discovery at q = .05:
    # Binomial(20, .05) gives P(X >= 4) = 0.016.
    assert studies_with_survivors <= 3


def test_permutation_map_finds_the_planted_region(rng):
    maps, region = planted_maps(rng, n_subjects=10, effect=2.5, shape=(6, 6, 6))
    result = group_permutation_map(maps, n_permutations=1000, random_state=0, atlas=None)
    survivors = np.asarray(result.thresholded_map.dataobj) != 0
    assert survivors[region].mean() > 0.8 and not survivors[~region].any()
    assert result.parameters["n_permutations"] == 1000
    null_maps, _ = planted_maps(rng, n_subjects=10, effect=0.0, shape=(6, 6, 6))
    assert group_permutation_map(null_maps, n_permutations=1000, random_state=0,
                                 atlas=None).n_significant <= 1


def test_fisher_z_group_map_of_correlations(rng):
    maps = [nib.Nifti1Image(np.clip(rng.normal(0.3, 0.1, (5, 5, 5)), -0.99, 0.99)
                            .astype(np.float32), np.eye(4)) for _ in range(8)]
    result = group_ttest_map(maps, fisher=True, atlas=None)
    z = np.stack([fisher_z(np.asarray(m.dataobj)) for m in maps])
    np.testing.assert_allclose(np.asarray(result.stat_map.dataobj),
                               stats.ttest_1samp(z, 0.0).statistic, rtol=1e-4, atol=1e-4)
    bad = [nib.Nifti1Image(np.full((5, 5, 5), 2.0, np.float32), np.eye(4))] * 2
    with pytest.raises(InputDataError, match=r"\|r\| > 1"):
        group_ttest_map(bad, fisher=True)


def test_native_maps_and_mixed_grids_are_refused(rng):
    maps, _ = planted_maps(rng, n_subjects=3)
    with pytest.raises(UsageError, match="map 1 is in 'T1w', a native space") as caught:
        group_ttest_map(maps, spaces=[MNI, "T1w", MNI])
    assert "\n" not in str(caught.value)
    with pytest.raises(InputDataError, match="one space"):
        check_standard_space({"01": MNI, "02": "MNI152NLin6Asym"}, "group maps")
    shifted = nib.Nifti1Image(np.asarray(maps[1].dataobj), np.diag([2, 2, 2, 1]))
    with pytest.raises(InputDataError, match="differs from"):
        group_ttest_map([maps[0], shifted])
    with pytest.raises(InputDataError, match="at least 2 subjects"):
        group_ttest_map(maps[:1])


def test_cluster_table_names_the_atlas_region():
    affine = np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    data = np.zeros((91, 109, 91), np.float32)
    ijk = np.rint(np.linalg.solve(affine, [-22, -4, -18, 1])[:3]).astype(int)
    data[ijk[0] - 1:ijk[0] + 2, ijk[1] - 1:ijk[1] + 2, ijk[2] - 1:ijk[2] + 2] = 5.0
    table = cluster_table(nib.Nifti1Image(data, affine), 3.0)
    assert len(table) == 1 and "Amygdala" in table.loc[0, "region"]


# --------------------------------------------------------------------------- mixed model


def roi_table(rng, n_subjects=20, effects=None, noise=0.02):
    effects = effects or {"CM": 0.08, "LB": 0.05, "SF": 0.02}
    rows = []
    for subject in range(n_subjects):
        offset = rng.normal(0, 0.02)
        for region, effect in effects.items():
            rows.append({"participant_id": f"{subject:02d}", "region": region,
                         "r": effect + offset + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_mixed_model_recovers_a_planted_region_effect(rng):
    result = region_mixed_model(roi_table(rng))
    terms = result.terms.set_index("term")
    assert terms.loc["intercept", "beta"] == pytest.approx(0.05, abs=0.01)
    assert terms.loc["region[CM]", "beta"] == pytest.approx(0.08, abs=0.01)
    assert terms.loc["region[SF]", "beta"] == pytest.approx(0.02, abs=0.01)
    assert result.p_likelihood_ratio < 1e-6 and result.delta_bic > 10
    assert result.df == 2 and result.n_observations == 60
    flat = region_mixed_model(roi_table(rng, effects={"CM": 0.05, "LB": 0.05, "SF": 0.05}))
    assert flat.p_likelihood_ratio > 0.05 and flat.delta_bic < 0


def test_mixed_model_equals_statsmodels_called_directly(rng):
    import statsmodels.formula.api as smf

    table = roi_table(rng, n_subjects=15)
    result = region_mixed_model(table)
    data = table.rename(columns={"participant_id": "subject"})
    reml = smf.mixedlm("r ~ C(region, Sum)", data, groups=data["subject"]).fit(reml=True)
    full = smf.mixedlm("r ~ C(region, Sum)", data, groups=data["subject"]).fit(reml=False)
    null = smf.mixedlm("r ~ 1", data, groups=data["subject"]).fit(reml=False)
    intercept = result.terms.set_index("term").loc["intercept"]
    assert intercept["beta"] == pytest.approx(reml.fe_params["Intercept"], rel=1e-6)
    assert intercept["se"] == pytest.approx(reml.bse["Intercept"], rel=1e-6)
    assert intercept["t"] == pytest.approx(reml.tvalues["Intercept"], rel=1e-6)
    assert intercept["p"] == pytest.approx(reml.pvalues["Intercept"], rel=1e-6)
    assert result.likelihood_ratio == pytest.approx(2 * (full.llf - null.llf), rel=1e-6)
    assert result.delta_bic == pytest.approx(null.bic - full.bic, rel=1e-6)
    assert list(result.to_table().columns[:5]) == ["term", "beta", "se", "t", "p"]


def test_mixed_model_needs_regions_and_subjects(rng):
    with pytest.raises(InputDataError, match="at least 2 regions"):
        region_mixed_model(roi_table(rng, effects={"CM": 0.1}))
    with pytest.raises(InputDataError, match="lacks columns"):
        region_mixed_model(pd.DataFrame({"r": [0.1]}))


# --------------------------------------------------------------------------- occlusion


def test_consensus_counts_subjects_sharing_top_voxels(rng):
    shape, k = (6, 6, 6), 5
    maps = []
    for _ in range(7):
        data = rng.random(shape)
        data[1, 2, :k] += 10          # every subject's top 5
        maps.append(nib.Nifti1Image(data.astype(np.float32), np.eye(4)))
    result = consensus_top_voxels(maps, k=k, spaces=[MNI] * 7, atlas=None)
    assert result.counts[1, 2, :k].tolist() == [7] * k
    assert result.counts.sum() == 7 * k
    assert set(map(tuple, result.table[["i", "j", "k"]].values)) == {(1, 2, z) for z in
                                                                     range(k)}
    assert (result.table["fraction"] == 1.0).all() and result.min_subjects == 4
    # Without spaces nothing says the coordinates are MNI: no atlas names.
    assert (consensus_top_voxels(maps, k=k).table["region"] == "").all()
    with pytest.raises(UsageError, match="native"):
        consensus_top_voxels(maps, k=k, spaces=["T1w"] * 7)
    moved = nib.Nifti1Image(np.asarray(maps[0].dataobj), np.diag([3, 3, 3, 1]))
    with pytest.raises(InputDataError, match="affine differs"):
        consensus_top_voxels([maps[0], moved], k=k)


@pytest.mark.slow  # numba compiles UMAP on its first call
def test_consensus_umap_embeds_only_consensus_voxels_and_is_seeded(rng):
    shape = (7, 7, 7)
    maps = {}
    for label, z in (("fear", 0), ("love", 4)):
        maps[label] = []
        for _ in range(4):
            data = rng.random(shape)
            data[:, :, z:z + 2] += 5      # a slab every subject ranks first
            maps[label].append(data)
    first = consensus_umap(maps, affine=np.eye(4), k=60, min_subjects=4, random_state=0)
    again = consensus_umap(maps, affine=np.eye(4), k=60, min_subjects=4, random_state=0)
    pd.testing.assert_frame_equal(first, again)
    assert (first["n_subjects"] == 4).all()
    assert set(first["k"]) <= {0, 1, 4, 5}
