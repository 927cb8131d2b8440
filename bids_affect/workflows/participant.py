"""Participant level: one nipype workflow per subject and task.

Labels -> clean samples -> one decoder per model -> occlusion of CNN decoders
-> RSA, each step followed by a sink that writes its derivatives. The factory
takes every setting as an argument; only :mod:`bids_affect.workflows.base`
reads the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

from bids_affect.decoding import is_cnn
from bids_affect.interfaces import RunStep
from bids_affect.io.derivatives import desc_label


def _node(subject: str, step: str, name: str, kwargs: Mapping[str, Any],
          in_files: Sequence[str] = (), sink: bool = False) -> pe.Node:
    node = pe.Node(RunStep(step=step, kwargs=dict(kwargs), progress_label=f"sub-{subject} "
                           f"{name}"), name=name, overwrite=sink, run_without_submitting=sink)
    if in_files:
        node.inputs.in_files = list(in_files)
    return node


def init_participant_wf(*, subject: str, task: str, runs: Sequence[dict[str, Any]],
                        output_dir: Path, label_spec: Mapping[str, Any],
                        cleaning: Mapping[str, Any], analyses: Sequence[str],
                        models: Sequence[str], decoding: Mapping[str, Any],
                        occlusion: Mapping[str, Any], rsa: Mapping[str, Any],
                        seeds: Mapping[str, int], provenance: Mapping[str, Any],
                        n_jobs: int = 1, name: str | None = None) -> pe.Workflow:
    """Workflow of one subject and task.

    Parameters
    ----------
    subject, task : str
        Labels of the subject and task.
    runs : list of dict
        :meth:`~bids_affect.io.layout.RunRecord.to_dict` of each run (with events).
    output_dir : Path
        Root of the derivatives dataset.
    label_spec : dict
        :meth:`~bids_affect.io.annotations.LabelSpec.to_dict` of the label spec.
    cleaning : dict
        Keyword arguments of :func:`bids_affect.bold.build_samples`.
    analyses : list of str
        Validated analysis names (empty: labels only).
    models : list of str
        Decoder names.
    decoding, occlusion, rsa : dict
        Settings of each analysis (see :mod:`bids_affect.steps`).
    seeds : dict
        Seed of each decoder (by model name) and of ``occlusion``/``rsa``.
    provenance : dict
        ``Sources`` resolver links and ``Parameters`` for sidecars.
    n_jobs : int
        Processes a step may use.
    """
    wf = pe.Workflow(name=name or f"sub_{subject}_task_{task}_wf")
    node = partial(_node, subject)
    common = {"output_dir": str(output_dir), "subject": subject, "task": task,
              "runs": list(runs), "provenance": dict(provenance)}
    in_files = sorted({r[key] for r in runs for key in ("bold", "events", "mask", "confounds")
                       if r.get(key)})

    # Without analyses nothing else reads the BOLD data, so labelling checks it.
    labels = node("labels", "labels", {"runs": list(runs), "label_spec": dict(label_spec),
                                       "check_data": not analyses}, in_files)
    ds_labels = node("write_labels", "ds_labels", common, sink=True)
    wf.connect(labels, "out_dir", ds_labels, "labels_dir")
    if not analyses:
        return wf

    samples = node("samples", "samples", {"runs": list(runs), "cleaning": dict(cleaning)},
                    in_files)
    wf.connect(labels, "out_dir", samples, "labels_dir")

    # Occlusion and RSA read trained CNNs, so their decoders run even without "decoding".
    if "decoding" in analyses:
        decoded = list(models)
    elif {"occlusion", "rsa"} & set(analyses):
        decoded = [model for model in models if is_cnn(model)]
    else:
        decoded = []
    cnn_decoders = {}
    for model in decoded:
        desc = desc_label(model)
        decode = node("decode", f"decode_{desc}", {
            "model": model, "settings": dict(decoding), "seed": seeds[model],
            "min_volumes": int(label_spec["min_volumes"]), "n_jobs": n_jobs})
        ds_decode = node("write_decoding", f"ds_decode_{desc}", common, sink=True)
        wf.connect([(samples, decode, [("out_dir", "samples_dir")]),
                    (decode, ds_decode, [("out_dir", "decoding_dirs")]),
                    (samples, ds_decode, [("out_dir", "samples_dir")])])
        if is_cnn(model):
            cnn_decoders[model] = decode

    if "occlusion" in analyses:
        for model, decode in cnn_decoders.items():
            desc = desc_label(model)
            occlude = node("occlusion", f"occlusion_{desc}", {
                "settings": dict(occlusion), "seed": seeds["occlusion"]})
            ds_occlusion = node("write_occlusion", f"ds_occlusion_{desc}", common, sink=True)
            wf.connect([(samples, occlude, [("out_dir", "samples_dir")]),
                        (decode, occlude, [("out_dir", "decoding_dirs")]),
                        (occlude, ds_occlusion, [("out_dir", "decoding_dirs")]),
                        (samples, ds_occlusion, [("out_dir", "samples_dir")])])

    if "rsa" in analyses:
        rsa_node = node("rsa", "rsa", {"settings": dict(rsa), "seed": seeds["rsa"],
                                        "min_volumes": int(label_spec["min_volumes"])},
                         in_files=[str(p) for p in rsa.get("references", {}).values()])
        ds_rsa = node("write_rsa", "ds_rsa", common, sink=True)
        wf.connect([(samples, rsa_node, [("out_dir", "samples_dir")]),
                    (rsa_node, ds_rsa, [("out_dir", "decoding_dirs")]),
                    (samples, ds_rsa, [("out_dir", "samples_dir")])])
        if cnn_decoders:
            from nipype.interfaces.utility import Merge

            merge = pe.Node(Merge(len(cnn_decoders)), name="merge_cnn_decoders",
                            run_without_submitting=True)
            for index, decode in enumerate(cnn_decoders.values(), start=1):
                wf.connect(decode, "out_dir", merge, f"in{index}")
            wf.connect(merge, "out", rsa_node, "decoding_dirs")
    return wf
