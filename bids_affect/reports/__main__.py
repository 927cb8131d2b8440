"""Rebuild the reports of a finished run: ``python -m bids_affect.reports OUTPUT_DIR``.

The BIDS-App's ``--reports-only`` calls :func:`bids_affect.reports.build_reports`
directly; this entry point does the same without the app's other arguments.

Examples
--------
>>> import tempfile
>>> main([tempfile.mkdtemp()])
0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bids_affect.exceptions import BidsAffectError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bids_affect.reports",
        description="Rebuild bids_affect's HTML reports from the derivatives of a finished "
                    "run (nothing is recomputed).")
    parser.add_argument("output_dir", help="the output_dir of a bids_affect run")
    parser.add_argument("--participant-label", "--participant_label", nargs="+",
                        metavar="LABEL", help="subjects to report on (default: all); a "
                                              "sub- prefix is allowed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the reports; print their paths; return an exit code (0, 64, 65, 66, 73)."""
    from bids_affect.reports import build_reports

    args = _parser().parse_args(argv)
    try:
        paths = build_reports(args.output_dir, args.participant_label)
    except BidsAffectError as err:
        print(f"bids_affect reports: error: {err}", file=sys.stderr)
        return err.exit_code
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
