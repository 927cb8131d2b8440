"""Group parts of occlusion, encoding and RSA: statistics across the subjects' derivatives.

These group parts read the participant level's outputs only (no samples, no
participant step runs again). Each is wired by its analysis's ``wire_group``
when the analysis is asked at the group level:

``occlusion`` (:func:`wire_group_occlusion`)
    Per task, decoder and standard space: a group map per class of the
    subjects' occlusion maps (:func:`bids_affect.stats.group_ttest_map`, FDR;
    or :func:`~bids_affect.stats.group_permutation_map`, sign flips and max-t
    FWE; ``--group-inference``), thresholded maps and cluster tables with
    atlas labels; the consensus top voxels (how many subjects put each voxel
    in their ``--top-k``, :func:`~bids_affect.stats.consensus_top_voxels`) with
    atlas labels; the group UMAP of consensus voxels.
``encoding`` (:func:`wire_group_encoding`)
    Per task and feature set: the group map of the subjects' r maps (Fisher
    z), and the mixed model ``r ~ region + (1 | subject)`` of their ROI tables
    (:func:`~bids_affect.stats.region_mixed_model`).
``rsa`` (:func:`wire_group_rsa`)
    Per task: each RDM comparison's per-subject r tested by sign flips
    (:func:`~bids_affect.stats.group_rsa`, FDR across comparisons), and the
    group-mean RDMs (:func:`~bids_affect.stats.group_mean_rdms`).

Native spaces. Voxels of subjects' native spaces do not correspond (seed 003
averaged such occlusion maps), so group maps and consensus voxels use maps in
a standard space (``space-MNI152...``) only. Native-space maps beside
standard-space ones are left out with a warning naming them; when they are
all an asked group part has (occlusion maps, or encoding maps without ROI
tables), the group level stops with exit 65 naming them. The encoding mixed
model reads ROI means, which correspond across subjects in any space.

Missing outputs: an analysis asked at the group level without any of its
participant outputs stops the group level with exit 66 naming what is
missing; subjects lacking some output are left out of that output's group
statistics (each sidecar lists the subjects used).

Each group part has a step (``group_PART_...``: computes, writes work files
and a list of the outputs it made) and one shared sink
(:func:`write_group_outputs_step`) that writes them as derivatives with sidecars.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_affect.exceptions import InputDataError, InputMissingError
from bids_affect.io import derivatives as deriv
from bids_affect.steps._outputs import read_json
from bids_affect.steps.group import GroupOptions, group_options, warn_other_versions
from bids_affect.steps.group_decoding import described

if TYPE_CHECKING:
    from bids_affect.io.derivatives import FoundOutput
    from bids_affect.workflows.group import GroupWorkflow

LOGGER = logging.getLogger("bids_affect.group")

#: The list of outputs a group step made, read by :func:`write_group_outputs_step`.
RECORD_FILE = "outputs.json"

#: Atlas naming cluster peaks and consensus voxels (maps in an MNI152 space).
ATLAS = "harvard_oxford"


def map_settings(options: GroupOptions) -> dict[str, Any]:
    """The settings of group maps (``[group]``), as steps receive and sidecars record them.

    Examples
    --------
    >>> map_settings(GroupOptions())["inference"]
    'parametric'
    """
    return {"inference": options.inference, "alpha": options.alpha,
            "n_permutations": options.permutations,
            "cluster_threshold": options.cluster_threshold,
            "consensus_min_subjects": options.consensus_min_subjects}


# --------------------------------------------------------------------------- finding inputs


def selected(output_dir: Path, kind: str, participant_label: Sequence[str] | None,
             **entities: str) -> list[FoundOutput]:
    """Participant outputs of ``kind`` of the selected subjects with these entities.

    Examples
    --------
    >>> import tempfile
    >>> selected(Path(tempfile.mkdtemp()), "encoding_roi", None)
    []
    """
    return [item for item in deriv.find_outputs(output_dir, kind)
            if (not participant_label or item.entities["subject"] in participant_label)
            and all(item.entities.get(key) == value for key, value in entities.items())]


def split_spaces(items: Sequence[FoundOutput]) -> tuple[list[FoundOutput], list[FoundOutput]]:
    """Maps in a standard space, and the others (native: no ``space`` or a non-MNI one).

    Examples
    --------
    >>> from bids_affect.io.derivatives import FoundOutput
    >>> items = [FoundOutput(Path("a"), {"space": "MNI152NLin2009cAsym"}),
    ...          FoundOutput(Path("b"), {"space": "T1w"}), FoundOutput(Path("c"), {})]
    >>> [[i.path.name for i in part] for part in split_spaces(items)]
    [['a'], ['b', 'c']]
    """
    from bids_affect.atlases import is_standard_space

    standard = [item for item in items if is_standard_space(item.entities.get("space"))]
    return standard, [item for item in items if item not in standard]


def _native_names(items: Sequence[FoundOutput]) -> str:
    shown = ", ".join(f"{item.path.name} ({item.entities.get('space', 'no space: raw BOLD')})"
                      for item in items[:3])
    return shown + (f" and {len(items) - 3} more" if len(items) > 3 else "")


def refuse_or_warn_native(native: Sequence[FoundOutput], usable: bool, what: str) -> None:
    """Say why native-space maps are left out: a warning, or exit 65 when nothing is left.

    Examples
    --------
    >>> from bids_affect.io.derivatives import FoundOutput
    >>> refuse_or_warn_native([FoundOutput(Path("sub-01_r.nii.gz"), {"space": "T1w"})],
    ...                       False, "encoding group maps")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: sub-01_r.nii.gz: encoding group maps need maps in \
one standard space, and these are native (sub-01_r.nii.gz (T1w)): their voxels do not ...
    """
    if not native:
        return
    reason = ("their voxels do not correspond across subjects, so a group map of them "
              "would mix different structures (seed 003's mistake)")
    if not usable:
        raise InputDataError(f"{what} need maps in one standard space, and these are native "
                             f"({_native_names(native)}): {reason}", path=native[0].path.name,
                             fix="run the participant level with --space MNI152NLin2009cAsym "
                                 "(fMRIPrep outputs in that space)")
    LOGGER.warning("%s leave out %d native-space map(s) (%s): %s.", what, len(native),
                   _native_names(native), reason)


def _by(items: Sequence[FoundOutput], *names: str) -> dict[tuple[str, ...], list[FoundOutput]]:
    grouped: dict[tuple[str, ...], list[FoundOutput]] = defaultdict(list)
    for item in items:
        grouped[tuple(item.entities.get(name, "") for name in names)].append(item)
    return dict(sorted(grouped.items()))


def _paths(items: Sequence[FoundOutput]) -> dict[str, str]:
    """Subject -> path (one output per subject; a second one is an error)."""
    paths: dict[str, str] = {}
    for item in items:
        subject = item.entities["subject"]
        if subject in paths:
            raise InputDataError(f"sub-{subject} has two outputs for one group statistic "
                                 f"({Path(paths[subject]).name}, {item.path.name})",
                                 path=item.path.parent,
                                 fix="keep one participant-level run per subject in output_dir")
        paths[subject] = str(item.path)
    return dict(sorted(paths.items()))


# --------------------------------------------------------------------------- outputs


def _output(kind: str, file: str, entities: Mapping[str, Any], description: str,
            inputs: Sequence[str], **extra: Any) -> dict[str, Any]:
    """One entry of a step's output list: where the work file goes, and what it says."""
    return {"kind": kind, "file": file, "entities": dict(entities),
            "metadata": {"Description": description, **extra}, "inputs": list(inputs)}


def _save_nifti(out_dir: Path, name: str, image: nib.Nifti1Image) -> str:
    deriv.write_nifti(out_dir / name, nib.Nifti1Image(
        np.asarray(image.get_fdata(dtype=np.float32)), image.affine))
    return name


def group_map_outputs(out_dir: Path, paths: Mapping[str, str], *, space: str,
                      entities: Mapping[str, Any], settings: Mapping[str, Any], seed: int,
                      fisher: bool, what: str) -> list[dict[str, Any]]:
    """The group maps of one set of subject maps: t, z/p, thresholded maps, cluster tables.

    ``--group-inference`` parametric: nilearn's one-sample t-test with an FDR
    threshold (:func:`bids_affect.stats.group_ttest_map`); nonparametric:
    sign flips with max-t FWE (:func:`bids_affect.stats.group_permutation_map`);
    both: both, with one t map.
    """
    from bids_affect.stats import group_permutation_map, group_ttest_map

    subjects = list(paths)
    images = [paths[subject] for subject in subjects]
    common = dict(images=images, spaces=[space] * len(images),
                  names=[f"sub-{subject}" for subject in subjects], alpha=settings["alpha"],
                  fisher=fisher, atlas=ATLAS)
    stem = "_".join(f"{key}-{value}" for key, value in entities.items())
    made: list[dict[str, Any]] = []
    tests = []
    if settings["inference"] in ("parametric", "both"):
        tests.append(("tfdr", group_ttest_map(cluster_threshold=settings["cluster_threshold"],
                                              **common)))
    if settings["inference"] in ("nonparametric", "both"):
        tests.append(("tfwe", group_permutation_map(n_permutations=settings["n_permutations"],
                                                    random_state=seed, **common)))
    subjects_used = {"Subjects": [f"sub-{s}" for s in subjects]}
    value = "Fisher z of r" if fisher else "value"
    first = tests[0][1]
    made.append(_output("group_statmap", _save_nifti(out_dir, f"{stem}_t.nii.gz",
                                                     first.stat_map), entities,
                        f"One-sample t of the subjects' {what} ({value}) across subjects",
                        images, Test=first.parameters, **subjects_used))
    for label, result in tests:
        if result.z_map is not None:
            made.append(_output("group_inference_map", _save_nifti(
                out_dir, f"{stem}_z.nii.gz", result.z_map), {**entities, "stat": "z"},
                f"z of the one-sample t-test of {what}", images, Test=result.parameters,
                **subjects_used))
            made.append(_output("group_inference_map", _save_nifti(
                out_dir, f"{stem}_p.nii.gz", result.p_map), {**entities, "stat": "p"},
                f"Uncorrected one-sided p of the one-sample t-test of {what}", images,
                Test=result.parameters, **subjects_used))
        else:
            made.append(_output("group_inference_map", _save_nifti(
                out_dir, f"{stem}_pfwe.nii.gz", result.p_map), {**entities, "stat": "pfwe"},
                f"Family-wise corrected p of {what} (sign flips, maximum t over voxels)",
                images, Test=result.parameters, **subjects_used))
        control = ("FDR" if label == "tfdr" else "FWE") + f" {settings['alpha']:g}"
        made.append(_output("group_inference_map", _save_nifti(
            out_dir, f"{stem}_{label}.nii.gz", result.thresholded_map),
            {**entities, "stat": label},
            f"The t map of {what} where the test survives {control} (0 elsewhere)", images,
            Test=result.parameters, Threshold=result.threshold,
            ThresholdOn="z" if label == "tfdr" else "-log10 p (FWE)",
            NumberOfSignificantVoxels=result.n_significant, **subjects_used))
        deriv.write_tsv(out_dir / f"{stem}_{label}_clusters.tsv", result.clusters)
        made.append(_output("group_clusters", f"{stem}_{label}_clusters.tsv",
                            {**entities, "stat": label},
                            f"Clusters of the thresholded group map ({control}) of {what}: "
                            f"peak coordinates (mm), peak statistic, size, and the {ATLAS} "
                            "structure at the peak", images, Atlas=ATLAS,
                            **subjects_used))
    return made


def group_occlusion_step(out_dir: Path, *, maps: Mapping[str, Mapping[str, str]], task: str,
                         desc: str, space: str, settings: Mapping[str, Any], top_k: int,
                         seed: int) -> None:
    """Group maps, consensus top voxels and the group UMAP of one decoder's occlusion maps.

    ``maps``: class (the ``contrast`` label) -> subject -> map, in one
    standard space. A class held by fewer than two subjects gets no group
    map (a warning says so); its consensus table is still counted.
    """
    from bids_affect.stats import consensus_top_voxels, consensus_umap

    made: list[dict[str, Any]] = []
    names = {"task": task, "space": space, "desc": desc}
    min_subjects = settings["consensus_min_subjects"]
    for contrast, paths in sorted(maps.items()):
        entities = {**names, "contrast": contrast}
        if len(paths) >= 2:
            made += group_map_outputs(out_dir, paths, space=space, entities=entities,
                                      settings=settings, seed=seed, fisher=False,
                                      what=f"occlusion maps of {contrast}")
        else:
            LOGGER.warning("task-%s %s class %s: an occlusion map of one subject only "
                           "(sub-%s); no group map.", task, desc, contrast, next(iter(paths)))
        consensus = consensus_top_voxels(
            [nib.load(path) for path in paths.values()], k=top_k, spaces=[space] * len(paths),
            names=[f"sub-{subject}" for subject in paths], atlas=ATLAS,
            min_subjects=min(min_subjects, len(paths)) if min_subjects else None)
        file = f"{contrast}_consensus.tsv"
        deriv.write_tsv(out_dir / file, consensus.table)
        made.append(_output(
            "group_consensus", file, entities,
            f"Voxels among the top {top_k} of the occlusion map of {contrast} in at least "
            f"{consensus.min_subjects} of {consensus.n_subjects} subjects, by count then mean "
            "value, with the atlas structure at each", list(paths.values()), Atlas=ATLAS,
            TopK=top_k, MinSubjects=consensus.min_subjects,
            Subjects=[f"sub-{s}" for s in paths]))
    umap_note = None
    images = {contrast: [nib.load(path) for path in paths.values()]
              for contrast, paths in maps.items()}
    try:
        embedding = consensus_umap(images, affine=next(iter(images.values()))[0].affine,
                                   k=top_k, min_subjects=min_subjects, random_state=seed)
    except InputDataError as err:
        umap_note = err.problem
        LOGGER.warning("task-%s %s: no group UMAP of occlusion consensus voxels (%s).", task,
                       desc, err.problem)
    else:
        from bids_affect.occlusion import plot_umap_embeddings

        deriv.write_tsv(out_dir / "umap.tsv", embedding)
        plot_umap_embeddings(embedding, out_dir / "umap.svg",
                             title=f"{desc}: consensus voxels of the group")
        inputs = sorted({path for paths in maps.values() for path in paths.values()})
        about = ("UMAP embeddings of the group's consensus voxels (those in the top "
                 f"{top_k} of enough subjects in some class): spatial (their coordinates) and "
                 "functional (their group-mean occlusion values across classes); n_subjects "
                 "counts the subjects whose top voxels hold the voxel for its class")
        made.append(_output("group_occlusion_umap", "umap.tsv", names, about, inputs,
                            TopK=top_k))
        made.append({**_output("group_figure", "umap.svg", {**names, "stat": "occlusion"},
                               about, inputs), "suffix": "umap", "extension": ".svg"})
    deriv.write_json(out_dir / RECORD_FILE, {"outputs": made, "settings": dict(settings),
                                             "seed": seed, "umap_note": umap_note})


def _roi_table(paths: Mapping[str, str]) -> pd.DataFrame:
    """The subjects' ROI tables stacked with a ``participant_id`` column."""
    tables = [pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])
              .assign(participant_id=f"sub-{subject}") for subject, path in paths.items()]
    return pd.concat(tables, ignore_index=True)


def group_encoding_step(out_dir: Path, *, maps: Mapping[str, Mapping[str, str]],
                        rois: Mapping[str, str], task: str, desc: str,
                        settings: Mapping[str, Any], seed: int) -> None:
    """The group map of one feature set's r maps (per space) and its ROI mixed model.

    ``maps``: space -> subject -> ``stat-r`` map; ``rois``: subject -> ROI table.
    The mixed model is ``mean_r ~ roi + (1 | subject)``, by REML with the
    regions compared by the likelihood ratio and BIC of maximum-likelihood
    fits (:func:`bids_affect.stats.region_mixed_model`).
    """
    from bids_affect.stats import region_mixed_model

    made: list[dict[str, Any]] = []
    for space, paths in sorted(maps.items()):
        if len(paths) < 2:
            LOGGER.warning("task-%s %s: r maps of one subject only in %s; no group map.", task,
                           desc, space)
            continue
        made += group_map_outputs(out_dir, paths, space=space,
                                  entities={"task": task, "space": space, "desc": desc},
                                  settings=settings, seed=seed, fisher=True,
                                  what=f"encoding r maps of {desc}")
    note = None
    if rois:
        table = _roi_table(rois)
        try:
            result = region_mixed_model(table, value="mean_r", region="roi",
                                        subject="participant_id")
        except (InputDataError, np.linalg.LinAlgError) as err:
            # Too few regions or subjects, or a singular fit (e.g. identical scores): the
            # rest of the group level runs, and the warning says why there is no model.
            note = getattr(err, "problem", str(err))
            LOGGER.warning("task-%s %s: no ROI mixed model (%s).", task, desc, note)
        else:
            deriv.write_tsv(out_dir / "mixedmodel.tsv", result.to_table())
            made.append(_output(
                "group_mixedmodel", "mixedmodel.tsv", {"task": task, "desc": desc},
                "Mixed model of the subjects' ROI encoding scores, mean_r ~ region + (1 | "
                "subject) (statsmodels MixedLM): the intercept (mean over regions, sum "
                "coding) and each region's mean with SE, Wald t and p (REML); the regions "
                "compared with no region by the likelihood ratio and BIC of maximum-"
                "likelihood fits (delta_bic > 0: regions differ)", list(rois.values()),
                Formula="mean_r ~ C(roi, Sum) + (1 | participant_id)",
                GroupVariance=result.group_variance, Converged=result.converged,
                Subjects=sorted(table["participant_id"].unique().tolist())))
    deriv.write_json(out_dir / RECORD_FILE, {"outputs": made, "settings": dict(settings),
                                             "seed": seed, "mixed_model_note": note})


def group_rsa_step(out_dir: Path, *, statistics: Mapping[str, str],
                   rdms: Mapping[str, Mapping[str, str]], task: str, n_permutations: int,
                   seed: int) -> None:
    """Group RSA of one task: sign-flip tests of each comparison, group-mean RDMs.

    ``statistics``: subject -> its ``desc-rsa_statistics.tsv``; ``rdms``:
    RDM name -> subject -> its ``desc-NAME_rdm.tsv``.
    """
    from bids_affect.rsa import rdm_to_table, read_rdm
    from bids_affect.stats import group_mean_rdms, group_rsa

    made: list[dict[str, Any]] = []
    if statistics:
        stacked = pd.concat([pd.read_csv(path, sep="\t", keep_default_na=False,
                                         na_values=["n/a"]).assign(participant_id=subject)
                             for subject, path in statistics.items()], ignore_index=True)
        table = group_rsa(stacked, subject="participant_id", n_permutations=n_permutations,
                          random_state=seed)
        deriv.write_tsv(out_dir / "statistics.tsv", table)
        made.append(_output(
            "group_rsa_statistics", "statistics.tsv", {"task": task},
            "Each RDM comparison's per-subject r tested across subjects: one-sided (mean r > "
            "0) sign-flip permutation test (exact up to 16 subjects), Benjamini-Hochberg "
            "p_fdr across comparisons", list(statistics.values()), Alternative="greater",
            Subjects=[f"sub-{s}" for s in statistics]))
    by_subject: dict[str, dict[str, pd.DataFrame]] = defaultdict(dict)
    for name, paths in rdms.items():
        for subject, path in paths.items():
            by_subject[subject][name] = read_rdm(path)
    for name, mean in group_mean_rdms(by_subject).items():
        file = f"rdm_{name}.tsv"
        deriv.write_tsv(out_dir / file, rdm_to_table(mean))
        made.append(_output("group_rdm", file, {"task": task, "desc": name},
                            f"Mean over subjects of RDM {name}, on the classes every subject "
                            "holding it has", list(rdms[name].values()),
                            Subjects=[f"sub-{s}" for s in rdms[name]]))
    deriv.write_json(out_dir / RECORD_FILE, {"outputs": made, "seed": seed,
                                             "n_permutations": n_permutations})


#: Column descriptions of the group tables, by output kind (beyond the shared ones).
COLUMNS: dict[str, dict[str, dict[str, str]]] = {
    "group_consensus": {
        "n_subjects": {"Description": "Subjects whose top voxels hold the voxel"},
        "fraction": {"Description": "That count over the subjects"},
        "mean_value": {"Description": "Mean over subjects of the occlusion map at the voxel"}},
    "group_occlusion_umap": {
        "n_subjects": {"Description": "Subjects whose top voxels of the class hold the voxel"}},
    "group_rsa_statistics": {
        "n_subjects": {"Description": "Subjects with this comparison"},
        "mean_r": {"Description": "Mean over subjects of the correlation"},
        "sd_r": {"Description": "Standard deviation over subjects of the correlation"},
        "p": {"Description": "Sign-flip permutation p of the mean r (one-sided, greater)"},
        "n_permutations": {"Description": "Sign patterns behind p (2^n when exact)"},
        "exact": {"Description": "Whether every sign pattern was used"},
        "p_fdr": {"Description": "Benjamini-Hochberg adjusted p across the comparisons"}},
    "group_mixedmodel": {
        "term": {"Description": "intercept (mean over regions, sum coding) or region[NAME] "
                                "(that region's mean)"},
        "beta": {"Description": "Estimate (REML)"},
        "se": {"Description": "Its standard error"},
        "t": {"Description": "Wald statistic, beta / se"},
        "p": {"Description": "Two-sided normal p of the Wald statistic (as statsmodels)"},
        "likelihood_ratio": {"Description": "2 (llf with region - llf without), maximum-"
                                            "likelihood fits"},
        "df": {"Description": "Extra parameters of the region model"},
        "p_likelihood_ratio": {"Description": "Chi-square p of the likelihood ratio"},
        "bic_none": {"Description": "BIC without region (maximum likelihood)"},
        "bic_region": {"Description": "BIC with region (maximum likelihood)"},
        "delta_bic": {"Description": "bic_none - bic_region: positive when regions differ"},
        "n_subjects": {"Description": "Subjects"}, "n_regions": {"Description": "Regions"},
        "n_observations": {"Description": "Subject-region scores fitted"}},
}


def write_group_outputs_step(out_dir: Path, *, decoding_dirs: Sequence[Path],
                             output_dir: str, participant_label: Sequence[str] | None,
                             provenance: Mapping[str, Any]) -> None:
    """Write the outputs a group step listed, each with its sidecar (``Sources``: the inputs)."""
    (step_dir,) = decoding_dirs
    step_dir = Path(step_dir)
    record = read_json(step_dir / RECORD_FILE)
    resolver = deriv.SourceResolver({"": Path(output_dir)})
    parameters = record.get("settings")
    for made in record["outputs"]:
        path = deriv.output_path(output_dir, made["kind"], extension=made.get("extension"),
                                 suffix=made.get("suffix"), **made["entities"])
        metadata = deriv.sidecar(parameters=parameters, seed=record.get("seed"),
                                 sources=[resolver.uri(p) for p in made["inputs"]],
                                 **made["metadata"])
        if path.name.endswith(".tsv"):
            header = pd.read_csv(step_dir / made["file"], sep="\t", nrows=0).columns
            metadata = {**described(header, COLUMNS.get(made["kind"], {})), **metadata}
        deriv.write_with_sidecar(path, step_dir / made["file"], metadata)


# --------------------------------------------------------------------------- wiring


def _group_node(builder: GroupWorkflow, step: Any, name: str, kwargs: Mapping[str, Any],
                in_files: Sequence[str]) -> None:
    """A group step over participant files (their change reruns it) and its sink."""
    node = builder.node(step, name, kwargs, in_files=sorted(set(in_files)))
    sink = builder.sink(write_group_outputs_step, f"ds_{name}")
    builder.wf.connect(node, "out_dir", sink, "decoding_dirs")


def _missing(what: str, pattern: str, analysis: str, output_dir: Path) -> InputMissingError:
    return InputMissingError(f"no participant-level {what} ({pattern}) for the group level",
                             path=output_dir,
                             fix=f"run the participant level with --analyses {analysis} first "
                                 "(and check --participant-label)")


def wire_group_occlusion(builder: GroupWorkflow, options: Any) -> None:
    """Group maps, consensus voxels and UMAP per task, decoder and standard space."""
    found = selected(builder.output_dir, "occlusion_map", builder.participant_label)
    if not found:
        raise _missing("occlusion maps", "sub-*/func/*_stat-occlusion_statmap.nii.gz",
                       "occlusion", builder.output_dir)
    warn_other_versions([item.path for item in found], "participant-level occlusion maps")
    standard, native = split_spaces(found)
    refuse_or_warn_native(native, bool(standard), "occlusion group maps and consensus voxels")
    settings = map_settings(group_options(builder))
    for (task, desc, space), items in _by(standard, "task", "desc", "space").items():
        maps = {contrast: _paths(members)
                for (contrast,), members in _by(items, "contrast").items()}
        _group_node(builder, group_occlusion_step, f"group_occlusion_{task}_{desc}_{space}",
                    {"maps": maps, "task": task, "desc": desc, "space": space,
                     "settings": settings, "top_k": options.top_k,
                     "seed": builder.seed("group", "occlusion", task, desc, space)},
                    [str(item.path) for item in items])


def wire_group_encoding(builder: GroupWorkflow, options: Any) -> None:
    """Group r maps (per standard space) and the ROI mixed model per task and feature set."""
    maps = selected(builder.output_dir, "encoding_map", builder.participant_label, stat="r")
    rois = selected(builder.output_dir, "encoding_roi", builder.participant_label)
    if not maps and not rois:
        raise _missing("encoding maps or ROI tables",
                       "sub-*/func/*_stat-r_statmap.nii.gz, *_roi.tsv", "encoding",
                       builder.output_dir)
    warn_other_versions([item.path for item in maps + rois], "participant-level encoding "
                                                             "outputs")
    standard, native = split_spaces(maps)
    refuse_or_warn_native(native, bool(standard or rois), "encoding group maps")
    settings = map_settings(group_options(builder))
    map_groups = _by(standard, "task", "desc")
    roi_groups = _by(rois, "task", "desc")
    for task, desc in sorted(set(map_groups) | set(roi_groups)):
        by_space = {space: _paths(members) for (space,), members
                    in _by(map_groups.get((task, desc), []), "space").items()}
        roi_paths = _paths(roi_groups.get((task, desc), []))
        _group_node(builder, group_encoding_step, f"group_encoding_{task}_{desc}",
                    {"maps": by_space, "rois": roi_paths, "task": task, "desc": desc,
                     "settings": settings,
                     "seed": builder.seed("group", "encoding", task, desc)},
                    [p for paths in by_space.values() for p in paths.values()]
                    + list(roi_paths.values()))


def wire_group_rsa(builder: GroupWorkflow, options: Any) -> None:
    """Group RSA per task: comparisons tested across subjects, group-mean RDMs."""
    statistics = selected(builder.output_dir, "rsa_statistics", builder.participant_label)
    rdms = selected(builder.output_dir, "rdm", builder.participant_label)
    if not statistics and not rdms:
        raise _missing("RSA outputs", "sub-*/func/*_desc-rsa_statistics.tsv, *_rdm.tsv", "rsa",
                       builder.output_dir)
    warn_other_versions([item.path for item in statistics + rdms],
                        "participant-level RSA outputs")
    group = group_options(builder)
    stat_groups, rdm_groups = _by(statistics, "task"), _by(rdms, "task")
    for (task,) in sorted(set(stat_groups) | set(rdm_groups)):
        by_name = {name: _paths(members) for (name,), members
                   in _by(rdm_groups.get((task,), []), "desc").items()}
        stats = _paths(stat_groups.get((task,), []))
        _group_node(builder, group_rsa_step, f"group_rsa_{task}",
                    {"statistics": stats, "rdms": by_name, "task": task,
                     "n_permutations": group.permutations,
                     "seed": builder.seed("group", "rsa", task)},
                    list(stats.values()) + [p for paths in by_name.values()
                                            for p in paths.values()])
