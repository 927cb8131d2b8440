"""The methods boilerplate of a run (``logs/CITATION.md``), from the settings that ran.

Every sentence is built from the configuration of the run (and the label spec
it loaded), so it states what happened: the permutations of each decoder and
the smallest p they allow, the confound strategy by its description, and
only the analyses that ran. Options are described in words, never dumped as
``name=value``.

Examples
--------
>>> from bids_affect.config import Config
>>> text = methods_boilerplate(Config.from_dict({"analysis": {"models": ["ridge"]}}))
>>> "ridge: 1,000 permutations, so p >= 1/1,001" in text
True
"""

from __future__ import annotations

from collections.abc import Sequence

from bids_affect.__about__ import __version__
from bids_affect.config import Config


def _permutations(n: int) -> str:
    """``1,000 permutations, so p >= 1/1,001`` or ``no permutation test``."""
    if n == 0:
        return "no permutation test, chance level 1 / number of classes"
    return f"{n:,} permutation{'s' if n != 1 else ''}, so p >= 1/{n + 1:,}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _labels(config: Config) -> str:
    from bids_affect.io.annotations import load_label_spec

    spec = load_label_spec(config.labels.labels, hrf_lag=config.labels.hrf_lag,
                           min_volumes=config.labels.min_volumes)
    return (f"Each volume was labelled with the emotion annotation active at its acquisition "
            f"time minus a haemodynamic lag of {spec.hrf_lag:g} s (label spec '{spec.name}'); "
            f"unlabelled or tied volumes were excluded, and classes with fewer than "
            f"{spec.min_volumes} labelled volumes in a subject were left out of its analyses.")


def _cleaning(config: Config) -> str:
    from bids_affect.bold import CONFOUND_STRATEGIES

    cleaning = config.cleaning
    steps = ["masked"]
    if cleaning.smoothing_fwhm:
        steps.insert(0, f"smoothed with a {cleaning.smoothing_fwhm:g} mm FWHM Gaussian kernel")
    if cleaning.detrend:
        steps.append("linearly detrended")
    steps.append(f"high-pass filtered (Butterworth) at {cleaning.high_pass:.4g} Hz, a period "
                 f"of {1 / cleaning.high_pass:.0f} s" if cleaning.high_pass
                 else "not high-pass filtered")
    confounds = CONFOUND_STRATEGIES[cleaning.confounds].description
    steps.append(f"cleaned of confounds, {confounds}" if cleaning.confounds != "none"
                 else "not cleaned of confounds")
    if cleaning.standardize:
        steps.append("z-scored per run")
    return f"BOLD runs were {_join(steps)} with nilearn."


def decoded_models(config: Config) -> list[str]:
    """The decoders a run trains: every model for decoding, the CNNs for analyses reading them."""
    from bids_affect.analyses import ANALYSES
    from bids_affect.decoding import is_cnn

    analyses = config.analysis.analyses
    if "decoding" in analyses:
        return list(config.analysis.models)
    if any(ANALYSES[name].needs_cnn or name == "rsa" for name in analyses):
        return [model for model in config.analysis.models if is_cnn(model)]
    return []


def decoding_methods(config: Config) -> str:
    """The decoding paragraph: cross-validation, and each decoder's permutations."""
    from bids_affect.decoding import parse_decoder

    decoding = config.section("decoding")
    cv = {"loro": "leave-one-run-out cross-validation",
          "blocked": f"blocked {decoding.cv_folds}-fold cross-validation with a "
                     f"{decoding.cv_gap:g} s gap between test and training blocks",
          "auto": f"leave-one-run-out cross-validation (blocked {decoding.cv_folds}-fold "
                  f"with a {decoding.cv_gap:g} s gap for a subject with one run)"}[decoding.cv]
    models = []
    for model in decoded_models(config):
        spec = parse_decoder(model)
        if spec.is_cnn:
            models.append(f"{model}: {_permutations(decoding.n_permutations_cnn)} (each "
                          f"retrains it for up to {decoding.epochs} epochs)")
        else:
            models.append(f"{model}: {_permutations(decoding.n_permutations)}")
    return (f"Decoders were evaluated with {cv}; scalers and feature reductions were fitted "
            f"inside the training folds. Significance was assessed with permutations that "
            f"circularly shift each run's label sequence, the whole cross-validation being "
            f"repeated, and the chance level is the mean of that null distribution; "
            f"{'; '.join(models)}.")


def occlusion_methods(config: Config) -> str:
    """The occlusion paragraph."""
    options = config.section("occlusion")
    return (f"Occlusion maps of the CNN decoders slid a {options.window}-voxel cube (stride "
            f"{options.stride}) over held-out volumes classified correctly with probability "
            f">= {options.threshold:g} (up to {options.samples} per class), each with the "
            f"model of the fold that held it out; the top {options.top_k} voxels of each "
            f"class's map are listed with atlas labels.")


def rsa_methods(config: Config) -> str:
    """The RSA paragraph."""
    options = config.section("rsa")
    return (f"Representational dissimilarity matrices used the {options.distance} distance of "
            f"class patterns and were compared with {_join(options.methods)} correlations, "
            f"tested by Mantel permutation tests (exact up to 8 classes, else "
            f"{options.permutations:,} permutations).")


def methods_boilerplate(config: Config) -> str:
    """A methods paragraph describing the analyses this configuration runs.

    Each analysis of the registry contributes its own paragraph
    (``Analysis.methods``); decoders that other analyses read are described
    even when decoding itself was not asked.
    """
    from bids_affect.analyses import ANALYSES

    analyses = config.analysis.analyses
    parts = [f"Analyses were performed with bids_affect {__version__}."]
    if not analyses or any(ANALYSES[name].wire is not None for name in analyses):
        parts.append(_labels(config))  # group-only analyses (images) read no fMRI
    if any(ANALYSES[name].wire is not None for name in analyses):
        parts.append(_cleaning(config))
    if decoded_models(config) and "decoding" not in analyses:
        parts.append(decoding_methods(config))
    for name in analyses:
        if ANALYSES[name].methods is not None:
            parts.append(ANALYSES[name].methods(config))
    if "decoding" in analyses:
        from bids_affect.steps.group_decoding import methods as cross_subject_methods

        parts.append(cross_subject_methods(config))  # empty without --alignment
    return " ".join(part for part in parts if part)
