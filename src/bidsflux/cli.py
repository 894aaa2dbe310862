"""The ``bidsflux`` command line: the only place that prints errors.

Each failure is one line on stderr (what failed, for which study, what to
do) and a stable exit code from the error's family; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._signals import wait_for_stop
from .errors import BidsfluxError, UsageError
from .settings import Settings, load_settings

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


class _StudyFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        uid = getattr(record, "study_uid", None)
        record.study = f" [{uid}]" if uid else ""
        return True


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_StudyFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(study)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "datalad"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _quiet_datalad() -> None:
    # DataLad sets its own log level when imported; progress comes from our own lines.
    os.environ.setdefault("DATALAD_LOG_LEVEL", "WARNING")
    os.environ.setdefault("DATALAD_UI_PROGRESSBAR", "none")


def _git_identity_defaults() -> None:
    # Commits made by the indexer carry the bot's name, whatever the machine's git config says.
    for var, value in (("GIT_AUTHOR_NAME", "dicom_bot"), ("GIT_COMMITTER_NAME", "dicom_bot"),
                       ("GIT_AUTHOR_EMAIL", "dicom_bot@bids-flux.invalid"),
                       ("GIT_COMMITTER_EMAIL", "dicom_bot@bids-flux.invalid")):
        os.environ.setdefault(var, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidsflux", description="MRI studies in, versioned BIDS datasets out.")
    parser.add_argument("--version", action="version", version=f"bidsflux {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--env-file", type=Path, help="read settings from this .env file (default ./.env)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the DICOM endpoint and every stage (embedded default)")
    serve.add_argument("--port", type=int, help="DICOM port (STORESCP_PORT)")
    serve.add_argument("--aet", help="AE title (STORESCP_AET)")
    serve.add_argument("--workdir", type=Path, help="work folder (BIDSFLUX_WORKDIR)")

    demo = sub.add_parser("demo", help="run everything, send a synthetic study to it, follow it through")
    demo.add_argument("--workdir", type=Path, help="work folder (default ./bidsflux-demo)")
    demo.add_argument("--exit", action="store_true", help="stop after the summary instead of serving on")
    demo.add_argument("--seed", type=int, default=1)

    send = sub.add_parser("send-test-study", help="generate a synthetic MR study and C-STORE it")
    send.add_argument("host", nargs="?")
    send.add_argument("port", nargs="?", type=int)
    send.add_argument("--aet", default="BIDSFLUX", help="called AE title")
    send.add_argument("--calling-aet", default="SYNTHSCANNER")
    send.add_argument("--seed", type=int, default=0)
    send.add_argument("--patient-id", default="SUB01")
    send.add_argument("--study", default="Doe^Demo", help="StudyDescription, ReproIn style 'PI^Project'")
    send.add_argument("--session", default="01")
    send.add_argument("--size", choices=("small", "large"), default="small")
    send.add_argument("--output", type=Path, help="write the files here instead of sending them")

    status = sub.add_parser("status", help="every study with its state and counts")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state", action="append", help="only studies in this state (repeatable)")
    status.add_argument("--study", help="only this study (UID, * as wildcard)")
    status.add_argument("--workdir", type=Path)

    ci = sub.add_parser("ci", help="the commands CI jobs run")
    ci_sub = ci.add_subparsers(dest="job", metavar="JOB")
    ci_sub.required = True
    convert = ci_sub.add_parser("convert", help="convert one session to BIDS on branch convert/<session>")
    convert.add_argument("--bids-url", required=True)
    convert.add_argument("--session", required=True)
    convert.add_argument("--study", required=True)
    convert.add_argument("--job-dir", type=Path, default=Path("."))
    convert.add_argument("--result", type=Path, help="write the outcome as JSON here")
    return parser


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return load_settings(env_file=args.env_file, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from .embedded import Service

    settings = _settings(args, storescp_port=args.port, storescp_aet=args.aet, workdir=args.workdir)
    service = Service(settings, progress=lambda study, msg: log.info(msg, extra={"study_uid": study})).start()
    assert service.endpoint is not None
    log.info("DICOM endpoint %s on %s:%d; forge at %s", settings.storescp_aet, service.endpoint.host,
             service.endpoint.port, service.forge_server.base_url)
    try:
        wait_for_stop()
    finally:
        service.stop()
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from .scanner import StudySpec, send_study, write_study

    spec = StudySpec(seed=args.seed, patient_id=args.patient_id, study_description=args.study,
                     session=args.session, size=args.size)
    if args.output is not None:
        paths = write_study(spec, args.output)
        print(f"wrote {len(paths)} instances to {args.output}")
        return 0
    if not args.host or not args.port:
        raise UsageError("send-test-study needs HOST and PORT, or --output DIR")
    result = send_study(spec, args.host, args.port, called_aet=args.aet, calling_aet=args.calling_aet,
                        progress=_progress_bar("sending"))
    print(f"\nsent {result.sent} instances in {result.series} series ({result.bytes / 1e6:.1f} MB) "
          f"of study {result.study_uid}; {result.failed} failed")
    return 0 if result.failed == 0 else 1


def _progress_bar(label: str) -> Any:
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.2:
            last[0] = now
            print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)

    return show


def cmd_status(args: argparse.Namespace) -> int:
    from .ledger import Ledger, State
    from .status import format_table

    settings = _settings(args, workdir=args.workdir)
    if not settings.ledger_path.exists():
        records = []
    else:
        try:
            states = [State(s.upper()) for s in args.state] if args.state else None
        except ValueError as exc:
            raise UsageError(f"unknown state: {exc}", hint=f"one of {', '.join(s.value for s in State)}") from None
        ledger = Ledger(settings.ledger_path)
        records = ledger.studies(states, args.study)
        ledger.close()
    if args.json:
        print(json.dumps([r.as_json() for r in records], indent=2, sort_keys=True))
    else:
        print(format_table(records))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    workdir = args.workdir or Path("bidsflux-demo")
    settings = _settings(args, workdir=workdir)
    return run_demo(settings, seed=args.seed, keep_serving=not args.exit)


def cmd_ci(args: argparse.Namespace) -> int:
    from .convert import run_convert_job

    settings = _settings(args)
    outcome = run_convert_job(settings, bids_url=args.bids_url, session=args.session, study_uid=args.study,
                              job_dir=args.job_dir.resolve())
    if args.result:
        outcome.write(args.result)
    print(f"[convert] {outcome.summary}; merged={outcome.merged}")
    return 0


COMMANDS = {"serve": cmd_serve, "demo": cmd_demo, "send-test-study": cmd_send, "status": cmd_status,
            "ci": cmd_ci}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Before settings load (which may fail): a bad level is reported by the settings, not here.
    level = os.environ.get("BIDSFLUX_LOG_LEVEL", "INFO").upper()
    _configure_logging("DEBUG" if args.debug else level if level in LOG_LEVELS else "INFO")
    _git_identity_defaults()
    _quiet_datalad()
    try:
        return COMMANDS[args.command](args)
    except BidsfluxError as exc:
        if args.debug:
            log.exception("failed")
        print(f"bidsflux: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
