"""``bidsflux deploy runners``: the site's runners, from ``deploy/runners.yml``, idempotently.

Each runner is created through GitLab's runner-creation API (``POST
/user/runners``), which returns the runner's authentication token
(``glrt-...``); the deprecated registration tokens are not used.  Tags, the
untagged flag and the protected-branches flag live in GitLab; the token and
the executor's set-up go into the node's ``config.toml``
(``<output>/<node>/config.toml``, mode 0600).  A runner that exists keeps its
token while ``POST /runners/verify`` accepts it; otherwise its token is reset.
"""

from __future__ import annotations

import tomllib
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..forge._gitlab import GitLabAPIError, GitLabClient, enc
from ..settings import Settings
from ._bots import write_secret
from ._toml import render_config
from .bootstrap import admin_client
from .report import Report

RUNNER_TYPES = {"instance_type", "group_type"}
RUNNER_KEYS = {"name", "node", "tags", "run_untagged", "access_level", "runner_type", "group", "locked",
               "executor", "maximum_timeout", "docker"}
DOCKER_KEYS = {"image", "privileged", "volumes", "gpus", "devices", "security_opt", "shm_size", "network_mode"}


@dataclass(frozen=True)
class RunnerSpec:
    name: str
    node: str
    tags: tuple[str, ...]
    run_untagged: bool
    access_level: str
    runner_type: str = "instance_type"
    group: str | None = None
    locked: bool = False
    executor: str = "docker"
    maximum_timeout: int | None = None
    docker: dict[str, Any] = field(default_factory=dict)


def load_runners(path: Path) -> tuple[int, list[RunnerSpec]]:
    """(concurrent, runners) from the runners file; every problem is reported at once."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="give the file with --file") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from exc
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("runners"), list):
        raise UsageError(f"{path}: expected a mapping with a list under 'runners'")
    defaults = data.get("defaults") or {}
    specs, seen = [], set()
    for number, raw in enumerate(data["runners"], start=1):
        item = {**defaults, **(raw or {})}
        where = f"{path}: runner {number}"
        unknown = set(item) - RUNNER_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        name, node = str(item.get("name") or ""), str(item.get("node") or "")
        if not name or not node:
            problems.append(f"{where}: needs a name and a node")
        if name in seen:
            problems.append(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        tags = item.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            problems.append(f"{where}: tags must be a list of words")
            tags = []
        untagged = bool(item.get("run_untagged", not tags))
        if not tags and not untagged:
            problems.append(f"{where}: a runner without tags must run untagged jobs")
        if item.get("runner_type", "instance_type") not in RUNNER_TYPES:
            problems.append(f"{where}: runner_type must be one of {sorted(RUNNER_TYPES)}")
        if item.get("runner_type") == "group_type" and not item.get("group"):
            problems.append(f"{where}: a group_type runner needs a group")
        if item.get("access_level", "not_protected") not in {"not_protected", "ref_protected"}:
            problems.append(f"{where}: access_level must be not_protected or ref_protected")
        docker = item.get("docker") or {}
        if not isinstance(docker, dict) or set(docker) - DOCKER_KEYS:
            problems.append(f"{where}: docker may only set {sorted(DOCKER_KEYS)}")
            docker = {}
        specs.append(RunnerSpec(name, node, tuple(tags), untagged, str(item.get("access_level", "not_protected")),
                                str(item.get("runner_type", "instance_type")), item.get("group"),
                                bool(item.get("locked", False)), str(item.get("executor", "docker")),
                                item.get("maximum_timeout"), dict(docker)))
    if problems:
        raise UsageError("; ".join(problems))
    return int(data.get("concurrent", 4)), specs


def _wanted(spec: RunnerSpec) -> dict[str, Any]:
    data: dict[str, Any] = {"description": spec.name, "tag_list": ",".join(spec.tags),
                            "run_untagged": spec.run_untagged, "locked": spec.locked, "paused": False,
                            "access_level": spec.access_level}
    if spec.maximum_timeout:
        data["maximum_timeout"] = spec.maximum_timeout
    return data


def _existing_tokens(config: Path) -> dict[str, str]:
    if not config.is_file():
        return {}
    try:
        data = tomllib.loads(config.read_text())
    except tomllib.TOMLDecodeError:
        return {}
    return {str(r.get("name")): str(r.get("token")) for r in data.get("runners", []) if r.get("token")}


def ensure_runner(admin: GitLabClient, spec: RunnerSpec, known: list[dict[str, Any]], token: str | None,
                  report: Report) -> dict[str, Any]:
    """The runner in GitLab with the spec's settings; returns {id, token}."""
    what = f"runner {spec.name} ({spec.node}; tags: {', '.join(spec.tags) or 'untagged'})"
    same = [r for r in known if r.get("description") == spec.name]
    if len(same) > 1:
        raise GitLabAPIError(f"{len(same)} runners are called {spec.name}", hint="delete the extra ones in GitLab")
    wanted = _wanted(spec)
    if not same:
        data = {"runner_type": spec.runner_type, **wanted}
        if spec.runner_type == "group_type":
            group = admin.get(f"/groups/{enc(str(spec.group))}", what=f"read group {spec.group}")
            data["group_id"] = group["id"]
        made = admin.post("/user/runners", data, what=f"create {what}")
        report.add(what, "created")
        return {"id": made["id"], "token": made["token"]}
    current = admin.get(f"/runners/{same[0]['id']}", what=f"read {what}")
    drift = {k: v for k, v in wanted.items() if k != "tag_list" and current.get(k) != v}
    if sorted(current.get("tag_list") or []) != sorted(spec.tags):
        drift["tag_list"] = wanted["tag_list"]
    changes = []
    if drift:
        admin.put(f"/runners/{current['id']}", drift, what=f"update {what}")
        changes.append(f"updated {', '.join(sorted(drift))}")
    if token is None or not _verifies(admin, token):
        reset = admin.post(f"/runners/{current['id']}/reset_authentication_token", what=f"reset the token of {what}")
        token = str(reset["token"])
        changes.append("new authentication token")
    report.add(what, "changed" if changes else "unchanged", "; ".join(changes))
    return {"id": current["id"], "token": token}


def _verifies(admin: GitLabClient, token: str) -> bool:
    try:
        admin.post("/runners/verify", {"token": token}, what="verify a runner token")
    except GitLabAPIError as exc:
        if exc.status == 403:
            return False
        raise
    return True


def deploy_runners(settings: Settings, runners_file: Path, output: Path, *, url: str | None = None,
                   echo: Any = None) -> Report:
    """Create or check every runner of the file and write each node's config.toml."""
    admin = admin_client(settings)
    concurrent, specs = load_runners(runners_file)
    report = Report(echo=echo)
    known = admin.list_all("/runners/all", what="list the runners")
    for node in sorted({s.node for s in specs}):
        config = output / node / "config.toml"
        tokens = _existing_tokens(config)
        runners = []
        for spec in (s for s in specs if s.node == node):
            made = report.attempt(f"runner {spec.name}", partial(ensure_runner, admin, spec, known,
                                                                 tokens.get(spec.name), report))
            if made is not None:
                runners.append((spec, made))
        if len(runners) < sum(s.node == node for s in specs):
            # Rewriting now would drop the failed runner's section and its token.
            report.add(f"{config}", "skipped", "not rewritten while one of its runners failed")
            continue
        text = render_config(concurrent, url or str(settings.gitlab_url), runners)
        if config.is_file() and config.read_text() == text:
            report.add(f"{config}", "unchanged")
        else:
            existed = config.is_file()
            write_secret(config.parent, config.name, text.rstrip("\n"))
            report.add(f"{config}", "changed" if existed else "created", "mode 0600: it holds runner tokens")
    return report
