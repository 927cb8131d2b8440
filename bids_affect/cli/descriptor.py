"""Boutiques descriptor of the command line, generated from the parser.

``descriptor.json`` (top level of the repository) describes every option of
``bids_affect`` for platforms that run BIDS-Apps from a machine-readable
interface (Boutiques' ``bosh``, CBRAIN, the BIDS-Apps execution specification,
which asks for the descriptor behind a ``--bids-exec-spec`` flag). It is built
from :func:`bids_affect.cli.parser._build_parser`, never written by hand, so a
new flag appears in it as soon as the parser has it; a test regenerates the
file and compares.

How argparse maps to Boutiques:

- each positional argument and option is one input; its ``id`` is its first
  long flag (``--random-seed`` is ``random_seed``) or the positional's name,
  and its ``value-key`` is the id in capitals and brackets;
- the first long spelling (``--participant-label``) is the
  ``command-line-flag``;
- ``store_true`` options are ``Flag``; ``nargs='+'`` options are lists
  separated by spaces and comma-separated options (``--analyses a,b``) lists
  separated by commas; numeric types are ``Number`` with their bounds; other
  values are ``String`` (argparse converts them as it does on the command
  line). Types are recognised by what they accept (:func:`value_kind`), not
  by their names;
- paths that the app reads are ``File`` inputs; the output and work
  directories, which may not exist yet, are ``String``;
- a counted option (``-v``, ``-vv``) is a ``String`` whose choices are its
  repetitions;
- ``--help``, ``--version`` and print-and-exit flags (``dest=SUPPRESS``) are
  left out.

Defaults are written into the descriptions, never as ``default-value``:
``bosh`` puts every ``default-value`` on the command line, which would
override the values of a ``--config-file`` (defaults < file < flags).

Regenerate the committed file with ``python -m bids_affect.cli.descriptor
descriptor.json``.

Examples
--------
>>> spec = descriptor()
>>> spec["command-line"].split()[:4]
['bids_affect', '[BIDS_DIR]', '[OUTPUT_DIR]', '[ANALYSIS_LEVEL]']
>>> level = next(item for item in spec["inputs"] if item["id"] == "analysis_level")
>>> level["value-choices"], level["list"]
(['participant', 'group'], True)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bids_affect.__about__ import __version__

#: Boutiques schema version written in the descriptor.
SCHEMA_VERSION = "0.5"

#: Docker image named in the descriptor (the image the Dockerfile builds).
DOCKER_IMAGE = "bidsaffect/bids_affect"

#: Path destinations that the app creates or writes (Boutiques ``String``); every
#: other path option is read by the app and described as a ``File``.
OUTPUT_PATHS = frozenset({"output_dir", "execution.work_dir", "execution.bids_database_dir"})

#: Options that run no analysis (argparse's own actions).
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def _parser() -> argparse.ArgumentParser:
    from bids_affect.cli.parser import _build_parser

    return _build_parser()


def run_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions that a descriptor describes.

    Left out, since they run nothing: ``--help``, ``--version`` and actions
    added with ``dest=argparse.SUPPRESS`` (flags that print and exit, such as
    ``--bids-exec-spec``).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--n", type=int)
    >>> _ = p.add_argument("--version", action="version", version="1")
    >>> _ = p.add_argument("--spec", action="store_true", dest=argparse.SUPPRESS)
    >>> [a.dest for a in run_actions(p)]
    ['n']
    """
    return [action for action in parser._actions
            if not isinstance(action, _SKIPPED_ACTIONS) and action.dest != argparse.SUPPRESS]


def input_ids(actions: list[argparse.Action]) -> dict[str, str]:
    """Boutiques ids of ``actions`` by dest: the first long flag, or the positional's name.

    Ids follow what users type (``--random-seed`` is ``random_seed``), so an
    invocation reads like the command line.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("bids_dir")
    >>> _ = p.add_argument("--random-seed", "--random_seed", dest="seeds.master")
    >>> input_ids(run_actions(p))
    {'bids_dir': 'bids_dir', 'seeds.master': 'random_seed'}
    """
    ids = {action.dest: (_long_flag(action).lstrip("-") if action.option_strings
                         else action.dest).replace("-", "_") for action in actions}
    repeated = [name for name, count in Counter(ids.values()).items() if count > 1]
    if repeated:
        raise ValueError(f"options share the Boutiques ids {repeated}; give them distinct "
                         "long flags")
    return ids


def _converts(convert: Any, text: str) -> tuple[bool, Any]:
    """Whether argparse's ``type`` accepts ``text``, and what it makes of it."""
    try:
        return True, convert(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return False, None


def _smallest_accepted(accepts, refused: int, accepted: int) -> int:
    """Bisect for the smallest integer ``accepts`` takes between two known answers."""
    while accepted - refused > 1:
        middle = (refused + accepted) // 2
        refused, accepted = (refused, middle) if accepts(middle) else (middle, accepted)
    return accepted


def value_kind(action: argparse.Action) -> dict[str, Any]:
    """How an option's value is typed, found by probing its argparse ``type``.

    Probing keeps the descriptor independent of how converters are named or
    built: a type that reads a plain number and refuses words is a ``Number``
    (``integer`` when it refuses ``"x.5"``), with its integer bounds found by
    bisection and, for decimals, a minimum of 0 and a maximum of 1 or 100
    when the values just beyond are refused; a type that reads ``"a,b"`` as a
    list takes comma-separated lists; anything else is text (memory sizes
    with units, ``NAME=PATH``, ``none``-or-a-number).

    Returns
    -------
    dict
        ``{}`` for text, ``{"list-separator": ","}`` for comma lists, or the
        Boutiques fields of a number (``type``, ``integer``, bounds).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> value_kind(p.add_argument("--n", type=int))
    {'type': 'Number', 'integer': True}
    >>> def at_least_two(text):
    ...     if int(text) < 2:
    ...         raise ValueError(text)
    ...     return int(text)
    >>> value_kind(p.add_argument("--folds", type=at_least_two))
    {'type': 'Number', 'integer': True, 'minimum': 2}
    >>> def probability(text):
    ...     if not 0 <= float(text) <= 1:
    ...         raise ValueError(text)
    ...     return float(text)
    >>> value_kind(p.add_argument("--p", type=probability))
    {'type': 'Number', 'minimum': 0, 'maximum': 1}
    >>> value_kind(p.add_argument("--names", type=lambda text: text.split(",")))
    {'list-separator': ','}
    """
    convert = action.type
    if convert is None or convert in (str, Path):
        return {}

    def accepts(value: Any) -> bool:
        return _converts(convert, str(value))[0]

    listed, pair = _converts(convert, "a,b")
    if listed and isinstance(pair, list):
        return {"list-separator": ","}
    sample = next((text for text in ("1", "2", "10", "100", "0.5") if accepts(text)), None)
    value = _converts(convert, sample)[1] if sample is not None else None
    if (accepts("none") or isinstance(value, bool) or not isinstance(value, int | float)):
        return {}
    integer = isinstance(value, int)
    if integer and accepts(f"{sample}.5"):
        return {}  # reads decimals as integers: a quantity with units, described as text
    kind: dict[str, Any] = {"type": "Number", **({"integer": True} if integer else {})}
    if integer:
        if not accepts(-10**9):
            kind["minimum"] = _smallest_accepted(accepts, -10**9, int(value))
        if not accepts(10**9):
            kind["maximum"] = -_smallest_accepted(lambda v: accepts(-v), -10**9, -int(value))
        return kind
    if not accepts("-1e-9") and accepts("0"):
        kind["minimum"] = 0
    elif not accepts("0") and accepts("1e-9"):
        kind.update({"minimum": 0, "exclusive-minimum": True})
    for bound in (1, 100):
        if accepts(bound) and not accepts(bound * 1.000001):
            kind["maximum"] = bound
            break
    return kind


def _long_flag(action: argparse.Action) -> str:
    long = [flag for flag in action.option_strings if flag.startswith("--")]
    return (long or action.option_strings)[0]


def _choices_from_metavar(action: argparse.Action) -> list[str] | None:
    """``metavar="{participant,group}"`` lists the values a check accepts later."""
    match = re.fullmatch(r"\{(.+)\}", str(action.metavar or ""))
    return match.group(1).split(",") if match else None


def _defaults() -> dict[str, Any]:
    """Default settings by ``section.key`` (from the configuration dataclasses)."""
    from bids_affect.config import Config

    return {f"{section}.{key}": value for section, values in Config().to_dict().items()
            for key, value in values.items()}


def _description(action: argparse.Action, default: Any) -> str:
    text = action.help or ""
    # argparse expands %(default)s-style fields; a literal '%' keeps the text as written.
    with contextlib.suppress(KeyError, TypeError, ValueError):
        text = text % {**vars(action), "prog": "bids_affect"}
    text = " ".join(text.split())
    shown = default not in (None, False, "", [], {})
    if shown and "default" not in text.lower():
        value = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default: {value})"
    return text


def _name(action: argparse.Action) -> str:
    raw = _long_flag(action).lstrip("-") if action.option_strings else action.dest
    words = re.split(r"[-_]", raw)
    return " ".join([words[0].capitalize(), *words[1:]])


def describe_action(action: argparse.Action, input_id: str,
                    default: Any = None) -> dict[str, Any]:
    """The Boutiques input of one argparse action.

    Parameters
    ----------
    action : argparse.Action
        An option or positional argument of the parser.
    input_id : str
        Its Boutiques id (see :func:`input_ids`).
    default : object, optional
        Its default setting, written into the description only.

    Returns
    -------
    dict
        The input: id, name, type, value-key, flag, list, choices, bounds.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> a = p.add_argument("--nprocs", "--n-cpus", type=int, dest="nipype.nprocs",
    ...                    help="processes")
    >>> item = describe_action(a, "nprocs")
    >>> item["type"], item["command-line-flag"], item["value-key"], item["integer"]
    ('Number', '--nprocs', '[NPROCS]', True)
    """
    item: dict[str, Any] = {"id": input_id, "name": _name(action),
                            "description": _description(action, default),
                            "value-key": f"[{input_id.upper()}]"}
    item["optional"] = not (action.required or not action.option_strings)
    if action.option_strings and not isinstance(action, argparse._CountAction):
        item["command-line-flag"] = _long_flag(action)

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        item["type"] = "Flag"
        return item
    if isinstance(action, argparse._CountAction):
        short = next(flag for flag in action.option_strings if len(flag) == 2)
        item.update(type="String",
                    **{"value-choices": [short + short[1:] * n for n in range(3)]})
        return item

    kind = value_kind(action)
    separator = kind.pop("list-separator", None)
    if kind and action.choices is None:
        item.update(kind)
    elif action.type is Path and action.dest not in OUTPUT_PATHS:
        item.update(type="File", **{"uses-absolute-path": True})
    else:
        item["type"] = "String"
    choices = list(action.choices) if action.choices is not None else (
        _choices_from_metavar(action))
    if choices:
        item["value-choices"] = choices
    if action.nargs in ("+", "*") or separator:
        item["list"] = True
        item["list-separator"] = separator or " "
        if action.nargs != "*":
            item["min-list-entries"] = 1
    return item


def _groups(parser: argparse.ArgumentParser, ids: dict[str, str]) -> list[dict[str, Any]]:
    """argparse's mutually exclusive groups, as Boutiques groups."""
    groups = []
    for number, group in enumerate(parser._mutually_exclusive_groups, start=1):
        members = [ids[action.dest] for action in group._group_actions if action.dest in ids]
        if len(members) > 1:
            groups.append({"id": f"exclusive_{number}",
                           "name": f"Mutually exclusive options {number}",
                           "members": members, "mutually-exclusive": True,
                           **({"one-is-required": True} if group.required else {})})
    return groups


def _error_codes() -> list[dict[str, Any]]:
    """Exit codes of the app, from the exit code each error class carries."""
    from bids_affect import exceptions

    codes: dict[int, str] = {}
    for error in (exceptions.BidsAffectError, *_subclasses(exceptions.BidsAffectError)):
        doc = (error.__doc__ or error.__name__).strip().splitlines()[0].rstrip(".")
        if error is exceptions.BidsAffectError:
            doc = "Unexpected failure (rerun with --debug for the traceback)"
        codes.setdefault(int(error.exit_code), doc)
    return [{"code": code, "description": text} for code, text in sorted(codes.items())]


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def descriptor(parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The Boutiques descriptor of ``bids_affect`` (a JSON-ready dict).

    Parameters
    ----------
    parser : argparse.ArgumentParser, optional
        The parser to describe; default: the app's ``_build_parser()``.

    Returns
    -------
    dict
        A Boutiques 0.5 descriptor: command-line template, one input per
        option, output files, exit codes, container image.

    Examples
    --------
    >>> spec = descriptor()
    >>> spec["schema-version"], spec["name"]
    ('0.5', 'bids_affect')
    >>> flags = {i["id"]: i.get("command-line-flag") for i in spec["inputs"]}
    >>> flags["participant_label"], flags["bids_dir"]
    ('--participant-label', None)
    """
    parser = parser or _parser()
    actions = run_actions(parser)
    ids = input_ids(actions)
    defaults = _defaults()
    positionals = [a for a in actions if not a.option_strings]
    options = [a for a in actions if a.option_strings]
    ordered = positionals + options  # positionals first: 'nargs=+' options cannot precede them
    inputs = [describe_action(action, ids[action.dest], defaults.get(action.dest))
              for action in ordered]
    spec: dict[str, Any] = {
        "name": "bids_affect",
        "tool-version": __version__,
        "schema-version": SCHEMA_VERSION,
        "description": " ".join((parser.description or "").split()),
        "author": "bids_affect developers",
        "url": "https://github.com/bids-affect/bids_affect",
        "command-line": " ".join(["bids_affect", *(item["value-key"] for item in inputs)]),
        "container-image": {"type": "docker", "image": f"{DOCKER_IMAGE}:{__version__}"},
        "inputs": inputs,
        "output-files": [
            {"id": "out_derivatives", "name": "Derivatives dataset",
             "description": "BIDS derivatives dataset written by bids_affect",
             "path-template": "[OUTPUT_DIR]", "optional": False},
            {"id": "out_dataset_description", "name": "Dataset description",
             "description": "dataset_description.json of the derivatives (GeneratedBy, "
                            "versions, container)",
             "path-template": "[OUTPUT_DIR]/dataset_description.json", "optional": False},
        ],
        "error-codes": _error_codes(),
        "suggested-resources": {"cpu-cores": 4, "ram": 8, "walltime-estimate": 7200},
        "tags": {"domain": ["neuroinformatics", "fmri", "bids-app"],
                 "application-type": "bids-app"},
    }
    groups = _groups(parser, ids)
    if groups:
        spec["groups"] = groups
    return spec


def execution_spec() -> str:
    """The descriptor as JSON text: what ``bids_affect --bids-exec-spec`` prints.

    The BIDS-Apps execution specification (draft) asks that a BIDS-App print
    its Boutiques descriptor when called with ``--bids-exec-spec`` alone.

    Examples
    --------
    >>> json.loads(execution_spec())["name"]
    'bids_affect'
    """
    return json.dumps(descriptor(), indent=2) + "\n"


def write_descriptor(path: str | Path) -> Path:
    """Write the descriptor to ``path`` (atomically) and return the path.

    Examples
    --------
    >>> import tempfile
    >>> out = write_descriptor(Path(tempfile.mkdtemp()) / "descriptor.json")
    >>> out.read_text() == execution_spec()
    True
    """
    from bids_affect.io.derivatives import write_text

    return write_text(Path(path), execution_spec())


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_affect.cli.descriptor [PATH] [--check]``.

    Without PATH, print the descriptor; with PATH, write it there; with
    ``--check``, exit 1 when the file at PATH differs from the parser's.

    Examples
    --------
    >>> import tempfile
    >>> path = str(Path(tempfile.mkdtemp()) / "descriptor.json")
    >>> main([path]), main([path, "--check"])
    (0, 0)
    """
    cli = argparse.ArgumentParser(prog="python -m bids_affect.cli.descriptor",
                                  description="Write the Boutiques descriptor of bids_affect.")
    cli.add_argument("path", nargs="?", type=Path, help="file to write (default: print)")
    cli.add_argument("--check", action="store_true",
                     help="compare PATH with the parser instead of writing it")
    args = cli.parse_args(argv)
    if args.path is None:
        sys.stdout.write(execution_spec())
        return 0
    if args.check:
        current = args.path.read_text() if args.path.is_file() else ""
        if current != execution_spec():
            print(f"{args.path} differs from the parser; regenerate it with "
                  f"'python -m bids_affect.cli.descriptor {args.path}'", file=sys.stderr)
            return 1
        return 0
    write_descriptor(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
