"""Reading the user's settings files (config TOML, BIDS filter JSON, plugin YAML).

One function turns every way such a file can fail into one exit-64 line that
names the file, so the command line's three file options fail alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bids_affect.exceptions import UsageError


def read_settings_file(path: Path, what: str, loads: Callable[[str], Any],
                       syntax_errors: tuple[type[BaseException], ...], language: str) -> Any:
    """Parse the text of ``path`` with ``loads``; any failure is a :class:`UsageError`.

    Parameters
    ----------
    path : Path
        The file.
    what : str
        What the file is, for messages ("config file").
    loads : callable
        Parser of the text (``tomllib.loads``, ``json.loads``, ``yaml.safe_load``).
    syntax_errors : tuple of exception types
        What ``loads`` raises for bad syntax.
    language : str
        The file's format, for messages ("TOML").

    Examples
    --------
    >>> import json, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "f.json"
    >>> _ = path.write_text("{oops")
    >>> read_settings_file(path, "filter file", json.loads, (ValueError,), "JSON")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.UsageError: ...: filter file is not valid JSON (...); fix: correct the JSON syntax
    """  # noqa: E501
    try:
        return loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UsageError(f"{what} does not exist", path=path,
                         fix=f"give the path of an existing {language} file") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} is not UTF-8 text ({err.reason})", path=path,
                         fix=f"save it as a UTF-8 {language} file") from err
    except OSError as err:
        raise UsageError(f"{what} cannot be read ({err.strerror})", path=path,
                         fix=f"give the path of a readable {language} file") from err
    except syntax_errors as err:
        raise UsageError(f"{what} is not valid {language} ({' '.join(str(err).split())})",
                         path=path, fix=f"correct the {language} syntax") from err
