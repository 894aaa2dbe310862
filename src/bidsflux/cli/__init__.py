"""The ``bidsflux`` command line: the only place that prints errors.

Each failure is one line on stderr (what failed, for which study, what to
do) and a stable exit code from the error's family; ``--debug`` adds the
traceback.  Commands live in the modules of this package: every module with
a ``register(subparsers)`` function adds its own, and sets ``func`` on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import BidsfluxError

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


class _StudyFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        uid = getattr(record, "study_uid", None)
        record.study = f" [{uid}]" if uid else ""
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (main() may run many times in one process)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _configure_logging(level: str) -> None:
    handler = _StderrHandler()
    handler.addFilter(_StudyFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(study)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "datalad"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _tool_defaults() -> None:
    # DataLad sets its own log level when imported; progress comes from our own lines.
    os.environ.setdefault("DATALAD_LOG_LEVEL", "WARNING")
    os.environ.setdefault("DATALAD_UI_PROGRESSBAR", "none")
    # Commits made by the indexer carry the bot's name, whatever the machine's git config says.
    for var, value in (("GIT_AUTHOR_NAME", "dicom_bot"), ("GIT_COMMITTER_NAME", "dicom_bot"),
                       ("GIT_AUTHOR_EMAIL", "dicom_bot@bids-flux.invalid"),
                       ("GIT_COMMITTER_EMAIL", "dicom_bot@bids-flux.invalid")):
        os.environ.setdefault(var, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidsflux", description="MRI studies in, versioned BIDS datasets out.")
    parser.add_argument("--version", action="version", version=f"bidsflux {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--env-file", type=Path, help="read settings from this .env file (default ./.env)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "_core", m.name)):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before settings load (which may fail): a bad level is reported by the settings, not here.
    level = os.environ.get("BIDSFLUX_LOG_LEVEL", "INFO").upper()
    _configure_logging("DEBUG" if args.debug else level if level in LOG_LEVELS else "INFO")
    _tool_defaults()
    try:
        return int(args.func(args))
    except BidsfluxError as exc:
        if args.debug:
            log.exception("failed")
        print(f"bidsflux: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
