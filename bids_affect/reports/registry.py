"""The registry of report sections and the context a section reads and draws with.

A section is a function that looks for its outputs in the derivatives and
returns what its template shows, or ``None`` when those outputs do not exist
(the section is then left out). An analysis adds its section with one
decorated function and one template, without touching the other sections::

    @register_section("encoding", title="Encoding models", levels=("subject",),
                      order=50)
    def encoding_section(context):
        maps = context.outputs("encoding_map")
        if not maps:
            return None
        ...
        return {"maps": ...}

Its template is ``templates/sections/encoding.html`` and reads ``data``.

Examples
--------
>>> [section.name for section in sections_for("group")]  # doctest: +NORMALIZE_WHITESPACE
['subjects', 'withinsubject', 'groupinference', 'crosssubject', 'groupmaps', 'mixedmodel',
 'grouprsa', 'selectivity', 'imagevalidation', 'synthesis', 'methods']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bids_affect.exceptions import UsageError
from bids_affect.io import derivatives as deriv
from bids_affect.reports.figures import save_svg

#: Report levels: one report per subject, one for the group.
LEVELS = ("subject", "group")


@dataclass
class ReportContext:
    """Where a report's inputs are and where its figures go.

    Parameters
    ----------
    output_dir : Path
        The derivatives dataset (reports are written at its root).
    subject : str or None
        The subject label (no ``sub-``), or None for the group report.

    Attributes
    ----------
    figures : list of Path
        Figures written so far for this report, in order.

    Examples
    --------
    >>> context = ReportContext(Path("out"), "01")
    >>> context.level, context.href(Path("out/sub-01/figures/a.svg"))
    ('subject', 'sub-01/figures/a.svg')
    """

    output_dir: Path
    subject: str | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def level(self) -> str:
        """``"subject"`` or ``"group"``."""
        return "group" if self.subject is None else "subject"

    def outputs(self, kind: str, **entities: str | None) -> list[deriv.FoundOutput]:
        """Existing outputs of ``kind`` of this report's subject with these entities.

        An entity given as ``None`` must be absent from the name (e.g. no session).
        """
        found = deriv.find_outputs(self.output_dir, kind)
        wanted = dict(entities)
        if self.subject is not None:
            wanted["subject"] = self.subject
        return [item for item in found
                if all(item.entities.get(key) == value for key, value in wanted.items())]

    def path(self, kind: str, **entities: Any) -> Path:
        """Path of an output of ``kind`` (whether it exists or not)."""
        return deriv.output_path(self.output_dir, kind, **entities)

    def href(self, path: Path) -> str:
        """Link to ``path`` from a report (reports live at the dataset's root)."""
        return Path(path).relative_to(self.output_dir).as_posix()

    def source(self, path: Path) -> str:
        """BIDS URI of a file of this dataset, for ``Sources`` (``bids::sub-01/...``)."""
        return f"bids::{self.href(path)}"

    def figure_path(self, suffix: str, **entities: str | None) -> Path:
        """Path of one of this report's SVG figures (``sub-X/figures/``, or the group's)."""
        if self.subject is not None:
            return deriv.output_path(self.output_dir, "figure", subject=self.subject,
                                     suffix=suffix, extension=".svg", **entities)
        if "group_figure" in deriv.OUTPUTS:
            return deriv.output_path(self.output_dir, "group_figure", suffix=suffix,
                                     extension=".svg", **entities)
        # Until derivatives.py has a group figure kind: the group folder, named
        # like the group table the figure draws (see the report of this change).
        return deriv.output_path(self.output_dir, "group_withinsubject", suffix=suffix,
                                 extension=".svg", **entities)

    def save_figure(self, figure: Figure, *, suffix: str, description: str,
                    sources: Sequence[Path], **entities: str | None) -> str:
        """Save ``figure`` as SVG with a JSON sidecar; return the link to it.

        The sidecar says what the figure shows and which derivative files it
        was drawn from (``Sources``), like every other data file of the dataset.
        """
        path = self.figure_path(suffix, **entities)
        deriv.write_json(deriv.sidecar_path(path), deriv.sidecar(
            Description=description, sources=[self.source(p) for p in sources]))
        save_svg(figure, path)
        self.figures.append(path)
        return self.href(path)


#: What a section function receives and returns.
Collector = Callable[[ReportContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Section:
    """One section of a report.

    Parameters
    ----------
    name : str
        Identifier; also the anchor in the page and the template's name
        (``templates/sections/NAME.html``).
    title : str
        Heading shown in the report and its table of contents.
    levels : tuple of str
        Reports the section belongs to (``subject``, ``group``).
    order : int
        Position in the report (smaller first).
    collect : callable
        ``collect(context) -> dict or None``: the template's ``data``, or
        None when the section's outputs do not exist.
    """

    name: str
    title: str
    levels: tuple[str, ...]
    order: int
    collect: Collector

    @property
    def template(self) -> str:
        """The Jinja2 template of this section."""
        return f"sections/{self.name}.html"


#: Every registered section by name.
SECTIONS: dict[str, Section] = {}


def register_section(name: str, *, title: str, levels: Sequence[str] = ("subject",),
                     order: int = 50) -> Callable[[Collector], Collector]:
    """Decorator registering a section's collect function under ``name``.

    Raises
    ------
    UsageError
        For a duplicate name or an unknown level.

    Examples
    --------
    >>> @register_section("doc_example", title="Example", order=99)
    ... def _example(context):
    ...     return None
    >>> SECTIONS.pop("doc_example").title
    'Example'
    """
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise UsageError(f"section {name!r}: levels {unknown} are unknown",
                         fix=f"use {', '.join(LEVELS)}")

    def decorator(collect: Collector) -> Collector:
        if name in SECTIONS:
            raise UsageError(f"report section {name!r} is already registered",
                             fix="choose another name")
        SECTIONS[name] = Section(name, title, tuple(levels), order, collect)
        return collect

    return decorator


def sections_for(level: str) -> list[Section]:
    """The sections of a report level, in report order.

    Examples
    --------
    >>> sections_for("planet")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: report level 'planet' is unknown; fix: use subject, group
    """
    if level not in LEVELS:
        raise UsageError(f"report level {level!r} is unknown", fix=f"use {', '.join(LEVELS)}")
    return sorted((s for s in SECTIONS.values() if level in s.levels),
                  key=lambda s: (s.order, s.name))
