"""``bidsflux reconvert``: which sessions a heuristic or converter change affects, then one review per study."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ._core import settings_from


def register(sub: Any) -> None:
    reconvert = sub.add_parser("reconvert", help="re-convert the sessions a new heuristic or converter changes")
    reconvert.add_argument("--dry-run", action="store_true",
                           help="only list the affected sessions and how their outputs would change")
    reconvert.add_argument("--study", help="only these studies (StudyInstanceUID, * as wildcard)")
    reconvert.add_argument("--heuristic", help="the heuristic to compare with (default BIDSFLUX_HEURISTIC)")
    reconvert.add_argument("--json", action="store_true", help="print the plan as JSON")
    reconvert.add_argument("--workdir", type=Path, help="work folder holding the ledger (BIDSFLUX_WORKDIR)")
    reconvert.set_defaults(func=cmd_reconvert)


def cmd_reconvert(args: argparse.Namespace) -> int:
    from ..cli.ci import job_credentials
    from ..convert.reconvert import apply, plan
    from ..ledger import Ledger, State

    settings = settings_from(args, workdir=args.workdir, bids_heuristic=args.heuristic)
    if not settings.ledger_path.exists():
        raise LedgerError(f"no ledger at {settings.ledger_path}", hint="give the work folder with --workdir")
    ledger = Ledger(settings.ledger_path)
    try:
        records = ledger.studies([State.MERGED, State.VALIDATED], args.study)
    finally:
        ledger.close()
    sessions = [(r.study_uid, str(r.details["session_path"]), str(r.details["bids_url"]))
                for r in records if r.details.get("bids_url") and r.details.get("session_path")]
    if settings.forge_type == "local":
        from ..forge import credential_env, forge_token

        os.environ.update(credential_env(forge_token(settings)))
    job_credentials()
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reconvert-", dir=settings.jobs_dir) as tmp:
        say = (lambda message: None) if args.json else (lambda message: print(message, flush=True))
        plans = plan(settings, sessions, Path(tmp), say=say)
        affected = [p for p in plans if p.affected]
        if args.json:
            print(json.dumps([asdict(p) for p in plans], indent=2, sort_keys=True))
        else:
            for item in plans:
                print(f"{'AFFECTED' if item.affected else 'unchanged'} {item.session} ({item.bids_url})")
                for reason in item.reasons:
                    print(f"    {reason}")
            print(f"{len(affected)} of {len(plans)} converted session(s) would change")
        if args.dry_run or not affected:
            return 0
        results = apply(settings, plans, Path(tmp), say=say)
    for result in results:
        print(f"{result.bids_url}: {len(result.sessions)} session(s) on {result.branch}, merge request "
              f"!{result.merge_request or '?'} into dev; valid={result.valid} phi_clean={result.phi_clean}")
    return 0 if all(r.valid and r.phi_clean for r in results) else 1
