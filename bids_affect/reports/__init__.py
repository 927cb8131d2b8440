"""HTML reports per subject and for the group, built from the derivatives alone.

``build_reports(output_dir)`` writes ``sub-X.html`` for every subject (figures
as SVG in ``sub-X/figures/``) and ``group.html`` when the group level ran.
Sections come from a registry (:mod:`bids_affect.reports.registry`): each one
appears only when its outputs exist, and an analysis adds its own section
without touching the others. ``python -m bids_affect.reports OUTPUT_DIR``
rebuilds the reports of a finished run.

Examples
--------
>>> import tempfile
>>> build_reports(tempfile.mkdtemp())
[]
"""

from bids_affect.reports.build import (
    build_group_report,
    build_reports,
    build_subject_report,
    list_subjects,
    missing_files,
    referenced_files,
    render_report,
)
from bids_affect.reports.registry import (
    SECTIONS,
    ReportContext,
    Section,
    register_section,
    sections_for,
)

__all__ = [
    "SECTIONS",
    "ReportContext",
    "Section",
    "build_group_report",
    "build_reports",
    "build_subject_report",
    "list_subjects",
    "missing_files",
    "referenced_files",
    "register_section",
    "render_report",
    "sections_for",
]
