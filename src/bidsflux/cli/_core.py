"""The core commands: serve, demo, send-test-study, status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .._signals import wait_for_stop
from ..errors import UsageError
from ..settings import Settings, load_settings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the DICOM endpoint and every stage (embedded default)")
    serve.add_argument("--port", type=int, help="DICOM port (STORESCP_PORT)")
    serve.add_argument("--aet", help="AE title (STORESCP_AET)")
    serve.add_argument("--workdir", type=Path, help="work folder (BIDSFLUX_WORKDIR)")
    serve.add_argument("--no-endpoint", action="store_true",
                       help="no DICOM endpoint: process what another receiver puts in the spool")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run everything, send a synthetic study to it, follow it through")
    demo.add_argument("--workdir", type=Path, help="work folder (default ./bidsflux-demo)")
    demo.add_argument("--exit", action="store_true", help="stop after the summary instead of serving on")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

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
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="every study with its state and counts")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state", action="append", help="only studies in this state (repeatable)")
    status.add_argument("--study", help="only this study (UID, * as wildcard)")
    status.add_argument("--history", action="store_true", help="every transition of the selected studies")
    status.add_argument("--workdir", type=Path)
    status.set_defaults(func=cmd_status)


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment and .env, with the command line's options on top."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return load_settings(env_file=args.env_file, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..embedded import Service

    settings = settings_from(args, storescp_port=args.port, storescp_aet=args.aet, workdir=args.workdir)
    service = Service(settings, progress=lambda study, msg: log.info(msg, extra={"study_uid": study}))
    service.start(receive=not args.no_endpoint)
    if service.endpoint is not None:
        log.info("DICOM endpoint %s on %s:%d", settings.storescp_aet, service.endpoint.host, service.endpoint.port)
    log.info("forge at %s; work folder %s", service.forge_server.base_url, settings.workdir)
    try:
        wait_for_stop()
    finally:
        service.stop()
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from ..scanner import StudySpec, send_study, write_study

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
    from ..ledger import Ledger, State
    from ..status import format_history, format_table

    settings = settings_from(args, workdir=args.workdir)
    if not settings.ledger_path.exists():
        records = []
    else:
        try:
            states = [State(s.upper()) for s in args.state] if args.state else None
        except ValueError as exc:
            raise UsageError(f"unknown state: {exc}", hint=f"one of {', '.join(s.value for s in State)}") from None
        ledger = Ledger(settings.ledger_path)
        records = ledger.studies(states, args.study)
        history = {r.study_uid: ledger.transitions(r.study_uid) for r in records} if args.history else {}
        ledger.close()
    if args.json:
        rows = [r.as_json() for r in records]
        for row in rows:
            if args.history:
                row["transitions"] = [
                    {"from": str(t.from_state) if t.from_state else None, "to": str(t.to_state), "at": t.at,
                     "counts": t.counts, "error": t.error, "attempt": t.attempt}
                    for t in history[row["study_uid"]]]
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif args.history:
        print("\n\n".join(format_history(r, history[r.study_uid]) for r in records) or "no studies yet")
    else:
        print(format_table(records))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    workdir = args.workdir or Path("bidsflux-demo")
    settings = settings_from(args, workdir=workdir)
    return run_demo(settings, seed=args.seed, keep_serving=not args.exit)
