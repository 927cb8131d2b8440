"""The analysis registry: one entry makes a flag, a config section and workflow nodes.

A toy analysis is defined here (its options, a step and its wiring: what a new
analysis's steps module holds) and registered; nothing in the parser, the
configuration or the workflows is touched, and the app offers it end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_affect import analyses
from bids_affect.analyses import ANALYSES, Analysis, check_analyses, register_analysis
from bids_affect.cli.parser import _build_parser, parse_args
from bids_affect.cli.run import main
from bids_affect.config import Config, option, section
from bids_affect.exceptions import UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.workflows.participant import SharedSettings, init_participant_wf


@section("Toy", "toy")
class ToyOptions:
    """Options of the toy analysis."""

    strength: float = option(1.0, type=float, metavar="X", help="how strong the toy is")
    flavour: str = option("plain", choices=("plain", "spicy"), help="the toy's flavour")


def toy_step(out_dir: Path, *, samples_dir: Path, strength: float, flavour: str) -> None:
    """Count the samples (a stand-in for a real analysis)."""
    from bids_affect.bold import SampleSet

    samples = SampleSet.load(samples_dir)
    deriv.write_json(out_dir / "toy.json", {"n_samples": int(samples.X.shape[0]),
                                            "strength": strength, "flavour": flavour})


def write_toy_step(out_dir: Path, *, decoding_dirs, output_dir: str, subject: str, task: str,
                   runs, provenance) -> None:
    """Copy the toy's result next to the subject's outputs."""
    (toy_dir,) = decoding_dirs
    target = Path(output_dir) / f"sub-{subject}" / "func" / f"sub-{subject}_task-{task}_toy.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    deriv.copy_file(Path(toy_dir) / "toy.json", target)


def wire_toy(builder, options: ToyOptions) -> None:
    """One toy node reading the samples, and its sink."""
    toy = builder.node(toy_step, "toy", {"strength": options.strength,
                                         "flavour": options.flavour})
    sink = builder.sink(write_toy_step, "ds_toy")
    builder.wf.connect([(builder.samples, toy, [("out_dir", "samples_dir")]),
                        (toy, sink, [("out_dir", "decoding_dirs")])])


@pytest.fixture
def toy(monkeypatch):
    """The toy analysis, registered for one test."""
    monkeypatch.setattr(analyses, "ANALYSES", dict(ANALYSES))
    return register_analysis(Analysis("toy", "a toy analysis", options=ToyOptions,
                                      wire=wire_toy))


def test_a_registered_analysis_gets_a_flag_a_section_and_help(toy, tmp_path):
    help_text = _build_parser().format_help()
    assert "--strength X" in help_text and "how strong the toy is (default: 1.0)" in help_text
    assert "--flavour {plain,spicy}" in help_text and "\nToy:\n" in help_text
    assert "toy: a toy analysis" in help_text
    args = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    config = parse_args([*args, "--analyses", "toy", "--strength", "2.5", "--flavour", "spicy"])
    assert config.section("toy") == ToyOptions(strength=2.5, flavour="spicy")
    assert "[toy]\nstrength = 2.5\nflavour = \"spicy\"" in config.to_toml()
    reread = tmp_path / "run.toml"
    reread.write_text(config.to_toml())
    assert Config.from_toml(reread).section("toy").strength == 2.5
    with pytest.raises(UsageError, match="invalid choice: 'sour'"):
        parse_args([*args, "--flavour", "sour"])


def test_a_registered_analysis_adds_its_nodes(toy, tmp_path):
    options = {name: section for name, section in Config().sections().items()
               if name in analyses.ANALYSES}
    wf = init_participant_wf(subject="01", task="movie", runs=[], output_dir=tmp_path,
                             label_spec={"min_volumes": 20}, cleaning={}, analyses=["toy"],
                             options=options, shared=SharedSettings(), master_seed=1,
                             provenance={})
    names = {node.name for node in wf._graph.nodes()}
    assert {"labels", "samples", "toy", "ds_toy"} <= names
    assert not {name for name in names if name.startswith("decode")}


def test_a_registered_analysis_runs_end_to_end(toy, synthetic_dataset, tmp_path):
    out = tmp_path / "out"
    code = main([str(synthetic_dataset), str(out), "participant", "--participant-label", "01",
                 "--analyses", "toy", "--strength", "3", "--labels", "studyforrest-5",
                 "--skip-bids-validation", "--nprocs", "1", "-w", str(tmp_path / "work")])
    assert code == 0
    result = json.loads((out / "sub-01/func/sub-01_task-movie_toy.json").read_text())
    assert result == {"n_samples": 240, "strength": 3.0, "flavour": "plain"}


def test_registry_refuses_duplicates_and_unknown_names(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_analysis(Analysis("toy", "again", options=ToyOptions, wire=wire_toy))
    with pytest.raises(ValueError, match="no wire function"):
        register_analysis(Analysis("broken", "no wiring"))
    with pytest.raises(UsageError, match="'nope' is unknown"):
        check_analyses(["nope"], ["ridge"])
    assert check_analyses(["rsa", "toy", "decoding"], ["ridge"]) == ["decoding", "rsa", "toy"]
    register_analysis(Analysis("roadmap", "not built yet", available=False))
    with pytest.raises(UsageError, match="'roadmap' is not available"):
        check_analyses(["roadmap"], ["ridge"])
    assert "roadmap" not in analyses.list_analyses()


def toy_group_step(out_dir: Path, *, samples_dirs, subjects, output_dir: str) -> None:
    """Count each subject's samples at the group level."""
    from bids_affect.bold import SampleSet

    counts = {subject: int(SampleSet.load(folder).X.shape[0])
              for subject, folder in zip(subjects, samples_dirs)}
    deriv.write_json(Path(output_dir) / "group" / "toy.json", counts)


def wire_toy_group(builder, options: ToyOptions) -> None:
    """One group node reading every subject's samples."""
    node = builder.node(toy_group_step, "toy_group", {})
    subjects = builder.connect_samples(node)
    node.inputs.kwargs = {**node.inputs.kwargs, "subjects": subjects,
                          "output_dir": str(builder.output_dir)}


def test_a_group_analysis_reads_the_subjects_samples(monkeypatch, synthetic_dataset, tmp_path):
    """The group level reuses (or rebuilds) the participant level's samples."""
    monkeypatch.setattr(analyses, "ANALYSES", dict(ANALYSES))
    register_analysis(Analysis("toy", "a toy analysis", options=ToyOptions, wire=wire_toy,
                               wire_group=wire_toy_group, group_samples=True))
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--analyses", "toy", "--labels", "studyforrest-5", "--skip-bids-validation",
              "--nprocs", "1", "-w", str(work)]
    assert main([str(synthetic_dataset), str(out), "participant", *common]) == 0
    samples = sorted(work.glob("*/sub_*_task_movie_wf/samples/result/manifest.json"))
    stamps = [path.stat().st_mtime_ns for path in samples]
    assert len(samples) == 2
    assert main([str(synthetic_dataset), str(out), "group", *common]) == 0
    assert json.loads((out / "group" / "toy.json").read_text()) == {"01": 240, "02": 240}
    # The participant level's samples were reused, not rebuilt.
    assert [path.stat().st_mtime_ns for path in samples] == stamps
