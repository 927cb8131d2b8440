"""The image-validation analysis: each subject's encoding models tested on affective images.

Seed 000's validation (:mod:`bids_affect.image_validation`) in the app. Per
subject, the ``imagevalidation`` node reads the subject's encoding models (the
encoding step's ``models.json``, :func:`bids_affect.steps.encoding.encoding_node`),
passes every image of every ``--image-set`` through the same network, layer
and weights as the model's movie features, predicts each ROI's response, and
regresses it on valence, arousal and their interaction with low-level
covariates (mean colour, spatial-frequency energy). The group node tests each
coefficient across subjects (one-sample t, Cohen's d), as seed 000 reports.

An encoding model can be applied to images only when its features are an image
network's (movie frames through ``--feature-network``); a model of other
features (a stimulus recording, banded ridge over several sets) is left out,
and the sidecars say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.exceptions import BidsAffectError, InputDataError, InputMissingError
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import by_task_and_desc, participant_outputs, read_json, sources
from bids_affect.steps.selectivity import (
    analysis_wanted,
    check_image_set_names,
    describe_image_sets,
    image_set_files,
    load_image_sets,
)

if TYPE_CHECKING:
    from bids_affect.config import Config
    from bids_affect.encoding import EncodingModel
    from bids_affect.image_sets import ImageSet
    from bids_affect.workflows.group import GroupWorkflow
    from bids_affect.workflows.participant import ParticipantWorkflow


@section("Stimulus models: encoding models on affective images", "image-validation")
class ImageValidationOptions:
    """How predicted responses to the images are regressed (``[image-validation]``).

    The image sets are ``--image-set`` (the selectivity section's).
    """

    covariates: bool = option(
        True, flags=("--no-image-covariates",), action="store_false",
        default_text="covariates in (seed 000)",
        help="leave the low-level covariates (mean colour, spatial-frequency energy) out of "
             "the regression of predicted responses on the ratings")
    colour: str = option(
        "rgb", flags=("--image-colour-covariates",), choices=("rgb", "luminance"),
        help="colour covariates: the mean of each RGB channel, or luminance alone (for "
             "grayscale image sets, whose RGB means are collinear)")
    interaction: bool = option(
        True, flags=("--no-rating-interaction",), action="store_false",
        default_text="valence x arousal in",
        help="leave the valence x arousal interaction out of the regression")
    batch_size: int = option(16, flags=("--image-feature-batch-size",),
                             type=converters.positive_int, metavar="N",
                             help="images per forward pass of the feature network")


def validation_settings(options: ImageValidationOptions) -> dict[str, Any]:
    """The regression settings a validation step receives (and its sidecars record).

    Examples
    --------
    >>> validation_settings(ImageValidationOptions())["colour"]
    'rgb'
    """
    return {"covariates": options.covariates, "colour": options.colour,
            "interaction": options.interaction, "batch_size": options.batch_size}


# --------------------------------------------------------------------------- encoding models


@dataclass
class ImageEncodingFit:
    """One of a subject's encoding models whose features an image network computes.

    Attributes
    ----------
    desc : str
        The fit's name (its outputs' ``desc``).
    model : EncodingModel
    rois : dict of str to ndarray
        Boolean masks over the model's voxels (the whole mask, ``"mask"``, when
        the encoding step had no ROI).
    extractor : dict
        The image network of its features: ``network``, ``layer``, ``weights``,
        ``random_seed``, ``weights_sha256`` (the features' provenance).
    path : Path
        The model file.
    """

    desc: str
    model: EncodingModel
    rois: dict[str, np.ndarray]
    extractor: dict[str, Any]
    path: Path


def _extractor_spec(fit: Mapping[str, Any]) -> dict[str, Any] | None:
    """The image network of a fit's features, or None when they are not an image network's."""
    spec = fit.get("feature_spec", {})
    names = spec.get("feature_sets", fit.get("features", []))
    if len(names) != 1:
        return None
    about = spec.get("sets", {}).get(names[0], {})
    # Movie features record their extractor (ImageFeatures.provenance()) under "extractor".
    provenance = (about.get("provenance") or {}).get("extractor") or {}
    if "network" not in provenance or not about.get("computed", True):
        return None
    return {"network": provenance["network"], "layer": provenance["layer"],
            "weights": provenance.get("weights", spec.get("weights")),
            "random_seed": provenance.get("random_seed", spec.get("random_seed")),
            "weights_sha256": provenance.get("weights_sha256"), "feature_set": names[0]}


def image_encoding_fits(encoding_dir: Path) -> tuple[dict[str, ImageEncodingFit],
                                                       dict[str, str]]:
    """The subject's encoding models that images can go through, and why others cannot.

    Parameters
    ----------
    encoding_dir : Path
        The encoding step's folder: ``models.json`` maps each fit to its model
        file, feature spec, ROI columns (of the sample matrix: the model's
        voxels) and space.

    Returns
    -------
    (dict of str to ImageEncodingFit, dict of str to str)
        Usable fits by ``desc``; the others with the reason.
    """
    from bids_affect.encoding import EncodingModel, check_rois

    encoding_dir = Path(encoding_dir)
    listing = encoding_dir / "models.json"
    if not listing.is_file():
        raise InputMissingError("the encoding step wrote no models.json", path=listing,
                                fix="rerun the encoding analysis of this subject")
    usable, skipped = {}, {}
    for desc, fit in read_json(listing).items():
        extractor = _extractor_spec(fit)
        if extractor is None:
            skipped[desc] = ("its features are not one image network's layer (movie frames "
                             "through --feature-network), so images cannot be encoded")
            continue
        model = EncodingModel.load(encoding_dir / fit["model"])
        n_voxels = model.weights.shape[1]
        rois = {}
        for name, columns in (fit.get("rois") or {}).items():
            columns = np.asarray(columns, dtype=int)
            if columns.size and (columns.min() < 0 or columns.max() >= n_voxels):
                raise InputDataError(f"fit {desc}: ROI {name!r} names columns outside the "
                                     f"model's {n_voxels} voxels", path=listing)
            mask = np.zeros(n_voxels, dtype=bool)
            mask[columns] = True
            rois[str(name)] = mask
        usable[desc] = ImageEncodingFit(desc, model, check_rois(rois or None, n_voxels),
                                        extractor, encoding_dir / fit["model"])
    return usable, skipped


def check_weights_unchanged(extractor: Mapping[str, Any], where: Path) -> None:
    """Refuse weights that changed since the encoding model's features were computed."""
    from bids_affect.models.image import file_sha256

    weights, expected = extractor["weights"], extractor.get("weights_sha256")
    if weights == "random" or not expected:
        return
    if not Path(weights).is_file():
        raise InputMissingError("the weights of the encoding model's features are gone",
                                path=weights, fix="restore the file the encoding used")
    if file_sha256(weights) != expected:
        raise InputDataError(f"the weights changed since the encoding model ({where.name}) "
                             "was fitted (SHA-256 differs)", path=weights,
                             fix="rerun the encoding analysis with these weights, or restore "
                                 "the file it used")


def image_extractor(extractor: Mapping[str, Any], *, device: str = "cpu",
                    batch_size: int = 16, num_threads: int | None = None):
    """The fitted :class:`~bids_affect.models.image.ImageFeatures` of an encoding model."""
    from bids_affect.models.image import ImageFeatures

    return ImageFeatures(extractor["network"], extractor["layer"],
                         weights=extractor["weights"], device=device, batch_size=batch_size,
                         num_threads=num_threads,
                         random_state=extractor.get("random_seed")).fit()


def raw_feature_encoder(model: EncodingModel) -> SimpleNamespace:
    """The encoding model as a linear map of raw image features (no HRF copies).

    A still image's features enter every HRF kernel block of the design
    (:meth:`~bids_affect.encoding.EncodingModel.design`); the design is linear
    in the features, so the whole prediction folds into one weight matrix
    ``D diag(1 / x_scale) W`` and intercept ``b - (x_mean / x_scale) W``, with
    ``D`` the design of the identity. The result has the attributes of a
    fitted linear encoder (``x_mean_``, ``x_scale_``, ``weights_``,
    ``intercept_``) that :func:`bids_affect.image_validation.roi_readout`
    turns into a differentiable ROI readout.

    Examples
    --------
    >>> from bids_affect.encoding import EncodingModel
    >>> model = EncodingModel("ridge", np.ones((4, 1), np.float32), np.ones(4), 2 * np.ones(4),
    ...                       np.zeros(1), band_sizes=[4], n_kernels=2)
    >>> encoder = raw_feature_encoder(model)
    >>> features = np.array([[1.0, 3.0]])
    >>> float((features @ encoder.weights_ + encoder.intercept_)[0, 0]), float(
    ...     model.predict(features)[0, 0])
    (2.0, 2.0)
    """
    n_raw = sum(size // model.n_kernels for size in model.band_sizes)
    design = model.design(np.eye(n_raw, dtype=np.float32)).astype(np.float64)
    weights = np.asarray(model.weights, dtype=np.float64)
    scale = np.asarray(model.x_scale, dtype=np.float64)
    mean = np.asarray(model.x_mean, dtype=np.float64)
    return SimpleNamespace(x_mean_=np.zeros(n_raw), x_scale_=np.ones(n_raw),
                           weights_=design @ (weights / scale[:, None]),
                           intercept_=np.asarray(model.intercept, np.float64)
                           - (mean / scale) @ weights)


def image_set_features(extractor, image_set: ImageSet, cache_dir: Path | None = None
                       ) -> np.ndarray:
    """An image set's features through an extractor, reused from ``cache_dir`` when known.

    Every subject whose encoding features come from the same network and
    weights needs the same image features: they are computed once per run's
    work directory. The key is the extractor's provenance (network, layer,
    weights checksum or seed, preprocessing) and each image's path, size and
    modification time.
    """
    import hashlib
    import json

    from bids_affect.image_validation import registry_image_features

    if cache_dir is None:
        return registry_image_features(extractor, image_set)
    files = [(str(path), path.stat().st_size, path.stat().st_mtime_ns)
             for path in image_set.paths]
    key = hashlib.sha256(json.dumps({"extractor": extractor.provenance(), "files": files},
                                    sort_keys=True, default=str).encode()).hexdigest()[:24]
    cached = Path(cache_dir) / f"imagefeatures_{key}.npy"
    if cached.is_file():
        return np.load(cached)
    features = registry_image_features(extractor, image_set)
    with deriv.atomic_path(cached) as tmp, open(tmp, "wb") as stream:
        np.save(stream, features)
    return features


# --------------------------------------------------------------------------- checks


def check_options(options: ImageValidationOptions, config: Config) -> None:
    """Parse-time checks: image sets given, readable, and rated (valence and arousal)."""
    if not analysis_wanted("image-validation", "participant", config):
        return
    selectivity = config.section("selectivity")
    check_image_set_names(selectivity.image_set, "image-validation")
    loaded = load_image_sets(selectivity.image_set, keep_unknown=True,
                             on_unreadable=selectivity.on_unreadable, min_per_category=1)
    for name, image_set in loaded.items():
        unrated = image_set.table[image_set.table[["valence", "arousal"]].isna().any(axis=1)]
        if len(unrated):
            shown = ", ".join(unrated["file"].head(5))
            raise InputDataError(
                f"--image-set {name}: {len(unrated)} image(s) lack valence or arousal "
                f"({shown}); image-validation regresses predicted responses on both",
                path=image_set.root, fix="give the set a ratings.tsv with valence and arousal "
                                         "for every image")


# --------------------------------------------------------------------------- steps


def _named(name: str, err: BidsAffectError) -> BidsAffectError:
    return type(err)(f"--image-set {name}: {err.problem}", path=err.path, fix=err.fix)


def image_validation_step(out_dir: Path, *, decoding_dirs: Sequence[Path],
                          image_sets: Mapping[str, str], loading: Mapping[str, Any],
                          settings: Mapping[str, Any], device: str = "cpu",
                          num_threads: int | None = None, cache_dir: str | None = None
                          ) -> None:
    """Predicted ROI responses to every image and their regression on the ratings.

    ``decoding_dirs`` holds the encoding step's folder. Per usable fit, writes
    ``DESC_responses.tsv`` (image set, image, valence, arousal, one column per
    ROI) and ``DESC_regression.tsv`` (per image set, ROI and term: coefficient,
    SE, t, p); ``validation.json`` says what was done and what was left out.
    ``cache_dir``: where image features are shared between subjects.
    """
    from bids_affect.image_sets import low_level_features
    from bids_affect.image_validation import rating_design, rating_regression

    (encoding_dir,) = decoding_dirs
    fits, skipped = image_encoding_fits(encoding_dir)
    if not fits:
        raise InputDataError("no encoding model of this subject reads image-network features "
                             f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})",
                             path=Path(encoding_dir) / "models.json",
                             fix="encode movie features (movies in events.tsv's stim_file, "
                                 "with --feature-network and --feature-weights)")
    loaded = load_image_sets(image_sets, keep_unknown=True,
                             on_unreadable=loading["on_unreadable"], min_per_category=1)
    designs = {}
    for name, image_set in loaded.items():
        try:
            covariates = (low_level_features(image_set, colour=settings["colour"])
                          if settings["covariates"] else None)
            designs[name] = rating_design(image_set.table, covariates,
                                          interaction=settings["interaction"])
        except BidsAffectError as err:
            raise _named(name, err) from None
    extractors: dict[tuple, Any] = {}
    about = {}
    for desc, fit in fits.items():
        check_weights_unchanged(fit.extractor, fit.path)
        key = tuple(str(fit.extractor[k]) for k in ("network", "layer", "weights",
                                                     "random_seed"))
        if key not in extractors:
            extractor = image_extractor(fit.extractor, device=device,
                                        batch_size=settings["batch_size"],
                                        num_threads=num_threads)
            extractors[key] = (extractor, {
                name: image_set_features(extractor, image_set, cache_dir)
                for name, image_set in loaded.items()})
        extractor, features = extractors[key]
        responses, regressions = [], []
        for name, image_set in loaded.items():
            predicted = fit.model.predict_rois(features[name], fit.rois)
            try:
                regressions.append(rating_regression(predicted, designs[name])
                                   .assign(image_set=name))
            except BidsAffectError as err:
                raise _named(name, err) from None
            table = image_set.table[["file", "valence", "arousal"]].rename(
                columns={"file": "image"}).reset_index(drop=True)
            responses.append(pd.concat([table.assign(image_set=name), predicted], axis=1))
        response_table = pd.concat(responses, ignore_index=True)
        deriv.write_tsv(out_dir / f"{desc}_responses.tsv", response_table[
            ["image_set", *[c for c in response_table.columns if c != "image_set"]]])
        regression = pd.concat(regressions, ignore_index=True)
        deriv.write_tsv(out_dir / f"{desc}_regression.tsv", regression[
            ["image_set", *[c for c in regression.columns if c != "image_set"]]])
        about[desc] = {"features": extractor.provenance(), "rois": {
            name: int(mask.sum()) for name, mask in fit.rois.items()},
            "design": list(designs[next(iter(designs))].columns[1:])}
    deriv.write_json(out_dir / "validation.json", {
        "fits": about, "skipped": skipped, "settings": dict(settings),
        "loading": dict(loading), "image_sets": describe_image_sets(loaded)})


def write_image_validation_step(out_dir: Path, *, decoding_dirs: Sequence[Path],
                                output_dir: str, subject: str, task: str,
                                runs: Sequence[Mapping[str, Any]],
                                provenance: Mapping[str, Any]) -> None:
    """Write each fit's predicted responses and rating regression."""
    (validation_dir,) = decoding_dirs
    info = read_json(Path(validation_dir) / "validation.json")
    inputs = [Path(about["path"]) / "ratings.tsv" for about in info["image_sets"].values()]
    for desc, about in info["fits"].items():
        common = dict(parameters={**info["settings"], "loading": info["loading"]},
                      sources=sources(provenance, inputs), Features=about["features"],
                      ROIVoxels=about["rois"], ImageSets=info["image_sets"],
                      SkippedModels=info["skipped"])
        names = dict(subject=subject, task=task, desc=deriv.desc_label(desc))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "image_responses", **names),
            Path(validation_dir) / f"{desc}_responses.tsv",
            deriv.sidecar(Description="Predicted response of each ROI (mean over its voxels "
                                      "of the encoding model's prediction) to each image, "
                                      "through the network, layer and weights of the model's "
                                      "features", **common))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "image_regression", **names),
            Path(validation_dir) / f"{desc}_regression.tsv",
            deriv.sidecar(Description="OLS (statsmodels) of each ROI's z-scored predicted "
                                      "response on the z-scored regressors (valence, arousal, "
                                      "their interaction, low-level covariates), per image "
                                      "set: standardised coefficients with SE, t and p",
                          Regressors=about["design"], **common))


def group_image_validation_step(out_dir: Path, *, output_dir: str,
                                participant_label: Sequence[str] | None,
                                provenance: Mapping[str, Any]) -> None:
    """Test every coefficient across subjects (one-sample t, Cohen's d), per task and fit.

    A subject with several sessions contributes the mean of its sessions'
    coefficients. A coefficient of fewer than 2 subjects has no test (its row
    is left out, with a warning).
    """
    import logging

    from bids_affect.image_validation import group_coefficient_tests

    found = participant_outputs(
        output_dir, "image_regression", participant_label,
        what="image-validation outputs (sub-*/func/*_imageregression.tsv)",
        analyses="encoding,image-validation")
    resolver = deriv.SourceResolver({"": Path(output_dir)})
    for (task, desc), items in by_task_and_desc(found):
        per_subject = pd.concat([
            pd.read_csv(item.path, sep="\t").assign(
                participant_id=f"sub-{item.entities['subject']}")
            for item in items], ignore_index=True)
        keys = ["participant_id", "image_set", "roi", "term"]
        per_subject = per_subject.groupby(keys, sort=False, as_index=False)["coef"].mean()
        counts = per_subject.groupby(["image_set", "roi", "term"])["participant_id"].nunique()
        few = counts[counts < 2]
        if len(few):
            logging.getLogger("bids_affect.steps").warning(
                "image-validation task-%s desc-%s: %d coefficient(s) have fewer than 2 "
                "subjects and no group test.", task, desc, len(few))
        eligible = per_subject.merge(counts.rename("n_subjects").reset_index(),
                                     on=["image_set", "roi", "term"])
        eligible = eligible[eligible["n_subjects"] >= 2].drop(columns="n_subjects")
        tested = [group_coefficient_tests(rows).assign(image_set=image_set)
                  for image_set, rows in eligible.groupby("image_set", sort=False)]
        if not tested:
            continue
        table = pd.concat(tested, ignore_index=True)
        table = table[["image_set", *[c for c in table.columns if c != "image_set"]]]
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "group_image_regression", task=task, desc=desc),
            table, deriv.sidecar(
                Description="Each rating coefficient of the predicted ROI responses tested "
                            "across subjects: one-sample t-test against 0 (two-sided) and "
                            "Cohen's d = mean / SD (seed 000)",
                sources=[resolver.uri(item.path) for item in items]))


# --------------------------------------------------------------------------- wiring


def wire(builder: ParticipantWorkflow, options: ImageValidationOptions) -> None:
    """The subject's validation node, reading its encoding models, and its sink."""
    from bids_affect.steps.encoding import encoding_node
    from bids_affect.steps.selectivity import loading_settings

    selectivity = builder.options["selectivity"]
    paths = {name: str(path) for name, path in selectivity.image_set.items()}
    node = builder.node(image_validation_step, "imagevalidation", {
        "image_sets": paths, "loading": loading_settings(selectivity),
        "settings": validation_settings(options), "device": builder.shared.device,
        "num_threads": builder.shared.num_threads,
        "cache_dir": getattr(builder, "cache_dir", None)}, in_files=image_set_files(paths))
    sink = builder.sink(write_image_validation_step, "ds_imagevalidation")
    builder.wf.connect([(encoding_node(builder), node, [("out_dir", "decoding_dirs")]),
                        (node, sink, [("out_dir", "decoding_dirs")])])


def wire_group(builder: GroupWorkflow, options: ImageValidationOptions) -> None:
    """The group tests of the subjects' coefficients."""
    builder.node(group_image_validation_step, "imagevalidation", dict(builder.common),
                 sink=True)


def methods(config: Config) -> str:
    """The image-validation paragraph of the methods boilerplate (seed 000).

    Examples
    --------
    >>> from bids_affect.config import Config
    >>> "Cohen's d" in methods(Config())
    True
    """
    options = config.section("image-validation")
    terms = "valence, arousal" + (" and their interaction" if options.interaction else "")
    colour = "mean colour" if options.colour == "rgb" else "mean luminance"
    covariates = (f", controlling for {colour} and spatial-frequency energy in four bands"
                  if options.covariates else "")
    return (f"Each subject's encoding models were validated on the affective image sets "
            f"given (Jang & Kragel): every image went through the same network, layer and "
            f"weights as the model's features, and each ROI's predicted response (the mean "
            f"prediction over its voxels) was regressed on {terms}{covariates} by ordinary "
            f"least squares (statsmodels) on z-scored variables; each standardised "
            f"coefficient was tested across subjects with a one-sample t-test and Cohen's d.")
