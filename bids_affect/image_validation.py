"""Encoding models tested on affective images: do predicted responses track valence? (seed 000)

Seed 000 (Jang & Kragel) fed IAPS and OASIS images through the network and
layer of each subject's amygdala encoding model, took the predicted response
of the amygdala (and of its subregions) to every image, and regressed it on
the images' valence, arousal and their interaction while controlling for
low-level visual features. Across subjects the valence coefficient was
positive (IAPS t = 2.86, d = 0.64), arousal's was not.

The pieces:

- :func:`image_features` streams an image set through a network and reads one
  layer (spatial mean per channel, fully connected outputs as they are:
  :func:`bids_affect.models.image.pool_activations`'s convention), and
  :func:`registry_image_features` does so for a fitted
  :class:`~bids_affect.models.image.ImageFeatures` (the extractor of the
  encoding features), so images are preprocessed exactly as the movie frames.
- An encoding model here is any callable ``features -> (n_images, n_rois)``.
  :func:`roi_readout` turns a fitted linear encoder of
  :mod:`bids_affect.encoding` (``x_mean_``, ``x_scale_``, ``weights_``,
  ``intercept_``) and ROI voxel masks into :class:`LinearROIReadout`, a torch
  module giving each ROI's mean predicted response (the mean of linear
  predictions is the prediction with the voxels' mean weights: exact), also
  differentiable for :mod:`bids_affect.synthesis`.
- :func:`rating_design` builds the regressors: valence, arousal and their
  interaction (product of the centred ratings) plus the covariates of
  :func:`bids_affect.image_sets.low_level_features` (mean colour or
  luminance, spatial-frequency energy). By default every column and the
  response are z-scored, so the coefficients are standardised betas,
  comparable across subjects.
- :func:`rating_regression` fits ordinary least squares per ROI (statsmodels):
  coefficient, standard error, t and p of every term.
- :func:`group_coefficient_tests` tests each ROI's coefficients across
  subjects: one-sample t (scipy), Cohen's d = mean / SD, as seed 000 reports.
- :func:`validate_encoding_models` runs all of it for every subject's model.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> ratings = pd.DataFrame({"valence": rng.uniform(1, 9, 80), "arousal": rng.uniform(1, 9, 80)})
>>> features = np.column_stack([ratings["valence"], rng.normal(size=80)])
>>> models = {f"sub-{i}": (lambda X, w=w: X @ w[:, None])
...           for i, w in enumerate(rng.normal([1.0, 0.0], 0.3, size=(6, 2)))}
>>> result = validate_encoding_models(models, features, ratings, roi_names=["amygdala"])
>>> row = result.group.set_index("term").loc["valence"]
>>> bool(row["t"] > 3), bool(row["cohen_d"] > 1)
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch
from scipy import stats
from torch import nn

from bids_affect.exceptions import InputDataError, UsageError
from bids_affect.image_sets import ImageSet, ImageStream, Preprocess
from bids_affect.selectivity import channel_responses, module_path

__all__ = [
    "RATING_TERMS",
    "ImageValidationResult",
    "LinearROIReadout",
    "group_coefficient_tests",
    "image_features",
    "predict_roi_responses",
    "rating_design",
    "rating_regression",
    "registry_image_features",
    "roi_readout",
    "validate_encoding_models",
]

#: The rating terms of the regression, in order.
RATING_TERMS = ("valence", "arousal", "valence_x_arousal")

EncodingModel = Callable[[np.ndarray], Any]


# --------------------------------------------------------------------------- features


def image_features(network: nn.Module, layer: nn.Module | str, images, *,
                   device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """One layer's features of every image, streamed: float32 ``(n_images, n_features)``.

    Convolution maps are averaged over space (one value per channel); fully
    connected outputs are kept as they are.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))
    >>> image_features(net, "3", torch.zeros(6, 3, 4, 4)).shape
    (6, 5)
    """
    name = module_path(network, layer)
    return channel_responses(network, [name], images, device=device,
                             batch_size=batch_size)[name]


def registry_image_features(extractor, image_set: ImageSet, *, grayscale: bool = False,
                            n_threads: int = 1) -> np.ndarray:
    """Features of an image set from a fitted :class:`~bids_affect.models.image.ImageFeatures`.

    The images are decoded one batch at a time and preprocessed with the
    extractor's preprocessing, so the features equal
    ``extractor.transform(images)`` without holding the set in memory.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from bids_affect.image_sets import load_image_set
    >>> from bids_affect.models.image import ImageFeatures
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "a").mkdir()
    >>> Image.new("RGB", (70, 60), (200, 30, 30)).save(root / "a" / "x.png")
    >>> extractor = ImageFeatures("alexnet", "relu5", weights="random", random_state=0).fit()
    >>> image_set = load_image_set(root, min_per_category=1)
    >>> registry_image_features(extractor, image_set).shape
    (1, 256)
    """
    if not hasattr(extractor, "network_"):
        raise UsageError("the feature extractor is not fitted", path="extractor",
                         fix="call ImageFeatures(...).fit() first")
    stream = ImageStream(image_set, Preprocess(extractor.preprocessing_, grayscale=grayscale),
                         batch_size=extractor.batch_size, n_threads=n_threads)
    return image_features(extractor.network_, extractor.module_path_, stream,
                          device=str(extractor.device_))


# --------------------------------------------------------------------------- ROI models


class LinearROIReadout(nn.Module):
    """ROI-mean responses of a linear encoding model, as a differentiable torch module.

    ``forward(features) = ((features - x_mean) / x_scale) @ weights + intercept``,
    one column per ROI.

    Parameters
    ----------
    weights : array ``(n_features, n_rois)``
    intercept : array ``(n_rois,)``
    x_mean, x_scale : array ``(n_features,)``, optional
        The feature standardisation of the encoder (default none).
    roi_names : sequence of str, optional

    Examples
    --------
    >>> readout = LinearROIReadout(np.eye(2), np.zeros(2), roi_names=["CM", "LB"])
    >>> readout.predict(np.array([[1.0, 2.0]])).tolist()
    [[1.0, 2.0]]
    """

    def __init__(self, weights: np.ndarray, intercept: np.ndarray,
                 x_mean: np.ndarray | None = None, x_scale: np.ndarray | None = None,
                 roi_names: Sequence[str] | None = None):
        super().__init__()
        weights = np.asarray(weights, dtype=np.float32)
        if weights.ndim != 2:
            raise InputDataError(f"weights must be (n_features, n_rois), got {weights.shape}",
                                 path="weights")
        n_features, n_rois = weights.shape
        x_mean = np.zeros(n_features) if x_mean is None else np.asarray(x_mean)
        x_scale = np.ones(n_features) if x_scale is None else np.asarray(x_scale)
        intercept = np.asarray(intercept, dtype=np.float32).reshape(-1)
        if x_mean.shape != (n_features,) or x_scale.shape != (n_features,) or (
                intercept.shape != (n_rois,)):
            raise InputDataError("x_mean and x_scale need one value per feature and intercept "
                                 "one per ROI", path="weights")
        self.roi_names = (list(roi_names) if roi_names is not None
                          else [f"roi{i}" for i in range(n_rois)])
        if len(self.roi_names) != n_rois:
            raise InputDataError(f"{len(self.roi_names)} ROI names for {n_rois} ROIs",
                                 path="roi_names")
        self.register_buffer("weights", torch.from_numpy(weights))
        self.register_buffer("intercept", torch.from_numpy(intercept))
        self.register_buffer("x_mean", torch.from_numpy(x_mean.astype(np.float32)))
        self.register_buffer("x_scale", torch.from_numpy(x_scale.astype(np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.x_mean) / self.x_scale) @ self.weights + self.intercept

    def predict(self, features: np.ndarray) -> np.ndarray:
        """NumPy in, NumPy out: ``(n_images, n_rois)``."""
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(features, dtype=np.float32))).numpy()

    def __call__(self, features):
        if isinstance(features, torch.Tensor):
            return super().__call__(features)
        return self.predict(features)


def roi_readout(encoder: Any, rois: Mapping[str, np.ndarray | Sequence[int]]
                ) -> LinearROIReadout:
    """The ROI-mean predictions of a fitted linear encoder, as a :class:`LinearROIReadout`.

    Parameters
    ----------
    encoder : fitted encoder
        With ``x_mean_``, ``x_scale_``, ``weights_`` ``(n_features, n_voxels)``
        and ``intercept_`` ``(n_voxels,)`` (:mod:`bids_affect.encoding`'s PLS,
        ridge and banded ridge encoders).
    rois : mapping of str to voxel indices or boolean masks over the voxels

    Examples
    --------
    >>> class Encoder:
    ...     x_mean_, x_scale_ = np.zeros(2), np.ones(2)
    ...     weights_, intercept_ = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]]), np.zeros(3)
    >>> readout = roi_readout(Encoder(), {"amygdala": [0, 1], "CM": [2]})
    >>> readout.predict(np.array([[1.0, 1.0]])).tolist()
    [[2.0, 2.0]]
    """
    missing = [name for name in ("x_mean_", "x_scale_", "weights_", "intercept_")
               if not hasattr(encoder, name)]
    if missing:
        raise UsageError(f"the encoding model lacks {', '.join(missing)} (a fitted linear "
                         "encoder of bids_affect.encoding is needed)", path="encoder")
    weights = np.asarray(encoder.weights_, dtype=np.float64)
    intercept = np.asarray(encoder.intercept_, dtype=np.float64).reshape(-1)
    columns, offsets = [], []
    for name, voxels in rois.items():
        voxels = np.asarray(voxels)
        index = np.flatnonzero(voxels) if voxels.dtype == bool else voxels.astype(int)
        if voxels.dtype == bool and voxels.shape != (weights.shape[1],):
            raise InputDataError(f"ROI {name!r} mask has {voxels.shape} entries, the model "
                                 f"{weights.shape[1]} voxels", path="rois")
        if index.size == 0 or index.min() < 0 or index.max() >= weights.shape[1]:
            raise InputDataError(f"ROI {name!r} names no voxel of the model's "
                                 f"{weights.shape[1]}", path="rois")
        columns.append(weights[:, index].mean(axis=1))
        offsets.append(intercept[index].mean())
    return LinearROIReadout(np.column_stack(columns), np.array(offsets), encoder.x_mean_,
                            encoder.x_scale_, list(rois))


def predict_roi_responses(model: EncodingModel, features: np.ndarray, *,
                          roi_names: Sequence[str] | None = None,
                          index: Sequence[str] | None = None) -> pd.DataFrame:
    """Predicted response of every ROI to every image.

    Parameters
    ----------
    model : callable
        ``features -> (n_images, n_rois)`` array, tensor or DataFrame (its
        columns then name the ROIs).
    features : ndarray ``(n_images, n_features)``
    roi_names : sequence of str, optional
        Column names (default: the DataFrame's, a model's ``roi_names``, or
        ``roi0``...).
    index : sequence of str, optional
        Row names (the image files).

    Examples
    --------
    >>> predict_roi_responses(lambda X: X[:, :1] * 2, np.ones((2, 3)), roi_names=["amygdala"])
       amygdala
    0       2.0
    1       2.0
    """
    features = np.asarray(features, dtype=np.float32)
    predicted = model(features)
    columns = list(predicted.columns) if isinstance(predicted, pd.DataFrame) else None
    if isinstance(predicted, torch.Tensor):
        predicted = predicted.detach().cpu().numpy()
    values = np.asarray(predicted, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) != len(features):
        raise InputDataError(f"the encoding model returned shape {values.shape} for "
                             f"{len(features)} images; (n_images, n_rois) is needed",
                             path="encoding_model")
    if not np.isfinite(values).all():
        raise InputDataError("the encoding model predicted NaN or infinite responses",
                             path="encoding_model")
    names = (list(roi_names) if roi_names is not None else columns
             or getattr(model, "roi_names", None)
             or [f"roi{i}" for i in range(values.shape[1])])
    if len(names) != values.shape[1]:
        raise InputDataError(f"{len(names)} ROI names for {values.shape[1]} predicted "
                             "columns", path="roi_names")
    return pd.DataFrame(values, columns=names,
                        index=None if index is None else pd.Index(index, name="file"))


# --------------------------------------------------------------------------- regression


def _zscore(column: pd.Series) -> pd.Series:
    return (column - column.mean()) / column.std(ddof=0)


def rating_design(ratings: pd.DataFrame, covariates: pd.DataFrame | None = None, *,
                  interaction: bool = True, standardize: bool = True) -> pd.DataFrame:
    """Regressors of the predicted responses: ratings, their interaction, covariates.

    Valence and arousal are centred (and scaled when ``standardize``) before
    their product forms the interaction, so the main effects keep their
    meaning. Covariates are scaled alike. A ``const`` column comes first.

    Parameters
    ----------
    ratings : pandas.DataFrame
        ``valence`` and ``arousal`` per image (e.g. ``ImageSet.table``).
    covariates : pandas.DataFrame, optional
        One row per image, same order (e.g.
        :func:`~bids_affect.image_sets.low_level_features`).
    interaction : bool
        Add ``valence_x_arousal``.
    standardize : bool
        z-score every regressor (default), else only centre the ratings.

    Raises
    ------
    InputDataError
        (exit 65) missing ratings (naming the images), mismatched rows, a
        constant regressor, or regressors that are collinear (e.g. red, green
        and blue of grayscale images: use ``colour="luminance"``).

    Examples
    --------
    >>> ratings = pd.DataFrame({"valence": [1.0, 3, 5, 7, 2], "arousal": [2.0, 2, 6, 5, 9]})
    >>> rating_design(ratings).columns.tolist()
    ['const', 'valence', 'arousal', 'valence_x_arousal']
    """
    for column in ("valence", "arousal"):
        if column not in ratings.columns:
            raise InputDataError(f"the ratings have no {column!r} column", path="ratings",
                                 fix="give valence and arousal for every image")
    rated = ratings[["valence", "arousal"]].astype(float)
    missing = rated.isna().any(axis=1).to_numpy()
    if missing.any():
        names = (ratings["file"] if "file" in ratings.columns else ratings.index)[missing]
        shown = ", ".join(map(str, list(names)[:5]))
        raise InputDataError(f"{int(missing.sum())} image(s) lack valence or arousal: {shown}",
                             path="ratings", fix="rate every image or leave those images out")
    scale = _zscore if standardize else (lambda c: c - c.mean())
    design = pd.DataFrame({"valence": scale(rated["valence"]),
                           "arousal": scale(rated["arousal"])})
    if interaction:
        centred = rated - rated.mean()
        product = centred["valence"] * centred["arousal"]
        design["valence_x_arousal"] = _zscore(product) if standardize else product
    if covariates is not None:
        if len(covariates) != len(design):
            raise InputDataError(f"{len(covariates)} covariate rows for {len(design)} images",
                                 path="covariates")
        clash = [c for c in covariates.columns if c in design.columns or c == "const"]
        if clash:
            raise InputDataError(f"covariate {clash[0]!r} clashes with a rating term",
                                 path="covariates")
        values = covariates.astype(float).reset_index(drop=True)
        for column in values.columns:
            design[column] = scale(values[column]).to_numpy() if standardize else values[
                column].to_numpy()
    design = design.reset_index(drop=True)
    constant = [c for c in design.columns if not np.ptp(design[c].to_numpy()) > 0]
    if constant:
        raise InputDataError(f"regressor {constant[0]!r} is constant across the images",
                             path="covariates", fix="leave it out")
    design.insert(0, "const", 1.0)
    rank = np.linalg.matrix_rank(design.to_numpy())
    if rank < design.shape[1]:
        raise InputDataError(
            f"the regressors {', '.join(design.columns[1:])} are collinear (rank {rank} of "
            f"{design.shape[1]})", path="covariates",
            fix="drop a covariate (for grayscale images use colour='luminance')")
    if len(design) <= design.shape[1]:
        raise InputDataError(f"{len(design)} images for {design.shape[1]} regressors",
                             path="ratings", fix="use more images or fewer covariates")
    return design


def rating_regression(responses: pd.DataFrame, design: pd.DataFrame, *,
                      standardize: bool = True) -> pd.DataFrame:
    """OLS of each ROI's predicted response on the design (statsmodels), per term.

    Parameters
    ----------
    responses : pandas.DataFrame
        One column per ROI, one row per image (:func:`predict_roi_responses`).
    design : pandas.DataFrame
        :func:`rating_design`.
    standardize : bool
        z-score each response first (standardised betas).

    Returns
    -------
    pandas.DataFrame
        ``roi``, ``term``, ``coef``, ``se``, ``t``, ``p``, ``r_squared``,
        ``n_images``, ``df_resid`` for every term but the constant.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ratings = pd.DataFrame({"valence": rng.normal(size=50), "arousal": rng.normal(size=50)})
    >>> responses = pd.DataFrame({"amygdala": -ratings["valence"] + rng.normal(0, .1, 50)})
    >>> table = rating_regression(responses, rating_design(ratings))
    >>> table.set_index("term").loc["valence", "coef"] < -0.9
    np.True_
    """
    if len(responses) != len(design):
        raise InputDataError(f"{len(responses)} responses for {len(design)} design rows",
                             path="responses")
    rows = []
    for roi in responses.columns:
        y = responses[roi].to_numpy(dtype=np.float64)
        if standardize:
            spread = y.std()
            if not spread > 0:
                raise InputDataError(f"the predicted response of ROI {roi!r} is the same for "
                                     "every image", path="responses")
            y = (y - y.mean()) / spread
        fit = sm.OLS(y, design.to_numpy(), hasconst=True).fit()
        for position, term in enumerate(design.columns):
            if term == "const":
                continue
            rows.append({"roi": roi, "term": term, "coef": float(fit.params[position]),
                         "se": float(fit.bse[position]), "t": float(fit.tvalues[position]),
                         "p": float(fit.pvalues[position]), "r_squared": float(fit.rsquared),
                         "n_images": int(fit.nobs), "df_resid": float(fit.df_resid)})
    return pd.DataFrame(rows)


def group_coefficient_tests(per_subject: pd.DataFrame) -> pd.DataFrame:
    """One-sample t-test and Cohen's d of each ROI's coefficients across subjects.

    Parameters
    ----------
    per_subject : pandas.DataFrame
        :func:`rating_regression` rows with a ``participant_id`` column.

    Returns
    -------
    pandas.DataFrame
        ``roi``, ``term``, ``n_subjects``, ``mean``, ``sd``, ``t``, ``df``,
        ``p`` (two-sided), ``cohen_d`` (mean / SD, ddof 1).

    Examples
    --------
    >>> table = pd.DataFrame({"participant_id": ["01", "02", "03"], "roi": "amygdala",
    ...                       "term": "valence", "coef": [0.2, 0.3, 0.4]})
    >>> group_coefficient_tests(table)[["t", "cohen_d"]].round(3).values.tolist()
    [[5.196, 3.0]]
    """
    required = {"participant_id", "roi", "term", "coef"}
    if not required <= set(per_subject.columns):
        raise InputDataError(f"needs columns {sorted(required)}", path="per_subject")
    rows = []
    for (roi, term), group in per_subject.groupby(["roi", "term"], sort=False):
        values = group["coef"].to_numpy(dtype=np.float64)
        n = len(values)
        if n < 2:
            raise InputDataError(f"ROI {roi!r} term {term!r} has {n} subject; a group test "
                                 "needs 2 at least", path="per_subject")
        sd = values.std(ddof=1)
        test = stats.ttest_1samp(values, 0.0)
        rows.append({"roi": roi, "term": term, "n_subjects": n, "mean": float(values.mean()),
                     "sd": float(sd), "t": float(test.statistic), "df": n - 1,
                     "p": float(test.pvalue),
                     "cohen_d": float(values.mean() / sd) if sd > 0 else float("nan")})
    return pd.DataFrame(rows)


@dataclass
class ImageValidationResult:
    """Predicted ROI responses to the images, per-subject regressions, group tests.

    Attributes
    ----------
    predicted : pandas.DataFrame
        Long form: ``participant_id``, ``image`` (file or row), ``roi``, ``predicted``.
    subjects : pandas.DataFrame
        :func:`rating_regression` rows with ``participant_id`` first.
    group : pandas.DataFrame
        :func:`group_coefficient_tests` (empty with one subject).
    """

    predicted: pd.DataFrame
    subjects: pd.DataFrame
    group: pd.DataFrame


def validate_encoding_models(models: Mapping[str, EncodingModel], features: np.ndarray,
                             ratings: pd.DataFrame, covariates: pd.DataFrame | None = None, *,
                             roi_names: Sequence[str] | None = None, interaction: bool = True,
                             standardize: bool = True) -> ImageValidationResult:
    """Seed 000's validation of every subject's encoding model on one image set.

    Parameters
    ----------
    models : mapping of participant label to encoding model
        Each ``features -> (n_images, n_rois)``.
    features : ndarray ``(n_images, n_features)``
        The images' features through the models' network and layer
        (:func:`registry_image_features`).
    ratings : pandas.DataFrame
        ``valence`` and ``arousal`` per image, same order (``ImageSet.table``;
        its ``file`` column names the images).
    covariates : pandas.DataFrame, optional
        Low-level covariates, same order.
    roi_names, interaction, standardize
        See :func:`predict_roi_responses`, :func:`rating_design`.

    Returns
    -------
    ImageValidationResult

    Examples
    --------
    See the module docstring.
    """
    if not models:
        raise UsageError("names no encoding model", path="models")
    features = np.asarray(features)
    if len(features) != len(ratings):
        raise InputDataError(f"{len(features)} feature rows for {len(ratings)} rated images",
                             path="features")
    design = rating_design(ratings, covariates, interaction=interaction,
                           standardize=standardize)
    images = (ratings["file"].astype(str).tolist() if "file" in ratings.columns
              else [str(i) for i in range(len(ratings))])
    predicted, subjects = [], []
    for participant, model in models.items():
        responses = predict_roi_responses(model, features, roi_names=roi_names)
        long = responses.assign(image=images).melt(id_vars="image", var_name="roi",
                                                   value_name="predicted")
        predicted.append(long.assign(participant_id=participant))
        subjects.append(rating_regression(responses, design, standardize=standardize)
                        .assign(participant_id=participant))
    subjects_table = pd.concat(subjects, ignore_index=True)
    subjects_table = subjects_table[["participant_id", *[c for c in subjects_table.columns
                                                         if c != "participant_id"]]]
    predicted_table = pd.concat(predicted, ignore_index=True)[
        ["participant_id", "image", "roi", "predicted"]]
    group = (group_coefficient_tests(subjects_table) if len(models) > 1
             else pd.DataFrame(columns=["roi", "term", "n_subjects", "mean", "sd", "t", "df",
                                        "p", "cohen_d"]))
    return ImageValidationResult(predicted_table, subjects_table, group)
