"""The Mantel test of two dissimilarity matrices, with fast permutation kernels.

The null distribution permutes the rows and columns of the first matrix
together (the class labels of one RDM are shuffled) and recomputes the
correlation of the upper triangles: all ``k!`` permutations up to ``k = 8``
(exact p), Monte Carlo above (``p = (1 + #extreme) / (1 + n)``, as
scikit-bio). :mod:`bids_affect.rsa` aligns RDM tables by class name and calls
:func:`mantel`.

Examples
--------
>>> kendall_tau_a([1, 2, 3, 4], [1, 2, 4, 3])
0.6666666666666666
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from bids_affect._utils.docs import fill_doc
from bids_affect._utils.validation import check_choice
from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.progress import Progress
from bids_affect.stats.permutation import count_extreme

__all__ = ["ALTERNATIVES", "MAX_EXACT_CLASSES", "METHODS", "MantelResult", "correlate",
           "kendall_tau_a", "mantel", "symmetric", "upper_triangle"]

#: Correlations of RDM upper triangles.
METHODS: dict[str, str] = {
    "pearson": "Pearson r",
    "spearman": "Spearman rho (Pearson r of average ranks)",
    "kendall_tau_a": "Kendall tau-a: (concordant - discordant pairs) / all pairs, "
                     "no tie correction",
}

#: Alternative hypotheses of :func:`mantel`.
ALTERNATIVES = ("greater", "less", "two-sided")

#: Up to this many classes the Mantel test enumerates every permutation by default.
MAX_EXACT_CLASSES = 8

#: Largest class count for which ``exact=True`` is accepted (10! = 3,628,800).
_MAX_FORCED_EXACT = 10
#: Permuted Pearson statistics closer than this to the observed one count as
#: ties: they differ from it only by rounding (the sums run in other orders).
_TIE_TOLERANCE = 1e-10
#: Elements per batch of permuted upper triangles: bounds memory (about 32 MB).
_BATCH_ELEMENTS = 2**20
#: Above this many gathered elements (permutations x RDM entries) a test runs
#: the compiled kernel (compiling takes about a second) and reports progress.
_LARGE_WORK = 10**8
#: Kendall nulls count sign agreements of all entry pairs up to this many
#: pairs per permutation (k <= 25 classes); above, an O(m log m) sort is faster.
_MAX_SIGN_PAIRS = 50_000


def kendall_tau_a(x: Any, y: Any) -> float:
    """Kendall's tau-a of two vectors: ``(concordant - discordant) / (n (n - 1) / 2)``.

    Pairs tied in ``x`` or ``y`` count in the denominator and in neither count
    (no tie correction; scipy's ``kendalltau`` gives tau-b or tau-c). tau-a is
    the variant recommended for RDMs with tied entries, such as categorical
    model RDMs (Nili et al. 2014). Computed in O(n log n) from scipy's tau-b:
    ``tau_a = tau_b * sqrt((n0 - n1) (n0 - n2)) / n0``, where ``n0`` counts all
    pairs and ``n1``, ``n2`` the pairs tied in ``x``, ``y``; the numerator is
    an integer and is rounded to it. A constant vector gives 0.

    Parameters
    ----------
    x, y : array-like of the same length (at least 2)

    Returns
    -------
    float

    Examples
    --------
    >>> kendall_tau_a([1, 2, 3, 4], [1, 2, 4, 3])
    0.6666666666666666
    >>> kendall_tau_a([1, 1, 2, 3], [1, 2, 3, 4])  # tau-b would be 0.9129
    0.8333333333333334
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise InputDataError(f"tau-a needs two vectors of the same length >= 2; got "
                             f"{x.size} and {y.size} values", path="x, y")
    n_pairs = x.size * (x.size - 1) // 2
    untied_x, untied_y = n_pairs - _tied_pairs(x), n_pairs - _tied_pairs(y)
    if untied_x == 0 or untied_y == 0:
        return 0.0
    tau_b = stats.kendalltau(x, y, variant="b", method="asymptotic").statistic
    return round(tau_b * math.sqrt(untied_x) * math.sqrt(untied_y)) / n_pairs


def _tied_pairs(values: np.ndarray) -> int:
    """Number of pairs of equal entries."""
    counts = np.unique(values, return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


@functools.lru_cache(maxsize=8)
def _triu(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle of a k x k matrix, computed once per k.

    Row by row: the order of scipy's and scikit-bio's condensed form.
    """
    rows, columns = np.triu_indices(k, 1)
    rows.flags.writeable = columns.flags.writeable = False
    return rows, columns


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """Upper triangle of a square matrix, row by row."""
    return matrix[_triu(len(matrix))]


def symmetric(vector: np.ndarray, k: int) -> np.ndarray:
    """The symmetric k x k matrix with zero diagonal whose upper triangle is ``vector``."""
    rows, columns = _triu(k)
    matrix = np.zeros((k, k))
    matrix[rows, columns] = vector
    matrix[columns, rows] = vector
    return matrix


def correlate(a_vector: np.ndarray, b_vector: np.ndarray, method: str) -> float:
    """Correlation of two non-constant vectors."""
    if method == "kendall_tau_a":
        return kendall_tau_a(a_vector, b_vector)
    if method == "spearman":
        a_vector, b_vector = stats.rankdata(a_vector), stats.rankdata(b_vector)
    a_centred, b_centred = a_vector - a_vector.mean(), b_vector - b_vector.mean()
    r = np.dot(a_centred / np.linalg.norm(a_centred), b_centred / np.linalg.norm(b_centred))
    return float(np.clip(r, -1.0, 1.0))


def constant_warning(names: Sequence[str]) -> None:
    """Warn that one of two RDMs is constant (its correlation is undefined)."""
    warnings.warn(f"the entries of RDM {names[0]!r} or {names[1]!r} are all equal, so their "
                  "correlation is undefined; r and p are NaN", RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class MantelResult:
    """Result of :func:`mantel_test`.

    Attributes
    ----------
    method : str
        Correlation used (:data:`METHODS`).
    statistic : float
        Correlation of the two RDMs' upper triangles (NaN for a constant RDM).
    p_value : float
        Permutation p-value (NaN when no test ran).
    n_permutations : int
        Permutations counted: ``k!`` when exact, else the Monte Carlo count.
    exact : bool
        Whether every permutation was enumerated.
    alternative : str
        The alternative hypothesis (:data:`ALTERNATIVES`).
    """

    method: str
    statistic: float
    p_value: float
    n_permutations: int
    exact: bool
    alternative: str


@fill_doc
def mantel(a: np.ndarray, b: np.ndarray, method: str, n_permutations: int, alternative: str,
            exact: bool | None, random_state: Any, n_jobs: int, names: Sequence[str]
            ) -> MantelResult:
    """Mantel test of two aligned, validated RDM arrays.

    The null permutes the rows and columns of ``a`` together and recomputes the
    correlation of the upper triangles (see :func:`bids_affect.rsa.mantel_test`,
    which aligns two RDM tables by class name and calls this).

    Parameters
    ----------
    a, b : ndarray, shape (k, k)
        Symmetric matrices with zero diagonals, classes in the same order.
    %(method)s
    %(permutation_test)s
    names : sequence of str
        Names of ``a`` and ``b`` for warnings.

    Examples
    --------
    >>> a = np.array([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0]], float)
    >>> result = mantel(a, a ** 2, "pearson", 0, "greater", None, 0, 1, names=("a", "b"))
    >>> result.n_permutations, result.exact, round(result.p_value, 3)
    (24, True, 0.083)
    """
    check_choice(alternative, "alternative", ALTERNATIVES)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 0:
        raise UsageError(f"must be an integer >= 0; got {n_permutations!r}",
                         path="n_permutations")
    n_jobs = _resolve_n_jobs(n_jobs)
    k = len(a)
    exact = _resolve_exact(exact, k)
    n_total = math.factorial(k) if exact else int(n_permutations)
    a_vector, b_vector = upper_triangle(a), upper_triangle(b)
    if np.ptp(a_vector) == 0 or np.ptp(b_vector) == 0:
        constant_warning(names)
        return MantelResult(method, float("nan"), float("nan"), 0, exact, alternative)
    correlation = method
    if method == "spearman":  # rank once: the ranks of a permuted RDM are the permuted ranks
        a_vector, b_vector = stats.rankdata(a_vector), stats.rankdata(b_vector)
        a, correlation = symmetric(a_vector, k), "pearson"
    statistic = correlate(a_vector, b_vector, correlation)
    if n_total == 0:
        return MantelResult(method, statistic, float("nan"), 0, False, alternative)
    null = _null_model(a, a_vector, b_vector, correlation, work=n_total * a_vector.size,
                       n_jobs=n_jobs)
    observed = float(null.statistics(np.arange(k)[None, :])[0])
    batches = _permutation_batches(k, exact, n_total, null.batch_size, random_state)
    n_extreme = 0
    with ExitStack() as stack:
        progress = (stack.enter_context(Progress(n_total, desc="Mantel permutations"))
                    if n_total * a_vector.size >= _LARGE_WORK else None)
        for permutations in batches:
            n_extreme += count_extreme(null.statistics(permutations), observed, alternative,
                                        null.tolerance)
            if progress is not None:
                progress.update(len(permutations))
    p_value = n_extreme / n_total if exact else (n_extreme + 1) / (n_total + 1)
    return MantelResult(method, statistic, float(p_value), n_total, exact, alternative)


def _resolve_exact(exact: bool | None, k: int) -> bool:
    if exact is None:
        return k <= MAX_EXACT_CLASSES
    if exact and k > _MAX_FORCED_EXACT:
        raise UsageError(f"exact=True enumerates all k! permutations and is limited to "
                         f"{_MAX_FORCED_EXACT} classes; got {k}", path="exact",
                         fix="use exact=None (Monte Carlo above 8 classes)")
    return bool(exact)


def _resolve_n_jobs(n_jobs: int) -> int:
    if n_jobs == -1:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise UsageError(f"must be a positive integer or -1 (all cores); got {n_jobs!r}",
                         path="n_jobs")
    return int(n_jobs)


def _permutation_batches(k: int, exact: bool, n_total: int, batch_size: int,
                         random_state: Any) -> Iterator[np.ndarray]:
    """Permutations of ``range(k)`` in (batch, k) arrays: all of them, or random ones.

    Random permutations come from ``Generator.permuted`` on rows of ``arange(k)``,
    which draws exactly what ``n`` calls of ``Generator.permutation(k)`` draw
    (scikit-bio's scheme), whatever the batch size.
    """
    if exact:
        enumeration = itertools.permutations(range(k))
        while batch := list(itertools.islice(enumeration, batch_size)):
            yield np.array(batch, dtype=np.intp)
        return
    rng = np.random.default_rng(random_state)
    for start in range(0, n_total, batch_size):
        rows = min(batch_size, n_total - start)
        yield rng.permuted(np.tile(np.arange(k, dtype=np.intp), (rows, 1)), axis=1)


@dataclass(frozen=True)
class _NullModel:
    """How to compute the statistic of permuted RDMs.

    ``statistics`` maps an (n, k) array of permutations of ``a``'s classes to
    their n statistics; ``batch_size`` bounds the memory of one call;
    ``tolerance`` is how close to the observed statistic counts as a tie.
    """

    statistics: Callable[[np.ndarray], np.ndarray]
    batch_size: int
    tolerance: float


def _null_model(a: np.ndarray, a_vector: np.ndarray, b_vector: np.ndarray, method: str,
                work: int, n_jobs: int) -> _NullModel:
    """Null statistics of ``method`` ("pearson", of values or ranks, or "kendall_tau_a").

    ``a`` is the matrix that permutations relabel, ``a_vector`` and ``b_vector``
    the upper triangles of ``a`` and of the fixed RDM.
    """
    rows, columns = _triu(len(a))
    if method == "kendall_tau_a":
        return _kendall_null(a, b_vector, rows, columns)
    return _pearson_null(a, a_vector, b_vector, rows, columns, work, n_jobs)


def _permuted_upper(matrix: np.ndarray, perms: np.ndarray, rows: np.ndarray,
                    columns: np.ndarray) -> np.ndarray:
    """Upper triangles of ``matrix`` with rows and columns permuted, one row per permutation.

    Gathering from the flattened matrix is 3-5x faster than numpy's
    two-array fancy indexing ``matrix[perms[:, rows], perms[:, columns]]``.
    """
    return matrix.ravel()[perms[:, rows] * len(matrix) + perms[:, columns]]


def _pearson_null(a: np.ndarray, a_vector: np.ndarray, b_vector: np.ndarray, rows: np.ndarray,
                  columns: np.ndarray, work: int, n_jobs: int) -> _NullModel:
    """Pearson r of permuted ``a`` with ``b``: a dot product with b's unit vector.

    A permutation keeps the mean and norm of ``a``'s entries, so centring and
    normalising ``a`` once leaves one dot product per permutation.
    """
    centred_a = (a - a_vector.mean()) / np.linalg.norm(a_vector - a_vector.mean())
    b_unit = (b_vector - b_vector.mean()) / np.linalg.norm(b_vector - b_vector.mean())
    kernel = _compiled_kernel() if work >= _LARGE_WORK else None
    if kernel is None:
        # einsum, not BLAS: a multithreaded gemv this small mostly waits for its
        # threads, and on a busy machine far longer than it computes.
        return _NullModel(lambda perms: np.einsum(
                              "pe,e->p", _permuted_upper(centred_a, perms, rows, columns), b_unit),
                          batch_size=max(1, _BATCH_ELEMENTS // a_vector.size),
                          tolerance=_TIE_TOLERANCE)

    def statistics(perms: np.ndarray) -> np.ndarray:
        out = np.empty(len(perms))
        perms = perms.astype(np.uintp)
        chunks = np.array_split(np.arange(len(perms)), min(n_jobs, len(perms)))

        def run(chunk: np.ndarray) -> None:
            start, stop = chunk[0], chunk[-1] + 1
            kernel(centred_a, b_unit, perms[start:stop], out[start:stop])

        if len(chunks) == 1:
            run(chunks[0])
        else:
            with ThreadPoolExecutor(len(chunks)) as pool:
                list(pool.map(run, chunks))
        return out

    return _NullModel(statistics, batch_size=max(4 * n_jobs, _BATCH_ELEMENTS // 8 // len(a)),
                      tolerance=_TIE_TOLERANCE)


@functools.cache
def _compiled_kernel() -> Callable | None:
    """numba kernel: ``out[p] = sum_{i<j} centred[perm_i, perm_j] * unit[entry(i, j)]``.

    Compiled on first use (about a second); None when numba is not installed.
    It releases the GIL, so threads run permutation chunks in parallel;
    unsigned indices (``perms`` of dtype uintp) spare the checks for negative
    ones, and a reorderable sum per row lets the compiler vectorise it. Memory
    access to the permuted rows bounds it, as it bounds scikit-bio's Cython loop
    (the same algorithm); see ``benchmarks/results/mantel.json``.
    """
    try:
        import numba
    except ImportError:
        return None

    # fastmath lets LLVM reorder (and vectorise) each row's sum: a fixed order in this
    # build, so results are reproducible; they differ from a sequential sum by rounding
    # (about 1e-16), far below the tie tolerance.
    @numba.njit(nogil=True, boundscheck=False, fastmath=True)
    def permuted_dots(centred, unit, perms, out):  # pragma: no cover - compiled
        n_perms, k = perms.shape
        for p in range(n_perms):
            perm = perms[p]
            total = 0.0
            entry = 0
            for i in range(k - 1):
                row = centred[perm[i]]
                width = k - i - 1
                partial = 0.0
                for t in range(width):
                    partial += row[perm[i + 1 + t]] * unit[entry + t]
                total += partial
                entry += width
            out[p] = total

    return permuted_dots


def _kendall_null(a: np.ndarray, b_vector: np.ndarray, rows: np.ndarray,
                  columns: np.ndarray) -> _NullModel:
    """Kendall tau-a of permuted ``a`` with ``b``.

    Small RDMs: the sign of every pair of permuted entries times the fixed signs
    of ``b``'s pairs, summed by a matrix-vector product (integers, so exact).
    Larger ones: :func:`kendall_tau_a` per permutation, O(m log m). tau-a values
    are integers over a common denominator, so ties are exact (no tolerance).
    """
    m = b_vector.size
    n_pairs = m * (m - 1) // 2
    if n_pairs > _MAX_SIGN_PAIRS:
        return _NullModel(lambda perms: np.array([kendall_tau_a(entries, b_vector) for entries
                                                  in _permuted_upper(a, perms, rows, columns)]),
                          batch_size=max(1, _BATCH_ELEMENTS // m), tolerance=0.0)
    first, second = _triu(m)
    b_signs = np.sign(b_vector[first] - b_vector[second])

    def statistics(perms: np.ndarray) -> np.ndarray:
        permuted = _permuted_upper(a, perms, rows, columns)
        return np.sign(permuted[:, first] - permuted[:, second]) @ b_signs / n_pairs

    return _NullModel(statistics, batch_size=max(1, _BATCH_ELEMENTS // n_pairs), tolerance=0.0)
