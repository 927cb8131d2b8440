"""Build the HTML reports from the derivatives alone.

``sub-X.html`` (figures in ``sub-X/figures/``) and ``group.html`` are written at
the root of the derivatives dataset, as fMRIPrep does. Nothing is recomputed:
every number and figure comes from the output files, so ``--reports-only``
rebuilds the reports of a finished run, and a rebuild gives byte-identical
HTML and SVG files (no dates, fixed SVG ids). Pages need nothing online:
styles are inline, figures are local SVG files whose text is drawn as paths.

Examples
--------
>>> import tempfile
>>> list_subjects(Path(tempfile.mkdtemp()))
[]
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from bids_affect.__about__ import __version__
from bids_affect.exceptions import InputMissingError, UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.reports import sections as _sections  # noqa: F401 (registers them)
from bids_affect.reports.registry import ReportContext, sections_for

LOGGER = logging.getLogger("bids_affect.reports")

_SUBJECT = re.compile(r"^[A-Za-z0-9]+$")


def _environment() -> Environment:
    return Environment(loader=PackageLoader("bids_affect.reports", "templates"),
                       autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def check_subject(subject: str) -> str:
    """A subject label without its ``sub-`` prefix; refuses non-alphanumeric labels.

    Examples
    --------
    >>> check_subject("sub-01")
    '01'
    >>> check_subject("0 1")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: subject '0 1' is not a BIDS label; fix: give \
alphanumeric labels such as 01 (a sub- prefix is allowed)
    """
    label = str(subject).removeprefix("sub-")
    if not _SUBJECT.match(label):
        raise UsageError(f"subject {subject!r} is not a BIDS label",
                         fix="give alphanumeric labels such as 01 (a sub- prefix is allowed)")
    return label


def _check_output_dir(output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir)
    if not path.is_dir():
        raise InputMissingError("the derivatives folder to report on does not exist",
                                path=path, fix="give the output_dir of a bids_affect run")
    return path


def _subject_kinds() -> list[str]:
    """Output kinds stored under ``sub-X/`` that :func:`find_outputs` can list."""
    return [name for name, kind in deriv.OUTPUTS.items()
            if kind.folder not in ("group", ".") and kind.extension is not None]


def _group_kinds() -> list[str]:
    return [name for name, kind in deriv.OUTPUTS.items() if kind.folder == "group"]


def list_subjects(output_dir: str | os.PathLike) -> list[str]:
    """Labels of the subjects with outputs in ``output_dir``, sorted.

    Examples
    --------
    >>> import tempfile
    >>> list_subjects(tempfile.mkdtemp())
    []
    """
    subjects = {item.entities["subject"] for kind in _subject_kinds()
                for item in deriv.find_outputs(Path(output_dir), kind)
                if "subject" in item.entities}
    return sorted(subjects)


def has_group_outputs(output_dir: str | os.PathLike) -> bool:
    """Whether the group level wrote any output in ``output_dir``.

    Examples
    --------
    >>> import tempfile
    >>> has_group_outputs(tempfile.mkdtemp())
    False
    """
    return any(deriv.find_outputs(Path(output_dir), kind) for kind in _group_kinds())


def render_report(context: ReportContext, *, title: str,
                  links: Iterable[dict[str, str]] = ()) -> str:
    """The HTML of one report: each registered section of its level that has outputs.

    A section whose outputs cannot be read shows the error in its place (and it
    is logged as a warning), so one broken file does not hide the rest.

    Examples
    --------
    >>> import tempfile
    >>> html = render_report(ReportContext(Path(tempfile.mkdtemp())), title="empty")
    >>> "No outputs were found" in html
    True
    """
    rendered: list[dict[str, Any]] = []
    for section in sections_for(context.level):
        try:
            data = section.collect(context)
        except Exception as err:  # a report shows what it can, like fMRIPrep's
            message = " ".join(f"{type(err).__name__}: {err}".split())
            LOGGER.warning("report %s: section %r could not be built: %s", title,
                           section.name, message)
            rendered.append({"section": section, "data": None, "error": message})
            continue
        if data is not None:
            rendered.append({"section": section, "data": data, "error": None})
    template = _environment().get_template("report.html")
    return template.render(title=title, version=__version__, sections=rendered,
                           links=list(links))


def build_subject_report(output_dir: str | os.PathLike, subject: str) -> Path:
    """Write ``sub-X.html`` and its figures (``sub-X/figures/``) from the derivatives.

    Parameters
    ----------
    output_dir : path-like
        The derivatives dataset of a bids_affect run.
    subject : str
        Subject label, with or without ``sub-``.

    Returns
    -------
    Path
        The report.

    Raises
    ------
    InputMissingError
        Exit 66: no such folder, or no output of this subject in it.

    Examples
    --------
    >>> import tempfile
    >>> build_subject_report(tempfile.mkdtemp(), "01")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputMissingError: ...: sub-01 has no output to report on; ...
    """
    output_dir = _check_output_dir(output_dir)
    subject = check_subject(subject)
    if subject not in list_subjects(output_dir):
        raise InputMissingError(f"sub-{subject} has no output to report on", path=output_dir,
                                fix="run the participant level for this subject first, or "
                                    "check the participant label")
    context = ReportContext(output_dir, subject)
    # Links follow the derivatives, not the reports already written, so the
    # order in which reports are built does not change their bytes.
    group = deriv.output_path(output_dir, "group_report")
    links = ([{"name": "group report", "href": context.href(group)}]
             if has_group_outputs(output_dir) else [])
    html = render_report(context, title=f"bids_affect: sub-{subject}", links=links)
    path = deriv.output_path(output_dir, "report", subject=subject)
    deriv.write_text(path, html)
    LOGGER.info("Report of sub-%s written to %s (%d figures)", subject, path,
                len(context.figures))
    return path


def build_group_report(output_dir: str | os.PathLike) -> Path:
    """Write ``group.html`` (figures beside the group tables) from the derivatives.

    Raises
    ------
    InputMissingError
        Exit 66: no such folder, or neither group nor subject outputs in it.

    Examples
    --------
    >>> import tempfile
    >>> build_group_report(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputMissingError: ...: no group or subject output to report on; ...
    """
    output_dir = _check_output_dir(output_dir)
    if not (has_group_outputs(output_dir) or list_subjects(output_dir)):
        raise InputMissingError("no group or subject output to report on", path=output_dir,
                                fix="run the participant and group levels first")
    context = ReportContext(output_dir, None)
    html = render_report(context, title="bids_affect: group report")
    path = deriv.output_path(output_dir, "group_report")
    deriv.write_text(path, html)
    LOGGER.info("Group report written to %s (%d figures)", path, len(context.figures))
    return path


def build_reports(output_dir: str | os.PathLike,
                  subjects: Iterable[str] | None = None) -> list[Path]:
    """Write the reports of ``subjects`` (all by default), then the group report.

    The group report is written when the group level has outputs. This is
    what ``--reports-only`` runs.

    Parameters
    ----------
    output_dir : path-like
        The derivatives dataset.
    subjects : iterable of str, optional
        Subject labels (``sub-`` optional); every subject with outputs when None.

    Returns
    -------
    list of Path
        The reports written, subjects first.

    Examples
    --------
    >>> import tempfile
    >>> build_reports(tempfile.mkdtemp())
    []
    """
    output_dir = _check_output_dir(output_dir)
    labels = list_subjects(output_dir) if subjects is None else [check_subject(s)
                                                                 for s in subjects]
    paths = [build_subject_report(output_dir, subject) for subject in labels]
    if has_group_outputs(output_dir):
        paths.append(build_group_report(output_dir))
    return paths


# --------------------------------------------------------------------------- checks


class _References(HTMLParser):
    """Collects the local files a page refers to (``src`` and ``href``)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.found.append(value)


def referenced_files(html: str | os.PathLike) -> list[Path]:
    """Local files a report refers to (images, links), resolved against its folder.

    Anchors within the page and links with a scheme (``https:``...) are left out.

    Examples
    --------
    >>> import tempfile
    >>> page = Path(tempfile.mkdtemp()) / "r.html"
    >>> _ = page.write_text('<img src="sub-01/figures/a.svg"><a href="#top">x</a>')
    >>> [p.relative_to(page.parent).as_posix() for p in referenced_files(page)]
    ['sub-01/figures/a.svg']
    """
    html = Path(html)
    parser = _References()
    parser.feed(html.read_text())
    paths = []
    for reference in parser.found:
        parts = urlsplit(reference)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        paths.append(html.parent / unquote(parts.path))
    return paths


def missing_files(html: str | os.PathLike) -> list[Path]:
    """Files a report refers to that do not exist (a broken figure or link).

    Examples
    --------
    >>> import tempfile
    >>> page = Path(tempfile.mkdtemp()) / "r.html"
    >>> _ = page.write_text('<img src="gone.svg">')
    >>> [p.name for p in missing_files(page)]
    ['gone.svg']
    """
    return [path for path in referenced_files(html) if not path.is_file()]
