"""The encoding analysis: options, the feature, encoding and write steps, and their wiring.

Each subject gets an ``encoding`` node: stimulus features for every run
(BIDS ``recording-NAME_stim`` files, ``--stimulus-features`` files, or movies
named in events.tsv's ``stim_file`` passed through an image CNN), convolved
with the HRF and fitted to the subject's cleaned BOLD samples by the encoding
models of ``--encoding-models`` (:func:`bids_affect.encoding.encode`).
Cross-validation follows the decoding options (``--cv``, ``--cv-folds``,
``--cv-gap``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_affect._utils import converters
from bids_affect.config import option, section
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import (
    cleaning_parameters,
    data_space,
    read_json,
    records,
    run_entities,
    sources,
)

if TYPE_CHECKING:
    from nipype.pipeline import engine as pe

    from bids_affect.workflows.participant import ParticipantWorkflow

LOGGER = logging.getLogger("bids_affect.encoding")


def _encoders() -> list[str]:
    from bids_affect.encoding import list_encoders

    return list_encoders()


def _image_networks() -> list[str]:
    from bids_affect.models.image import list_image_networks

    return list(list_image_networks())


def _hrf_models() -> tuple[str, ...]:
    from bids_affect.encoding import HRF_MODELS

    return HRF_MODELS


@section("Encoding", "encoding")
class EncodingOptions:
    """Settings of the encoding models and of the stimulus features (``[encoding]``)."""

    models: list[str] = option(
        default_factory=lambda: ["ridge"], flags=("--encoding-models",),
        type=converters.comma_list, metavar="LIST", choices=_encoders,
        help="comma-separated encoding models")
    feature_sets: list[str] | None = option(
        None, type=converters.comma_list, metavar="LIST",
        default_text="every recording-NAME_stim feature set of the runs, and the movies",
        help="feature sets to encode from (their recording-NAME labels)")
    stimulus_features: dict[str, Path] = option(
        default_factory=dict, nargs="+", action="extend", type=converters.name_path,
        metavar="NAME=PATH",
        default_text="none",
        help="features of your own: a TSV (with header) or NPY per run, rows sampled from "
             "the run's start; PATH may hold {subject}, {session}, {task}, {run} "
             "(see docs/encoding.md)")
    feature_network: str = option("alexnet", choices=_image_networks,
                                  help="image CNN that turns movie frames into features")
    feature_layer: str = option("fc7", metavar="LAYER",
                                help="layer of --feature-network whose activations are the "
                                     "features (conv layers spatially averaged)")
    feature_weights: str | None = option(
        None, metavar="PATH|random", default_text="none: needed for movies",
        help="weights of --feature-network: a local state-dict file (torchvision parameter "
             "names), or 'random' for a randomly initialised network (recorded as such)")
    frame_step: int = option(5, type=converters.positive_int, metavar="N",
                             help="every Nth movie frame goes through the network (seed 000)")
    hrf: str = option("spm", choices=_hrf_models,
                      help="haemodynamic model of the features: SPM or Glover canonical HRF, "
                           "or FIR delays of 2-8 s")
    permutations: int = option(
        1000, flags=("--encoding-permutations",), type=converters.non_negative_int,
        metavar="N", parameters=("n_permutations",),
        help="circular shifts of each run's BOLD against its features in the null")
    pls_components: int = option(20, type=converters.positive_int, metavar="K",
                                 parameters=("n_components",),
                                 help="components of the pls encoding model (seed 000)")


def encoding_settings(options: EncodingOptions, decoding: Any, roi_atlas: str | None
                      ) -> dict[str, Any]:
    """The settings the feature and encoding steps receive (and sidecars record).

    Cross-validation follows the decoding options (one ``--cv`` for the app).
    """
    return {"models": list(options.models), "feature_sets": options.feature_sets,
            "stimulus_features": {name: str(path)
                                  for name, path in options.stimulus_features.items()},
            "feature_network": options.feature_network, "feature_layer": options.feature_layer,
            "feature_weights": options.feature_weights, "frame_step": options.frame_step,
            "hrf": options.hrf, "n_permutations": options.permutations,
            "pls_components": options.pls_components, "cv": decoding.cv,
            "n_splits": decoding.cv_folds, "gap": decoding.cv_gap, "roi_atlas": roi_atlas}


def check_options(options: EncodingOptions, config: Any) -> None:
    """Parse-time checks: the feature layer exists, the weights file exists, names are labels."""
    from bids_affect.exceptions import UsageError
    from bids_affect.features import check_recording_name
    from bids_affect.models.image import layer_module

    if {"encoding", "image-validation", "synthesis"} & set(config.analysis.analyses):
        layer_module(options.feature_network, options.feature_layer)
    weights = options.feature_weights
    if weights is not None and weights != "random" and not Path(weights).is_file():
        raise UsageError(f"--feature-weights {weights}: no such file",
                         fix="give a local state-dict file (.pth, .pt) of --feature-network, "
                             "or 'random' for a randomly initialised network")
    for name in [*(options.feature_sets or []), *options.stimulus_features]:
        check_recording_name(name)
    if "banded-ridge" in options.models and options.feature_sets is not None and \
            len(options.feature_sets) < 2:
        raise UsageError("--encoding-models banded-ridge fits several feature sets at once, "
                         f"and --feature-sets names {len(options.feature_sets)}",
                         fix="name two or more feature sets, or leave --feature-sets out")


# --------------------------------------------------------------------------- features

#: Folder of the work directory where movie features are kept for reuse (all subjects).
FEATURE_CACHE = "feature_cache"


def _extractor(settings: Mapping[str, Any], seed: int, device: str,
               num_threads: int | None):
    """The image network of the movie features (built once per step)."""
    from bids_affect.exceptions import UsageError
    from bids_affect.models.image import ImageFeatures

    if settings["feature_weights"] is None:
        raise UsageError("the runs' events.tsv name movies (stim_file), and their features "
                         "need the weights of --feature-network", path="feature_weights",
                         fix="give --feature-weights PATH (a state-dict file) or "
                             "--feature-weights random (an untrained network, recorded as "
                             "such)")
    return ImageFeatures(settings["feature_network"], settings["feature_layer"],
                         weights=settings["feature_weights"], device=device,
                         num_threads=num_threads, random_state=seed).fit()


def _movie_cache_key(events: Path, stimuli_dir: Path, provenance: Mapping[str, Any],
                     frame_step: int) -> str:
    """The cache key of a run's movie features: movies shown, network, frame step.

    The movies are their files, onsets and durations, not the rest of the events,
    so subjects who saw the same movies share the features.
    """
    import hashlib

    from bids_affect.features import find_movie_events

    digest = hashlib.sha256()
    for event in find_movie_events(events, stimuli_dir):
        stat = Path(event.path).stat()
        digest.update(f"{event.path}|{stat.st_size}|{stat.st_mtime_ns}|{event.onset}|"
                      f"{event.duration}".encode())
    digest.update(json.dumps({"extractor": provenance, "frame_step": frame_step},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _movie_features(run, settings: Mapping[str, Any], stimuli_dir: Path, extractor,
                    cache_dir: Path | None):
    """A run's movie features, from the work directory's cache when computed already."""
    from bids_affect.features import FeatureSet, feature_set_name, movie_features_for_run

    name = feature_set_name(settings["feature_network"], settings["feature_layer"])
    cached = None
    if cache_dir is not None:
        key = _movie_cache_key(run.events, stimuli_dir, extractor.provenance(),
                               settings["frame_step"])
        cached = Path(cache_dir) / f"{name}_{key}.npz"
        if cached.is_file():
            # Another run that showed the same movies computed them: its events file is
            # named in the provenance, so this run's takes its place.
            features = FeatureSet.load(cached)
            provenance = dict(features.provenance)
            if provenance.get("source") == provenance.get("events"):  # several movies
                provenance["source"] = str(run.events)
            provenance["events"] = str(run.events)
            return dataclasses.replace(features, provenance=provenance)
    features = movie_features_for_run(run.events, stimuli_dir, extractor, name=name,
                                      frame_step=settings["frame_step"], tr=run.tr,
                                      n_volumes=run.n_volumes, start_time=run.start_time)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        features.save(cached)
    return features


def _run_has_movies(run, stimuli_dir: Path) -> bool:
    from bids_affect.features import find_movie_events

    try:
        return bool(find_movie_events(run.events, stimuli_dir))
    except Exception:  # a missing movie is reported when its features are computed
        return True


def run_features(run, settings: Mapping[str, Any], stimuli_dir: Path, extractor_factory,
                 cache_dir: Path | None = None) -> dict[str, Any]:
    """Every feature set of one run, by name: recordings, user files and movies.

    Parameters
    ----------
    run : RunRecord
        The run (its ``stim_recordings`` and ``events``).
    settings : mapping
        :func:`encoding_settings`.
    stimuli_dir : Path
        ``bids_dir/stimuli``, where ``stim_file`` paths point.
    extractor_factory : callable
        Returns the image network of movie features (built only when a run has movies).
    cache_dir : Path, optional
        Where movie features are kept for reuse.
    """
    from bids_affect.features import (
        expand_feature_path,
        feature_set_name,
        read_feature_file,
        read_stim_recording,
    )

    found: dict[str, Any] = {}
    for name, recording in run.stim_recordings.items():
        found[name] = read_stim_recording(recording["path"], recording["metadata"])
    for name, template in settings["stimulus_features"].items():
        found[name] = read_feature_file(expand_feature_path(template, {
            **run.entities, "subject": run.subject, "session": run.session,
            "task": run.task, "run": run.run}), name)
    movie_name = feature_set_name(settings["feature_network"], settings["feature_layer"])
    named = settings["feature_sets"] is not None and movie_name in settings["feature_sets"]
    found_by_itself = settings["feature_sets"] is None
    if (named or found_by_itself) and movie_name not in found and run.events is not None \
            and _run_has_movies(run, stimuli_dir):
        if settings["feature_weights"] is None and found_by_itself and found:
            LOGGER.warning("sub-%s %s: the movies its events.tsv names are not encoded (no "
                           "--feature-weights); its other feature sets are (%s).", run.subject,
                           run.key, ", ".join(found))
        else:
            found[movie_name] = _movie_features(run, settings, stimuli_dir,
                                                extractor_factory(), cache_dir)
    return found


def features_step(out_dir: Path, *, runs: Sequence[Mapping[str, Any]],
                  settings: Mapping[str, Any], bids_dir: str, seed: int,
                  cache_dir: str | None = None, device: str = "auto",
                  num_threads: int | None = None) -> None:
    """Each run's stimulus features (``RUN_NAME.npz``) and ``features.json``.

    Feature sets are those every run has (or those ``feature_sets`` names);
    a set missing from a run, or no set at all, is an error naming the run.
    """
    from bids_affect.exceptions import InputMissingError

    run_records = records(runs)
    extractor: list[Any] = []

    def extractor_factory():
        if not extractor:
            extractor.append(_extractor(settings, seed, device, num_threads))
        return extractor[0]

    stimuli = Path(bids_dir) / "stimuli"
    per_run = {run.key: run_features(run, settings, stimuli, extractor_factory,
                                     Path(cache_dir) if cache_dir else None)
               for run in run_records}
    wanted = settings["feature_sets"] or sorted(set.intersection(
        *(set(found) for found in per_run.values())))
    for run in run_records:
        missing = [name for name in wanted if name not in per_run[run.key]]
        if missing or not wanted:
            raise InputMissingError(
                f"sub-{run.subject} {run.key} has no stimulus features "
                f"{', '.join(missing) or ''}(found: {', '.join(per_run[run.key]) or 'none'})",
                path=run.raw_bold,
                fix="add recording-NAME_stim.tsv.gz files, --stimulus-features NAME=PATH, or "
                    "movies in events.tsv's stim_file column (with --feature-weights)")
    about = {}
    for name in wanted:
        for run in run_records:
            per_run[run.key][name].save(out_dir / f"{run.key}_{name}.npz")
        provenances = [dict(per_run[run.key][name].provenance) for run in run_records]
        first = per_run[run_records[0].key][name]
        # What every run shares (the extractor, say); each run's own is in its file.
        about[name] = {"columns": list(first.columns or []),
                       "n_features": int(first.n_features),
                       "provenance": {key: value for key, value in provenances[0].items()
                                      if all(p.get(key) == value for p in provenances)},
                       "computed": all(name not in run.stim_recordings
                                       for run in run_records)
                       and name not in settings["stimulus_features"]}
    deriv.write_json(out_dir / "features.json", {"feature_sets": wanted, "sets": about,
                                                 "runs": [run.key for run in run_records]})


def read_features(features_dir: Path, run_keys: Sequence[str], name: str) -> list[Any]:
    """The feature set ``name`` of each run, as written by :func:`features_step`."""
    from bids_affect.features import FeatureSet

    return [FeatureSet.load(Path(features_dir) / f"{key}_{name}.npz") for key in run_keys]


# --------------------------------------------------------------------------- encoding

#: ROIs of the encoding default in MNI spaces (seed 000): the amygdala and its
#: centromedial, laterobasal and superficial groups (FSL's Harvard-Oxford and Juelich
#: atlases, offline). AStr has no offline atlas, so it is not among them.
DEFAULT_ROI_ATLASES = ("harvard_oxford:amygdala", "juelich")


def encoding_rois(mask_img, roi_atlas: str | None, space: str | None
                  ) -> tuple[dict[str, np.ndarray], str]:
    """ROI columns of the sample matrix for encoding, and a note on where they come from.

    ``--roi-atlas`` when given (errors as for RSA). Otherwise, in an MNI space,
    the amygdala and its subregions (an ROI without a voxel on this grid is left
    out with a warning); in native space none (whole-mask maps only).
    """
    from bids_affect.atlases import is_standard_space, roi_columns
    from bids_affect.exceptions import InputDataError

    if roi_atlas:
        return roi_columns(mask_img, roi_atlas, space), f"--roi-atlas {roi_atlas}"
    if not is_standard_space(space):
        return {}, ("the data are in native space: no offline atlas applies, so there is no "
                    "ROI (voxelwise maps over the whole mask only)")
    columns: dict[str, np.ndarray] = {}
    for atlas in DEFAULT_ROI_ATLASES:
        try:
            columns.update(roi_columns(mask_img, atlas, space))
        except InputDataError as err:
            LOGGER.warning("Encoding ROIs: %s; the default ROIs leave it out.", err.problem)
            found = _non_empty_rois(mask_img, atlas, space)
            columns.update(found)
    return columns, ("default: the amygdala (Harvard-Oxford) and its centromedial, "
                     "laterobasal and superficial groups (Juelich); AStr has no offline "
                     "atlas")


def _non_empty_rois(mask_img, atlas: str, space: str | None) -> dict[str, np.ndarray]:
    from bids_affect.atlases import parse_roi_atlas, roi_atlas_masks

    inside = np.asarray(mask_img.dataobj) > 0
    masks = roi_atlas_masks(parse_roi_atlas(atlas), mask_img.affine, inside.shape, space=space)
    return {roi: np.flatnonzero(mask[inside]) for roi, mask in masks.items()
            if mask[inside].any()}


def output_names(feature_sets: Sequence[str], models: Sequence[str]) -> list[dict[str, Any]]:
    """The fits of a subject: which features, which model, and the ``desc`` of their outputs.

    Each feature set alone with each model except banded ridge, which fits all
    the sets at once; the model's name is appended to ``desc`` when several
    models run (the default model alone keeps the bare feature-set name).

    Examples
    --------
    >>> [fit["desc"] for fit in output_names(["alexnetfc7", "lum"], ["ridge", "banded-ridge"])]
    ['alexnetfc7ridge', 'lumridge', 'alexnetfc7lumbandedridge']
    """
    fits = []
    for model in models:
        suffix = deriv.desc_label(model) if len(models) > 1 else ""
        if model == "banded-ridge":
            fits.append({"features": list(feature_sets), "model": model,
                         "desc": "".join(feature_sets) + suffix})
        else:
            fits.extend({"features": [name], "model": model, "desc": name + suffix}
                        for name in feature_sets)
    return fits


def encode_step(out_dir: Path, *, samples_dir: Path, decoding_dirs: Sequence[Path],
                settings: Mapping[str, Any], seed: int, n_jobs: int = 1) -> None:
    """Encoding models of every feature set: per-voxel arrays, ROI tables, models.

    ``decoding_dirs`` holds the features step's folder. Writes per fit
    ``DESC_{r,rsquared,p,pfwe}.npy``, ``DESC_roi.tsv``, ``DESC_encoder.npz`` and
    ``models.json`` (what the fits are, for the sink and for analyses that use
    the models).
    """
    from bids_affect.bold import SampleSet
    from bids_affect.encoding import encode
    from bids_affect.exceptions import InputDataError

    (features_dir,) = decoding_dirs
    samples = SampleSet.load(samples_dir)
    runs = samples.manifest["runs"]
    timing = {(float(run["tr"]), float(run.get("start_time") or 0.0)) for run in runs}
    if len(timing) > 1:
        raise InputDataError(f"the runs of sub-{runs[0]['subject']} have different TRs or "
                             f"StartTimes ({sorted(timing)}); one encoding model needs one "
                             "clock", fix="select runs of one acquisition with --task-id or "
                                          "a filter file")
    (tr, start_time), = timing
    about = read_json(Path(features_dir) / "features.json")
    keys = [run["key"] for run in runs]
    bold = [np.asarray(samples.X[run["first_row"]:run["first_row"] + run["n_volumes"]])
            for run in runs]
    space = data_space(samples)
    columns, rois_note = encoding_rois(samples.mask_img, settings.get("roi_atlas"), space)
    masks = {name: np.isin(np.arange(samples.X.shape[1]), cols) for name, cols in
             columns.items()} or None
    fits = {}
    for fit in output_names(about["feature_sets"], settings["models"]):
        features = {name: read_features(features_dir, keys, name) for name in fit["features"]}
        spec = {"feature_sets": fit["features"],
                "sets": {name: about["sets"][name] for name in fit["features"]},
                "network": settings["feature_network"], "layer": settings["feature_layer"],
                "weights": settings["feature_weights"], "frame_step": settings["frame_step"]}
        result = encode(features if fit["model"] == "banded-ridge"
                        else features[fit["features"][0]], bold, tr, model=fit["model"],
                        model_params=({"n_components": settings["pls_components"]}
                                      if fit["model"] == "pls" else None),
                        hrf=settings["hrf"], start_time=start_time, cv=settings["cv"],
                        n_splits=settings["n_splits"], gap=settings["gap"],
                        n_permutations=settings["n_permutations"], n_jobs=n_jobs, rois=masks,
                        run_labels=keys, feature_spec=spec, random_state=seed)
        desc = fit["desc"]
        for stat, values in (("r", result.r), ("rsquared", result.r2), ("p", result.p),
                             ("pfwe", result.p_fwe)):
            if values is not None:
                np.save(out_dir / f"{desc}_{stat}.npy", np.asarray(values, np.float32))
        deriv.write_tsv(out_dir / f"{desc}_roi.tsv", result.roi_table)
        result.final_model.save(out_dir / f"{desc}_encoder.npz")
        deriv.write_json(out_dir / f"{desc}_encoding.json", result.metrics)
        fits[desc] = {"model": f"{desc}_encoder.npz", "encoder": fit["model"],
                      "features": fit["features"], "feature_spec": spec,
                      "rois": {name: cols.tolist() for name, cols in columns.items()},
                      "rois_note": rois_note, "space": space, "mask": "mask.nii.gz"}
    samples.mask_img.to_filename(out_dir / "mask.nii.gz")
    deriv.write_json(out_dir / "models.json", fits)
    deriv.write_json(out_dir / "encoding.json", {"settings": dict(settings), "seed": seed,
                                                 "fits": list(fits)})


def _statmap(values: np.ndarray, mask_img) -> Any:
    """One value per mask voxel, as an image on the mask's grid (0 outside)."""
    import nibabel as nib

    inside = np.asarray(mask_img.dataobj) > 0
    data = np.zeros(inside.shape, np.float32)
    data[inside] = values
    return nib.Nifti1Image(data, mask_img.affine)


#: What each statmap of an encoding model holds.
STATMAP_DESCRIPTIONS = {
    "r": "Pearson r of held-out predicted and observed responses, mean over folds",
    "rsquared": "R2 of held-out predictions (1 - residual / total sum of squares), mean over "
                "folds; negative when the prediction is worse than the held-out mean",
    "p": "Permutation p of r (circular shifts of each run's BOLD against its features)",
    "pfwe": "Family-wise corrected p of r (maximum statistic over the voxels of the mask)",
}


def write_encoding_step(out_dir: Path, *, decoding_dirs: Sequence[Path], samples_dir: Path,
                        output_dir: str, subject: str, task: str,
                        runs: Sequence[Mapping[str, Any]],
                        provenance: Mapping[str, Any]) -> None:
    """Write the statmaps, ROI tables, encoding.json and models; the computed features."""
    import nibabel as nib

    encoding_dir, features_dir = decoding_dirs
    info = read_json(Path(encoding_dir) / "encoding.json")
    fits = read_json(Path(encoding_dir) / "models.json")
    settings = info["settings"]
    mask_img = nib.load(Path(encoding_dir) / "mask.nii.gz")
    run_records = records(runs)
    bold_sources = sources(provenance, [run.bold for run in run_records])
    common = dict(parameters={**{k: v for k, v in settings.items() if k != "models"},
                              "cleaning": cleaning_parameters(samples_dir)},
                  seed=info["seed"], sources=bold_sources)
    for desc, fit in fits.items():
        names = dict(subject=subject, task=task, desc=desc)
        about = dict(EncodingModel=fit["encoder"], FeatureSets=fit["features"],
                     Features=fit["feature_spec"], ROIs=fit["rois_note"])
        for stat, description in STATMAP_DESCRIPTIONS.items():
            array = Path(encoding_dir) / f"{desc}_{stat}.npy"
            if array.exists():
                deriv.write_with_sidecar(
                    deriv.output_path(output_dir, "encoding_map", space=fit["space"],
                                      stat=stat, **names),
                    _statmap(np.load(array), mask_img),
                    deriv.sidecar(Description=description, **about, **common))
        deriv.write_with_sidecar(
            deriv.output_path(output_dir, "encoding_roi", **names),
            Path(encoding_dir) / f"{desc}_roi.tsv",
            deriv.sidecar(Description="Encoding scores per ROI: mean r and R2 of its voxels, "
                                      "their permutation p and null band, and the mean r of "
                                      "the leaky random 5-fold split (audit)", **about,
                          **common))
        metrics = read_json(Path(encoding_dir) / f"{desc}_encoding.json")
        deriv.write_json(deriv.output_path(output_dir, "encoding", **names),
                         {**metrics, **about, **deriv.sidecar(**common)})
        model_path = deriv.output_path(output_dir, "encoding_model", **names)
        deriv.write_json(deriv.sidecar_path(model_path), deriv.sidecar(
            Description="The encoding model refitted on all runs (weights, feature means and "
                        "scales, alphas, HRF and feature extractor); "
                        "bids_affect.encoding.EncodingModel.load reads it", **about, **common))
        deriv.copy_file(Path(encoding_dir) / fit["model"], model_path)
    _write_computed_features(features_dir, output_dir, subject, task, run_records, provenance)


def _write_computed_features(features_dir: Path, output_dir: str, subject: str, task: str,
                             run_records: Sequence[Any], provenance: Mapping[str, Any]) -> None:
    """Movie features computed by the app, as BIDS stim recordings (for reuse and sharing)."""
    from bids_affect.features import write_stim_recording

    about = read_json(Path(features_dir) / "features.json")
    for name, details in about["sets"].items():
        if not details["computed"]:
            continue
        for run, features in zip(run_records, read_features(features_dir, about["runs"], name)):
            path = deriv.output_path(output_dir, "stim_recording", subject=subject, task=task,
                                     recording=name, **run_entities(run))
            extractor = details["provenance"].get("extractor", {})
            write_stim_recording(features, path, metadata=deriv.sidecar(
                Description=f"Features of the movie(s) of this run through "
                            f"{extractor.get('network')} {extractor.get('layer')} "
                            f"({extractor.get('weights')} weights), on the run's clock",
                sources=sources(provenance, [run.events])))


# --------------------------------------------------------------------------- wiring


def encoding_node(builder: ParticipantWorkflow) -> pe.Node:
    """The subject's encoding node (features, fits, sink), made once whoever asks.

    Its result folder holds ``models.json``: per fit (``desc``), the model file
    (:meth:`bids_affect.encoding.EncodingModel.load`), its feature spec, the
    ROI columns and the space; analyses that use the models read it.
    """
    def make() -> pe.Node:
        settings = encoding_settings(builder.options["encoding"], builder.options["decoding"],
                                     builder.shared.roi_atlas)
        feature_files = sorted({recording["path"] for run in builder.common["runs"]
                                for recording in run.get("stim_recordings", {}).values()})
        features = builder.node(features_step, "features", {
            "runs": builder.common["runs"], "settings": settings,
            "bids_dir": builder.bids_dir, "seed": builder.seed("features"),
            "cache_dir": builder.cache_dir, "device": builder.shared.device,
            "num_threads": builder.shared.num_threads}, in_files=feature_files)
        # Movies are not node inputs nipype hashes: the step reruns, reusing its cache.
        features.overwrite = True
        encode_node = builder.node(encode_step, "encode", {
            "settings": settings, "seed": builder.seed("encoding"), "n_jobs": builder.n_jobs})
        sink = builder.sink(write_encoding_step, "ds_encoding")
        merge = builder.merge("merge_encoding", [encode_node, features])
        builder.wf.connect([(builder.samples, encode_node, [("out_dir", "samples_dir")]),
                            (features, encode_node, [("out_dir", "decoding_dirs")]),
                            (merge, sink, [("out", "decoding_dirs")]),
                            (builder.samples, sink, [("out_dir", "samples_dir")])])
        builder.expose("encoding_dir", encode_node)
        return encode_node

    return builder.shared_node(("encoding",), make)


def wire(builder: ParticipantWorkflow, options: EncodingOptions) -> None:
    """Features, encoding models and their sink for the subject."""
    encoding_node(builder)


def methods(config: Any) -> str:
    """The encoding paragraph of the methods boilerplate."""
    options = config.section("encoding")
    models = ", ".join(options.models)
    pls = (f" (PLS with {options.pls_components} components)" if "pls" in options.models
           else "")
    return (f"Voxelwise encoding models ({models}{pls}) predicted each voxel's response from "
            f"stimulus features (BIDS stimulus recordings, or movie frames, every "
            f"{options.frame_step}th, through {options.feature_network} {options.feature_layer} "
            f"averaged per volume) convolved with the {options.hrf.upper()} haemodynamic "
            f"response; features were z-scored on the training runs only, and scores (Pearson "
            f"r and R2 of held-out predictions) were cross-validated by run. Each score's null "
            f"came from {options.permutations:,} circular shifts of each run's BOLD against its "
            f"features, giving voxelwise, family-wise corrected and ROI-mean p-values; the "
            f"leaky random 5-fold split of seed 000's code is reported beside it as an audit.")
