"""Group maps, ROI mixed model, group RSA and occlusion summaries through the BIDS-App.

The group level reads participant outputs only, so each test writes them
(with their sidecars, as the participant level names them) for six subjects:
encoding r maps with a planted region and ROI tables with a planted region
effect, occlusion maps with a planted region for one class, RSA statistics and
RDMs; then it runs ``bids_affect bids_dir output_dir group`` and checks each
output against the library called directly on the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.cli.run import main
from bids_affect.datasets.synthetic import grid_affine
from bids_affect.io import derivatives as deriv
from bids_affect.reports.build import missing_files
from bids_affect.rsa import rdm_to_table
from bids_affect.stats import (
    consensus_top_voxels,
    group_mean_rdms,
    group_permutation_map,
    group_rsa,
    group_ttest_map,
    region_mixed_model,
)

SPACE = "MNI152NLin2009cAsym"
SHAPE = (10, 12, 10)
SUBJECTS = ("01", "02", "03", "04", "05", "06")
#: The planted block (voxel slices) of the encoding and fear occlusion maps.
PLANTED = (slice(3, 6), slice(4, 7), slice(3, 6))
COMMON = ["--skip-bids-validation", "--nprocs", "1", "--random-seed", "9"]


def _planted(rng: np.random.Generator, effect: float, noise: float) -> nib.Nifti1Image:
    data = np.zeros(SHAPE, np.float32)
    inside = np.zeros(SHAPE, bool)
    inside[1:-1, 1:-1, 1:-1] = True
    data[inside] = rng.normal(0.0, noise, int(inside.sum()))
    data[PLANTED] += effect
    return nib.Nifti1Image(data, grid_affine(SHAPE))


def _write(out: Path, kind: str, data, version: str | None = None, **entities) -> Path:
    path = deriv.output_path(out, kind, **entities)
    metadata = deriv.sidecar(Description="planted for a test")
    if version is not None:
        metadata["SoftwareVersions"]["bids_affect"] = version
    return deriv.write_with_sidecar(path, data, metadata)


def write_encoding(out: Path, rng: np.random.Generator, *, effect: float = 0.3,
                   space: str | None = SPACE, subjects=SUBJECTS) -> None:
    """r maps (planted block) and ROI tables (CM above LB and SF) of feature set 'visual'."""
    for subject in subjects:
        names = dict(subject=subject, task="movie", desc="visual")
        _write(out, "encoding_map", _planted(rng, effect, 0.05), space=space, stat="r",
               **names)
        offset = rng.normal(0.0, 0.01)
        _write(out, "encoding_roi", pd.DataFrame({
            "roi": ["amygdala_cm", "amygdala_lb", "amygdala_sf"], "n_voxels": [12, 30, 9],
            "mean_r": [0.10 + offset + rng.normal(0, 0.01), 0.04 + offset +
                       rng.normal(0, 0.01), 0.05 + offset + rng.normal(0, 0.01)]}), **names)


def write_occlusion(out: Path, rng: np.random.Generator, *, space: str | None = SPACE,
                    subjects=SUBJECTS) -> None:
    """Occlusion maps of a CNN for fear (planted block) and love (noise)."""
    for subject in subjects:
        for contrast, effect in (("fear", 0.4), ("love", 0.0)):
            _write(out, "occlusion_map", _planted(rng, effect, 0.05), subject=subject,
                   task="movie", space=space, desc="cnnneuro120fp", contrast=contrast)


def write_rsa(out: Path, rng: np.random.Generator, subjects=SUBJECTS) -> None:
    """Brain and reference RDMs and their comparison, r above 0 for 'va' only."""
    classes = ["fear", "love", "sadness"]
    for subject in subjects:
        names = dict(subject=subject, task="movie")
        for name in ("brain", "va"):
            values = rng.random(3)
            rdm = np.zeros((3, 3))
            rdm[np.triu_indices(3, 1)] = values
            rdm += rdm.T
            _write(out, "rdm", rdm_to_table(pd.DataFrame(rdm, index=classes, columns=classes)),
                   desc=name, **names)
        _write(out, "rsa_statistics", pd.DataFrame({
            "rdm_a": ["brain", "brain"], "rdm_b": ["va", "arousal"],
            "method": ["spearman", "spearman"], "r": [0.5 + rng.normal(0, 0.1),
                                                      rng.normal(0, 0.3)],
            "p": [0.2, 0.5], "n_permutations": [6, 6], "exact": [True, True]}), **names)


def _group(bids: Path, out: Path, *flags: str) -> int:
    return main([str(bids), str(out), "group", "-w", str(out.parent / "work"), *COMMON,
                 *flags])


def _maps(out: Path, kind: str, **entities) -> list[Path]:
    return [item.path for item in deriv.find_outputs(out, kind)
            if all(item.entities.get(key) == value for key, value in entities.items())]


def _data(image: Path | nib.Nifti1Image) -> np.ndarray:
    image = image if isinstance(image, nib.Nifti1Image) else nib.load(image)
    return np.asarray(image.dataobj, np.float64)


def _no_missing_figure(out: Path) -> None:
    """Every figure the group report links exists (subject reports: none here, no run)."""
    missing = missing_files(out / "group.html")
    assert [path for path in missing if not path.name.startswith("sub-")] == []


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])


def test_encoding_group_map_and_mixed_model_equal_the_library(synthetic_dataset, tmp_path,
                                                              rng, capsys):
    out = tmp_path / "out"
    write_encoding(out, rng)
    assert _group(synthetic_dataset, out, "--analyses", "encoding") == 0, \
        capsys.readouterr().err
    group = out / "group"
    stem = f"task-movie_space-{SPACE}_desc-visual"
    maps = sorted(_maps(out, "encoding_map", stat="r"))
    expected = group_ttest_map(maps, fisher=True, atlas=None)
    np.testing.assert_allclose(_data(group / f"{stem}_stat-t_statmap.nii.gz"),
                               _data(expected.stat_map), rtol=1e-5, atol=1e-6)
    survivors = _data(group / f"{stem}_stat-tfdr_statmap.nii.gz") != 0
    planted = np.zeros(SHAPE, bool)
    planted[PLANTED] = True
    assert survivors[planted].all() and not survivors[~planted].any()
    about = json.loads((group / f"{stem}_stat-tfdr_statmap.json").read_text())
    assert about["NumberOfSignificantVoxels"] == int(planted.sum())
    assert about["Test"]["fisher_z"] and about["Subjects"] == [f"sub-{s}" for s in SUBJECTS]
    clusters = _table(group / f"{stem}_stat-tfdr_clusters.tsv")
    # One cluster (its sub-peaks are 1a, 1b...), its peak named by the atlas.
    assert set(clusters["Cluster ID"].astype(str).str.rstrip("abcdefgh")) == {"1"}
    assert clusters.loc[0, "region"] not in ("", "unlabelled")
    for stat in ("z", "p"):
        assert (group / f"{stem}_stat-{stat}_statmap.nii.gz").is_file()
    # The mixed model of the ROI tables, as statsmodels fits it through the library.
    stacked = pd.concat([_table(p).assign(participant_id=f"sub-{p.name[4:6]}")
                         for p in sorted(_maps(out, "encoding_roi"))], ignore_index=True)
    library = region_mixed_model(stacked, value="mean_r", region="roi",
                                 subject="participant_id").to_table()
    written = _table(group / "task-movie_desc-visual_mixedmodel.tsv")
    assert written["term"].tolist() == library["term"].tolist()
    for column in ("beta", "se", "t", "p", "likelihood_ratio", "delta_bic"):
        np.testing.assert_allclose(written[column], library[column], rtol=1e-4)
    cm = written.set_index("term").loc["region[amygdala_cm]"]
    assert cm["beta"] == pytest.approx(0.10, abs=0.02) and written.loc[0, "delta_bic"] > 10
    sidecar = json.loads((group / "task-movie_desc-visual_mixedmodel.json").read_text())
    assert sidecar["Formula"].startswith("mean_r ~") and len(sidecar["Sources"]) == 6
    html = (out / "group.html").read_text()
    for section in ("groupmaps", "mixedmodel"):
        assert f'<section id="{section}">' in html, section
    assert "voxels surviving FDR" in html and "delta BIC" in html
    _no_missing_figure(out)


def test_null_maps_have_no_fdr_survivors(synthetic_dataset, tmp_path, rng):
    out = tmp_path / "out"
    write_encoding(out, rng, effect=0.0)
    assert _group(synthetic_dataset, out, "--analyses", "encoding") == 0
    stem = f"task-movie_space-{SPACE}_desc-visual"
    assert not _data(out / "group" / f"{stem}_stat-tfdr_statmap.nii.gz").any()
    assert _table(out / "group" / f"{stem}_stat-tfdr_clusters.tsv").empty


def test_nonparametric_group_maps_equal_the_library(synthetic_dataset, tmp_path, rng):
    out = tmp_path / "out"
    write_encoding(out, rng)
    assert _group(synthetic_dataset, out, "--analyses", "encoding", "--group-inference",
                  "both", "--group-permutations", "200") == 0
    stem = f"task-movie_space-{SPACE}_desc-visual"
    about = json.loads((out / "group" / f"{stem}_stat-pfwe_statmap.json").read_text())
    expected = group_permutation_map(sorted(_maps(out, "encoding_map", stat="r")),
                                     fisher=True, n_permutations=200,
                                     random_state=about["RandomSeed"], atlas=None)
    np.testing.assert_allclose(_data(out / "group" / f"{stem}_stat-pfwe_statmap.nii.gz"),
                               _data(expected.p_map), rtol=1e-5)
    survivors = _data(out / "group" / f"{stem}_stat-tfwe_statmap.nii.gz") != 0
    planted = np.zeros(SHAPE, bool)
    planted[PLANTED] = True
    # Max-t FWE over 6 subjects (64 sign patterns) is strict: most planted voxels survive,
    # no other one does.
    assert survivors[planted].mean() > 0.5 and not survivors[~planted].any()
    assert survivors.sum() == expected.n_significant
    assert (out / "group" / f"{stem}_stat-tfdr_statmap.nii.gz").is_file()  # "both"


@pytest.mark.slow  # UMAP compiles its numba functions on first use (about 40 s)
def test_occlusion_group_maps_and_consensus_voxels(synthetic_dataset, tmp_path, rng,
                                                   capsys):
    out = tmp_path / "out"
    write_occlusion(out, rng)
    assert _group(synthetic_dataset, out, "--analyses", "occlusion", "--models",
                  "cnn-neuro120fp", "--top-k", "27") == 0, capsys.readouterr().err
    group = out / "group"
    stem = f"task-movie_space-{SPACE}_desc-cnnneuro120fp"
    fear = _data(group / f"{stem}_contrast-fear_stat-tfdr_statmap.nii.gz") != 0
    planted = np.zeros(SHAPE, bool)
    planted[PLANTED] = True
    # Every planted voxel survives FDR .05; false discoveries stay a small share.
    assert fear[planted].all() and fear[~planted].sum() / fear.sum() <= 0.1
    assert not _data(group / f"{stem}_contrast-love_stat-tfdr_statmap.nii.gz").any()
    written = _table(group / f"{stem}_contrast-fear_stat-occlusion_consensus.tsv")
    expected = consensus_top_voxels(
        [nib.load(p) for p in sorted(_maps(out, "occlusion_map", contrast="fear"))], k=27,
        spaces=[SPACE] * 6, atlas="harvard_oxford").table
    pd.testing.assert_frame_equal(written[["i", "j", "k", "n_subjects"]],
                                  expected[["i", "j", "k", "n_subjects"]], check_dtype=False)
    assert len(written) == 27 and (written["n_subjects"] == 6).all()
    assert set(written["region"]) != {""}
    umap = _table(group / f"{stem}_stat-occlusion_umap.tsv")
    assert {"spatial_1", "functional_1", "n_subjects", "class"} <= set(umap.columns)
    assert (group / "figures" / f"task-movie_space-{SPACE}_desc-cnnneuro120fp_stat-"
                                "occlusion_umap.svg").is_file()


def test_group_rsa_equals_the_library(synthetic_dataset, tmp_path, rng):
    out = tmp_path / "out"
    write_rsa(out, rng)
    assert _group(synthetic_dataset, out, "--analyses", "rsa") == 0
    written = _table(out / "group" / "task-movie_desc-rsa_statistics.tsv")
    stacked = pd.concat([_table(p).assign(participant_id=p.name[4:6]) for p in
                         sorted(_maps(out, "rsa_statistics"))], ignore_index=True)
    expected = group_rsa(stacked, n_permutations=10)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=1e-5)
    assert written.set_index("rdm_b").loc["va", "p"] == pytest.approx(1 / 64)
    from bids_affect.rsa import read_rdm

    rdms = {p.name[4:6]: {"brain": read_rdm(p)} for p in sorted(_maps(out, "rdm",
                                                                        desc="brain"))}
    mean = read_rdm(out / "group" / "task-movie_desc-brain_rdm.tsv")
    np.testing.assert_allclose(mean.to_numpy(), group_mean_rdms(rdms)["brain"].to_numpy(),
                               rtol=1e-5)
    html = (out / "group.html").read_text()
    assert '<section id="grouprsa">' in html and "Group-mean RDM brain" in html
    _no_missing_figure(out)


def test_native_maps_beside_standard_ones_are_left_out_with_a_warning(synthetic_dataset,
                                                                       tmp_path, rng, capsys):
    out = tmp_path / "out"
    write_encoding(out, rng)
    write_encoding(out, rng, space="T1w", subjects=("07",))
    assert _group(synthetic_dataset, out, "--analyses", "encoding") == 0
    err = capsys.readouterr().err
    assert "encoding group maps leave out 1 native-space map(s) " \
           "(sub-07_task-movie_space-T1w_desc-visual_stat-r_statmap.nii.gz (T1w))" in err
    about = json.loads((out / "group" / f"task-movie_space-{SPACE}_desc-visual_stat-t_"
                                         "statmap.json").read_text())
    assert "sub-07" not in about["Subjects"]


def test_native_occlusion_maps_alone_are_refused_with_one_line(synthetic_dataset, tmp_path,
                                                               rng, capsys):
    out = tmp_path / "out"
    write_occlusion(out, rng, space=None, subjects=("01", "02"))
    code = _group(synthetic_dataset, out, "--analyses", "occlusion", "--models",
                  "cnn-neuro120fp")
    err = capsys.readouterr().err
    assert code == 65
    line = next(line for line in err.splitlines() if "standard space" in line)
    assert "no space: raw BOLD" in line and "do not correspond across subjects" in line
    assert "fix: run the participant level with --space MNI152NLin2009cAsym" in line


def test_an_asked_group_part_without_participant_outputs_is_66(synthetic_dataset, tmp_path,
                                                               rng, capsys):
    out = tmp_path / "out"
    write_encoding(out, rng)
    code = _group(synthetic_dataset, out, "--analyses", "encoding,rsa")
    err = capsys.readouterr().err
    assert code == 66
    assert "no participant-level RSA outputs (sub-*/func/*_desc-rsa_statistics.tsv, " \
           "*_rdm.tsv)" in err and "--analyses rsa" in err


def test_outputs_of_another_version_are_named_in_a_warning(synthetic_dataset, tmp_path, rng,
                                                           capsys):
    out = tmp_path / "out"
    write_encoding(out, rng)
    _write(out, "encoding_roi", pd.DataFrame({"roi": ["a", "b"], "mean_r": [0.1, 0.2]}),
           version="0.0.1", subject="07", task="movie", desc="visual")
    assert _group(synthetic_dataset, out, "--analyses", "encoding") == 0
    err = capsys.readouterr().err
    assert "were written by bids_affect 0.0.1, and this group level is bids_affect" in err


@pytest.mark.slow
def test_group_parts_read_a_real_participant_run(tmp_path, capsys):
    """Participant and group levels in one run: encoding (planted voxels) and RSA."""
    from bids_affect.datasets import make_synthetic_dataset

    bids = make_synthetic_dataset(tmp_path / "bids", n_subjects=8, n_runs=2, n_volumes=60,
                                  shape=(12, 14, 12), signal=1.5, stimulus="recording",
                                  encoding_signal=2.0, seed=4)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "group", "-w", str(tmp_path / "work"),
                 "--analyses", "encoding,rsa", "--labels", "studyforrest-5", "--min-volumes",
                 "5", "--encoding-permutations", "20", "--roi-atlas",
                 "harvard_oxford:amygdala,insula,thalamus",
                 "--omp-nthreads", "1", *COMMON])
    assert code == 0, capsys.readouterr().err
    group = out / "group"
    planted = _data(bids / "sourcedata" / "groundtruth" / "encoding_mask.nii.gz") > 0
    survivors = _data(group / f"task-movie_space-{SPACE}_desc-visual_stat-tfdr_statmap"
                              ".nii.gz") != 0
    assert survivors[planted].mean() > 0.5
    assert survivors[~planted].sum() <= 0.1 * survivors.sum()
    model = _table(group / "task-movie_desc-visual_mixedmodel.tsv")
    assert model["term"].tolist() == ["intercept", "region[amygdala]", "region[insula]",
                                      "region[thalamus]"]
    assert (model["n_subjects"] == 8).all()
    statistics = _table(group / "task-movie_desc-rsa_statistics.tsv")
    assert (statistics["n_subjects"] == 8).all() and len(statistics)
    assert (group / "task-movie_desc-brain_rdm.tsv").is_file()
    html = (out / "group.html").read_text()
    for section in ("groupmaps", "mixedmodel", "grouprsa"):
        assert f'<section id="{section}">' in html, section
    assert missing_files(out / "group.html") == []
