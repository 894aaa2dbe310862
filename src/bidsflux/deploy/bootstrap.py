"""``bidsflux deploy init``: the GitLab side of a site, made idempotently with an admin token.

In order: the bots and their tokens (see ``_bots``); the operations group
(``BIDSFLUX_GITLAB_OPS_GROUP``) with the bots as Reporters, holding
``ci-pipelines`` (this repository's ``ci-pipelines/``) and the subgroup
``project-templates`` (one project per folder of ``deploy/project-templates``),
made the custom project templates of the operations group and of the instance;
then the CI/CD variables every data project's jobs need, at instance level or
on ``BIDSFLUX_GITLAB_CI_VARIABLES_GROUP``.  Each item is checked before it is
made, so a second run reports every item unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ForgeError, SettingsError
from ..forge import credential_env
from ..forge._gitlab import GitLabClient, enc
from ..settings import Settings
from ._bots import Bot, ensure_token, ensure_user, site_bots
from ._content import publish_folder
from .report import Report

REPORTER = 20
TEMPLATES_SUBGROUP = "project-templates"
# Branches of each template project; bids datasets work on base and dev.
TEMPLATE_BRANCHES = {"bids": ("base", "dev")}


@dataclass(frozen=True)
class Sources:
    """Folders of this repository that bootstrap publishes."""

    ci_pipelines: Path = Path("ci-pipelines")
    templates: Path = Path("deploy/project-templates")


def admin_client(settings: Settings) -> GitLabClient:
    problems = []
    if not settings.gitlab_url:
        problems.append("CI_SERVER_URL: required to deploy to GitLab")
    if not settings.gitlab_admin_token:
        problems.append("GITLAB_ADMIN_TOKEN: required (an administrator's token with scope api; give it as "
                        "GITLAB_ADMIN_TOKEN_FILE or /run/secrets/gitlab_admin_token)")
    if problems:
        raise SettingsError(problems)
    assert settings.gitlab_url and settings.gitlab_admin_token
    return GitLabClient(settings.gitlab_url, settings.gitlab_admin_token, who="admin",
                        retries=settings.gitlab_retries, timeout=settings.gitlab_timeout)


def check_admin(admin: GitLabClient) -> dict[str, Any]:
    admin.check_scopes([("api",)])
    me = admin.get("/user", what="read the admin token's user")
    if not me.get("is_admin"):
        raise ForgeError(f"the admin token belongs to {me.get('username')}, who is not a GitLab administrator",
                         hint="use an administrator's token for `bidsflux deploy init`")
    return me


def bootstrap(settings: Settings, *, sources: Sources = Sources(), secrets_dir: Path | None = None,
              show: Callable[[str], None] | None = None, rotate: bool = False,
              echo: Callable[[str], None] | None = None) -> Report:
    """Bring the site's GitLab to the wanted state; the report says item by item what it did."""
    admin = admin_client(settings)
    me = check_admin(admin)
    report = Report(echo=echo)
    tokens: dict[str, str | None] = {}
    users: dict[str, dict[str, Any]] = {}
    for bot in site_bots(settings):
        user = report.attempt(f"user {bot.username}", partial(ensure_user, admin, bot, report))
        if user is None:
            report.add(f"token of {bot.username}", "skipped", "its user is missing")
            continue
        users[bot.username] = user
        tokens[bot.username] = report.attempt(f"token of {bot.username}", partial(
            ensure_token, settings, admin, bot, user, report, secrets_dir=secrets_dir, show=show, rotate=rotate))
    git_env = credential_env(str(settings.gitlab_admin_token), str(me["username"]))
    ops_path = settings.gitlab_ops_group
    ops = report.attempt(f"group {ops_path}", partial(_ensure_group, admin, ops_path, None, report))
    if ops is not None:
        for user in users.values():
            report.attempt(f"{user['username']} in {ops_path}", partial(_ensure_reporter, admin, ops, user, report))
        report.attempt("ci-pipelines", partial(_publish_project, admin, ops, "ci-pipelines", sources.ci_pipelines,
                                               ("main",), git_env, report))
        report.attempt("project templates", partial(_templates, admin, ops, sources.templates, git_env, report))
    bids_bot = site_bots(settings)[1]
    report.attempt("CI/CD variables", partial(_variables, settings, admin, bids_bot, users.get(bids_bot.username),
                                              tokens.get(bids_bot.username), report))
    return report


def _ensure_group(admin: GitLabClient, path: str, parent: dict[str, Any] | None, report: Report) -> dict[str, Any]:
    group = admin.get_or_none(f"/groups/{enc(path)}", what=f"read group {path}")
    if group is not None:
        report.add(f"group {path}", "unchanged")
        return group
    name = path.rpartition("/")[2]
    data: dict[str, Any] = {"name": name, "path": name, "visibility": "private"}
    if parent is not None:
        data["parent_id"] = parent["id"]
    group = admin.post("/groups", data, what=f"create group {path}")
    report.add(f"group {path}", "created", "private")
    return group


def _ensure_reporter(admin: GitLabClient, group: dict[str, Any], user: dict[str, Any], report: Report) -> None:
    what = f"{user['username']} in {group['full_path']}"
    member = admin.get_or_none(f"/groups/{group['id']}/members/all/{user['id']}", what=f"read {what}")
    if member is not None and int(member.get("access_level", 0)) >= REPORTER:
        report.add(what, "unchanged", "Reporter or more")
        return
    admin.post(f"/groups/{group['id']}/members", {"user_id": user["id"], "access_level": REPORTER},
               what=f"make {user['username']} Reporter of {group['full_path']}")
    report.add(what, "created", "Reporter (reads ci-pipelines and the project templates)")


def _publish_project(admin: GitLabClient, group: dict[str, Any], name: str, folder: Path, branches: tuple[str, ...],
                     env: dict[str, str], report: Report) -> dict[str, Any]:
    path = f"{group['full_path']}/{name}"
    project = admin.get_or_none(f"/projects/{enc(path)}", what=f"read project {path}")
    if project is None:
        project = admin.post("/projects", {"name": name, "path": name, "namespace_id": group["id"],
                                           "visibility": "private"}, what=f"create project {path}")
        report.add(f"project {path}", "created", "private")
    else:
        report.add(f"project {path}", "unchanged")
    outcome = publish_folder(folder, project["http_url_to_repo"], branches, env,
                             message=f"[bids-flux] {name} from this release of bids-flux")
    report.add(f"content of {path}", outcome, f"from {folder} to {', '.join(branches)}")
    if project.get("default_branch") != branches[-1]:
        project = admin.put(f"/projects/{project['id']}", {"default_branch": branches[-1]},
                            what=f"set the default branch of {path}")
    return project


def _templates(admin: GitLabClient, ops: dict[str, Any], folder: Path, env: dict[str, str], report: Report) -> None:
    kinds = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not kinds:
        raise ForgeError(f"no project templates under {folder}", hint="run from the repository's root folder")
    templates = _ensure_group(admin, f"{ops['full_path']}/{TEMPLATES_SUBGROUP}", ops, report)
    for kind in kinds:
        report.attempt(f"template {kind.name}", partial(_publish_project, admin, templates, kind.name, kind,
                                                        TEMPLATE_BRANCHES.get(kind.name, ("main",)), env, report))
    what = f"project templates of {ops['full_path']}"
    if ops.get("custom_project_templates_group_id") == templates["id"]:
        report.add(what, "unchanged")
    else:
        updated = admin.put(f"/groups/{ops['id']}", {"custom_project_templates_group_id": templates["id"]},
                            what=f"set the {what}")
        report.add(what, *_applied(updated, templates["id"]))
    current = admin.get("/application/settings", what="read the instance settings")
    if current.get("custom_project_templates_group_id") == templates["id"]:
        report.add("instance project templates", "unchanged")
    else:
        updated = admin.put("/application/settings", {"custom_project_templates_group_id": templates["id"]},
                            what="set the instance's project templates")
        report.add("instance project templates", *_applied(updated, templates["id"]))


def _applied(updated: dict[str, Any], wanted: int) -> tuple[str, str]:
    # GitLab editions without custom project templates ignore the field: say so, and change nothing.
    if updated.get("custom_project_templates_group_id") == wanted:
        return "changed", f"group #{wanted}"
    return "skipped", "this GitLab has no custom project templates (a Premium feature)"


def _variables(settings: Settings, admin: GitLabClient, bids_bot: Bot, user: dict[str, Any] | None,
               token: str | None, report: Report) -> None:
    group_path = settings.gitlab_ci_variables_group
    if group_path:
        group = admin.get(f"/groups/{enc(group_path)}", what=f"read group {group_path}")
        where, scope = f"/groups/{group['id']}/variables", f"group {group_path}"
    else:
        where, scope = "/admin/ci/variables", "instance"
    wanted: dict[str, dict[str, Any]] = {
        "GIT_BOT_USERNAME": {"value": bids_bot.username},
        "GIT_BOT_EMAIL": {"value": str((user or {}).get("email") or f"{bids_bot.username}@bids-flux.invalid")},
        "BIDSFLUX_FORGE_TYPE": {"value": "gitlab"},
        "BIDSFLUX_CI_PIPELINES": {"value": f"{settings.gitlab_ops_group}/ci-pipelines"},
    }
    # Masked and protected: only jobs on protected branches (dev, base, convert/*) get it.
    secret = {"masked": True, "protected": True, "raw": True}
    existing = {v["key"]: v for v in admin.list_all(where, what=f"list the {scope} CI/CD variables")}
    if token is not None:
        wanted["BIDS_API_TOKEN"] = {"value": token, **secret}
    elif "BIDS_API_TOKEN" not in existing:
        report.add(f"{scope} variable BIDS_API_TOKEN", "error",
                   f"the {bids_bot.username} token's value is not known here; run again with --rotate")
    if settings.storage_type == "s3":
        # The jobs store content where the indexer does, at the same endpoint: a clone's remote must
        # point at the configured one, which the jobs check before writing.
        wanted["BIDSFLUX_STORAGE_TYPE"] = {"value": "s3"}
        for key, value in (("BIDSFLUX_S3_ENDPOINT_URL", settings.s3_endpoint_url),
                           ("BIDSFLUX_S3_REGION", settings.s3_region),
                           ("BIDSFLUX_S3_SIGNATURE", settings.s3_signature),
                           ("BIDSFLUX_S3_PATH_STYLE", "true" if settings.s3_path_style else "false")):
            if value:
                wanted[key] = {"value": str(value)}
        for key, value in (("BIDSFLUX_S3_ACCESS_KEY", settings.s3_access_key),
                           ("BIDSFLUX_S3_SECRET_KEY", settings.s3_secret_key)):
            if value:
                wanted[key] = {"value": str(value), **secret}
            elif key not in existing:
                report.add(f"{scope} variable {key}", "error", f"{key} is not set here (secret file or environment)")
    for key, spec in wanted.items():
        spec = {"masked": False, "protected": False, "raw": True, **spec}
        what = f"{scope} variable {key}"
        current = existing.get(key)
        if current is None:
            admin.post(where, {"key": key, **spec}, what=f"set {what}")
            report.add(what, "created", "masked" if spec["masked"] else "")
        elif any(current.get(name) != value for name, value in spec.items()):
            admin.put(f"{where}/{enc(key)}", spec, what=f"update {what}")
            report.add(what, "changed", "masked" if spec["masked"] else "")
        else:
            report.add(what, "unchanged")


__all__ = ["Sources", "bootstrap"]
