"""``bidsflux deploy init`` and ``bidsflux deploy runners``: the site's GitLab, bootstrapped idempotently."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._core import settings_from


def register(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="bootstrap the site's GitLab (needs GITLAB_ADMIN_TOKEN)")
    steps = deploy.add_subparsers(dest="deploy_step", metavar="STEP")
    steps.required = True

    init = steps.add_parser("init", help="bots and tokens, operations group, project templates, CI/CD variables")
    delivery = init.add_mutually_exclusive_group()
    delivery.add_argument("--secrets-dir", type=Path,
                          help="write new tokens here as Docker secret files (default <workdir>/secrets)")
    delivery.add_argument("--print-tokens", action="store_true",
                          help="print new tokens once instead of writing them to files")
    init.add_argument("--rotate", action="store_true", help="issue new bot tokens and revoke the old ones")
    init.add_argument("--ci-pipelines", type=Path, default=Path("ci-pipelines"),
                      help="folder published as the ci-pipelines project (default ./ci-pipelines)")
    init.add_argument("--templates", type=Path, default=Path("deploy/project-templates"),
                      help="one folder per project template (default ./deploy/project-templates)")
    init.add_argument("--workdir", type=Path, help="work folder (BIDSFLUX_WORKDIR)")
    init.set_defaults(func=cmd_deploy_init)

    runners = steps.add_parser("runners", help="create the runners of deploy/runners.yml, write their config.toml")
    runners.add_argument("--file", type=Path, default=Path("deploy/runners.yml"), help="the runners file")
    runners.add_argument("--output", type=Path, help="folder for <node>/config.toml (default <workdir>/runners)")
    runners.add_argument("--url", help="GitLab's address as the runners reach it (default CI_SERVER_URL)")
    runners.add_argument("--workdir", type=Path, help="work folder (BIDSFLUX_WORKDIR)")
    runners.set_defaults(func=cmd_deploy_runners)


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_deploy_init(args: argparse.Namespace) -> int:
    from ..deploy import Sources, bootstrap

    settings = settings_from(args, workdir=args.workdir)
    secrets_dir = None if args.print_tokens else (args.secrets_dir or settings.workdir / "secrets")
    report = bootstrap(settings, sources=Sources(args.ci_pipelines, args.templates), secrets_dir=secrets_dir,
                       show=_echo if args.print_tokens else None, rotate=args.rotate, echo=_echo)
    print(report.summary())
    return 1 if report.failed else 0


def cmd_deploy_runners(args: argparse.Namespace) -> int:
    from ..deploy import deploy_runners

    settings = settings_from(args, workdir=args.workdir)
    report = deploy_runners(settings, args.file, args.output or settings.workdir / "runners", url=args.url,
                            echo=_echo)
    print(report.summary())
    return 1 if report.failed else 0
