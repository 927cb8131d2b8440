"""Methods: the citation boilerplate, the configuration that ran, its warnings and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bids_affect.io import derivatives as deriv
from bids_affect.reports.formatting import log_problems, markdown_to_html, read_json
from bids_affect.reports.registry import ReportContext, register_section

#: Written by :func:`bids_affect.io.derivatives.init_derivatives`.
CITATION_FILES = ("logs/CITATION.md", "logs/CITATION.bib")

#: The configuration each run saves in its log folder (``bids_affect.toml``).
CONFIG_NAME = "bids_affect.toml"


def _runs(context: ReportContext) -> list[Path]:
    """Log folders of this report's runs (``sub-X/log/<run_id>`` or ``group/log/...``).

    Run ids start with the date and time, so their order is the order the runs started.
    """
    pattern = deriv.log_dir(context.output_dir, context.subject, "*")
    return sorted(p for p in pattern.parent.glob(pattern.name) if p.is_dir())


def _log_block(folder: Path) -> dict[str, Any] | None:
    logs = sorted(folder.glob("*.log"))
    if not logs:
        return None
    records = [{"file": path.name, "level": record.level, "logger": record.logger,
                "message": record.message}
               for path in logs for record in log_problems(path.read_text(errors="replace"))]
    return {"run_id": folder.name, "files": [path.name for path in logs],
            "records": records}


@register_section("methods", title="Methods and provenance", levels=("subject", "group"),
                  order=90)
def methods_section(context: ReportContext) -> dict[str, Any] | None:
    """CITATION.md as text, the last run's configuration, and warnings and errors."""
    citation = context.output_dir / CITATION_FILES[0]
    bibtex = context.output_dir / CITATION_FILES[1]
    description = context.output_dir / "dataset_description.json"
    runs = _runs(context)
    if not (citation.exists() or runs or description.exists()):
        return None
    generated = []
    if description.exists():
        for item in read_json(description).get("GeneratedBy", []):
            container = item.get("Container") or {}
            generated.append(" ".join(str(part) for part in (
                item.get("Name"), item.get("Version"),
                f"(container {container.get('Type')} {container.get('Tag')})"
                if container else "") if part))
    config = next((folder / CONFIG_NAME for folder in reversed(runs)
                   if (folder / CONFIG_NAME).exists()), None)
    logs = [block for block in map(_log_block, runs) if block]
    return {
        "citation": markdown_to_html(citation.read_text()) if citation.exists() else None,
        "bibtex": bibtex.read_text() if bibtex.exists() else None,
        "generated_by": generated,
        "config": {"run_id": config.parent.name, "text": config.read_text()} if config
        else None,
        "logs": logs,
    }
