"""Turn derivative tables, numbers, Markdown and logs into what the templates show.

Pure functions: no file is written here. Numbers are formatted once, the same
way in every section (3 decimals; p-values with 3 significant digits; ``n/a``
for missing values), so reports read alike and rebuild byte for byte.

Examples
--------
>>> format_number(0.69041603)
'0.690'
>>> format_p(0.000999000999)
'0.000999'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from bids_affect.exceptions import InputDataError

#: Column names whose values are p-values (formatted with significant digits).
P_COLUMNS = re.compile(r"^(p|p_.*|.*_p|pfwe|pfdr)$")

#: Log levels a report shows from the run's log files.
SHOWN_LOG_LEVELS = ("WARNING", "ERROR", "CRITICAL")

#: One record of the app's log format: ``time [logger] LEVEL: message``.
_LOG_RECORD = re.compile(r"^(?P<time>\S+(?: [\d:,.]+)?) \[(?P<logger>[^\]]+)\] "
                         r"(?P<level>[A-Z]+): (?P<message>.*)$")


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_number(value: Any, digits: int = 3) -> str:
    """A number for a report: integers as such, floats with ``digits`` decimals.

    Examples
    --------
    >>> format_number(12), format_number(0.12345), format_number(None), format_number("x")
    ('12', '0.123', 'n/a', 'x')
    """
    if _missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def format_p(value: Any) -> str:
    """A p-value with 3 significant digits (``n/a`` when missing).

    Examples
    --------
    >>> format_p(0.25), format_p(0.0499), format_p(1.0), format_p(None)
    ('0.25', '0.0499', '1', 'n/a')
    """
    if _missing(value):
        return "n/a"
    return f"{float(value):.3g}"


def format_cell(column: str, value: Any) -> str:
    """Format one table cell: p-value columns by :func:`format_p`, others as numbers.

    Examples
    --------
    >>> format_cell("p_permutation", 0.0123456), format_cell("r", 0.0123456)
    ('0.0123', '0.012')
    """
    if P_COLUMNS.match(str(column)) and not isinstance(value, str):
        return format_p(value)
    return format_number(value)


@dataclass(frozen=True)
class Table:
    """A table ready for the ``table`` macro: column names, formatted rows, and which
    columns hold numbers (right-aligned)."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def table_from_frame(frame: pd.DataFrame, *, caption: str = "",
                     columns: Sequence[str] | None = None) -> Table:
    """Format a DataFrame for a report (index dropped; ``columns`` selects and orders).

    Examples
    --------
    >>> table_from_frame(pd.DataFrame({"a": [1, 2], "p": [0.01234, 0.5]})).rows
    [['1', '0.0123'], ['2', '0.5']]
    """
    names = list(columns) if columns is not None else [str(c) for c in frame.columns]
    rows = [[format_cell(name, value) for name, value in zip(names, record)]
            for record in frame[names].itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(frame[name])
               and not pd.api.types.is_bool_dtype(frame[name]) for name in names]
    return Table(columns=names, rows=rows, caption=caption, numeric=numeric)


def table_from_records(records: Iterable[Mapping[str, Any]], columns: Sequence[str], *,
                       caption: str = "") -> Table:
    """Format a list of dicts (one per row) for a report; missing keys show ``n/a``.

    Examples
    --------
    >>> table_from_records([{"fold": 1, "score": 0.5}], ["fold", "score", "n"]).rows
    [['1', '0.500', 'n/a']]
    """
    records = list(records)
    rows = [[format_cell(name, record.get(name)) for name in columns] for record in records]
    numeric = [all(_is_number(r.get(name)) or _missing(r.get(name)) for r in records)
               and any(_is_number(r.get(name)) for r in records) for name in columns]
    return Table(columns=list(columns), rows=rows, caption=caption, numeric=numeric)


# --------------------------------------------------------------------------- reading


def read_tsv(path: Path) -> pd.DataFrame:
    """Read a derivative TSV (``n/a`` as missing; other strings kept as they are).

    Raises
    ------
    InputDataError
        Exit 65, naming the file, when it cannot be parsed.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.tsv"
    >>> _ = path.write_text("a\\tb\\n1\\tn/a\\n")
    >>> read_tsv(path)["b"].isna().tolist()
    [True]
    """
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputDataError(f"cannot read this table for the report ({err})", path=path,
                             fix="rerun the analysis that wrote it") from err


def read_json(path: Path) -> dict[str, Any]:
    """Read a derivative JSON file (an object).

    Raises
    ------
    InputDataError
        Exit 65, naming the file, when it is not a JSON object.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.json"
    >>> _ = path.write_text('{"a": 1}')
    >>> read_json(path)
    {'a': 1}
    """
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputDataError(f"cannot read this JSON file for the report ({err})", path=path,
                             fix="rerun the analysis that wrote it") from err
    if not isinstance(content, dict):
        raise InputDataError("this JSON file does not hold an object", path=path,
                             fix="rerun the analysis that wrote it")
    return content


# --------------------------------------------------------------------------- text


def markdown_to_html(text: str) -> Markup:
    """The small Markdown subset of ``CITATION.md`` as escaped HTML.

    Headings (``#``, shown two levels lower so they nest in a section),
    paragraphs, ``-``/``*`` lists and fenced code blocks; everything else is
    escaped text.

    Examples
    --------
    >>> str(markdown_to_html("# Cite\\n\\nUse <this>.\\n\\n- a\\n- b"))
    '<h4>Cite</h4>\\n<p>Use &lt;this&gt;.</p>\\n<ul><li>a</li><li>b</li></ul>'
    """
    html: list[str] = []
    fence: list[str] | None = None
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if all(re.match(r"^[-*] ", line) for line in block):
            items = "".join(f"<li>{escape(line[2:].strip())}</li>" for line in block)
            html.append(f"<ul>{items}</ul>")
        else:
            html.append(f"<p>{escape(' '.join(line.strip() for line in block))}</p>")
        block.clear()

    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                html.append(f"<pre>{escape(chr(10).join(fence))}</pre>")
                fence = None
            else:
                fence.append(line)
            continue
        heading = re.match(r"^(#{1,4})\s+(.*)$", line)
        if line.startswith("```"):
            flush()
            fence = []
        elif heading:
            flush()
            level = min(len(heading.group(1)) + 3, 6)
            html.append(f"<h{level}>{escape(heading.group(2).strip())}</h{level}>")
        elif not line.strip():
            flush()
        else:
            block.append(line)
    flush()
    if fence is not None:  # an unclosed fence still shows its text
        html.append(f"<pre>{escape(chr(10).join(fence))}</pre>")
    return Markup("\n".join(html))


@dataclass(frozen=True)
class LogRecord:
    """One warning or error of a run's log file."""

    level: str
    logger: str
    message: str


def log_problems(text: str, levels: Sequence[str] = SHOWN_LOG_LEVELS) -> list[LogRecord]:
    """The records of ``levels`` in a log written as ``time [logger] LEVEL: message``.

    Lines that do not start a record (tracebacks, wrapped messages) belong to
    the record above them; lines before the first record are kept as one
    record of level ``UNKNOWN``, since their level cannot be told.

    Examples
    --------
    >>> log = ("261206-20:58:17 [bids_affect.steps] WARNING: UMAP skipped\\n"
    ...        "261206-20:58:18 [bids_affect.progress] IMPORTANT: done\\n")
    >>> [(r.level, r.message) for r in log_problems(log)]
    [('WARNING', 'UMAP skipped')]
    >>> log_problems("2026-12-06 20:58:17,123 [bids_affect] ERROR: failed")[0].level
    'ERROR'
    """
    records: list[list[str]] = []  # level, logger, message lines
    for line in text.splitlines():
        match = _LOG_RECORD.match(line)
        if match:
            records.append([match["level"], match["logger"], match["message"]])
        elif records:
            records[-1][2] += "\n" + line
        elif line.strip():
            records.append(["UNKNOWN", "", line])
    return [LogRecord(level, logger, message) for level, logger, message in records
            if level in levels or level == "UNKNOWN"]
