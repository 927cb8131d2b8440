"""The Boutiques descriptor: generated from the parser, valid, and its command lines parse."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_affect.cli import descriptor as desc
from bids_affect.cli.parser import _build_parser, parse_args

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "descriptor.json"
FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return _build_parser()


@pytest.fixture(scope="module")
def spec(parser) -> dict:
    return desc.descriptor(parser)


@pytest.fixture(scope="module")
def inputs(spec) -> dict[str, dict]:
    return {item["id"]: item for item in spec["inputs"]}


@pytest.fixture(scope="module")
def descriptor_file(spec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("descriptor") / "descriptor.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def _accepts(action: argparse.Action, text: str) -> bool:
    try:
        action.type(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return False
    return True


def bosh(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("bosh") or str(Path(sys.executable).parent / "bosh")
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120)


def simulate(descriptor_file: Path, invocation: dict, tmp_path: Path) -> list[str]:
    """``bosh exec simulate`` of ``invocation``: the command line, as argv."""
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    result = bosh("exec", "simulate", str(descriptor_file), "-i", str(path))
    assert result.returncode == 0, result.stderr + result.stdout
    line = result.stdout.split("Generated Command:", 1)[-1].strip()
    argv = shlex.split(line)
    assert argv[0] == "bids_affect"
    return argv[1:]


# --------------------------------------------------------------------------- agreement


def test_committed_descriptor_is_the_generated_one():
    assert COMMITTED.is_file(), "descriptor.json is missing at the top level"
    assert COMMITTED.read_text() == desc.execution_spec(), (
        "descriptor.json differs from the parser; regenerate it with "
        "'python -m bids_affect.cli.descriptor descriptor.json'")


def test_every_parser_option_is_one_input_and_nothing_else(parser, inputs):
    actions = desc.run_actions(parser)
    ids = desc.input_ids(actions)
    assert sorted(ids.values()) == sorted(inputs), "descriptor inputs and parser options differ"
    for action in actions:
        item = inputs[ids[action.dest]]
        if action.option_strings:
            if isinstance(action, argparse._CountAction):
                assert "command-line-flag" not in item
                assert all(choice.startswith(action.option_strings[0])
                           for choice in item["value-choices"])
            else:
                assert item["command-line-flag"] in action.option_strings
            assert item["optional"] is True
        else:
            assert "command-line-flag" not in item and item["optional"] is False
        if isinstance(action, FLAG_ACTIONS):
            assert item["type"] == "Flag"
            continue
        assert item["type"] in ("String", "Number", "File")
        comma = _accepts(action, "a,b") and isinstance(action.type("a,b"), list)
        assert item.get("list", False) is (action.nargs in ("+", "*") or comma), action.dest
        assert (item.get("list-separator") == ",") is comma, action.dest
        if action.choices is not None:
            assert item["value-choices"] == list(action.choices)
        if action.type is Path:
            expected = "String" if action.dest in desc.OUTPUT_PATHS else "File"
            assert item["type"] == expected, action.dest
        if item["type"] == "Number":
            lowest = item.get("minimum", 1)
            assert _accepts(action, str(lowest)) != item.get("exclusive-minimum", False)
            assert not _accepts(action, "none"), action.dest
            if item.get("integer"):
                assert not _accepts(action, "2.5") and _accepts(action, str(lowest + 1))
                if "minimum" in item:
                    assert not _accepts(action, str(lowest - 1)), action.dest
            if "maximum" in item:
                assert not _accepts(action, str(item["maximum"] + 0.01)), action.dest
        # Defaults go into the description: bosh would put a default-value on every
        # command line and override --config-file.
        assert "default-value" not in item


def test_command_line_template_holds_every_value_key_once_positionals_first(spec, parser):
    template = spec["command-line"].split()
    keys = [item["value-key"] for item in spec["inputs"]]
    assert template == ["bids_affect", *keys]
    positionals = [a.dest for a in desc.run_actions(parser) if not a.option_strings]
    assert [key.strip("[]").lower() for key in template[1:len(positionals) + 1]] == positionals


def test_exit_codes_are_the_exception_codes(spec):
    from bids_affect import exceptions

    codes = {item["code"] for item in spec["error-codes"]}
    assert codes == {exceptions.EXIT_FAILURE, exceptions.EXIT_VALIDATION,
                     exceptions.EXIT_UNKNOWN_LEVEL, exceptions.EXIT_NO_DATA,
                     exceptions.EXIT_USAGE, exceptions.EXIT_DATA_INVALID,
                     exceptions.EXIT_INPUT_MISSING, exceptions.EXIT_CANNOT_CREATE}


def test_mutually_exclusive_groups_become_boutiques_groups(tmp_path):
    toy = argparse.ArgumentParser(prog="toy", description="toy")
    toy.add_argument("bids_dir", type=Path)
    group = toy.add_mutually_exclusive_group()
    group.add_argument("--reports-only", action="store_true", dest="execution.reports_only")
    group.add_argument("--boilerplate-only", action="store_true",
                       dest="execution.boilerplate_only")
    spec = desc.descriptor(toy)
    assert spec["groups"] == [{"id": "exclusive_1", "name": "Mutually exclusive options 1",
                               "members": ["reports_only", "boilerplate_only"],
                               "mutually-exclusive": True}]
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(spec))
    result = bosh("validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- bosh


def test_bosh_validate_is_clean():
    result = bosh("validate", str(COMMITTED))
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def test_bosh_validate_catches_a_broken_descriptor(spec, tmp_path):
    broken = json.loads(json.dumps(spec))
    broken["inputs"][0]["value-key"] = "[NOT_IN_COMMAND_LINE]"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    assert bosh("validate", str(path)).returncode != 0


def _sample(item: dict, action: argparse.Action, files: dict[str, Path]):
    """An invocation value for ``item`` that argparse must accept."""
    if item["type"] == "Flag":
        return True
    if "value-choices" in item:
        return item["value-choices"] if item.get("list") else item["value-choices"][-1]
    if item["type"] == "Number":
        return max(item.get("minimum", 3), 3) if item.get("integer") else 0.5
    if item["type"] == "File":
        return str(files["any"])
    # Free text: the first candidate the option's own type converts.
    for candidate in ("8G", "name=/tmp/x", "0.005", "0,1", "sample"):
        try:
            if callable(action.type):
                action.type(candidate)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        return [candidate, candidate] if item.get("list") else candidate
    raise AssertionError(f"no sample value for {item['id']}")


def _converted(action: argparse.Action, value):
    def one(text):
        return action.type(str(text)) if callable(action.type) else str(text)

    if isinstance(value, list) and action.nargs not in ("+", "*"):  # a comma list
        return action.type(",".join(map(str, value)))
    if action.nargs in ("+", "*"):
        return [one(v) for v in value]
    return one(value)


def test_simulated_command_line_of_every_input_round_trips(parser, inputs, descriptor_file,
                                                            tmp_path):
    """Each input, through bosh, reaches its own dest with the value given."""
    files = {"any": tmp_path / "any.txt"}
    files["any"].write_text("x")
    actions = desc.run_actions(parser)
    ids = desc.input_ids(actions)
    invocation = {ids[a.dest]: _sample(inputs[ids[a.dest]], a, files) for a in actions}
    argv = simulate(descriptor_file, invocation, tmp_path)
    namespace = vars(parser.parse_args(argv))
    for action in actions:
        value = invocation[ids[action.dest]]
        if isinstance(action, FLAG_ACTIONS):
            assert namespace[action.dest] is action.const, action.dest
        elif isinstance(action, argparse._CountAction):
            assert namespace[action.dest] == len(value) - 1, action.dest
        else:
            assert namespace[action.dest] == _converted(action, value), action.dest


def _reference_rdm(path: Path) -> Path:
    classes = ["anger", "fear", "happiness", "sadness"]
    rows = ["\t".join(["class", *classes])]
    for i, name in enumerate(classes):
        rows.append("\t".join([name, *(str(abs(i - j) / 3) for j in range(len(classes)))]))
    path.write_text("\n".join(rows) + "\n")
    return path


def _setting(parser: argparse.ArgumentParser, config, flag: str):
    """The configuration value a flag sets (found through the flag's ``section.key``)."""
    dest = next(a.dest for a in parser._actions if flag in a.option_strings)
    section, key = dest.split(".", 1)
    return getattr(getattr(config, section), key)


def _toml(parser: argparse.ArgumentParser, values: dict) -> str:
    """A config file setting each flag's ``section.key`` to its value."""
    import tomli_w

    nested: dict[str, dict] = {}
    for flag, value in values.items():
        dest = next(a.dest for a in parser._actions if flag in a.option_strings)
        section, key = dest.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return tomli_w.dumps(nested)


def test_example_invocations_are_accepted_by_parse_args(parser, descriptor_file, tmp_path):
    """Realistic invocations: the simulated command lines pass every check of the app."""
    bids = tmp_path / "bids"
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"session": None}}))
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args: {n_procs: 2}\n")
    rdm = _reference_rdm(tmp_path / "valence.tsv")
    minimal = {"bids_dir": str(bids), "output_dir": str(tmp_path / "out"),
               "analysis_level": ["participant"]}
    studyforrest = {**minimal, "analysis_level": ["participant", "group"],
                    "participant_label": ["sub-01", "02"], "labels": "studyforrest-5",
                    "models": ["ridge", "cnn-neuro120fp"],
                    "analyses": ["decoding", "occlusion", "rsa"],
                    "work_dir": str(tmp_path / "work dir"), "nprocs": 4, "mem_mb": "16G",
                    "random_seed": 42, "verbose": "-vv"}
    files = {**minimal, "bids_filter_file": str(filters), "use_plugin": str(plugin),
             "derivatives": [f"fmriprep={tmp_path}/fmriprep"], "analyses": ["decoding", "rsa"],
             "roi_atlas": "harvard_oxford:amygdala", "rsa_reference": [f"valence={rdm}"],
             "high_pass": "none", "cv": "blocked", "cv_folds": 4, "occlusion_threshold": 0.5,
             "skip_bids_validation": True}
    for invocation in (minimal, studyforrest, files):
        config = parse_args(simulate(descriptor_file, invocation, tmp_path))
        assert config.execution.bids_dir == bids.resolve()
        assert config.execution.analysis_level == invocation["analysis_level"]
        if invocation is studyforrest:
            assert config.execution.participant_label == ["01", "02"]
            assert config.execution.work_dir == (tmp_path / "work dir").resolve()
            assert _setting(parser, config, "--models") == ["ridge", "cnn-neuro120fp"]
            assert _setting(parser, config, "--mem-mb") == 16 * 1024
            assert _setting(parser, config, "--random-seed") == 42
    assert _setting(parser, config, "--high-pass") is None
    assert _setting(parser, config, "--cv-folds") == 4
    assert _setting(parser, config, "--occlusion-threshold") == 0.5
    assert _setting(parser, config, "--rsa-reference") == {"valence": rdm}


def test_no_default_reaches_the_command_line_so_config_files_keep_working(
        parser, descriptor_file, tmp_path):
    config_file = tmp_path / "settings.toml"
    config_file.write_text(_toml(parser, {"--hrf-lag": 6.0, "--n-permutations": 99}))
    argv = simulate(descriptor_file, {"bids_dir": str(tmp_path / "bids"),
                                      "output_dir": str(tmp_path / "out"),
                                      "analysis_level": ["participant"],
                                      "config_file": str(config_file)}, tmp_path)
    assert argv == [str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "--config-file", str(config_file)]
    config = parse_args(argv)
    assert _setting(parser, config, "--hrf-lag") == 6.0
    assert _setting(parser, config, "--n-permutations") == 99


def test_bosh_refuses_a_value_outside_the_choices(descriptor_file, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"bids_dir": "/data", "output_dir": "/out",
                                "analysis_level": ["subject"]}))
    result = bosh("exec", "simulate", str(descriptor_file), "-i", str(path))
    assert result.returncode != 0


# --------------------------------------------------------------------------- entry points


def test_execution_spec_is_the_descriptor_as_json(spec):
    assert json.loads(desc.execution_spec()) == spec


def test_module_writes_prints_and_checks(tmp_path, capsys):
    path = tmp_path / "descriptor.json"
    assert desc.main([str(path)]) == 0
    assert path.read_text() == desc.execution_spec()
    assert desc.main([str(path), "--check"]) == 0
    path.write_text(path.read_text().replace("bids_affect", "bids-affect", 1))
    assert desc.main([str(path), "--check"]) == 1
    assert "regenerate" in capsys.readouterr().err
    assert desc.main([]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "bids_affect"


# --------------------------------------------------------------------------- docs and launch


def _doc_blocks(kind: str) -> list[str]:
    """Fenced blocks of docs/platforms.md whose info string is ``kind``."""
    blocks, info, lines = [], None, []
    for line in (REPO / "docs" / "platforms.md").read_text().splitlines():
        if line.startswith("```") and info is None:
            info, lines = line[3:].strip(), []
        elif line.startswith("```"):
            if info == kind:
                blocks.append("\n".join(lines))
            info = None
        elif info is not None:
            lines.append(line)
    return blocks


def test_documented_invocation_simulates_to_the_documented_command(parser, descriptor_file,
                                                                   tmp_path):
    invocation = json.loads(_doc_blocks("json")[0])
    documented = next(block for block in _doc_blocks("") if block.startswith("bids_affect "))
    simulated = simulate(descriptor_file, invocation, tmp_path)
    assert vars(parser.parse_args(simulated)) == vars(
        parser.parse_args(shlex.split(documented)[1:]))


@pytest.mark.slow
def test_bosh_exec_launch_runs_the_app(synthetic_dataset, tmp_path):
    """The descriptor runs the real app (a native installation, ``--no-container``)."""
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({
        "bids_dir": str(synthetic_dataset), "output_dir": str(tmp_path / "out"),
        "analysis_level": ["participant"], "participant_label": ["01"],
        "labels": "studyforrest-5", "analyses": ["none"],
        "work_dir": str(tmp_path / "work"), "random_seed": 5}))
    env = {**os.environ, "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [shutil.which("bosh") or str(Path(sys.executable).parent / "bosh"), "exec", "launch",
         "--no-container", "--skip-data-collection", str(COMMITTED), str(invocation)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    labels = sorted((tmp_path / "out/sub-01/func").glob("*_desc-labels_events.tsv"))
    assert len(labels) == 3
    assert not (tmp_path / "out" / "sub-02").exists()


def test_bids_exec_spec_flag_prints_the_descriptor(capsys):
    from bids_affect.cli.run import main

    code = main(["--bids-exec-spec"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == desc.execution_spec()
