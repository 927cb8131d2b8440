"""Balanced, prior-free logistic regression and linear SVM, and their batched permutation null.

Why "balanced and prior-free". In leave-one-run-out decoding of a movie, a class
that is frequent in the training runs is rare in the left-out run (each run holds
its own scenes). scikit-learn's :class:`~sklearn.linear_model.LogisticRegression`
and :class:`~sklearn.svm.LinearSVC` fit an intercept, and even with
``class_weight="balanced"`` their scores, intercept included, favour the classes
that are frequent in the training runs. On data without signal the pooled balanced
accuracy then falls below ``1 / n_classes`` (0.11 instead of 0.20 in one demo
subject), as it did for ridge before :class:`BalancedRidgeClassifier`. The
estimators here take the same cure as that ridge: every class gets the same total
weight (scikit-learn's ``"balanced"`` weights, ``n / (n_classes * n_c)`` per
sample of class ``c``), the model is fitted with its intercept, and the scores
leave the intercept out: a class's score is ``(x - mean) @ w_c``, ``mean`` being
the training mean. The intercept absorbs what the class frequencies and the
position of the class means do to the fit, and none of it reaches the test
scores. (Fitting without intercept instead left the null mean at 0.188
(logistic) and 0.190 (SVM) for 5 classes after a 20-component PCA, where the fit
is weakly penalised: 16 null data sets, 100 shifts each; with the fitted and
dropped intercept they are 0.200 and 0.199, ridge's 0.201.)

Why a batched null. The permutation null refits the decoder on each permuted
label sequence (circular shifts of each run's labels). All permutations of one
fold share the design matrix, so :func:`fit_permutations` solves them as one
batched problem in torch: the training data are rotated once to the basis of
their singular vectors (an exact reparametrisation: an L2-penalised linear model
has its weights in the span of the training samples, so ``p`` voxels become at
most ``n_train`` coordinates, whose Gram matrix is diagonal; the intercept's
constant column is orthogonal to them, the data being centred), and a truncated
Newton method (Armijo line search) runs on all permutations at once. Its steps
solve the leading coordinates, where the data add curvature, by preconditioned
conjugate gradients, and give each of the others its own diagonal Newton step;
the gradient is exact, so the optimum is (see :func:`_newton`). The multinomial
weights live in the ``k - 1`` class contrasts (:func:`contrast_basis`), where the
optimum lies, and on CPU in float32 its element-wise passes (softmax, Hessian
blocks) run as compiled kernels (:mod:`bids_affect.decoding._kernels`). The objective
is scikit-learn's own (multinomial logistic loss or one-vs-rest squared hinge,
``C`` times the class-weighted sum of losses plus half the squared norm of the
weights), so the fits are those scikit-learn would return, to solver tolerance.
ANOVA feature selection depends on the labels, so it is redone for each
permutation (:func:`anova_masks`), as a refit would; scaling and PCA ignore the
labels and are fitted once per fold. With a selection per permutation the
designs are no longer shared, and the batch saves little over refits on a CPU
(see ``benchmarks/bench_linear_null.py``).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(60, 20)).astype(np.float32)
>>> y = np.repeat([0, 1, 2], 20)
>>> X[y == 1, :3] += 2.0
>>> clf = BalancedLogisticRegression(C=0.1).fit(X[::2], y[::2])
>>> float(np.mean(clf.predict(X[1::2]) == y[1::2])) > 0.6
True
>>> permuted = np.stack([y[::2], np.roll(y[::2], 10)])
>>> decision = fit_permutations(X[::2], permuted, X[1::2], loss="logistic", C=0.1)
>>> decision.shape
(2, 30, 3)
>>> bool(np.all(decision[0].argmax(1) == clf.predict(X[1::2])))
True
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.feature_selection import SelectPercentile, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bids_affect._utils.validation import check_choice, check_number

__all__ = [
    "DEFAULT_TOL",
    "LOSSES",
    "BalancedLinearSVC",
    "BalancedLogisticRegression",
    "anova_masks",
    "class_balance_weights",
    "contrast_basis",
    "fit_permutations",
    "permutation_null_predictions",
]

#: Losses of :func:`fit_permutations`, by the estimator that minimises the same objective.
LOSSES = {"logistic": "BalancedLogisticRegression", "squared_hinge": "BalancedLinearSVC"}

#: Default ``tol`` of :func:`fit_permutations`, by loss. Measured on the demo's sub-02
#: (``benchmarks/bench_linear_null.py``: 1,000 circular shifts, float32, against the exact
#: optimum, float64 to tol 1e-9). Logistic: 99.96% of test predictions equal at 1e-3,
#: 99.98% at 1e-4, which takes 1.3 times as long; scikit-learn's own refits: 99.99% (20
#: shifts). Squared hinge: 99.94% at 1e-4; at 1e-3 (one run, not in the benchmark)
#: 99.88%, against liblinear's 100%, so it keeps 1e-4.
DEFAULT_TOL = {"logistic": 1e-3, "squared_hinge": 1e-4}

#: Steps of a pipeline that ignore the labels: fitted once per fold, shared by permutations.
_LABEL_FREE_STEPS = (StandardScaler, PCA)


# --------------------------------------------------------------------------- checks


def _check_two_classes(classes: np.ndarray, name: str) -> None:
    if len(classes) < 2:
        raise ValueError(f"{name} needs samples of at least 2 classes; got 1 class "
                         f"({classes.tolist()!r})")


# --------------------------------------------------------------------------- estimators


def class_balance_weights(codes: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Sample weights that give every class present the same total weight.

    The weight of a sample of class ``c`` is ``n / (n_present * n_c)``, as
    scikit-learn's ``class_weight="balanced"``; the weights sum to ``n``, so
    ``C`` keeps its meaning. Works on a batch of label rows (last axis: samples).

    Parameters
    ----------
    codes : ndarray of int
        Class index of each sample, shape ``(..., n)``.
    n_classes : int, optional
        Number of class indices (default: the largest index + 1).

    Returns
    -------
    ndarray
        Weights, the shape of ``codes``.

    Examples
    --------
    >>> class_balance_weights(np.array([0, 0, 0, 1])).tolist()
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    codes = np.asarray(codes, dtype=np.int64)
    n_classes = int(codes.max()) + 1 if n_classes is None else int(n_classes)
    flat = codes.reshape(-1, codes.shape[-1])
    offsets = n_classes * np.arange(len(flat))[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * n_classes)
    counts = counts.reshape(len(flat), n_classes)
    n_present = (counts > 0).sum(axis=1, keepdims=True)
    per_class = flat.shape[1] / (n_present * np.maximum(counts, 1))
    return np.take_along_axis(per_class, flat, axis=1).reshape(codes.shape)


class _BalancedLinearClassifier(ClassifierMixin, BaseEstimator):
    """Shared part: centring, class-balanced weights, prior-free linear scores."""

    def _fit_centred(self, X, y, solver):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        check_number(self.C, "C", positive=True)
        self.classes_, codes = np.unique(y, return_inverse=True)
        _check_two_classes(self.classes_, type(self).__name__)
        self.mean_ = X.mean(axis=0)
        model = solver.fit(X - self.mean_, codes, sample_weight=class_balance_weights(codes))
        self.coef_ = model.coef_
        # Fitted, then left out of the scores: it is the class prior of the fit.
        self.dropped_intercept_ = np.atleast_1d(model.intercept_)
        self.n_iter_ = model.n_iter_
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores ``(X - mean_) @ coef_.T``: ``(n, n_classes)``, or ``(n,)`` for 2 classes.

        With two classes the single column scores the second class of
        ``classes_`` against the first (scikit-learn's convention).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = (X - self.mean_) @ self.coef_.T
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict(self, X) -> np.ndarray:
        """The class with the highest score."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]


class BalancedLogisticRegression(_BalancedLinearClassifier):
    """Multinomial logistic regression with balanced class weights and no class prior.

    Minimises ``C * sum_i w_i * loss_i + ||W||^2 / 2`` over the weights ``W`` and
    an unpenalised intercept, on the centred data, where ``loss_i`` is the
    multinomial cross-entropy (the binomial one for two classes, as
    scikit-learn) and ``w_i`` the balanced class weights of
    :func:`class_balance_weights`. The scores ``(x - mean_) @ W'`` leave the
    intercept out, so no class is favoured for being frequent in the training
    samples (see the module's notes). Fitted by scikit-learn's
    :class:`~sklearn.linear_model.LogisticRegression` (L-BFGS).

    Parameters
    ----------
    C : float
        Inverse of the L2 penalty (larger: weaker penalty).
    tol : float
        Tolerance of the L-BFGS solver.
    max_iter : int
        Maximum number of L-BFGS iterations.

    Attributes
    ----------
    classes_ : ndarray
        Class labels, sorted.
    mean_ : ndarray
        Training mean of each feature, subtracted before scoring.
    coef_ : ndarray
        ``(n_classes, n_features)``, or ``(1, n_features)`` for two classes.
    dropped_intercept_ : ndarray
        The intercept of the fit, left out of the scores.
    n_iter_ : ndarray
        Iterations the solver ran.

    Notes
    -----
    :meth:`predict_proba` returns the model's own probabilities (softmax of the
    scores), which are those of a model with equal class priors: on test data
    whose classes are unequally frequent they are not calibrated frequencies.

    Examples
    --------
    >>> X = np.array([[0.0], [0.2], [1.0], [1.2], [1.1], [0.9]])
    >>> clf = BalancedLogisticRegression(C=10.0).fit(X, ["a", "a", "b", "b", "b", "b"])
    >>> clf.predict([[0.1], [1.0]]).tolist()
    ['a', 'b']
    >>> clf.predict_proba([[0.1]]).round(2).sum()
    np.float64(1.0)
    """

    def __init__(self, C: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X, y) -> BalancedLogisticRegression:
        """Fit on the centred data with balanced class weights (and the intercept)."""
        solver = LogisticRegression(C=float(self.C), tol=self.tol, max_iter=self.max_iter)
        return self._fit_centred(X, y, solver)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the model (softmax of the scores; sigmoid for two)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        scores = scores - scores.max(axis=1, keepdims=True)
        proba = np.exp(scores)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))


class BalancedLinearSVC(_BalancedLinearClassifier):
    """Linear SVM (one-vs-rest, squared hinge) with balanced class weights and no prior.

    For each class ``c``, minimises ``C * sum_i w_i * max(0, 1 - t_ic f_ic)^2 +
    (||w_c||^2 + a_c^2) / 2`` on the centred data, with ``f_ic = x_i @ w_c +
    intercept_scaling * a_c``, ``t_ic = +1`` for samples of class ``c`` and
    ``-1`` otherwise, and ``w_i`` the balanced class weights of
    :func:`class_balance_weights` (the same weights in every one-vs-rest
    problem). liblinear penalises the intercept ``intercept_scaling * a_c``;
    a large ``intercept_scaling`` makes that penalty small (10: the null stays
    at ``1 / n_classes``, see the module's notes; 100 made liblinear's dual
    solver run out of iterations). The scores ``(x - mean_) @ w_c`` leave the
    intercept out. Fitted by scikit-learn's
    :class:`~sklearn.svm.LinearSVC` (liblinear).

    An SVM has no probabilities: this estimator has no ``predict_proba``. Its
    :meth:`decision_function` gives the scores (signed distances to each class's
    hyperplane, times the weights' norm); rank-based metrics such as the AUC
    use them directly.

    Parameters
    ----------
    C : float
        Inverse of the L2 penalty.
    tol : float
        Tolerance of liblinear.
    max_iter : int
        Maximum number of liblinear iterations.
    dual : "auto" or bool
        liblinear's dual (coordinate descent) or primal (trust-region Newton)
        solver; "auto" takes the dual when there are fewer samples than features.
    intercept_scaling : float
        Value of liblinear's constant feature (see above).
    random_state : int, RandomState or None
        Seed of the dual solver's coordinate order.

    Attributes
    ----------
    classes_ : ndarray
        Class labels, sorted.
    mean_ : ndarray
        Training mean of each feature, subtracted before scoring.
    coef_ : ndarray
        ``(n_classes, n_features)``, or ``(1, n_features)`` for two classes.
    dropped_intercept_ : ndarray
        The intercept of the fit, left out of the scores.
    n_iter_ : int
        Iterations liblinear ran (the largest over the one-vs-rest problems).

    Examples
    --------
    >>> X = np.array([[0.0], [0.2], [1.0], [1.2], [1.1], [0.9]])
    >>> clf = BalancedLinearSVC(C=10.0).fit(X, ["a", "a", "b", "b", "b", "b"])
    >>> clf.predict([[0.1], [1.0]]).tolist()
    ['a', 'b']
    """

    def __init__(self, C: float = 1.0, tol: float = 1e-4, max_iter: int = 5000,
                 dual: str | bool = "auto", intercept_scaling: float = 10.0,
                 random_state=None):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.dual = dual
        self.intercept_scaling = intercept_scaling
        self.random_state = random_state

    def fit(self, X, y) -> BalancedLinearSVC:
        """Fit the one-vs-rest problems on the centred data with balanced class weights."""
        check_number(self.intercept_scaling, "intercept_scaling", positive=True)
        solver = LinearSVC(C=float(self.C), loss="squared_hinge",
                           intercept_scaling=float(self.intercept_scaling), tol=self.tol,
                           max_iter=self.max_iter, dual=self.dual,
                           random_state=self.random_state)
        return self._fit_centred(X, y, solver)


# --------------------------------------------------------------------------- batched null


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    from bids_affect.models.training import resolve_device

    return resolve_device(str(device))


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64; got {dtype}")
        return dtype
    check_choice(dtype, "dtype", ("float32", "float64"))
    return torch.float32 if dtype == "float32" else torch.float64


def _rotate(X_train: torch.Tensor, X_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred training data in the basis of its right singular vectors.

    ``X_train`` (``(..., n, p)``, centred) and ``X_test`` become ``Z = U S`` and
    ``X_test V`` with ``X_train = U S V'``: the smaller Gram matrix (``n x n``
    or ``p x p``) is formed in the inputs' precision and diagonalised in
    float64. Directions whose squared singular value is below ``100 eps``
    times the largest are dropped: they carry (to rounding) no training
    variance, so the optimal weights have no component there.
    """
    n, p = X_train.shape[-2:]
    dtype = X_train.dtype
    rcond = 100 * torch.finfo(dtype).eps
    small = min(n, p)
    gram = (X_train @ X_train.transpose(-1, -2) if p > n
            else X_train.transpose(-1, -2) @ X_train)
    values, vectors = torch.linalg.eigh(gram.double())
    keep = values > rcond * values[..., -1:].clamp(min=1e-300)
    if p > n:
        scale = torch.where(keep, values.clamp(min=1e-300).sqrt(), 0.0)
        z_train = (vectors * scale.unsqueeze(-2)).to(dtype)
        inverse = torch.where(keep, 1.0 / scale.clamp(min=1e-300), 0.0)
        projection = (vectors * inverse.unsqueeze(-2)).to(dtype)
        z_test = (X_test @ X_train.transpose(-1, -2)) @ projection
    else:
        vectors = (vectors * keep.unsqueeze(-2)).to(dtype)
        z_train, z_test = X_train @ vectors, X_test @ vectors
    # Dropped directions are zero columns: cut them (eigh sorts values ascending).
    first = int((~keep).sum(dim=-1).min()) if keep.numel() else 0
    first = min(first, small - 1)
    return z_train[..., first:].contiguous(), z_test[..., first:].contiguous()


class _Objective:
    """A batch of penalised linear-model objectives on a shared or per-batch design.

    The batch (permutations) is the last, contiguous axis, so that a shared
    design ``Z`` ``(n, r)`` multiplies every permutation in one matrix product
    and reductions over samples or classes run along whole rows: parameters
    ``B`` are ``(r, width, b)`` (``width``: ``k`` for the squared hinge's
    one-vs-rest classes, ``k - 1`` for the multinomial's class contrasts), and so
    are gradients; scores ``(n, width, b)``; ``onehot`` ``(n, k, b)``;
    ``weights`` ``(n, 1, b)``;
    ``lam`` (the L2 penalty ``1 / C`` of each coefficient row: 0 for an
    unpenalised intercept) ``(r, 1, b)``; ``absent`` ``(1, k, b)`` marks the
    classes missing from a permutation's training labels.
    A per-permutation design is ``(b, n, r)``.
    """

    #: Axes a group's inner products sum over (a group: one independent problem).
    group_dims: tuple[int, ...] = (0,)
    #: Split Newton steps (:func:`_newton`), tuned on the demo
    #: (``benchmarks/bench_linear_null.py``): coordinates whose data curvature at
    #: zero is at least ``exact_curvature`` times their penalty are solved by
    #: conjugate gradients, to a relative residual of ``split_forcing``; the others
    #: take their diagonal Newton step. With ``gauss_seidel``, the block's
    #: right-hand side first takes out the others' step (the multinomial then
    #: converges in 3 steps instead of 4; the squared hinge got slower with it).
    exact_curvature: float = 0.2
    split_forcing: float = 0.1
    gauss_seidel: bool = False

    def __init__(self, Z, onehot, weights, lam, absent, factor=None):
        self.onehot = onehot
        self.width = onehot.shape[1]        # parameters per coefficient row
        self.weights, self.absent = weights, absent
        self._set_design(Z, lam)
        if Z.dim() == 3 and factor is None:
            factor = self._factor()
        self.factor = factor

    def _set_design(self, Z: torch.Tensor, lam: torch.Tensor) -> None:
        """The design, what derives from it, and its columns' penalties."""
        self.Z, self.lam = Z, lam
        self.Z2 = None if Z.dim() == 3 else Z * Z
        # bmm copies non-contiguous operands matrix by matrix: keep Z' contiguous too.
        self.Zt = Z.T if Z.dim() == 2 else Z.transpose(1, 2).contiguous()

    def _factor(self) -> torch.Tensor:
        """Cholesky factors ``(b, r, r)`` of ``c Z' W Z + lam I``, the Hessian at zero.

        With a design per permutation (not rotated to a diagonal Gram matrix), a
        diagonal preconditioner leaves the conditioning of correlated voxels to
        conjugate gradients; this one captures it (``c``: the loss's curvature at
        zero; the multinomial's coupling between classes is left out).
        """
        weights = self.weights.permute(2, 0, 1)                         # (b, n, 1)
        gram = self.Zt @ (self.Z * weights)
        gram *= self._curvature_at_zero().reshape(-1, 1, 1)
        gram.diagonal(dim1=1, dim2=2).add_(self.lam[:, 0, :].T)
        return torch.linalg.cholesky(gram)

    def _curvature_at_zero(self) -> torch.Tensor:
        """Second derivative of the loss at a zero score, per permutation ``(b,)``."""
        raise NotImplementedError

    def preconditioner(self, state) -> Callable[[torch.Tensor], torch.Tensor]:
        """``residual -> M^-1 residual``: the Cholesky factor, or the Hessian's diagonal."""
        if self.factor is not None:
            factor = self.factor
            return lambda residual: torch.cholesky_solve(
                residual.permute(2, 0, 1).contiguous(), factor).permute(1, 2, 0).contiguous()
        # A class missing from a permutation has an unpenalised intercept of curvature
        # 0; its gradient is 0 too, so any finite value serves.
        diagonal = self.diagonal(state)
        inverse = torch.where(diagonal > 0, 1.0 / diagonal, 0.0)
        return lambda residual: residual * inverse

    def subset(self, index: torch.Tensor) -> _Objective:
        """The objective of the permutations ``index`` only."""
        three_d = self.Z.dim() == 3
        return type(self)(self.Z[index] if three_d else self.Z, self.onehot[..., index],
                          self.weights[..., index], self.lam[..., index],
                          self.absent[..., index], self.factor[index] if three_d else None)

    def columns(self, rows: slice) -> _Objective:
        """The same problems on the columns ``rows`` of a shared design only (what
        derives from the labels is shared, not recomputed)."""
        part = copy.copy(self)
        part._set_design(self.Z[:, rows].contiguous(), self.lam[rows])
        return part

    def first_exact_column(self) -> int:
        """Columns before this one add less than ``exact_curvature`` times the penalty
        to the curvature at zero (0: none, or a design per permutation; the last column
        is never before it).

        Columns are taken in order: in the rotated basis their norms ascend, and the
        intercept (unpenalised) comes last.
        """
        if self.Z.dim() == 3:
            return 0
        ratio = (self.Z2.sum(dim=0) * self._curvature_at_zero().max()
                 / self.lam.amin(dim=(1, 2)))
        below = (ratio < self.exact_curvature).int()
        return min(int(below.cumprod(dim=0).sum()), len(ratio) - 1)

    @staticmethod
    def _product(Z, B):
        """``Z B`` for ``B`` ``(r, width, b)``: ``(n, width, b)``."""
        if Z.dim() == 2:
            return (Z @ B.reshape(B.shape[0], -1)).view(Z.shape[0], *B.shape[1:])
        return torch.bmm(Z, B.permute(2, 0, 1).contiguous()).permute(1, 2, 0).contiguous()

    def scores(self, B):
        """``Z B``: ``(n, width, b)``."""
        return self._product(self.Z, B)

    def back(self, G, squared=False):
        """``Z' G`` (or ``(Z * Z)' G``, shared designs only): ``(r, width, b)``."""
        return self._product(self.Z2.T if squared else self.Zt, G)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=self.group_dims, keepdim=True)

    def mixed(self, state, product: torch.Tensor) -> torch.Tensor:
        """The loss's Hessian in scores applied to ``product`` (``Z D``): the Hessian
        is ``Z' mixed(state, Z .) + lam``."""
        raise NotImplementedError

    def hessian_product(self, state, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``H D``, and ``Z D``."""
        product = self.scores(D)
        return self.back(self.mixed(state, product)).addcmul_(self.lam, D), product

    def class_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores ``(., width, b)`` as scores of the ``k`` classes ``(., k, b)``."""
        return scores

    def decision(self, scores: torch.Tensor) -> torch.Tensor:
        """Class scores ``(., k, b)`` (absent classes: ``-inf``)."""
        return self.class_scores(scores).masked_fill(self.absent, -math.inf)

    def penalty(self, B: torch.Tensor) -> torch.Tensor:
        squares = (B * B).sum(dim=1, keepdim=True) if 1 in self.group_dims else B * B
        return 0.5 * (self.lam * squares).sum(dim=self.group_dims, keepdim=True,
                                              dtype=torch.float64)


@functools.cache
def _compiled_kernels():
    """:mod:`bids_affect.decoding._kernels`, or None where numba is not installed (the
    torch code then runs; any other failure to build the kernels is raised)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    from bids_affect.decoding import _kernels
    return _kernels


def _codes(onehot: torch.Tensor) -> np.ndarray:
    """Each sample's class ``(n, b)`` int32 from ``onehot`` ``(n, k, b)`` (a weighted sum:
    ``argmax`` over a middle axis is 70 times slower)."""
    classes = torch.arange(onehot.shape[1], dtype=onehot.dtype).view(1, -1, 1)
    return (onehot * classes).sum(dim=1).to(torch.int32).numpy()


def contrast_basis(n_classes: int, dtype: torch.dtype = torch.float64,
                   device: torch.device | None = None) -> torch.Tensor:
    """Helmert's orthonormal basis of the class contrasts: ``(n_classes - 1, n_classes)``.

    Row ``h`` contrasts class ``h + 1`` with the classes before it (``h + 1``
    entries ``1 / sqrt((h + 1)(h + 2))``, then ``-(h + 1) / sqrt((h + 1)(h + 2))``):
    the rows span the vectors that sum to 0.

    Examples
    --------
    >>> basis = contrast_basis(3)
    >>> bool(torch.allclose(basis @ basis.T, torch.eye(2, dtype=basis.dtype)))
    True
    >>> basis.sum(dim=1).abs().max().item() < 1e-15
    True
    """
    h = torch.arange(n_classes - 1, dtype=torch.float64).view(-1, 1)
    c = torch.arange(n_classes, dtype=torch.float64).view(1, -1)
    basis = ((c <= h).double() - (c == h + 1).double() * (h + 1)) / torch.sqrt((h + 1) * (h + 2))
    return basis.to(dtype=dtype, device=device)


class _Multinomial(_Objective):
    """``sum_i w_i * cross-entropy_i + lam / 2 * ||B||^2``, one group per permutation.

    The weights of the ``k`` classes live in the ``k - 1`` coordinates of
    :func:`contrast_basis` (``B = A basis``; parameters, scores and gradients are
    ``(., k - 1, b)``). The optimum loses nothing there: the softmax ignores a
    shift common to all classes, and the data term of the gradient sums to 0
    over the classes (it vanishes on a class absent from the training labels,
    whose logit is ``-inf``), so that the penalised optimal ``B`` lies in that
    span; and the basis is orthonormal, so ``||B|| = ||A||``. With 5 classes, a
    fifth fewer numbers to multiply and pass over than in ``k`` coordinates; and
    the class sum, where the unpenalised intercept has no curvature, is gone (but for a
    permutation with a class absent: there the intercept of the absent class
    against the others is flat, its gradient is 0, and the decisions ignore it).
    """

    group_dims = (0, 1)
    # The curvature at zero on the contrasts is 1 / m (it was the plain diagonal's
    # (m - 1) / m^2 before the contrasts): with 5 classes, 0.25 splits as 0.2 did.
    exact_curvature = 0.25
    split_forcing = 0.03
    gauss_seidel = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        present = ~self.absent[0]                                       # (k, b)
        self.basis = contrast_basis(self.onehot.shape[1], self.Z.dtype, self.Z.device)
        self.width = self.basis.shape[0]
        self.kernels = (_compiled_kernels() if self.Z.device.type == "cpu"
                        and self.Z.dtype == torch.float32 else None)
        if self.kernels is not None:
            self.arrays = {"basis": self.basis.numpy(),
                           "weights": self.weights[:, 0].contiguous().numpy(),  # (n, b)
                           "codes": _codes(self.onehot),
                           "present": present.to(self.Z.dtype).contiguous().numpy()}
        else:
            self.target = self.weights * self.onehot        # w_i at each sample's class

    def _curvature_at_zero(self) -> torch.Tensor:
        # On class contrasts at p = 1 / m: w (I - 1 1' / m) / m acts as w / m.
        return 1.0 / (~self.absent).sum(dim=1).reshape(-1).to(self.Z.dtype)

    def class_scores(self, coords: torch.Tensor) -> torch.Tensor:
        """``(., k - 1, b)`` contrast coordinates to ``(., k, b)`` class values."""
        return torch.einsum("nhb,hc->ncb", coords, self.basis)

    def _project(self, values: torch.Tensor) -> torch.Tensor:
        """``(., k, b)`` class values to ``(., k - 1, b)`` contrast coordinates."""
        return torch.einsum("ncb,hc->nhb", values, self.basis)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            return super().dot(a, b)
        if a.shape != b.shape:           # the kernel does not broadcast (nor check bounds)
            raise ValueError(f"dot of shapes {tuple(a.shape)} and {tuple(b.shape)}")
        out = np.empty(a.shape[-1])
        self.kernels.group_dot(a.numpy(), b.numpy(), out)
        return torch.from_numpy(out).to(a.dtype).view(1, 1, -1)

    def value(self, B, scores):
        """Objective and state ``(p, basis (w p - w onehot))``: class probabilities, and
        the residuals whose product with ``Z'`` is the gradient's data term."""
        if self.kernels is not None:
            proba = scores.new_empty(len(scores), *self.onehot.shape[1:])
            residual = torch.empty_like(scores)
            value = np.empty(scores.shape[-1])
            arrays = self.arrays
            self.kernels.multinomial_state(scores.numpy(), arrays["basis"], arrays["weights"],
                                           arrays["codes"], arrays["present"], proba.numpy(),
                                           residual.numpy(), value)
            return torch.from_numpy(value).view(1, 1, -1) + self.penalty(B), (proba, residual)
        logits = self.class_scores(scores).masked_fill_(self.absent, -math.inf)
        top = logits.amax(dim=1, keepdim=True)
        proba = (logits - top).exp_()
        total = proba.sum(dim=1, keepdim=True)
        proba /= total
        # sum_i w_i (log-sum-exp_i - logit of i's class); absent classes have no target.
        per_sample = (total.log_() + top).mul_(self.weights).sub_(
            (self.target * logits.masked_fill_(self.absent, 0.0)).sum(dim=1, keepdim=True))
        value = per_sample.sum(dim=(0, 1), keepdim=True, dtype=torch.float64)
        residual = self._project((self.weights * proba).sub_(self.target))
        return value + self.penalty(B), (proba, residual)

    def gradient(self, B, state):
        return self.back(state[1]).addcmul_(self.lam, B)

    def mixed(self, state, product):
        proba = state[0]
        if self.kernels is not None:
            mixed = torch.empty_like(product)
            self.kernels.hessian_blocks(product.numpy(), self.arrays["basis"], proba.numpy(),
                                        self.arrays["weights"], mixed.numpy())
            return mixed
        full = self.class_scores(product)
        mixed = (full - (proba * full).sum(dim=1, keepdim=True)).mul_(proba)
        return self._project(mixed.mul_(self.weights))

    def preconditioner(self, state) -> Callable[[torch.Tensor], torch.Tensor]:
        """The Hessian at uniform class probabilities, inverted exactly per coordinate.

        With ``m`` classes present, each sample's block of the multinomial Hessian at
        ``p = 1 / m`` is ``w (I - 1 1' / m) / m``, which is ``w / m`` times the
        identity on the class contrasts (all of them when every class is present;
        a permutation with a class absent gets this as an approximation). With a
        shared design in the rotated basis (its Gram matrix diagonal), coordinate
        ``j`` then has curvature ``a_j / m + lam``, ``a_j = sum_i w_i z_ij^2``. This
        is the Hessian at zero, but for the correlation between the weights and the
        design (it keeps the off-diagonal terms of ``Z' W Z`` out). The coordinates
        that :func:`_newton` leaves out of conjugate gradients take their step under
        it.
        """
        if self.factor is not None:
            return super().preconditioner(state)
        n_present = (~self.absent).sum(dim=1, keepdim=True).to(self.Z.dtype)
        inverse = 1.0 / (self.back(self.weights, squared=True) / n_present + self.lam)
        return lambda residual: residual * inverse


class _SquaredHinge(_Objective):
    """One-vs-rest ``sum_i w_i * max(0, 1 - t_i s_i)^2 + lam / 2 * ||b||^2``, per class."""

    def _curvature_at_zero(self) -> torch.Tensor:
        # Every sample violates its margin at zero: curvature 2 each.
        return torch.full(self.Z.shape[:1], 2.0, device=self.Z.device, dtype=self.Z.dtype)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.signs = 2 * self.onehot - 1

    def value(self, B, scores):
        violation = (1 - self.signs * scores).clamp_(min=0)
        value = (self.weights * violation * violation).sum(dim=0, keepdim=True,
                                                          dtype=torch.float64)
        return value + self.penalty(B), violation

    def gradient(self, B, violation):
        return self.back(-2 * self.weights * self.signs * violation).addcmul_(self.lam, B)

    def mixed(self, violation, product):
        return (2 * self.weights * (violation > 0)).mul_(product)

    def diagonal(self, violation):
        return self.back(2 * self.weights * (violation > 0), squared=True).add_(self.lam)



def _conjugate_gradients(objective, state, precondition, residual, search, forcing, active,
                         max_cg, moved):
    """Preconditioned CG on ``H d = residual`` for every active group; returns ``d``.

    ``search`` is the preconditioned residual. ``Z d`` is added to ``moved``
    (``(n, width, b)``) from the products ``Z s`` that the Hessian products form
    anyway. ``residual`` is overwritten.
    """
    direction = torch.zeros_like(residual)
    rz = objective.dot(residual, search)
    for _ in range(max_cg):
        curvature, product = objective.hessian_product(state, search)
        along = objective.dot(search, curvature)
        # Rounding can leave no curvature along a flat direction (an unpenalised
        # multinomial intercept of a class absent from the permutation's training
        # labels, against the others): stop that group's iterations there.
        active &= along > 0
        alpha = (rz / along.clamp(min=1e-30)).masked_fill_(~active, 0.0)
        direction.addcmul_(alpha, search)
        moved.addcmul_(alpha, product)
        residual.addcmul_(alpha, curvature, value=-1.0)
        active &= objective.dot(residual, residual).sqrt_() > forcing
        if not bool(active.any()):
            break
        precond = precondition(residual)
        rz_next = objective.dot(residual, precond)
        ratio = (rz_next / rz.clamp(min=1e-30)).masked_fill_(~active, 0.0)
        search = precond.addcmul_(ratio, search)
        rz = rz_next
    return direction


def _newton(objective: _Objective, B: torch.Tensor | None, scores: torch.Tensor | None,
            tol: float, max_iter: int, norm0: torch.Tensor | None = None,
            max_cg: int = 50) -> torch.Tensor:
    """Truncated Newton on every group of the batch at once, from ``B`` (scores ``Z B``).

    ``B`` and ``scores`` ``None``: start from zero.

    Each step solves ``H d = -g`` approximately, then halves the step until
    Armijo's condition holds (or the predicted decrease is below the rounding
    error of the objective, where the full step is taken). A group stops when
    ``sqrt(g' M^-1 g) <= tol`` times its value at the start, ``M`` being the
    preconditioner (the Hessian as the step takes it): the distance to the
    optimum in the Hessian's norm, which weighs each direction by how much it
    moves the fit, so that a weakly penalised fit is not stopped as early as a
    gradient norm would stop it. Once fewer than half the permutations are
    left, the rest continue as a smaller batch.

    How ``H d = -g`` is solved. With a design per permutation, by conjugate
    gradients preconditioned by the Hessian at zero, to a relative residual of
    ``min(0.5, sqrt(decrement / decrement0))`` (superlinear convergence). With a
    shared, rotated design (diagonal Gram matrix), the coordinates split in two:
    those where the data add at least the objective's ``exact_curvature`` times the
    penalty to the curvature at zero (the leading singular vectors, and the
    intercept) are solved by conjugate gradients to a relative residual of the
    objective's ``split_forcing``, on their own columns of the design; each of the
    others takes its Newton step under the curvature at zero (the preconditioner,
    exact there but for the weights' correlation with the design and the change of
    the probabilities), the cross terms being left out. With ``gauss_seidel`` (the
    multinomial), the exact block then solves for what the others' step leaves of
    its gradient (its right-hand side less the cross terms times that step: one
    sweep of block Gauss-Seidel); with a forcing of 0.03, the steps after the first
    then shrink the decrement about 16-fold instead of 8-fold (demo). The gradient
    is always exact, so the answer is that of an exact Newton method; the split
    only makes the steps cheaper: most Hessian products then touch a few columns.
    The scores are carried along: ``Z d`` is the sum of products that conjugate
    gradients form anyway (and, for the other coordinates, one product with their
    columns), so no trial step of the line search multiplies by the design.
    """
    if B is None:
        n, _, b = objective.onehot.shape
        B = objective.onehot.new_zeros(objective.Z.shape[-1], objective.width, b)
        scores = objective.onehot.new_zeros(n, objective.width, b)
    value, state = objective.value(B, scores)
    grad = objective.gradient(B, state)
    rounding = 64 * torch.finfo(B.dtype).eps
    # The preconditioners of the first step serve them all: the objectives are close
    # to quadratic (strong penalty), and recomputing them costs a product per step.
    first = objective.first_exact_column()
    exact = objective.columns(slice(first, None)) if first else objective
    precondition = exact.preconditioner(state)
    if first:
        others = objective.columns(slice(0, first))
        precondition_others = others.preconditioner(state)
    for iteration in range(max_iter):
        if first:
            descent = torch.cat([precondition_others(grad[:first]),
                                 precondition(grad[first:])]).neg_()
        else:
            descent = precondition(grad).neg_()
        decrement = objective.dot(grad, descent).neg_().clamp_(min=0.0).sqrt_()
        if norm0 is None:
            norm0 = decrement.clamp(min=1e-30)
        todo = decrement > tol * norm0
        running = todo.any(dim=1).reshape(-1)
        if not bool(running.any()):
            break
        if B.shape[-1] > 8 and int(running.sum()) < B.shape[-1] // 2:
            index = running.nonzero().reshape(-1)
            B = B.clone()
            B[..., index] = _newton(objective.subset(index), B[..., index], scores[..., index],
                                    tol, max_iter - iteration, norm0[..., index], max_cg)
            return B
        # The direction, and Z times it (``moved``: the line search's scores).
        if first:
            residual = -grad[first:]
            forcing = objective.split_forcing * exact.dot(residual, residual).sqrt()
            moved = others.scores(descent[:first])
            search = descent[first:]
            if objective.gauss_seidel:
                # The Hessian's cross terms times the others' step: Z_e' mixed(Z_o d_o).
                residual -= exact.back(exact.mixed(state, moved))
                search = precondition(residual)
            descent[first:] = _conjugate_gradients(exact, state, precondition, residual,
                                                   search, forcing, todo.clone(), max_cg,
                                                   moved)
            direction = descent
        else:
            norm = objective.dot(grad, grad).sqrt()
            forcing = torch.minimum(torch.full_like(norm, 0.5),
                                    (decrement / norm0).sqrt()) * norm
            moved = torch.zeros_like(scores)
            direction = _conjugate_gradients(objective, state, precondition, -grad, descent,
                                             forcing, todo.clone(), max_cg, moved)
        slope = objective.dot(grad, direction).double()
        step = todo.to(B.dtype)
        # Below rounding, the objective cannot confirm a decrease: take the Newton step.
        accepted = ~todo | (-slope <= rounding * value.abs())
        first_trial = True
        for _ in range(30):
            trial_B = torch.addcmul(B, step, direction)
            trial_scores = torch.addcmul(scores, step, moved)
            trial_value, trial_state = objective.value(trial_B, trial_scores)
            accepted |= trial_value <= value + 1e-4 * step.double() * slope
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step / 2)
            first_trial = False
        if first_trial:
            # Every group took its trial step (0 for those already converged).
            B, scores, value, state = trial_B, trial_scores, trial_value, trial_state
        else:
            step = torch.where(accepted, step, 0.0)
            B = torch.addcmul(B, step, direction)
            scores = torch.addcmul(scores, step, moved)
            value, state = objective.value(B, scores)
        grad = objective.gradient(B, state)
    return B


def _solve_batch(z_train, z_test, codes, n_classes, loss, C, tol, max_iter,
                 intercept_scaling=1.0):
    """Decision values ``(b, n_test, n_classes)`` of one batch of permutations.

    A constant column (``1``, unpenalised, for the logistic loss;
    ``intercept_scaling``, penalised like the weights, for the squared hinge,
    as liblinear) carries the intercept; the test design gets a zero column
    there, so the decision values leave the intercept out.
    """
    device, dtype = z_train.device, z_train.dtype
    column = 1.0 if loss == "logistic" else float(intercept_scaling)
    z_train = torch.cat([z_train, z_train.new_full((*z_train.shape[:-1], 1), column)], -1)
    z_test = torch.cat([z_test, z_test.new_zeros((*z_test.shape[:-1], 1))], -1)
    codes_np = np.asarray(codes, dtype=np.int64)
    weights = torch.as_tensor(class_balance_weights(codes_np, n_classes).T, device=device,
                              dtype=dtype).unsqueeze(1)
    codes_t = torch.as_tensor(codes_np.T, device=device).unsqueeze(1)
    onehot = torch.zeros(len(codes_t), n_classes, codes_t.shape[-1], device=device,
                         dtype=dtype)
    onehot.scatter_(1, codes_t, 1.0)
    absent = ~onehot.bool().any(dim=0, keepdim=True)
    n_present = n_classes - absent.sum(dim=1, keepdim=True)
    lam = torch.full(n_present.shape, 1.0 / C, device=device, dtype=dtype)
    if loss == "logistic":
        # Two classes: scikit-learn fits one binomial weight vector v with penalty
        # |v|^2 / 2; the two-class multinomial gives v = w1 - w0 with w0 = -w1, whose
        # penalty (|w0|^2 + |w1|^2) / 2 = |v|^2 / 4: doubling lam makes them equal.
        lam = torch.where(n_present == 2, 2.0 * lam, lam)
    lam = lam.expand(z_train.shape[-1], 1, -1).clone()
    if loss == "logistic":
        lam[-1] = 0.0                   # scikit-learn's lbfgs leaves the intercept free
        objective = _Multinomial(z_train, onehot, weights, lam, absent)
    else:
        objective = _SquaredHinge(z_train, onehot, weights, lam, absent)
    B = _newton(objective, None, None, tol, max_iter)
    decision = objective.decision(objective._product(z_test, B))
    return decision.permute(2, 0, 1).double().cpu().numpy()


def anova_masks(X_train: np.ndarray, Y_permuted: np.ndarray, percentile: float = 10.0,
                n_classes: int | None = None) -> np.ndarray:
    """Features :class:`~sklearn.feature_selection.SelectPercentile` (``f_classif``) keeps.

    One row per permuted label sequence, computed at once: the ANOVA F of every
    feature from the class sums ``onehot' X``, then scikit-learn's rule (features
    above the ``100 - percentile`` percentile of the F values, ties filled up to
    ``int(p * percentile / 100)``, NaN F never kept first).

    Parameters
    ----------
    X_train : ndarray
        ``(n, p)`` training samples (after any label-free step, e.g. scaling).
    Y_permuted : ndarray of int
        ``(n_perm, n)`` class indices.
    percentile : float
        Percent of features kept.
    n_classes : int, optional
        Number of class indices.

    Returns
    -------
    ndarray of bool
        ``(n_perm, p)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 50)); y = np.repeat([0, 1], 20); X[y == 1, 7] += 3
    >>> masks = anova_masks(X, np.stack([y, y[::-1]]), percentile=10)
    >>> masks.sum(axis=1).tolist(), bool(masks[0, 7])
    ([5, 5], True)
    """
    X = np.asarray(X_train, dtype=np.float64)
    Y = np.atleast_2d(np.asarray(Y_permuted, dtype=np.int64))
    n, p = X.shape
    n_classes = int(Y.max()) + 1 if n_classes is None else int(n_classes)
    centred = X - X.mean(axis=0)
    total = (centred ** 2).sum(axis=0)
    counts = np.stack([np.bincount(row, minlength=n_classes) for row in Y])
    onehot = np.eye(n_classes)[Y].transpose(0, 2, 1)                  # (b, k, n)
    sums = (onehot.reshape(-1, n) @ centred).reshape(len(Y), n_classes, p)
    between = (sums ** 2 / np.maximum(counts, 1)[:, :, None]).sum(axis=1)
    n_present = (counts > 0).sum(axis=1, keepdims=True)
    within = total - between
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (between / (n_present - 1)) / (within / (n - n_present))
    F[~np.isfinite(F)] = np.finfo(np.float64).min
    # Constant features: scikit-learn's f_classif gives NaN, ranked lowest.
    F[:, total <= 0] = np.finfo(np.float64).min
    if percentile >= 100:
        return np.ones((len(Y), p), bool)
    if percentile <= 0:
        return np.zeros((len(Y), p), bool)
    threshold = np.percentile(F, 100 - percentile, axis=1, keepdims=True)
    masks = threshold < F
    max_features = int(p * percentile / 100)
    for row in np.flatnonzero((threshold == F).any(axis=1)):
        ties = np.flatnonzero(F[row] == threshold[row])
        masks[row, ties[: max(0, max_features - masks[row].sum())]] = True
    return masks


#: Numbers per working array of one batch of :func:`fit_permutations` (float32: 32 MB).
_BATCH_NUMBERS = 8_000_000
#: Numbers per working array of a batch on a shared design (float32: 1.2 MB): the
#: element-wise passes of a Newton step then run from the cache rather than from memory
#: (on the demo, 1,000 permutations in one batch took 1.4 times as long as in batches
#: of 200).
_CACHE_NUMBERS = 300_000


def fit_permutations(X_train: np.ndarray, Y_permuted: np.ndarray, X_test: np.ndarray, *,
                     loss: str = "logistic", C: float = 1.0, n_classes: int | None = None,
                     feature_masks: np.ndarray | None = None,
                     device: str | torch.device | None = None, dtype: str = "float32",
                     tol: float | None = None, max_iter: int = 100,
                     intercept_scaling: float = 10.0,
                     batch_size: int | None = None) -> np.ndarray:
    """Fit one balanced, prior-free linear classifier per permuted label row, in one batch.

    Each row of ``Y_permuted`` gets the fit that :class:`BalancedLogisticRegression`
    (``loss="logistic"``) or :class:`BalancedLinearSVC` (``loss="squared_hinge"``)
    with the same ``C`` would make on ``X_train`` (centred on its mean), to
    solver tolerance; the result is the decision values of ``X_test``.

    Parameters
    ----------
    X_train : ndarray
        ``(n_train, p)`` training samples, shared by all permutations.
    Y_permuted : ndarray of int
        ``(n_perm, n_train)`` class indices ``0 .. n_classes - 1``.
    X_test : ndarray
        ``(n_test, p)`` test samples.
    loss : {"logistic", "squared_hinge"}
        The estimator's objective (see :data:`LOSSES`).
    C : float
        Inverse of the L2 penalty, as in the estimators.
    n_classes : int, optional
        Number of class indices (default: the largest index + 1).
    feature_masks : ndarray of bool, optional
        ``(n_perm, p)``: the features each permutation uses (per-permutation
        ANOVA selection, :func:`anova_masks`). Default: all features, shared
        (the faster case: one design for every permutation).
    device : str or torch.device, optional
        Where to compute: a ``torch.device``, or "cpu", "cuda", "auto"
        (:func:`~bids_affect.models.training.resolve_device`). Default: CPU.
    dtype : {"float32", "float64"}
        Precision of the products (eigenvectors are computed in float64).
        float32 agrees with scikit-learn's float64 fits on >= 99% of predictions
        in our tests; use float64 for tighter coefficients.
    tol : float, optional
        Stop a permutation when its Newton decrement ``sqrt(g' M^-1 g)`` (``g``:
        the gradient, ``M``: the Hessian as the steps approximate it) falls
        below ``tol`` times its value at zero. Default: :data:`DEFAULT_TOL` of
        the loss.
    max_iter : int
        Maximum Newton steps.
    intercept_scaling : float
        :class:`BalancedLinearSVC`'s ``intercept_scaling`` (squared hinge only).
    batch_size : int, optional
        Most permutations solved together (with a shared design, the batches then
        take equal shares, within 1). Default: with a shared design, about
        300,000 numbers per array (``n_train * n_classes * batch_size``; a few
        such arrays then stay in a core's cache); with ``feature_masks``, about
        8 million (some 15 such arrays are alive at once) and
        ``(n_train + n_test) * n_kept * batch_size`` <= 32 million.

    Returns
    -------
    ndarray
        ``(n_perm, n_test, n_classes)`` float64 decision values (class scores;
        ``-inf`` for a class absent from that permutation's training labels).
        ``argmax`` over the last axis gives the predictions.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(30, 8))
    >>> Y = np.stack([rng.permutation(np.repeat([0, 1, 2], 10)) for _ in range(4)])
    >>> fit_permutations(X[:20], Y[:, :20], X[20:], loss="squared_hinge", C=1.0).shape
    (4, 10, 3)
    """
    check_choice(loss, "loss", tuple(LOSSES))
    C = check_number(C, "C", positive=True)
    tol = check_number(DEFAULT_TOL[loss] if tol is None else tol, "tol", positive=True)
    Y = np.atleast_2d(np.asarray(Y_permuted))
    if not np.issubdtype(Y.dtype, np.integer) or Y.min() < 0:
        raise ValueError("Y_permuted must hold class indices 0 .. n_classes - 1; got "
                         f"{Y.dtype} values from {Y.min()}")
    X_train = np.asarray(X_train)
    X_test = np.asarray(X_test)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"X_train and X_test must be 2D with the same number of features; "
                         f"got {X_train.shape} and {X_test.shape}")
    if Y.shape[1] != len(X_train):
        raise ValueError(f"Y_permuted has {Y.shape[1]} labels per row for {len(X_train)} "
                         "training samples")
    n_classes = int(Y.max()) + 1 if n_classes is None else int(n_classes)
    if Y.max() >= n_classes:
        raise ValueError(f"Y_permuted holds class index {Y.max()} but n_classes is {n_classes}")
    device, dtype = _device(device), _dtype(dtype)
    if feature_masks is not None:
        feature_masks = np.asarray(feature_masks, dtype=bool)
        if feature_masks.shape != (len(Y), X_train.shape[1]) or not feature_masks.any(1).all():
            raise ValueError(f"feature_masks must be ({len(Y)}, {X_train.shape[1]}) booleans "
                             f"keeping at least one feature per row; got shape "
                             f"{feature_masks.shape}")
    # A fit depends only on its training labels (and features): solve each distinct
    # row once (with leave-one-run-out on 2 runs, most circular shifts repeat).
    keys = np.ascontiguousarray(Y if feature_masks is None else np.hstack([Y, feature_masks]))
    # Rows as single opaque values: np.unique(axis=0) would sort them column by column.
    rows = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    Y_unique = Y[first]
    masks = None if feature_masks is None else feature_masks[first]
    mean = X_train.mean(axis=0, dtype=np.float64)
    train = torch.as_tensor(X_train - mean, dtype=dtype, device=device)
    test = torch.as_tensor(X_test - mean, dtype=dtype, device=device)
    out = np.empty((len(Y_unique), len(X_test), n_classes))
    if masks is None:
        z_train, z_test = _rotate(train, test)
        if batch_size is None:
            batch_size = max(1, _CACHE_NUMBERS // (z_train.shape[0] * n_classes))
        # As many batches as that size needs, of sizes within 1 of each other: no small
        # last batch paying a whole batch's fixed costs.
        n_batches = -(-len(Y_unique) // batch_size)
        bounds = [len(Y_unique) * batch // n_batches for batch in range(n_batches + 1)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            out[start:stop] = _solve_batch(z_train, z_test, Y_unique[start:stop], n_classes,
                                           loss, C, tol, max_iter, intercept_scaling)
        return out[inverse.reshape(-1)]
    # Rows keeping fewer features are padded with a zero column: it adds nothing to the
    # scores and its weight stays 0, so every permutation's fit is unchanged.
    width = int(masks.sum(axis=1).max())
    # Features as rows, so that gathering a permutation's features copies whole rows.
    train = torch.cat([train, train.new_zeros(len(train), 1)], dim=1).T.contiguous()
    test = torch.cat([test, test.new_zeros(len(test), 1)], dim=1).T.contiguous()
    rotate = width > len(X_train)
    if batch_size is None:
        batch_size = max(1, min(_BATCH_NUMBERS // (len(X_train) * n_classes),
                                4 * _BATCH_NUMBERS // ((len(X_train) + len(X_test)) * width)))
    for start in range(0, len(Y_unique), batch_size):
        rows = slice(start, start + batch_size)
        index = np.full((len(masks[rows]), width), X_train.shape[1])
        for row, mask in enumerate(masks[rows]):
            kept = np.flatnonzero(mask)
            index[row, :len(kept)] = kept
        index = torch.as_tensor(index, device=device)
        z_train, z_test = (rows[index].transpose(1, 2).contiguous() for rows in (train, test))
        if rotate:
            # More features than samples: the rotation shrinks each design to n_train
            # columns; otherwise it would cost more (an eigh per permutation) than it saves.
            z_train, z_test = _rotate(z_train, z_test)
        out[rows] = _solve_batch(z_train, z_test, Y_unique[rows], n_classes, loss, C, tol,
                                 max_iter, intercept_scaling)
    return out[inverse.reshape(-1)]


def _pipeline_parts(pipeline) -> tuple[list, SelectPercentile | None, Any]:
    steps = [step for _, step in getattr(pipeline, "steps", [("", pipeline)])]
    *transforms, final = steps
    if not isinstance(final, (BalancedLogisticRegression, BalancedLinearSVC)):
        raise ValueError("permutation_null_predictions needs a BalancedLogisticRegression or "
                         f"BalancedLinearSVC as the last step; got {type(final).__name__}")
    shared, selection = [], None
    for step in transforms:
        if isinstance(step, _LABEL_FREE_STEPS) and selection is None:
            shared.append(step)
        elif (isinstance(step, SelectPercentile) and step.score_func is f_classif
              and selection is None):
            selection = step
        else:
            raise ValueError(f"permutation_null_predictions cannot batch the step {step!r}: "
                             "label-free steps (StandardScaler, PCA) may come first, then "
                             "at most one SelectPercentile(f_classif)")
    return shared, selection, final


def permutation_null_predictions(
        make_estimator: Callable[[int, int], Any], X: np.ndarray, permuted: np.ndarray,
        splits: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int, *,
        device: str | torch.device | None = None, dtype: str = "float32",
        tol: float | None = None, batch_size: int | None = None) -> np.ndarray:
    """Test-fold predictions of every permuted label sequence, as refitting would give.

    For each fold, the label-free steps of the decoder's pipeline (scaling,
    PCA) are fitted once on the training samples, as each refit would fit
    them identically; an ANOVA selection step is redone for each permutation
    (:func:`anova_masks`); the balanced classifier of every permutation is then
    fitted in one batch (:func:`fit_permutations`).

    Parameters
    ----------
    make_estimator : callable
        ``make_estimator(fold, n_train)`` returns the fold's unfitted decoder:
        a :class:`BalancedLogisticRegression` or :class:`BalancedLinearSVC`,
        or a pipeline of label-free steps, optionally one
        ``SelectPercentile(f_classif)``, and one of them.
    X : ndarray
        ``(n_samples, n_features)`` samples (a memmap is fine).
    permuted : ndarray of int
        ``(n_perm, n_samples)`` permuted class indices (e.g. circular shifts).
    splits : sequence of (train, test)
        Index arrays of the cross-validation.
    n_classes : int
        Number of class indices.
    device, dtype, tol, batch_size
        As :func:`fit_permutations`.

    Returns
    -------
    ndarray of int
        ``(n_perm, n_samples)`` predicted class index of each test sample (``-1``
        for a sample in no test fold); the balanced accuracy of each row against
        ``permuted`` is the null.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 12)); y = np.tile(np.repeat([0, 1, 2], 10), 2)
    >>> splits = [(np.arange(30, 60), np.arange(30)), (np.arange(30), np.arange(30, 60))]
    >>> permuted = np.stack([np.roll(y, s) for s in (5, 10, 15)])
    >>> make = lambda fold, n: make_pipeline(StandardScaler(), BalancedLogisticRegression())
    >>> permutation_null_predictions(make, X, permuted, splits, 3).shape
    (3, 60)
    """
    permuted = np.atleast_2d(np.asarray(permuted, dtype=np.int64))
    predicted = np.full(permuted.shape, -1, dtype=np.int64)
    for fold, (train, test) in enumerate(splits):
        shared, selection, final = _pipeline_parts(make_estimator(fold, len(train)))
        x_train, x_test = X[train], X[test]
        for step in shared:
            x_train = step.fit_transform(x_train)
            x_test = step.transform(x_test)
        masks = None
        if selection is not None:
            masks = anova_masks(x_train, permuted[:, train], selection.percentile, n_classes)
        logistic = isinstance(final, BalancedLogisticRegression)
        decision = fit_permutations(
            x_train, permuted[:, train], x_test,
            loss="logistic" if logistic else "squared_hinge", C=final.C, n_classes=n_classes,
            feature_masks=masks, device=device, dtype=dtype, tol=tol,
            intercept_scaling=1.0 if logistic else final.intercept_scaling,
            batch_size=batch_size)
        predicted[:, test] = decision.argmax(axis=2)
    return predicted
