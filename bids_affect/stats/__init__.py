"""Statistics of bids_affect: one place for permutation nulls, their summaries and tests.

- :mod:`~bids_affect.stats.permutation`: circular shifts of each run's labels
  (the null of decoding), permutation p-values, chance level and null band;
- :mod:`~bids_affect.stats.mantel`: the Mantel test of two RDMs;
- :mod:`~bids_affect.stats.enrichment`: do a map's top voxels fall in a region
  more than chance predicts (occlusion's null criteria).

Every module works on numpy arrays; the analysis modules (:mod:`bids_affect.decoding`,
:mod:`bids_affect.rsa`, :mod:`bids_affect.occlusion`) call them.
"""

from bids_affect.stats.mantel import MantelResult, kendall_tau_a
from bids_affect.stats.permutation import (
    circular_shifts,
    draw_shifts,
    null_summary,
    permutation_p_value,
)

# The Mantel test itself is bids_affect.stats.mantel.mantel (the module keeps its name).
__all__ = ["MantelResult", "circular_shifts", "draw_shifts", "kendall_tau_a", "null_summary",
           "permutation_p_value"]
