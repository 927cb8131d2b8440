"""Entry point of the BIDS-App: ``bids_affect bids_dir output_dir participant|group``.

:func:`main` is the only place that turns errors into exit codes. Without
``--debug`` a failure prints one line (the file, the problem, the fix); with
``--debug`` the traceback.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from bids_affect.exceptions import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    BidsAffectError,
)
from bids_affect.progress import IMPORTANT

LOGGER = logging.getLogger("bids_affect")


def _setup_logging(verbose: int, debug: bool) -> None:
    # Default: warnings plus progress lines; -v adds INFO; -vv or --debug adds DEBUG.
    level = logging.DEBUG if debug or verbose >= 2 else logging.INFO if verbose else IMPORTANT
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s",
                                           datefmt="%y%m%d-%H:%M:%S"))
    root = logging.getLogger("bids_affect")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Library chatter (nilearn, pybids, sklearn warnings) goes to the log, not stderr lines.
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler] if debug else [logging.NullHandler()]
    warnings_logger.propagate = False
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    nipype_level = "DEBUG" if debug else "INFO" if verbose >= 2 else "CRITICAL"
    nipype_config.update_config({"logging": {"workflow_level": nipype_level,
                                             "interface_level": nipype_level,
                                             "utils_level": nipype_level}})
    nipype_logging.update_logging(nipype_config)


#: Caches that default to $HOME (matplotlib; numba when its package folder is read-only;
#: deno of the bids-validator): fMRIPrep issue 1777. Unset ones go to the work directory,
#: so a read-only HOME (containers, clusters) never breaks a run.
CACHE_VARIABLES = {"MPLCONFIGDIR": "matplotlib", "NUMBA_CACHE_DIR": "numba",
                   "XDG_CACHE_HOME": "xdg-cache", "XDG_CONFIG_HOME": "xdg-config"}


def redirect_caches(work_dir: Path) -> None:
    """Point the caches of :data:`CACHE_VARIABLES` that are unset into ``work_dir/.cache``."""
    for variable, folder in CACHE_VARIABLES.items():
        os.environ.setdefault(variable, str(Path(work_dir).absolute() / ".cache" / folder))


def _work_dir_of(argv: list[str]) -> Path:
    """The ``-w`` of a command line, before it is parsed (libraries imported while
    parsing may open their caches already)."""
    import argparse
    import dataclasses

    from bids_affect.config import ExecutionConfig, default_of, flags_of

    spec = next(f for f in dataclasses.fields(ExecutionConfig) if f.name == "work_dir")
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument(*flags_of(ExecutionConfig, spec), dest="work_dir", type=Path,
                       default=default_of(spec))
    return early.parse_known_args(argv)[0].work_dir


def _error_line(err: BaseException) -> str:
    return f"bids_affect: error: {' '.join(_with_flags(str(err)).split())}"


_PARAMETER_PREFIX = re.compile(r"^((?:sub-\S+ \S+: )?)(\w+): ")


def _with_flags(message: str) -> str:
    """A library message that starts with a parameter name, told with its flag instead.

    Library errors name parameters (``n_splits: must be ...``), after the
    subject and step a workflow node adds (``sub-01 decode_ridge: ...``); users
    set flags (``--cv-folds``). The table comes from the options' declarations
    (:func:`bids_affect.config.parameter_flags`).

    Examples
    --------
    >>> _with_flags("sub-01 decode_ridge: n_splits: must be an integer >= 2, got 1")
    'sub-01 decode_ridge: --cv-folds: must be an integer >= 2, got 1'
    """
    match = _PARAMETER_PREFIX.match(message)
    if match is None:
        return message
    try:
        from bids_affect.config import parameter_flags

        flag = parameter_flags().get(match.group(2))
    except Exception:  # the registry itself failed to load: keep the message as it is
        return message
    return message if flag is None else f"{match.group(1)}{flag}: {message[match.end():]}"


def _report(err: BaseException, debug: bool) -> int:
    """Print the one-line message of ``err`` (and, with --debug, its traceback)."""
    if debug:
        traceback.print_exception(err)
    if isinstance(err, BidsAffectError):
        print(_error_line(err), file=sys.stderr)
        return err.exit_code
    print(f"bids_affect: error: unexpected failure ({type(err).__name__}: "
          f"{' '.join(str(err).split())[:300]}); fix: rerun with --debug for the traceback "
          "and report it", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run the BIDS-App; return its exit code (the console script exits with it)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        redirect_caches(_work_dir_of(list(argv if argv is not None else sys.argv[1:])))
        from bids_affect.cli.parser import parse_args

        config = parse_args(argv)
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0)
    except Exception as err:  # every failure: one line and a code
        return _report(err, debug)

    _setup_logging(config.execution.verbose, config.execution.debug)
    if config.nipype.omp_nthreads:
        os.environ["OMP_NUM_THREADS"] = str(config.nipype.omp_nthreads)
    previous = _terminate_on_sigterm()
    try:
        from bids_affect.workflows.base import run_bids_app

        run_bids_app(config)
    except (KeyboardInterrupt, Terminated) as interrupt:
        signal_name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
        levels = " and ".join(config.execution.analysis_level)
        print(f"bids_affect: interrupted by {signal_name} during the {levels} level; rerun "
              f"the same command with the same work directory (-w "
              f"{config.execution.work_dir}) to resume from its finished steps",
              file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    except Exception as err:  # the last resort maps to exit 1
        return _report(err, config.execution.debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_SUCCESS


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's time limit, ``kill``): stop as an interrupt does."""


def _terminate_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); the previous handler."""
    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    with warnings.catch_warnings():
        sys.exit(main())
