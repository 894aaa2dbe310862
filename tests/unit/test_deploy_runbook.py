"""docs/deploy.md: every command of the runbook is either run by the test suite or needs the site.

The runbook's commands are the lines of its ```sh blocks. Each one must match
exactly one rule below: HERE (the integration test
tests/integration/test_deploy_runbook.py runs it as written, in order) or
SITE (it needs a Docker engine, the swarm, the site's GitLab or a researcher's
machine, which no test machine has; the reason is given). A command that
matches no rule fails this test, so a new runbook step cannot go untested by
accident.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "deploy.md"

HERE = {
    "set -a; . ./.env": r"^set -a; \. \./\.env; set \+a$",
    "export PATH": r'^export PATH="\$PWD/\.venv/bin:\$PATH"$',
    "export admin settings": r"^export (GITLAB_ADMIN_TOKEN_FILE|CI_SERVER_URL)=",
    "cp .env.example": r"^cp \.env\.example \.env$",
    "install folders and files": r"^install (-d|-m 0600) ",
    "generate_secrets.sh": r"^deploy/generate_secrets\.sh( |$)",
    "docker stack config": r"^docker stack config -c BIDSflux_stack\.yml > /dev/null$",
    "bidsflux deploy": r"^bidsflux deploy (init|runners) ",
    "shred": r"^shred -u ",
    "build.sh": r"^sh containers/build\.sh ",
    "send-test-study": r"^bidsflux send-test-study ",
    "setup_mercure.py": r"^python3 local-stack/mercure/setup_mercure\.py$",
    "openssl": r"^openssl x509 ",
}

SITE = {
    "make install": (r"^make install$", "run by .ci/run itself: `make test` installs first"),
    "docker engine": (r"^docker (swarm|node|stack deploy|stack services|service|login|exec|pull|run|compose) ",
                      "needs a Docker engine and the site's swarm"),
    "host set-up": (r"^(nvidia-ctk|systemctl) ", "the processing node's own Docker and NVIDIA set-up"),
    "copy to a node": (r"^scp ", "copies to the processing node"),
    "push to GitLab": (r"^git push ", "pushes to the site's GitLab"),
    "in MinIO": (r"^mc ", "runs inside the site's MinIO container"),
    "researcher": (r"^(datalad clone|cd study && )", "a researcher's machine, against the site"),
}


def runbook_commands(text: str | None = None) -> list[str]:
    """The commands of the ```sh blocks, continuation lines joined, comments and blank lines left out."""
    text = RUNBOOK.read_text() if text is None else text
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if pending:
                line = pending + " " + line.strip()
                pending = ""
            if line.endswith("\\"):
                pending = line[:-1].rstrip()
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def classify(command: str) -> tuple[str, str]:
    """("here" | "site", rule name); AssertionError when no rule or several match."""
    found = [("here", name) for name, pattern in HERE.items() if re.search(pattern, command)]
    found += [("site", name) for name, (pattern, _) in SITE.items() if re.search(pattern, command)]
    assert len(found) == 1, f"runbook command {command!r} matches {found or 'no rule'}: add it to HERE or SITE"
    return found[0]


def test_every_runbook_command_is_run_here_or_needs_the_site() -> None:
    commands = runbook_commands()
    assert len(commands) > 30
    used = {classify(command) for command in commands}
    # No stale rule: each one still matches a command of the runbook.
    assert {name for kind, name in used if kind == "here"} == set(HERE)
    assert {name for kind, name in used if kind == "site"} == set(SITE)


def test_the_runbook_covers_the_steps_the_site_needs() -> None:
    text = RUNBOOK.read_text()
    for needed in ("docker swarm init", "--label-add bidsflux.node=data", "--label-add bidsflux.node=processing",
                   "deploy/generate_secrets.sh", "docker stack deploy", "bidsflux deploy init",
                   "bidsflux deploy runners", "bidsflux send-test-study", "datalad clone", "## Upgrades",
                   "## Backup and restore", "nvidia-ctk", "gitlab-backup create", "docker-compose-mercure.yml"):
        assert needed in text, needed
    # Links to the other documents resolve.
    for link in re.findall(r"\]\(([a-z]+\.md)\)", text):
        assert (RUNBOOK.parent / link).is_file(), link


def test_the_parser_joins_continuations_and_skips_comments() -> None:
    text = "intro\n```sh\n# a comment\nfirst \\\n  --option\n\nsecond\n```\n```text\nnot a command\n```\n"
    assert runbook_commands(text) == ["first --option", "second"]


def test_classify_refuses_an_unknown_command() -> None:
    try:
        classify("rm -rf /srv/bidsflux")
    except AssertionError as exc:
        assert "no rule" in str(exc)
    else:
        raise AssertionError("an unknown command must not pass")
