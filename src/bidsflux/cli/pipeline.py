"""``bidsflux pipeline run``: start a GitLab pipeline for one session and follow it to the end."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import LedgerError, UsageError
from ._core import settings_from


def register(sub: Any) -> None:
    pipeline = sub.add_parser("pipeline", help="GitLab pipelines of a session (BIDSFLUX_FORGE_TYPE=gitlab)")
    actions = pipeline.add_subparsers(dest="pipeline_action", metavar="ACTION")
    actions.required = True
    run = actions.add_parser("run", help="start a pipeline for a session and follow it to the end")
    run.add_argument("session", metavar="SESSION", help="the study's StudyInstanceUID or its session path")
    run.add_argument("--pipeline", default="convert", metavar="NAME",
                     help="convert (BIDS conversion, the default), derivatives (the study's derivative "
                          "jobs on dev), or the NAME or qc/NAME of a derivative project with its own pipeline")
    run.add_argument("--var", action="append", default=[], metavar="K=V",
                     help="an extra CI/CD variable for the pipeline (repeatable)")
    run.add_argument("--workdir", type=Path, help="work folder holding the ledger (BIDSFLUX_WORKDIR)")
    run.set_defaults(func=cmd_pipeline_run)


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from ..forge import make_forge
    from ..forge.gitlab import GitLabForge
    from ..forge.orders import find_session, parse_variables, run_on_demand
    from ..ledger import Ledger

    settings = settings_from(args, workdir=args.workdir)
    variables = parse_variables(args.var)
    forge = make_forge(settings)
    if not isinstance(forge, GitLabForge):
        raise UsageError("pipelines run on GitLab: set BIDSFLUX_FORGE_TYPE=gitlab",
                         hint="the embedded default converts each study itself in `bidsflux serve`")
    if not settings.ledger_path.exists():
        raise LedgerError(f"no ledger at {settings.ledger_path}", hint="give the work folder with --workdir")
    ledger = Ledger(settings.ledger_path)
    try:
        record = find_session(ledger, args.session)
        result = run_on_demand(settings, forge, ledger, record, args.pipeline, variables,
                               lambda study, message: print(message, flush=True))
    finally:
        ledger.close()
    print(result.summary())
    return 0 if result.ok else 1
