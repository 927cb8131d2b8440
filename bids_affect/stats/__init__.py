"""Statistics of bids_affect: one place for permutation nulls, their summaries and tests.

- :mod:`~bids_affect.stats.permutation`: circular shifts of each run's labels
  (the null of decoding), permutation p-values, chance level and null band;
- :mod:`~bids_affect.stats.mantel`: the Mantel test of two RDMs;
- :mod:`~bids_affect.stats.enrichment`: do a map's top voxels fall in a region
  more than chance predicts (occlusion's null criteria);
- :mod:`~bids_affect.stats.group`: from each subject's results to the
  population: the t-test of decoding accuracies with its caveat, prevalence
  inference, FDR, group maps, region mixed models, group RSA, consensus voxels.

Every module works on numpy arrays; the analysis modules (:mod:`bids_affect.decoding`,
:mod:`bids_affect.rsa`, :mod:`bids_affect.occlusion`) call them.
"""

from bids_affect.stats.group import (
    TTEST_CAVEAT,
    GroupMapResult,
    MixedModelResult,
    PrevalenceResult,
    accuracy_ttest,
    check_same_grid,
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
from bids_affect.stats.mantel import MantelResult, kendall_tau_a
from bids_affect.stats.permutation import (
    circular_shifts,
    draw_shifts,
    null_summary,
    permutation_p_value,
)

# The Mantel test itself is bids_affect.stats.mantel.mantel (the module keeps its name).
__all__ = ["TTEST_CAVEAT", "GroupMapResult", "MantelResult", "MixedModelResult",
           "PrevalenceResult", "accuracy_ttest", "check_same_grid", "check_standard_space",
           "circular_shifts", "cluster_table", "consensus_top_voxels", "consensus_umap",
           "decoding_group_inference", "draw_shifts", "fdr_bh", "fisher_z", "group_mean_rdms",
           "group_permutation_map", "group_rsa", "group_ttest_map", "kendall_tau_a",
           "null_summary", "permutation_p_value", "prevalence_inference",
           "region_mixed_model", "sign_flip_test"]
