"""Group-level statistics: from each subject's results to claims about the population.

* Decoding scores: :func:`accuracy_ttest` (the usual one-sample t-test against
  chance, with its caveat) and :func:`prevalence_inference` (Allefeld, Görgen &
  Haynes 2016: how large a share of the population has the effect), both from
  what the participant level saved; :func:`decoding_group_inference` gives both.
* Multiple comparisons: :func:`fdr_bh` (Benjamini-Hochberg).
* Group maps in a standard space (occlusion maps, Fisher z of encoding r):
  :func:`group_ttest_map` (nilearn's ``SecondLevelModel``, FDR threshold) and
  :func:`group_permutation_map` (nilearn's ``non_parametric_inference``, sign
  flips, FWE), with cluster tables (:func:`cluster_table`). Native-space maps
  are refused (:func:`check_standard_space`): their voxels do not correspond.
* Encoding ROIs: :func:`region_mixed_model`, ``r ~ region + (1 | subject)``
  (statsmodels), as seed 000 reports it.
* RSA: :func:`sign_flip_test` and :func:`group_rsa` (one-sample test of each
  comparison's per-subject r), :func:`group_mean_rdms`.
* Occlusion: :func:`consensus_top_voxels` (how many subjects put each voxel in
  their top k) and :func:`consensus_umap`.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> scores = 0.3 + rng.normal(0.05, 0.02, size=12)
>>> accuracy_ttest(scores, chance=0.3)["p"] < 0.001
True
>>> sign_flip_test([1.0, 2.0, 3.0]).p_value  # exact: 1 of the 8 sign patterns
0.125
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import stats

from bids_affect._utils.validation import (
    check_choice,
    check_int,
    check_number,
    check_probability,
)
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.stats.permutation import count_extreme

LOGGER = logging.getLogger("bids_affect.stats")

#: Written beside every t-test of decoding accuracies (Allefeld et al. 2016).
TTEST_CAVEAT = (
    "A one-sample t-test of accuracy minus chance does not show that the effect is typical "
    "in the population: true accuracies cannot be below chance, so its null hypothesis is "
    "in effect the global null that no subject carries information, and rejecting it means "
    "only that some subjects do (Allefeld, Goergen & Haynes 2016, NeuroImage 141:378-392). "
    "See the prevalence lower bound for how large a share of the population does.")

#: Largest number of subjects whose 2^n sign patterns :func:`sign_flip_test` enumerates.
MAX_EXACT_SIGN_FLIPS = 16

ALTERNATIVES = ("greater", "less", "two-sided")


# --------------------------------------------------------------------------- spaces


def check_standard_space(spaces: Mapping[str, str | None], analysis: str) -> str:
    """The one standard space of every subject; native or mixed spaces are refused.

    Parameters
    ----------
    spaces : mapping
        Subject (or map name) -> its space (``None`` or ``"T1w"``: native).
    analysis : str
        What needs it, for the message ("cross-subject decoding", "group maps").

    Returns
    -------
    str
        The common space.

    Raises
    ------
    UsageError
        A native (non-MNI152) space: its voxels do not correspond across subjects.
    InputDataError
        Subjects in different standard spaces.

    Examples
    --------
    >>> check_standard_space({"01": "MNI152NLin2009cAsym", "02": "MNI152NLin2009cAsym"},
    ...                      "group maps")
    'MNI152NLin2009cAsym'
    >>> check_standard_space({"01": "T1w"}, "group maps")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: --space: group maps need every subject in one \
standard space, but 01 is in 'T1w', a native space whose voxels do not correspond across \
subjects; fix: use --space MNI152NLin2009cAsym (fMRIPrep outputs in a standard space)
    """
    from bids_affect.atlases import is_standard_space

    if not spaces:
        raise InputDataError(f"{analysis}: no subject given", path="spaces")
    for name, space in spaces.items():
        if not is_standard_space(space):
            raise UsageError(f"{analysis} need every subject in one standard space, but "
                             f"{name} is in {space!r}, a native space whose voxels do not "
                             f"correspond across subjects", path="--space",
                             fix="use --space MNI152NLin2009cAsym (fMRIPrep outputs in a "
                                 "standard space)")
    found = sorted(set(spaces.values()))
    if len(found) > 1:
        by_space = {space: [n for n, s in spaces.items() if s == space] for space in found}
        raise InputDataError(f"{analysis} need one space, subjects are in several: "
                             + "; ".join(f"{s}: {', '.join(map(str, n))}"
                                         for s, n in by_space.items()),
                             path="--space", fix="build every subject in the same --space")
    return str(found[0])


# --------------------------------------------------------------------------- decoding scores


def fdr_bh(p_values: Sequence[float] | np.ndarray, q: float = 0.05
           ) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg false discovery rate: rejected tests and adjusted p-values.

    NaN p-values (tests not done) are neither counted nor rejected; their
    adjusted value is NaN.

    Parameters
    ----------
    p_values : array-like
        p-values of the tests (any shape).
    q : float
        False discovery rate (default .05).

    Returns
    -------
    rejected : ndarray of bool
    adjusted : ndarray of float
        Step-up adjusted p-values (``min(1, min_{j>=i} p_(j) m / j)``).

    Examples
    --------
    >>> rejected, adjusted = fdr_bh([0.01, 0.04, 0.03, 0.5])
    >>> rejected.tolist(), adjusted.round(3).tolist()
    ([True, False, False, False], [0.04, 0.053, 0.053, 0.5])
    """
    q = check_probability(q, "q")
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    valid = np.flatnonzero(np.isfinite(flat))
    if np.any((flat[valid] < 0) | (flat[valid] > 1)):
        raise InputDataError("p-values must lie between 0 and 1", path="p_values")
    adjusted = np.full(flat.shape, np.nan)
    m = len(valid)
    if m:
        order = valid[np.argsort(flat[valid], kind="stable")]
        scaled = flat[order] * m / np.arange(1, m + 1)
        adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    rejected = np.zeros(flat.shape, bool)
    rejected[valid] = adjusted[valid] <= q
    return rejected.reshape(p.shape), adjusted.reshape(p.shape)


def accuracy_ttest(scores: Sequence[float] | np.ndarray,
                   chance: float | Sequence[float] | np.ndarray,
                   alternative: str = "greater") -> dict[str, Any]:
    """One-sample t-test of each subject's score minus its chance level.

    Caveat (written into the result as ``caveat``): accuracies cannot truly
    be below chance, so the null this test rejects is in effect the global null
    that *no* subject carries information; a significant t says that some
    subjects do, not that the effect is typical of the population (Allefeld,
    Görgen & Haynes 2016). Report :func:`prevalence_inference` beside it.

    Parameters
    ----------
    scores : array-like
        One score per subject (balanced accuracy).
    chance : float or array-like
        Chance level, one for all or one per subject (their permutation null's mean).
    alternative : {"greater", "less", "two-sided"}

    Returns
    -------
    dict
        ``n_subjects``, ``mean_score``, ``mean_chance``, ``mean_difference``,
        ``t``, ``df``, ``p``, ``alternative``, ``caveat``.

    Examples
    --------
    >>> result = accuracy_ttest([0.6, 0.55, 0.65, 0.58], chance=0.5)
    >>> result["df"], round(result["t"], 2)
    (3, 4.52)
    """
    check_choice(alternative, "alternative", ALTERNATIVES)
    scores = np.asarray(scores, dtype=float)
    chance = np.broadcast_to(np.asarray(chance, dtype=float), scores.shape)
    if scores.ndim != 1 or len(scores) < 2:
        raise InputDataError(f"a t-test across subjects needs at least 2 scores, got "
                             f"{scores.size}", path="scores")
    if not (np.isfinite(scores).all() and np.isfinite(chance).all()):
        raise InputDataError("scores and chance levels must be finite", path="scores")
    difference = scores - chance
    result = stats.ttest_1samp(difference, 0.0, alternative=alternative)
    return {"n_subjects": len(scores), "mean_score": float(scores.mean()),
            "mean_chance": float(chance.mean()), "mean_difference": float(difference.mean()),
            "t": float(result.statistic), "df": int(len(scores) - 1),
            "p": float(result.pvalue), "alternative": alternative, "caveat": TTEST_CAVEAT}


@dataclass
class PrevalenceResult:
    """Permutation-based prevalence inference with the minimum statistic.

    Attributes
    ----------
    minimum : ndarray
        Observed minimum over subjects of the score (one per test).
    p_global : ndarray
        Uncorrected p of the global null (no subject has an effect), Eq. 24.
    p_global_fwe : ndarray
        The same, family-wise corrected over tests by the maximum over tests.
    gamma0 : ndarray
        Largest prevalence ``gamma_0`` whose null ``gamma <= gamma_0`` is
        rejected at ``alpha`` (uncorrected, Eq. 23); 0.0 where none is
        (the paper leaves it undefined there).
    gamma0_fwe : ndarray
        The same, corrected over tests (Eqs. 22-23 with the corrected global p).
    gamma0_max : float
        The largest bound ``n_second_level`` permutations can give (Eq. 27).
    p_majority : ndarray
        Uncorrected p of the majority null ``gamma <= 0.5`` (Eq. 19).
    alpha : float
    n_subjects : int
    n_first_level : list of int
        First-level permutations per subject (the observed value excluded).
    n_second_level : int
        Second-level permutations (the neutral one included).
    exact : bool
        Whether every combination of first-level permutations was enumerated.
    """

    minimum: np.ndarray
    p_global: np.ndarray
    p_global_fwe: np.ndarray
    gamma0: np.ndarray
    gamma0_fwe: np.ndarray
    gamma0_max: float
    p_majority: np.ndarray
    alpha: float
    n_subjects: int
    n_first_level: list[int]
    n_second_level: int
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (one test: scalars)."""
        def plain(value):
            value = np.asarray(value, float)
            return value.item() if value.size == 1 else value.tolist()
        return {"method": "permutation-based prevalence inference using the minimum "
                          "statistic (Allefeld, Goergen & Haynes 2016)",
                "alpha": self.alpha, "n_subjects": self.n_subjects,
                "n_first_level_permutations": self.n_first_level,
                "n_second_level_permutations": self.n_second_level, "exact": self.exact,
                "minimum_statistic": plain(self.minimum),
                "p_global_null": plain(self.p_global),
                "p_global_null_fwe": plain(self.p_global_fwe),
                "prevalence_lower_bound": plain(self.gamma0),
                "prevalence_lower_bound_fwe": plain(self.gamma0_fwe),
                "prevalence_lower_bound_max": float(self.gamma0_max),
                "p_majority_null": plain(self.p_majority)}


def _prevalence_bound(p_global: np.ndarray, alpha: float | np.ndarray, n: int) -> np.ndarray:
    """Eq. 23: the largest gamma_0 rejected at ``alpha``; 0 where the global null stands."""
    root_p = np.power(p_global, 1.0 / n)
    root_alpha = np.power(np.maximum(alpha, 0.0), 1.0 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (root_alpha - root_p) / (1.0 - root_p)
    return np.where(p_global < alpha, np.clip(bound, 0.0, 1.0), 0.0)


def prevalence_inference(observed: Sequence[Any] | np.ndarray,
                         nulls: Sequence[Sequence[Any] | np.ndarray], *, alpha: float = 0.05,
                         n_second_level: int = 100_000, random_state=None,
                         batch_size: int = 10_000) -> PrevalenceResult:
    """Population prevalence of an effect from each subject's score and permutation null.

    Allefeld, Görgen & Haynes (2016), "permutation-based information prevalence
    inference using the minimum statistic". Subject ``k`` gives its observed
    score and the scores of its first-level permutations; the observed value
    counts as the neutral permutation (index 0). The second-level statistic is
    the minimum over subjects. Second-level permutations combine one
    first-level permutation per subject, drawn uniformly (neutral included);
    the first is the neutral combination, i.e. the observed minimum. Then

    * ``p_global = #{m_j >= m_1} / P2`` (Eq. 24): p of the global null;
    * the prevalence null ``gamma <= gamma_0`` has
      ``p = ((1 - gamma_0) p_global^(1/N) + gamma_0)^N`` (Eq. 19), and the
      largest ``gamma_0`` rejected at ``alpha`` is
      ``(alpha^(1/N) - p_global^(1/N)) / (1 - p_global^(1/N))`` (Eq. 23);
    * with several tests (voxels, ROIs), family-wise versions use the maximum
      of the minimum statistic over tests (Eqs. 22, 25-26).

    The bound is conservative: ``P(gamma_0 > gamma) <= alpha`` whatever the true
    prevalence ``gamma``. When fewer second-level permutations are asked than
    there are combinations, they are drawn at random; otherwise all are
    enumerated (``exact``).

    Parameters
    ----------
    observed : array-like
        ``(n_subjects,)`` scores, or ``(n_subjects, n_tests)``.
    nulls : sequence of array-like
        Per subject, its first-level permutation scores: ``(P_k,)`` or
        ``(P_k, n_tests)``; subjects may have different ``P_k``.
    alpha : float
        Significance level (default .05).
    n_second_level : int
        Second-level permutations (default 100,000; the paper suggests 1e6).
    random_state : int, Generator or None
        Seed of the second-level draws.
    batch_size : int
        Second-level permutations per vectorised batch (memory).

    Returns
    -------
    PrevalenceResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> nulls = [rng.normal(0.5, 0.03, 200) for _ in range(10)]
    >>> result = prevalence_inference(np.full(10, 0.7), nulls, random_state=0)
    >>> round(float(result.gamma0[0]), 2), float(result.p_global[0]) < 0.001
    (0.62, True)
    """
    alpha = check_probability(alpha, "alpha")
    n_second_level = check_int(n_second_level, "n_second_level", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    observed = np.asarray(observed, dtype=float)
    if observed.ndim == 1:
        observed = observed[:, None]
    if observed.ndim != 2:
        raise InputDataError(f"must be (n_subjects,) or (n_subjects, n_tests), got shape "
                             f"{observed.shape}", path="observed")
    n_subjects, n_tests = observed.shape
    if len(nulls) != n_subjects:
        raise InputDataError(f"{len(nulls)} nulls for {n_subjects} subjects", path="nulls")
    if n_subjects < 1:
        raise InputDataError("no subject", path="observed")
    # One (P_k + 1, n_tests) table per subject, row 0 the neutral permutation.
    tables = []
    for k, null in enumerate(nulls):
        null = np.asarray(null, dtype=float).reshape(len(null), -1)
        if null.shape[1] != n_tests or len(null) < 1:
            raise InputDataError(f"subject {k}: null of shape {null.shape}, expected "
                                 f"(n_permutations >= 1, {n_tests})", path="nulls")
        tables.append(np.vstack([observed[k], null]))
    if not all(np.isfinite(t).all() for t in tables):
        raise InputDataError("observed scores and nulls must be finite", path="nulls")
    sizes = np.array([len(t) for t in tables])
    n_combinations = float(np.prod(sizes.astype(float)))
    exact = n_combinations <= n_second_level
    minimum = observed.min(axis=0)
    upper = np.zeros(n_tests)
    corrected = np.zeros(n_tests)
    rng = np.random.default_rng(random_state)
    total = 0
    for indices in _second_level_indices(sizes, exact, n_second_level, batch_size, rng):
        values = np.stack([tables[k][indices[:, k]] for k in range(n_subjects)], axis=1)
        m = values.min(axis=1)                                # (batch, n_tests)
        upper += (m >= minimum - 1e-12).sum(axis=0)
        corrected += (m.max(axis=1)[:, None] >= minimum - 1e-12).sum(axis=0)
        total += len(indices)
    p_global = upper / total
    p_global_fwe = corrected / total
    gamma0 = _prevalence_bound(p_global, alpha, n_subjects)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_corrected = np.where(p_global_fwe < 1, (alpha - p_global_fwe)
                                   / (1 - p_global_fwe), -1.0)        # Eq. 22
    gamma0_fwe = np.where(alpha_corrected > p_global,
                          _prevalence_bound(p_global, np.maximum(alpha_corrected, 0), n_subjects),
                          0.0)
    p_min = 1.0 / total
    gamma0_max = float(_prevalence_bound(np.array([p_min]), alpha, n_subjects)[0])
    p_majority = np.power(0.5 * np.power(p_global, 1.0 / n_subjects) + 0.5, n_subjects)
    return PrevalenceResult(minimum=minimum, p_global=p_global, p_global_fwe=p_global_fwe,
                            gamma0=gamma0, gamma0_fwe=gamma0_fwe, gamma0_max=gamma0_max,
                            p_majority=p_majority, alpha=alpha, n_subjects=n_subjects,
                            n_first_level=[int(s - 1) for s in sizes], n_second_level=total,
                            exact=bool(exact))


def _second_level_indices(sizes: np.ndarray, exact: bool, n_second_level: int, batch_size: int,
                          rng: np.random.Generator):
    """Batches of per-subject permutation indices; the first row is the neutral one."""
    if exact:
        combos = itertools.product(*(range(int(s)) for s in sizes))  # (0, ..., 0) first
        while batch := list(itertools.islice(combos, batch_size)):
            yield np.array(batch, dtype=np.int64).reshape(len(batch), len(sizes))
        return
    done = 0
    while done < n_second_level:
        n = min(batch_size, n_second_level - done)
        indices = rng.integers(0, sizes, size=(n, len(sizes)))
        if done == 0:
            indices[0] = 0
        done += n
        yield indices


def decoding_group_inference(scores: Sequence[float], chances: Sequence[float],
                             nulls: Sequence[Sequence[float]], *, alpha: float = 0.05,
                             n_second_level: int = 100_000, random_state=None
                             ) -> dict[str, Any]:
    """Both group analyses of within-subject (or per-held-out-subject) decoding scores.

    Parameters
    ----------
    scores : sequence of float
        Balanced accuracy per subject.
    chances : sequence of float
        Chance level per subject (its null's mean).
    nulls : sequence of arrays
        Permutation null per subject, as the participant level saved it.
    alpha, n_second_level, random_state
        See :func:`prevalence_inference`.

    Returns
    -------
    dict
        ``ttest`` (:func:`accuracy_ttest`, with its caveat; None with one
        subject) and ``prevalence`` (:meth:`PrevalenceResult.to_dict`).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> nulls = [rng.normal(0.2, 0.02, 100) for _ in range(5)]
    >>> scores = [0.30, 0.28, 0.33, 0.29, 0.31]
    >>> out = decoding_group_inference(scores, [0.2] * 5, nulls, random_state=0)
    >>> out["prevalence"]["p_global_null"] < 0.05, "caveat" in out["ttest"]
    (True, True)
    """
    scores = np.asarray(scores, float)
    ttest = accuracy_ttest(scores, chances) if len(scores) >= 2 else None
    prevalence = prevalence_inference(scores, nulls, alpha=alpha, n_second_level=n_second_level,
                                      random_state=random_state)
    return {"ttest": ttest, "prevalence": prevalence.to_dict()}


# --------------------------------------------------------------------------- sign flips


@dataclass
class SignFlipResult:
    """One-sample sign-flip permutation test of a mean.

    Attributes
    ----------
    statistic : float
        Mean of the values.
    p_value : float
    n_permutations : int
        Sign patterns used (all ``2^n`` when ``exact``).
    exact : bool
    alternative : str
    """

    statistic: float
    p_value: float
    n_permutations: int
    exact: bool
    alternative: str


def sign_flip_test(values: Sequence[float] | np.ndarray, alternative: str = "greater",
                   n_permutations: int = 10_000, random_state=None,
                   max_exact: int = MAX_EXACT_SIGN_FLIPS) -> SignFlipResult:
    """Sign-flip permutation test that the values' mean is 0 (symmetric null).

    With ``n <= max_exact`` values every one of the ``2^n`` sign patterns is
    used and ``p = #{patterns with a mean at least as extreme} / 2^n``
    (the observed pattern included), which is exact. Otherwise
    ``n_permutations`` random patterns give ``p = (1 + #{as extreme}) / (1 +
    n_permutations)``.

    Parameters
    ----------
    values : array-like
        One value per subject (a correlation, a gain in accuracy...).
    alternative : {"greater", "less", "two-sided"}
    n_permutations : int
        Random patterns when the test is not exact.
    random_state : int, Generator or None
    max_exact : int
        Largest ``n`` that is enumerated.

    Returns
    -------
    SignFlipResult

    Examples
    --------
    >>> sign_flip_test([1.0, 2.0, 3.0]).p_value
    0.125
    >>> sign_flip_test([1.0, -2.0, 3.0], alternative="two-sided").p_value
    0.75
    """
    check_choice(alternative, "alternative", ALTERNATIVES)
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 1 or not np.isfinite(values).all():
        raise InputDataError(f"needs a 1D array of finite values, got shape {values.shape}",
                             path="values")
    n = len(values)
    exact = n <= int(max_exact)
    if exact:
        patterns = np.arange(2**n)[:, None] >> np.arange(n) & 1
        signs = 1.0 - 2.0 * patterns        # row 0: every sign kept
    else:
        rng = np.random.default_rng(random_state)
        signs = rng.choice([-1.0, 1.0], size=(n_permutations, n))
    null = signs @ values / n
    observed = float(values.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(values).max()))
    n_extreme = count_extreme(null, observed, alternative, tolerance)
    # Enumerated: the observed pattern is one of the 2^n; drawn: it is added to them.
    p = n_extreme / len(null) if exact else (1 + n_extreme) / (1 + n_permutations)
    return SignFlipResult(observed, p, int(len(signs)), bool(exact), alternative)


# --------------------------------------------------------------------------- group RSA


def group_rsa(statistics: pd.DataFrame, *, subject: str = "participant_id",
              alternative: str = "greater", n_permutations: int = 10_000,
              random_state=None) -> pd.DataFrame:
    """Each RDM comparison's per-subject r tested across subjects by sign flips.

    Parameters
    ----------
    statistics : DataFrame
        The subjects' ``desc-rsa_statistics.tsv`` rows stacked, with a
        ``subject`` column: ``rdm_a``, ``rdm_b``, ``method``, ``r``.
    subject : str
        Column naming the subject.
    alternative : {"greater", "less", "two-sided"}
        Direction of the test on the mean r (default: positive similarity).
    n_permutations : int
        Random sign patterns beyond :data:`MAX_EXACT_SIGN_FLIPS` subjects.
    random_state : int, Generator or None

    Returns
    -------
    DataFrame
        One row per comparison: ``rdm_a``, ``rdm_b``, ``method``, ``n_subjects``,
        ``mean_r``, ``sd_r``, ``p``, ``n_permutations``, ``exact``, and the
        Benjamini-Hochberg ``p_fdr`` across comparisons.

    Examples
    --------
    >>> table = pd.DataFrame({"participant_id": ["01", "02", "03"] * 2,
    ...                       "rdm_a": ["brain"] * 6, "rdm_b": ["cnn"] * 3 + ["va"] * 3,
    ...                       "method": ["spearman"] * 6,
    ...                       "r": [0.4, 0.5, 0.3, 0.1, -0.2, 0.05]})
    >>> group_rsa(table)[["rdm_b", "n_subjects", "p"]].values.tolist()
    [['cnn', 3, 0.125], ['va', 3, 0.625]]
    """
    required = {subject, "rdm_a", "rdm_b", "method", "r"}
    missing = required - set(statistics.columns)
    if missing:
        raise InputDataError(f"lacks columns {sorted(missing)}", path="statistics",
                             fix="stack the subjects' desc-rsa_statistics.tsv with a "
                                 f"{subject} column")
    rng = np.random.default_rng(random_state)
    rows = []
    for (rdm_a, rdm_b, method), group in statistics.groupby(["rdm_a", "rdm_b", "method"],
                                                            sort=True):
        duplicated = group[subject].duplicated()
        if duplicated.any():
            raise InputDataError(f"{rdm_a} vs {rdm_b} ({method}) appears twice for "
                                 f"{group[subject][duplicated].tolist()}", path="statistics")
        values = group["r"].to_numpy(float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        test = sign_flip_test(values, alternative, n_permutations, rng)
        rows.append({"rdm_a": rdm_a, "rdm_b": rdm_b, "method": method,
                     "n_subjects": len(values), "mean_r": float(values.mean()),
                     "sd_r": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                     "p": test.p_value, "n_permutations": test.n_permutations,
                     "exact": test.exact})
    table = pd.DataFrame(rows, columns=["rdm_a", "rdm_b", "method", "n_subjects", "mean_r",
                                        "sd_r", "p", "n_permutations", "exact"])
    table["p_fdr"] = fdr_bh(table["p"].to_numpy(float))[1] if len(table) else []
    return table


def group_mean_rdms(rdms: Mapping[str, Mapping[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Mean RDM of each name across subjects, on the classes every subject has.

    Parameters
    ----------
    rdms : mapping
        Subject -> (RDM name -> square DataFrame with class names as index
        and columns).

    Returns
    -------
    dict
        RDM name -> mean DataFrame (classes common to the subjects holding
        that RDM, sorted); a class missing in some subject is dropped with a warning.

    Examples
    --------
    >>> a = pd.DataFrame([[0, 1], [1, 0]], index=["x", "y"], columns=["x", "y"])
    >>> float(group_mean_rdms({"01": {"brain": a}, "02": {"brain": 3 * a}})["brain"].loc["x", "y"])
    2.0
    """
    names = sorted({name for per_subject in rdms.values() for name in per_subject})
    means = {}
    for name in names:
        held = {s: per_subject[name] for s, per_subject in rdms.items() if name in per_subject}
        classes = sorted(set.intersection(*(set(map(str, r.index)) for r in held.values())))
        dropped = sorted(set.union(*(set(map(str, r.index)) for r in held.values()))
                         - set(classes))
        if dropped:
            LOGGER.warning("group RDM %s: classes %s are missing in some subjects and left "
                           "out of the mean", name, dropped)
        if len(classes) < 2:
            raise InputDataError(f"fewer than 2 classes common to every subject ({classes})",
                                 path=f"rdm {name}")
        total = np.zeros((len(classes), len(classes)))
        for rdm in held.values():
            rdm = rdm.copy()
            rdm.index, rdm.columns = rdm.index.map(str), rdm.columns.map(str)
            total += rdm.loc[classes, classes].to_numpy(float)
        means[name] = pd.DataFrame(total / len(held), index=classes, columns=classes)
    return means


# --------------------------------------------------------------------------- group maps


def fisher_z(r: np.ndarray | float) -> np.ndarray:
    """Fisher's z of correlations (``arctanh``), with r clipped to +-(1 - 1e-7).

    Examples
    --------
    >>> fisher_z(np.array([0.0, 0.5])).round(4).tolist()
    [0.0, 0.5493]
    """
    r = np.asarray(r, dtype=np.float64)
    return np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7))


def _load_image(image: Any, name: str) -> nib.Nifti1Image:
    if isinstance(image, nib.spatialimages.SpatialImage):
        loaded = image
    else:
        try:
            loaded = nib.load(image)
        except (OSError, ValueError, TypeError) as err:
            raise InputDataError(f"cannot be read as an image ({err})", path=str(image),
                                 fix="give NIfTI maps") from err
    if len(loaded.shape) != 3:
        raise InputDataError(f"must be a 3D map, got shape {loaded.shape}", path=name)
    return loaded


def check_same_grid(images: Sequence[Any], names: Sequence[str] | None = None,
                    tolerance_mm: float = 1e-3) -> list[nib.Nifti1Image]:
    """The maps, loaded, if they share one grid (shape and affine); else a clear error.

    Examples
    --------
    >>> a = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    >>> b = nib.Nifti1Image(np.zeros((2, 2, 3), np.float32), np.eye(4))
    >>> check_same_grid([a, b], ["01", "02"])
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: 02: grid (2, 2, 3) differs from 01's (2, 2, 2) \
(shapes or affines); fix: resample every map to one grid (one --space and resolution)
    """
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    loaded = [_load_image(image, name) for image, name in zip(images, names)]
    if not loaded:
        raise InputDataError("no map given", path="images")
    reference = loaded[0]
    for image, name in zip(loaded[1:], names[1:]):
        if image.shape != reference.shape or not np.allclose(image.affine, reference.affine,
                                                             atol=tolerance_mm):
            raise InputDataError(f"grid {image.shape} differs from {names[0]}'s "
                                 f"{reference.shape} (shapes or affines)", path=name,
                                 fix="resample every map to one grid (one --space and "
                                     "resolution)")
    return loaded


@dataclass
class GroupMapResult:
    """A one-sample group map, its threshold and its clusters.

    Attributes
    ----------
    stat_map : Nifti1Image
        t map (``stat-t``).
    z_map : Nifti1Image or None
        z map of the parametric test (its p as a z; None for the permutation test).
    p_map : Nifti1Image
        Per voxel, the uncorrected one-sided p of nilearn's contrast (parametric)
        or the FWE-corrected p (permutation).
    thresholded_map : Nifti1Image
        The t map where the test survives (0 elsewhere).
    threshold : float
        The threshold: on z (parametric, ``inf`` when nothing survives FDR) or
        on -log10 p (permutation).
    n_significant : int
        Surviving voxels.
    clusters : DataFrame
        nilearn's cluster table of surviving voxels, with atlas labels.
    mask_img : Nifti1Image
        Voxels tested.
    parameters : dict
        What the sidecar records.
    """

    stat_map: nib.Nifti1Image
    z_map: nib.Nifti1Image | None
    p_map: nib.Nifti1Image
    thresholded_map: nib.Nifti1Image
    threshold: float
    n_significant: int
    clusters: pd.DataFrame
    mask_img: nib.Nifti1Image
    parameters: dict[str, Any] = field(default_factory=dict)


def _prepare_maps(images: Sequence[Any], spaces: Sequence[str | None] | None,
                  names: Sequence[str] | None, mask_img: Any, fisher: bool
                  ) -> tuple[list[nib.Nifti1Image], nib.Nifti1Image, list[str], str | None]:
    names = list(names) if names is not None else [f"map {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise InputDataError(f"{len(names)} names for {len(images)} maps", path="names")
    space = None
    if spaces is not None:
        if len(spaces) != len(images):
            raise InputDataError(f"{len(spaces)} spaces for {len(images)} maps", path="spaces")
        space = check_standard_space(dict(zip(names, spaces)), "group maps")
    loaded = check_same_grid(images, names)
    if len(loaded) < 2:
        raise InputDataError(f"group maps need at least 2 subjects, got {len(loaded)}",
                             path="images", fix="run the participant level for more subjects")
    data = []
    for image, name in zip(loaded, names):
        values = np.asarray(image.get_fdata(dtype=np.float32))
        if fisher:
            if np.nanmax(np.abs(values)) > 1:
                raise InputDataError("holds |r| > 1: not a correlation map", path=name,
                                     fix="pass fisher=False for maps that are not r")
            values = fisher_z(values).astype(np.float32)
        data.append(nib.Nifti1Image(values, image.affine))
    if mask_img is None:
        stack = np.stack([np.asarray(d.dataobj) for d in data])
        inside = np.isfinite(stack).all(axis=0) & (np.abs(stack) > 0).any(axis=0)
        mask = nib.Nifti1Image(inside.astype(np.uint8), loaded[0].affine)
    else:
        mask = check_same_grid([mask_img, loaded[0]], ["mask_img", names[0]])[0]
        inside = np.asarray(mask.dataobj) > 0
        mask = nib.Nifti1Image(inside.astype(np.uint8), loaded[0].affine)
    if not inside.any():
        raise InputDataError("no voxel is finite and non-zero in the maps", path="mask_img")
    # Voxels outside the mask may hold NaN (nilearn reads every voxel).
    data = [nib.Nifti1Image(np.where(inside, np.nan_to_num(np.asarray(d.dataobj)), 0)
                            .astype(np.float32), d.affine) for d in data]
    return data, mask, names, space


def _intercept_design(n: int) -> pd.DataFrame:
    return pd.DataFrame({"intercept": np.ones(n)})


def _masked_where(image: nib.Nifti1Image, keep: np.ndarray) -> nib.Nifti1Image:
    values = np.asarray(image.get_fdata(dtype=np.float32))
    return nib.Nifti1Image(np.where(keep, values, 0).astype(np.float32), image.affine)


def group_ttest_map(images: Sequence[Any], *, spaces: Sequence[str | None] | None = None,
                    names: Sequence[str] | None = None, mask_img: Any = None,
                    alpha: float = 0.05, height_control: str = "fdr", two_sided: bool = False,
                    cluster_threshold: int = 0, fisher: bool = False,
                    atlas: str | None = "harvard_oxford") -> GroupMapResult:
    """One-sample t map across subjects (nilearn ``SecondLevelModel``) with FDR threshold.

    Parameters
    ----------
    images : sequence of Niimg-like
        One map per subject, on one grid in one standard space.
    spaces : sequence of str, optional
        Each map's space: a native one is refused (:func:`check_standard_space`).
    names : sequence of str, optional
        Subject of each map, for messages.
    mask_img : Niimg-like, optional
        Voxels to test (default: finite in every map and non-zero in one).
    alpha : float
        q of the FDR (or p of ``fpr``/``bonferroni``), default .05.
    height_control : {"fdr", "fpr", "bonferroni"}
        nilearn's ``threshold_stats_img`` control, on the z map.
    two_sided : bool
        Also negative effects (default: only positive).
    cluster_threshold : int
        Smallest cluster (voxels) kept.
    fisher : bool
        Maps are correlations: test their Fisher z (encoding r maps).
    atlas : str or None
        Atlas labelling the cluster peaks (None: no labels).

    Returns
    -------
    GroupMapResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> maps = []
    >>> for _ in range(10):
    ...     data = rng.normal(size=(6, 6, 6)).astype(np.float32)
    ...     data[:2, :2, :2] += 3.0
    ...     maps.append(nib.Nifti1Image(data, np.eye(4)))
    >>> result = group_ttest_map(maps, atlas=None)
    >>> significant = np.asarray(result.thresholded_map.dataobj) != 0
    >>> bool(significant[:2, :2, :2].all()), int(significant[2:, 2:, 2:].sum())
    (True, 0)
    """
    from nilearn.glm import threshold_stats_img
    from nilearn.glm.second_level import SecondLevelModel

    alpha = check_probability(alpha, "alpha")
    check_choice(height_control, "height_control", ("fdr", "fpr", "bonferroni"))
    cluster_threshold = check_int(cluster_threshold, "cluster_threshold", minimum=0)
    data, mask, names, space = _prepare_maps(images, spaces, names, mask_img, fisher)
    model = SecondLevelModel(mask_img=mask, minimize_memory=True)
    model.fit(data, design_matrix=_intercept_design(len(data)))
    maps = model.compute_contrast("intercept", output_type="all")
    z_map = maps["z_score"]
    with warnings.catch_warnings():
        # When nothing survives, nilearn's FDR threshold is inf and it says so; so do we.
        warnings.filterwarnings("ignore", message=".*threshold=inf.*", category=UserWarning)
        _, threshold = threshold_stats_img(z_map, mask_img=mask, alpha=alpha,
                                           height_control=height_control,
                                           cluster_threshold=cluster_threshold,
                                           two_sided=two_sided)
    threshold = float(threshold)
    z = np.asarray(z_map.get_fdata())
    inside = np.asarray(mask.dataobj) > 0
    survives = inside & ((np.abs(z) if two_sided else z) >= threshold)
    survives = _keep_large_clusters(survives, cluster_threshold)
    thresholded = _masked_where(maps["stat"], survives)
    clusters = (cluster_table(_masked_where(z_map, survives), threshold, cluster_threshold,
                              two_sided, atlas=atlas if space else None)
                if survives.any() else _empty_clusters())
    parameters = {"test": "one-sample t-test (nilearn SecondLevelModel, intercept)",
                  "n_subjects": len(data), "height_control": height_control, "alpha": alpha,
                  "two_sided": two_sided, "cluster_threshold": cluster_threshold,
                  "fisher_z": fisher, "z_threshold": threshold, "space": space,
                  "n_voxels_tested": int(inside.sum())}
    return GroupMapResult(stat_map=maps["stat"], z_map=z_map, p_map=maps["p_value"],
                          thresholded_map=thresholded, threshold=threshold,
                          n_significant=int(survives.sum()), clusters=clusters,
                          mask_img=mask, parameters=parameters)


def _keep_large_clusters(survives: np.ndarray, cluster_threshold: int) -> np.ndarray:
    """Drop clusters (face connectivity) smaller than ``cluster_threshold`` voxels."""
    if cluster_threshold <= 1 or not survives.any():
        return survives
    from scipy import ndimage

    labels, n = ndimage.label(survives)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= cluster_threshold
    keep[0] = False
    return keep[labels]


def group_permutation_map(images: Sequence[Any], *, spaces: Sequence[str | None] | None = None,
                          names: Sequence[str] | None = None, mask_img: Any = None,
                          alpha: float = 0.05, n_permutations: int = 10_000,
                          two_sided: bool = False, fisher: bool = False,
                          random_state: int | None = None, n_jobs: int = 1,
                          atlas: str | None = "harvard_oxford") -> GroupMapResult:
    """Non-parametric one-sample group map: sign flips, max-t FWE (nilearn).

    nilearn's :func:`~nilearn.glm.second_level.non_parametric_inference`
    (``permuted_ols`` on the intercept: each permutation flips the signs of
    whole subject maps) gives voxelwise family-wise error corrected p-values
    from the maximum t over voxels; voxels with ``p_FWE <= alpha`` survive.

    Parameters
    ----------
    images, spaces, names, mask_img, two_sided, fisher, atlas
        As in :func:`group_ttest_map`.
    alpha : float
        FWE level (default .05).
    n_permutations : int
        Sign-flip permutations (nilearn enumerates all when there are fewer).
    random_state : int or None
    n_jobs : int

    Returns
    -------
    GroupMapResult
        ``p_map`` holds FWE-corrected p; ``threshold`` is ``-log10(alpha)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> maps = []
    >>> for _ in range(8):
    ...     data = rng.normal(size=(5, 5, 5)).astype(np.float32)
    ...     data[:2, :2, :2] += 3.0
    ...     maps.append(nib.Nifti1Image(data, np.eye(4)))
    >>> result = group_permutation_map(maps, n_permutations=500, random_state=0, atlas=None)
    >>> bool(np.asarray(result.thresholded_map.dataobj)[:2, :2, :2].all())
    True
    """
    from nilearn.glm.second_level import SecondLevelModel, non_parametric_inference

    alpha = check_probability(alpha, "alpha")
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    data, mask, names, space = _prepare_maps(images, spaces, names, mask_img, fisher)
    design = _intercept_design(len(data))
    log_p = non_parametric_inference(data, design_matrix=design,
                                     second_level_contrast="intercept", mask=mask,
                                     n_perm=n_permutations, two_sided_test=two_sided,
                                     random_state=random_state, n_jobs=n_jobs)
    model = SecondLevelModel(mask_img=mask, minimize_memory=True).fit(data, design_matrix=design)
    t_map = model.compute_contrast("intercept", output_type="stat")
    threshold = float(-np.log10(alpha))
    inside = np.asarray(mask.dataobj) > 0
    survives = inside & (np.asarray(log_p.get_fdata()) >= threshold - 1e-12)
    p_values = np.where(inside, np.power(10.0, -np.asarray(log_p.get_fdata())), 1.0)
    t_survivors = _masked_where(t_map, survives)
    clusters = (cluster_table(t_survivors, float(np.abs(np.asarray(
        t_survivors.dataobj))[survives].min()), 0, two_sided,
        atlas=atlas if space else None) if survives.any() else _empty_clusters())
    parameters = {"test": "one-sample sign-flip permutation test (nilearn "
                          "non_parametric_inference, max-t FWE)",
                  "n_subjects": len(data), "n_permutations": n_permutations, "alpha": alpha,
                  "two_sided": two_sided, "fisher_z": fisher, "space": space,
                  "n_voxels_tested": int(inside.sum()), "random_state": random_state}
    return GroupMapResult(stat_map=t_map, z_map=None,
                          p_map=nib.Nifti1Image(p_values.astype(np.float32), mask.affine),
                          thresholded_map=t_survivors, threshold=threshold,
                          n_significant=int(survives.sum()), clusters=clusters, mask_img=mask,
                          parameters=parameters)


CLUSTER_COLUMNS = ("Cluster ID", "X", "Y", "Z", "Peak Stat", "Cluster Size (mm3)", "region")


def _empty_clusters() -> pd.DataFrame:
    return pd.DataFrame(columns=list(CLUSTER_COLUMNS))


def cluster_table(stat_img: nib.Nifti1Image, threshold: float, cluster_threshold: int = 0,
                  two_sided: bool = False, atlas: str | None = "harvard_oxford"
                  ) -> pd.DataFrame:
    """nilearn's cluster table (peaks, sizes) with the atlas region of each peak.

    Parameters
    ----------
    stat_img : Nifti1Image
        Statistical map.
    threshold : float
        Cluster-forming threshold on the map's values.
    cluster_threshold : int
        Smallest cluster (voxels).
    two_sided : bool
    atlas : str or None
        ``harvard_oxford`` or ``juelich`` label of each peak (MNI coordinates);
        None leaves ``region`` empty (maps not in a standard space).

    Examples
    --------
    >>> data = np.zeros((5, 5, 5), np.float32)
    >>> data[1:3, 1:3, 1:3] = 4.0
    >>> table = cluster_table(nib.Nifti1Image(data, np.eye(4)), 3.0, atlas=None)
    >>> int(table.loc[0, "Cluster Size (mm3)"])
    8
    """
    from nilearn.reporting import get_clusters_table

    threshold = check_number(threshold, "threshold")
    table = get_clusters_table(stat_img, stat_threshold=threshold,
                               cluster_threshold=cluster_threshold, two_sided=two_sided)
    table = table.reset_index(drop=True)
    if atlas is not None and len(table):
        from bids_affect.atlases import label_coordinates

        table["region"] = label_coordinates(table[["X", "Y", "Z"]].to_numpy(float), atlas)
    else:
        table["region"] = ""
    return table


# --------------------------------------------------------------------------- mixed model


@dataclass
class MixedModelResult:
    """``value ~ region + (1 | subject)`` fitted by statsmodels, as seed 000 reports it.

    Attributes
    ----------
    terms : DataFrame
        ``term``, ``beta``, ``se``, ``t``, ``p``: the intercept (the mean over
        regions, sum coding), then each region's mean (intercept plus its
        deviation), from the REML fit. ``t`` is the Wald statistic
        (statsmodels' z) and ``p`` its normal p, as statsmodels reports them.
    likelihood_ratio : float
        ``2 (llf_region - llf_none)`` of maximum-likelihood fits.
    df : int
        Extra parameters of the region model (``n_regions - 1``).
    p_likelihood_ratio : float
        Chi-square p of the likelihood ratio.
    bic_none, bic_region : float
        BIC of the maximum-likelihood fits (statsmodels).
    delta_bic : float
        ``bic_none - bic_region``: positive when regions differ.
    n_subjects, n_regions, n_observations : int
    group_variance : float
        Subject random-intercept variance (REML).
    converged : bool
        Whether every fit converged.
    """

    terms: pd.DataFrame
    likelihood_ratio: float
    df: int
    p_likelihood_ratio: float
    bic_none: float
    bic_region: float
    delta_bic: float
    n_subjects: int
    n_regions: int
    n_observations: int
    group_variance: float
    converged: bool

    def to_table(self) -> pd.DataFrame:
        """The ``desc-FEATURES_mixedmodel.tsv`` table: the terms, model comparison beside."""
        table = self.terms.copy()
        for name in ("likelihood_ratio", "df", "p_likelihood_ratio", "bic_none", "bic_region",
                     "delta_bic", "n_subjects", "n_regions", "n_observations"):
            table[name] = getattr(self, name)
        return table


def _mixedlm(formula: str, data: pd.DataFrame, reml: bool):
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = smf.mixedlm(formula, data, groups=data["subject"]).fit(reml=reml)
    converged = bool(result.converged) and not any(
        issubclass(w.category, ConvergenceWarning) for w in caught)
    return result, converged


def region_mixed_model(table: pd.DataFrame, *, value: str = "r", region: str = "region",
                       subject: str = "participant_id", fisher: bool = False
                       ) -> MixedModelResult:
    """Mixed model of ROI scores: ``value ~ region + (1 | subject)`` (statsmodels MixedLM).

    The intercept under sum (deviation) coding of ``region`` is the mean score
    over regions, its test the "average response above chance" of seed 000
    (beta .049, SE .0053, t53 = 9.27). Regions are compared by a
    likelihood-ratio test of the model with ``region`` against ``value ~ 1 +
    (1 | subject)``, both fitted by maximum likelihood (REML likelihoods of
    models with different fixed effects are not comparable), and by their
    BIC difference (seed 000: delta BIC 23.5, LR 36.5). Estimates come from
    the REML fit.

    Parameters
    ----------
    table : DataFrame
        One row per subject and region: the subjects' ``desc-FEATURES_roi.tsv``
        stacked with a subject column.
    value, region, subject : str
        Column names.
    fisher : bool
        Model Fisher's z of ``value`` (correlations) instead of ``value``.

    Returns
    -------
    MixedModelResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rows = [{"participant_id": s, "region": g, "r": 0.05 + 0.05 * (g == "CM")
    ...          + 0.02 * u + rng.normal(0, 0.01)}
    ...         for s, u in enumerate(rng.normal(size=12)) for g in ("CM", "LB", "SF")]
    >>> result = region_mixed_model(pd.DataFrame(rows))
    >>> result.terms["term"].tolist()
    ['intercept', 'region[CM]', 'region[LB]', 'region[SF]']
    >>> result.p_likelihood_ratio < 0.001, result.delta_bic > 10
    (True, True)
    """
    missing = {value, region, subject} - set(table.columns)
    if missing:
        raise InputDataError(f"lacks columns {sorted(missing)}", path="table")
    data = pd.DataFrame({"value": pd.to_numeric(table[value], errors="coerce"),
                         "region": table[region].astype(str),
                         "subject": table[subject].astype(str)}).dropna()
    if fisher:
        data["value"] = fisher_z(data["value"].to_numpy())
    regions = sorted(data["region"].unique())
    n_subjects = data["subject"].nunique()
    if len(regions) < 2 or n_subjects < 2:
        raise InputDataError(f"a region mixed model needs at least 2 regions and 2 subjects, "
                             f"got {len(regions)} and {n_subjects}", path="table")
    data["region"] = pd.Categorical(data["region"], categories=regions)
    fixed = "value ~ C(region, Sum)"
    reml, converged_reml = _mixedlm(fixed, data, reml=True)
    full, converged_full = _mixedlm(fixed, data, reml=False)
    null, converged_null = _mixedlm("value ~ 1", data, reml=False)
    n_fixed = len(regions)
    beta = reml.fe_params.to_numpy()
    covariance = reml.cov_params().iloc[:n_fixed, :n_fixed].to_numpy()
    # Contrasts: the intercept, then each region's mean under sum coding.
    contrasts = np.zeros((1 + len(regions), n_fixed))
    contrasts[0, 0] = 1.0
    for index in range(len(regions)):
        contrasts[1 + index, 0] = 1.0
        if index < len(regions) - 1:
            contrasts[1 + index, 1 + index] = 1.0
        else:
            contrasts[1 + index, 1:] = -1.0
    estimates = contrasts @ beta
    errors = np.sqrt(np.einsum("ij,jk,ik->i", contrasts, covariance, contrasts))
    statistic = estimates / errors
    terms = pd.DataFrame({"term": ["intercept"] + [f"region[{g}]" for g in regions],
                          "beta": estimates, "se": errors, "t": statistic,
                          "p": 2 * stats.norm.sf(np.abs(statistic))})
    likelihood_ratio = float(2 * (full.llf - null.llf))
    df = len(regions) - 1
    return MixedModelResult(
        terms=terms, likelihood_ratio=likelihood_ratio, df=df,
        p_likelihood_ratio=float(stats.chi2.sf(max(likelihood_ratio, 0.0), df)),
        bic_none=float(null.bic), bic_region=float(full.bic),
        delta_bic=float(null.bic - full.bic), n_subjects=int(n_subjects),
        n_regions=len(regions), n_observations=len(data),
        group_variance=float(reml.cov_re.iloc[0, 0]),
        converged=converged_reml and converged_full and converged_null)


# --------------------------------------------------------------------------- occlusion


def _map_data(stat_map: Any, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    values = (np.asarray(stat_map.get_fdata(dtype=np.float32))
              if isinstance(stat_map, nib.spatialimages.SpatialImage)
              else np.asarray(stat_map, dtype=np.float32))
    if values.ndim != 3 or (shape is not None and values.shape != shape):
        raise InputDataError(f"must be a 3D map of shape {shape}, got {values.shape}",
                             path=name, fix="give every subject's map on one standard grid")
    return values


@dataclass
class ConsensusResult:
    """Top-k consensus of several subjects' maps.

    Attributes
    ----------
    counts : ndarray of int
        Per voxel, the subjects that put it in their top ``k``.
    mean_map : ndarray
        Mean map over subjects.
    table : DataFrame
        Voxels counted by at least ``min_subjects``: ``rank``, ``i``, ``j``,
        ``k``, ``x``, ``y``, ``z``, ``n_subjects``, ``fraction``,
        ``mean_value``, ``atlas``, ``region``.
    n_subjects, k, min_subjects : int
    """

    counts: np.ndarray
    mean_map: np.ndarray
    table: pd.DataFrame
    n_subjects: int
    k: int
    min_subjects: int


def consensus_top_voxels(maps: Sequence[Any], *, k: int = 500, mask: np.ndarray | None = None,
                         affine: np.ndarray | None = None,
                         spaces: Sequence[str | None] | None = None,
                         names: Sequence[str] | None = None, min_subjects: int | None = None,
                         atlas: str | None = "harvard_oxford") -> ConsensusResult:
    """How many subjects put each voxel among the top ``k`` of their map (standard space).

    Seed 003 averaged occlusion maps across unaligned native spaces; here maps
    must share one standard-space grid (``spaces`` checked when given), each
    subject's top ``k`` voxels are found on its own map, and the group result
    is the count per voxel. Maps are read one at a time.

    Parameters
    ----------
    maps : sequence of ndarray or Nifti1Image
        One 3D map per subject (images give ``affine`` themselves).
    k : int
        Top voxels per subject (default 500, seed 003).
    mask : ndarray of bool, optional
        Voxels that may rank.
    affine : ndarray, optional
        Voxel-to-mm affine (from the first image when not given).
    spaces, names : sequence of str, optional
        Each map's space (native ones refused) and subject.
    min_subjects : int, optional
        Voxels listed in ``table`` (default: more than half the subjects).
    atlas : str or None
        Atlas of the ``region`` column (``harvard_oxford``, ``juelich``), used
        only when ``spaces`` shows the maps in a standard space (an atlas read
        at native coordinates would name the wrong structures).

    Returns
    -------
    ConsensusResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> maps = [rng.random((6, 6, 6)) for _ in range(5)]
    >>> for m in maps:
    ...     m[0, 0, :3] += 2
    >>> result = consensus_top_voxels(maps, k=3, affine=np.eye(4), atlas=None)
    >>> sorted(result.table[["i", "j", "k", "n_subjects"]].values.tolist())
    [[0, 0, 0, 5], [0, 0, 1, 5], [0, 0, 2, 5]]
    """
    from bids_affect.occlusion import mm_coordinates
    from bids_affect.occlusion.topk import top_indices

    k = check_int(k, "k", minimum=1)
    names = list(names) if names is not None else [f"map {i}" for i in range(len(maps))]
    if len(maps) < 1:
        raise InputDataError("no map given", path="maps")
    space = (check_standard_space(dict(zip(names, spaces)), "group occlusion summaries")
             if spaces is not None else None)
    if affine is None:
        if not isinstance(maps[0], nib.spatialimages.SpatialImage):
            raise UsageError("is needed when maps are arrays", path="affine")
        affine = maps[0].affine
    shape = None
    counts = total = None
    for index, (stat_map, name) in enumerate(zip(maps, names)):
        if isinstance(stat_map, nib.spatialimages.SpatialImage) and not np.allclose(
                stat_map.affine, affine, atol=1e-3):
            raise InputDataError("affine differs from the others'", path=name,
                                 fix="resample every map to one grid")
        values = _map_data(stat_map, name, shape)
        if index == 0:
            shape = values.shape
            counts = np.zeros(shape, np.int32)
            total = np.zeros(shape, np.float64)
        counts.ravel()[top_indices(values, mask, k)] += 1
        total += values
    n = len(maps)
    min_subjects = (n // 2 + 1) if min_subjects is None else check_int(
        min_subjects, "min_subjects", minimum=1)
    mean_map = (total / n).astype(np.float32)
    chosen = np.flatnonzero(counts.ravel() >= min_subjects)
    order = chosen[np.lexsort((chosen, -mean_map.ravel()[chosen], -counts.ravel()[chosen]))]
    ijk = np.stack(np.unravel_index(order, shape), axis=1).reshape(-1, 3)
    xyz = mm_coordinates(affine, ijk) if len(ijk) else np.zeros((0, 3))
    if atlas is not None and len(ijk) and space is not None:
        from bids_affect.atlases import label_coordinates

        regions = label_coordinates(xyz, atlas)
    else:
        regions = [""] * len(ijk)
    table = pd.DataFrame({
        "rank": np.arange(1, len(order) + 1), "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "n_subjects": counts.ravel()[order], "fraction": counts.ravel()[order] / n,
        "mean_value": mean_map.ravel()[order].astype(float),
        "atlas": atlas or "", "region": regions})
    return ConsensusResult(counts=counts, mean_map=mean_map, table=table, n_subjects=n, k=k,
                           min_subjects=int(min_subjects))


def consensus_umap(class_maps: Mapping[str, Sequence[Any]], *, affine: np.ndarray,
                   k: int = 500, mask: np.ndarray | None = None,
                   min_subjects: int | None = None,
                   spaces: Sequence[str | None] | None = None,
                   random_state: int | None = None) -> pd.DataFrame:
    """Group UMAP of consensus voxels: spatial and functional embeddings (seeded).

    For each class, :func:`consensus_top_voxels` counts the subjects putting
    each voxel in their top ``k``; voxels reaching ``min_subjects`` in some
    class are the consensus voxels. They are embedded by
    :func:`bids_affect.occlusion.umap_embeddings` on the group-mean class maps
    restricted to them: by position (spatial) and by their vector of mean
    occlusion drops across classes (functional), as seed 003 did for one
    subject. A ``n_subjects`` column gives each voxel's count in its class.

    Parameters
    ----------
    class_maps : mapping
        Class -> one map per subject (same subjects, same grid).
    affine : ndarray
        Voxel-to-mm affine.
    k, mask, min_subjects, spaces
        As in :func:`consensus_top_voxels`.
    random_state : int or None
        Seed of UMAP.

    Returns
    -------
    DataFrame
        :data:`bids_affect.occlusion.UMAP_COLUMNS` plus ``n_subjects``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> maps = {c: [rng.random((6, 6, 6)) for _ in range(4)] for c in ("fear", "love")}
    >>> table = consensus_umap(maps, affine=np.eye(4), k=20, min_subjects=1, random_state=0)
    >>> {"spatial_1", "functional_1", "n_subjects"} <= set(table.columns)
    True
    """
    from bids_affect.occlusion import umap_embeddings

    if not class_maps:
        raise InputDataError("no class maps given", path="class_maps")
    consensus = {label: consensus_top_voxels(maps, k=k, mask=mask, affine=affine,
                                             spaces=spaces, min_subjects=min_subjects,
                                             atlas=None)
                 for label, maps in class_maps.items()}
    first = next(iter(consensus.values()))
    union = np.zeros(first.counts.shape, bool)
    for result in consensus.values():
        union |= result.counts >= result.min_subjects
    if mask is not None:
        union &= np.asarray(mask, bool)
    n_voxels = int(union.sum())
    if n_voxels < 3:
        raise InputDataError(f"only {n_voxels} consensus voxels: too few to embed",
                             path="min_subjects", fix="lower min_subjects or raise k")
    table = umap_embeddings({label: result.mean_map for label, result in consensus.items()},
                            union, affine, k=min(k, n_voxels), random_state=random_state)
    table["n_subjects"] = [int(consensus[label].counts[i, j, kk]) for label, i, j, kk in
                           zip(table["class"], table["i"], table["j"], table["k"])]
    return table
