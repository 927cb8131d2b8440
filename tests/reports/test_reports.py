"""HTML reports: built from a real run's derivatives, complete, deterministic, and checked
in a real headless Chromium (no broken image, no console error, a screenshot kept)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_affect.cli.run import main
from bids_affect.datasets import make_synthetic_dataset
from bids_affect.exceptions import InputMissingError, UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.reports import (
    SECTIONS,
    build_group_report,
    build_reports,
    build_subject_report,
    missing_files,
    referenced_files,
    register_section,
)
from bids_affect.reports import __main__ as reports_main
from bids_affect.reports import build as build_module
from bids_affect.reports.browser import check_in_chromium, find_chromium
from bids_affect.reports.formatting import format_number, format_p
from tests.helpers import file_hashes

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); "
                             "CI installs it, so the browser check runs there")


def _report_files(path: Path) -> bool:
    """Files the report builder writes: pages, and figures with their sidecars.

    The UMAP figure in ``figures/`` is the occlusion step's output, not the report's.
    """
    if path.name.endswith(("_umap.svg", "_umap.json")):
        return False
    return path.suffix == ".html" or "/figures/" in path.as_posix() or "_scores." in path.name


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BIDS_AFFECT_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Both levels with decoding (ridge with a null, a CNN without), occlusion and RSA."""
    root = tmp_path_factory.mktemp("reports")
    make_synthetic_dataset(root / "bids", n_subjects=2, n_runs=2, n_volumes=40,
                           shape=(10, 12, 10), signal=2.0,
                           classes=("happiness", "sadness", "fear"),
                           scene_duration=(8.0, 20.0), seed=5)
    code = main([str(root / "bids"), str(root / "out"), "participant", "group",
                 "-w", str(root / "work"), "--labels", "studyforrest-5", "--min-volumes", "3",
                 "--analyses", "decoding,occlusion,rsa", "--models", "ridge,cnn-deepemotion",
                 "--n-permutations", "20", "--n-permutations-cnn", "0", "--epochs", "3",
                 "--occlusion-threshold", "0", "--occlusion-samples", "2", "--top-k", "5",
                 "--random-seed", "3", "--nprocs", "1", "--omp-nthreads", "1",
                 "--skip-bids-validation"])
    assert code == 0
    return root / "out"


@pytest.fixture(scope="module")
def reports(finished_run):
    """The reports of the run, built once (subjects, then group)."""
    return finished_run, build_reports(finished_run)


def _text(html: Path) -> str:
    """Visible text of a page, whitespace collapsed (for checking shown numbers)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html.read_text()).split())


@pytest.mark.slow
def test_reports_show_every_section_whose_outputs_exist(reports):
    out, paths = reports
    assert [p.name for p in paths] == ["sub-01.html", "sub-02.html", "group.html"]
    html = (out / "sub-01.html").read_text()
    for section in ("summary", "decoding", "occlusion", "rsa", "methods"):
        assert f'<section id="{section}">' in html, section
    assert 'class="error"' not in html
    group = (out / "group.html").read_text()
    for section in ("subjects", "withinsubject", "methods"):
        assert f'<section id="{section}">' in group, section
    assert 'href="sub-01.html"' in group and 'href="sub-02.html"' in group
    assert 'href="group.html"' in html
    # Offline: no URL that a browser would fetch from the network.
    for page in (html, group):
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


@pytest.mark.slow
def test_reported_numbers_are_those_of_the_derivatives(reports):
    out, _ = reports
    text = _text(out / "sub-01.html")
    func = out / "sub-01" / "func"
    for model in ("ridge", "cnndeepemotion"):
        metrics = json.loads((func / f"sub-01_task-movie_desc-{model}_decoding.json")
                             .read_text())
        assert f"balanced accuracy {format_number(metrics['balanced_accuracy'])}" in text
        assert f"p (permutations) {format_p(metrics['p_permutation'])}" in text
        for name, values in metrics["per_class"].items():
            assert (f"{name} {format_number(values['precision'])} "
                    f"{format_number(values['recall'])}") in text
    counts = pd.read_csv(func / "sub-01_task-movie_desc-labels_counts.tsv", sep="\t")
    total = counts[counts["run"] == "total"].iloc[0]
    assert f"{int(total['n/a'])} volume(s) have no label" in text
    labels = pd.read_csv(func / "sub-01_task-movie_run-1_desc-labels_events.tsv", sep="\t")
    run = counts[counts["run"] == "task-movie_run-1"].iloc[0]
    classes = [c for c in counts.columns if c not in ("run", "n/a")]
    cells = " ".join(str(int(run[c])) for c in classes)
    assert f"task-movie_run-1 {len(labels)} {cells} {int(run['n/a'])}" in text
    # The CNN ran without permutations: its block says so instead of drawing a null.
    assert "No permutation null was computed" in text
    assert (out / "sub-01" / "figures" / "sub-01_task-movie_desc-ridge_null.svg").is_file()
    assert not (out / "sub-01" / "figures"
                / "sub-01_task-movie_desc-cnndeepemotion_null.svg").exists()
    group = _text(out / "group.html")
    table = pd.read_csv(out / "group" / "task-movie_desc-ridge_withinsubject.tsv", sep="\t")
    for row in table.itertuples():
        assert (f"{row.participant_id} ridge {row.n_samples} {row.n_classes} "
                f"{format_number(row.accuracy)} {format_number(row.balanced_accuracy)}") in group


@pytest.mark.slow
def test_every_referenced_figure_exists_with_a_sidecar_naming_its_sources(reports):
    out, paths = reports
    for page in paths:
        images = [p for p in referenced_files(page) if p.suffix == ".svg"]
        assert images, page
        assert missing_files(page) == []
        for image in images:
            assert image.read_text().lstrip().startswith("<?xml"), image
            sidecar = json.loads(deriv.sidecar_path(image).read_text())
            assert sidecar["Description"] and sidecar["Sources"], image
            for source in sidecar["Sources"]:
                if source.startswith("bids::"):
                    assert (out / source.removeprefix("bids::")).is_file(), source
    figures = {p.name for p in referenced_files(out / "sub-01.html")}
    statmaps = deriv.find_outputs(out, "occlusion_map")
    assert statmaps and all(item.entities["space"].startswith("MNI") for item in statmaps)
    for item in statmaps:
        if item.entities["subject"] != "01":
            continue
        figure = deriv.output_path(out, "figure", subject="01", task="movie",
                                   desc=item.entities["desc"],
                                   contrast=item.entities["contrast"], suffix="occlusion",
                                   extension=".svg")
        assert figure.name in figures
        assert "glass brain" in json.loads(deriv.sidecar_path(figure).read_text())[
            "Description"]
    for rdm in deriv.find_outputs(out, "rdm"):
        if rdm.entities["subject"] == "01":
            assert f"sub-01_task-movie_desc-{rdm.entities['desc']}_rdm.svg" in figures


@pytest.mark.slow
def test_rebuilding_gives_identical_files_from_the_derivatives_alone(reports, tmp_path):
    out, _ = reports
    first = file_hashes(out, _report_files)
    assert any(name.endswith(".svg") for name in first)
    build_reports(out)
    assert file_hashes(out, _report_files) == first
    # A copy holding no report at all, rebuilt by another Python process (another
    # hash seed) through the command line: the same files come back.
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for name in first:
        (copy / name).unlink()
    done = subprocess.run([sys.executable, "-m", "bids_affect.reports", str(copy)],
                          env={**os.environ, "PYTHONHASHSEED": "123"}, capture_output=True,
                          text=True, timeout=600, check=True)
    assert done.stdout.split() == [str(copy / name) for name in
                                   ("sub-01.html", "sub-02.html", "group.html")]
    assert file_hashes(copy, _report_files) == first


@pytest.mark.slow
@needs_chromium
def test_reports_render_in_chromium_without_errors(reports, tmp_path):
    out, paths = reports
    artifacts = _artifacts(tmp_path)
    for page in paths:
        shot = artifacts / f"report_{page.stem}.png"
        result = check_in_chromium(page, screenshot=shot)
        assert result.errors == [], page
        assert result.broken_images == [], page
        assert result.n_images == len([p for p in referenced_files(page)
                                       if p.suffix == ".svg"])
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_a_missing_figure_is_caught(reports, tmp_path):
    out, _ = reports
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    page = copy / "sub-01.html"
    gone = next(p for p in referenced_files(page) if p.suffix == ".svg")
    gone.unlink()
    assert missing_files(page) == [gone]
    if CHROMIUM is not None:
        result = check_in_chromium(page)
        assert not result.ok
        assert result.broken_images == [gone.relative_to(copy).as_posix()]
        assert any("ERR_FILE_NOT_FOUND" in error for error in result.errors)


@pytest.mark.slow
def test_a_missing_umap_figure_is_redrawn_from_its_table(reports, tmp_path):
    out, _ = reports
    tables = deriv.find_outputs(out, "occlusion_umap")
    assert tables, "the seeded run should give 2 classes with occlusion maps, so a UMAP"
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    entities = tables[0].entities
    figure = deriv.output_path(copy, "figure", subject=entities["subject"],
                               task=entities["task"], desc=entities["desc"], suffix="umap",
                               extension=".svg")
    figure.unlink()
    page = build_subject_report(copy, entities["subject"])
    # Redrawn from the TSV (rounded coordinates), so equal in content, not in bytes.
    assert figure.read_text().lstrip().startswith("<?xml")
    assert figure in referenced_files(page) and missing_files(page) == []
    assert json.loads(deriv.sidecar_path(figure).read_text())["Sources"] == [
        f"bids::{tables[0].path.relative_to(out).as_posix()}"]
    redrawn = figure.read_bytes()
    figure.unlink()
    build_subject_report(copy, entities["subject"])
    assert figure.read_bytes() == redrawn  # the redraw itself is deterministic


# --------------------------------------------------------------------------- small outputs


def _labels(out: Path, subject: str = "01", classes=("fear", "sadness")) -> None:
    """Labels events and counts of one run, written as the app writes them."""
    trial_type = [classes[0]] * 4 + [None] * 2 + [classes[1]] * 4
    events = pd.DataFrame({"onset": np.arange(10) * 2.0, "duration": 2.0,
                           "trial_type": trial_type, "volume": np.arange(10)})
    path = deriv.output_path(out, "labels", subject=subject, task="movie", run=1)
    deriv.write_with_sidecar(path, events, deriv.sidecar(RepetitionTime=2.0, Rule="a rule"))
    counts = pd.DataFrame({"run": ["task-movie_run-1", "total"], classes[0]: [4, 4],
                           classes[1]: [4, 4], "love": [0, 0], "n/a": [2, 2]})
    deriv.write_with_sidecar(deriv.output_path(out, "label_counts", subject=subject,
                                               task="movie"), counts,
                             deriv.sidecar(parameters={"min_volumes": 5}))


def test_summary_states_exclusions_and_the_report_skips_absent_sections(tmp_path):
    _labels(tmp_path)
    page = build_subject_report(tmp_path, "sub-01")
    assert page == tmp_path / "sub-01.html"
    html = page.read_text()
    assert '<section id="summary">' in html
    for absent in ("decoding", "occlusion", "rsa"):
        assert f'<section id="{absent}">' not in html
    text = _text(page)
    assert "2 volume(s) have no label and are excluded from every analysis (rule: a rule)" in text
    assert "class fear: 4 labelled volume(s), fewer than the minimum of 5" in text
    assert "class love: no labelled volume." in text
    assert "task-movie_run-1 10 4 4 0 2" in text  # volumes, fear, sadness, love, n/a
    assert missing_files(page) == []


def test_a_broken_output_shows_an_error_in_its_section_only(tmp_path, caplog):
    _labels(tmp_path)
    broken = deriv.output_path(tmp_path, "decoding", subject="01", task="movie", desc="ridge")
    deriv.write_text(broken, "{not json")
    with caplog.at_level(logging.WARNING, logger="bids_affect.reports"):
        html = build_subject_report(tmp_path, "01").read_text()
    decoding = html.split('<section id="decoding">')[1].split("</section>")[0]
    assert 'class="error"' in decoding and broken.name in decoding
    assert 'class="error"' not in html.split('<section id="decoding">')[0]  # summary fine
    assert "section 'decoding' could not be built" in caplog.text


def test_native_space_maps_use_slices_on_their_own_voxels_not_a_template(tmp_path,
                                                                         monkeypatch):
    from nilearn import plotting

    data = np.zeros((8, 9, 8), dtype=np.float32)
    data[2:6, 2:7, 2:6] = 0.01
    data[4, 5, 3] = 0.2
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    path = deriv.output_path(tmp_path, "occlusion_map", subject="01", task="movie",
                             desc="cnn", contrast="fear")
    deriv.write_nifti(path, nib.Nifti1Image(data, affine))
    backgrounds = []
    real_stat_map = plotting.plot_stat_map

    def no_glass_brain(*args, **kwargs):
        raise AssertionError("a native-space map was drawn on the MNI glass brain")

    def recording_stat_map(image, bg_img=None, **kwargs):
        backgrounds.append(bg_img)
        return real_stat_map(image, bg_img=bg_img, **kwargs)

    monkeypatch.setattr(plotting, "plot_glass_brain", no_glass_brain)
    monkeypatch.setattr(plotting, "plot_stat_map", recording_stat_map)
    html = build_subject_report(tmp_path, "01").read_text()
    assert 'class="error"' not in html
    (background,) = backgrounds
    assert np.allclose(background.affine, affine)
    assert np.array_equal(np.asarray(background.dataobj) > 0, data != 0)
    figure = deriv.output_path(tmp_path, "figure", subject="01", task="movie", desc="cnn",
                               contrast="fear", suffix="occlusion", extension=".svg")
    assert figure.is_file() and "native space, no template" in html


def test_a_registered_section_joins_the_report_without_touching_the_others(tmp_path,
                                                                           monkeypatch):
    from jinja2 import ChoiceLoader, DictLoader

    _labels(tmp_path)
    deriv.write_text(tmp_path / "logs" / "CITATION.md", "# How to cite\n")
    seen = []

    @register_section("extra", title="Extra analysis", order=35)
    def extra(context):
        seen.append(context.subject)
        return {"value": 42} if context.outputs("label_counts") else None

    real_environment = build_module._environment

    def environment():
        env = real_environment()
        env.loader = ChoiceLoader([DictLoader({"sections/extra.html": "<p>v={{ data.value }}"
                                                                      "</p>"}), env.loader])
        return env

    monkeypatch.setattr(build_module, "_environment", environment)
    try:
        with pytest.raises(UsageError, match="already registered"):
            register_section("extra", title="again")(extra)
        html = build_subject_report(tmp_path, "01").read_text()
        assert '<section id="extra">' in html and "<p>v=42</p>" in html
        assert html.index('id="summary"') < html.index('id="extra"') < html.index(
            'id="methods"')
        assert seen == ["01"]
    finally:
        SECTIONS.pop("extra")
    assert '<section id="extra">' not in build_subject_report(tmp_path, "01").read_text()


def test_missing_inputs_are_refused_with_exit_66(tmp_path, capsys):
    with pytest.raises(InputMissingError, match="does not exist") as error:
        build_reports(tmp_path / "nowhere")
    assert error.value.exit_code == 66
    _labels(tmp_path)
    with pytest.raises(InputMissingError, match="sub-02 has no output"):
        build_subject_report(tmp_path, "02")
    with pytest.raises(UsageError, match="is not a BIDS label"):
        build_subject_report(tmp_path, "0/1")
    assert reports_main.main([str(tmp_path / "nowhere")]) == 66
    assert "does not exist" in capsys.readouterr().err
    assert build_reports(tmp_path) == [tmp_path / "sub-01.html"]  # no group outputs
    assert build_group_report(tmp_path) == tmp_path / "group.html"


def test_methods_show_the_citation_and_only_warnings_and_errors_of_the_logs(tmp_path):
    _labels(tmp_path)
    deriv.write_text(tmp_path / "logs" / "CITATION.md",
                     "# How to cite\n\nbids_affect <0.1>.\n\n## Methods\n\nRidge was used.\n")
    log = deriv.log_dir(tmp_path, "01", "20260101-000000_abc")
    deriv.write_text(log / "bids_affect.toml", "[execution]\nseed = 3\n")
    deriv.write_text(log / "bids_affect.log",
                     "260101-00:00:01 [bids_affect.steps] IMPORTANT: progress line\n"
                     "260101-00:00:02 [bids_affect.steps] WARNING: class love left out\n"
                     "260101-00:00:03 [bids_affect] ERROR: step failed\n"
                     "Traceback (most recent call last):\n  boom\n")
    html = build_subject_report(tmp_path, "01").read_text()
    methods = html.split('<section id="methods">')[1]
    assert "<h4>How to cite</h4>" in methods and "bids_affect &lt;0.1&gt;." in methods
    assert "class love left out" in methods and "progress line" not in methods
    assert "step failed\nTraceback (most recent call last):\n  boom" in methods
    assert "seed = 3" in methods and "20260101-000000_abc" in methods


@needs_chromium
def test_the_browser_check_reports_console_errors_and_broken_images(tmp_path):
    from bids_affect.reports.figures import new_figure, save_svg

    save_svg(new_figure(2, 2), tmp_path / "good.svg")
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<img src="good.svg"><img src="gone.svg">'
                    '<script>console.error("planted"); console.log("fine")</script>'
                    '</body></html>')
    result = check_in_chromium(page)
    assert result.n_images == 2 and result.broken_images == ["gone.svg"]
    assert "console.error: planted" in result.errors
    assert not any("fine" in error for error in result.errors)
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<img src="good.svg"></body></html>')
    assert check_in_chromium(page).ok
