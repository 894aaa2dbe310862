"""Commands that put stopped studies back to work: retry, quarantine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..ledger import Ledger, State
from ..recovery import kept_batches, requeue
from ._core import settings_from


def register(sub: Any) -> None:
    retry = sub.add_parser("retry", help="put a FAILED or QUARANTINED study back to work, or run a MERGED "
                                         "study's failed derivatives again")
    retry.add_argument("study", help="StudyInstanceUID")
    retry.add_argument("--workdir", type=Path)
    retry.set_defaults(func=cmd_retry)

    quarantine = sub.add_parser("quarantine", help="studies kept aside, and releasing them")
    q_sub = quarantine.add_subparsers(dest="action", metavar="ACTION")
    q_sub.required = True
    listing = q_sub.add_parser("list", help="every quarantined study with its reason")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--workdir", type=Path)
    listing.set_defaults(func=cmd_quarantine_list)
    release = q_sub.add_parser("release", help="index a quarantined study again (after fixing the cause)")
    release.add_argument("study")
    release.add_argument("--workdir", type=Path)
    release.set_defaults(func=cmd_quarantine_release)


def _open(args: argparse.Namespace) -> tuple[Any, Ledger]:
    settings = settings_from(args, workdir=args.workdir)
    return settings, Ledger(settings.ledger_path)


def cmd_retry(args: argparse.Namespace) -> int:
    settings, ledger = _open(args)
    try:
        print(requeue(settings, ledger, args.study).describe())
    finally:
        ledger.close()
    return 0


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    settings, ledger = _open(args)
    try:
        print(requeue(settings, ledger, args.study, only=State.QUARANTINED).describe())
    finally:
        ledger.close()
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    settings, ledger = _open(args)
    try:
        rows: list[dict[str, Any]] = [{"study_uid": r.study_uid, "reason": r.error, "since": r.updated_at,
                 "kept_at": [str(p) for p in kept_batches(settings, r.study_uid)]}
                for r in ledger.studies([State.QUARANTINED])]
    finally:
        ledger.close()
    unfiled = sorted((settings.spool_dir / "quarantine").glob("unfiled-*/*.reason.json"))
    if args.json:
        print(json.dumps({"studies": rows, "unfiled_instances": len(unfiled)}, indent=2))
        return 0
    if not rows:
        print("no quarantined studies")
    for row in rows:
        print(f"{row['study_uid']}  {row['reason']}")
        for path in row["kept_at"]:
            print(f"    kept at {path}")
    if unfiled:
        print(f"{len(unfiled)} instance(s) that could not be filed under a study are kept in "
              f"{settings.spool_dir / 'quarantine'} (each with a .reason.json)")
    return 0
