"""The double's state: users and tokens, groups, projects, variables, pipelines, merge requests, runners.

Plain records under one lock.  Access follows GitLab: a member's level in a
group holds in its subgroups and projects; administrators may do anything;
private things are invisible (404) to those without access.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50
LEVEL_NAMES = {0: "No access", GUEST: "Guest", REPORTER: "Reporter", DEVELOPER: "Developers + Maintainers",
               MAINTAINER: "Maintainers", OWNER: "Owner", 60: "Admin"}
SCOPES = {"api", "read_api", "read_user", "create_runner", "manage_runner", "k8s_proxy", "read_repository",
          "write_repository", "read_registry", "write_registry", "sudo", "admin_mode", "ai_features",
          "read_service_ping", "self_rotate"}
# Top-level paths GitLab keeps for its own routes (a subset of Gitlab::PathRegex).
RESERVED_TOP_LEVEL = {"-", ".well-known", "404.html", "422.html", "500.html", "502.html", "503.html", "admin",
                      "api", "apple-touch-icon.png", "assets", "dashboard", "explore", "favicon.ico", "favicon.png",
                      "files", "groups", "health_check", "help", "import", "jwt", "login", "oauth", "profile",
                      "projects", "public", "robots.txt", "s", "search", "sitemap", "snippets", "uploads",
                      "users", "v2"}
TERMINAL = {"success", "failed", "canceled", "skipped", "manual"}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class User:
    id: int
    username: str
    name: str
    email: str
    is_admin: bool = False
    can_create_group: bool = True
    projects_limit: int = 100000
    state: str = "active"
    created_at: str = field(default_factory=now)


@dataclass
class Token:
    id: int
    user_id: int
    name: str
    scopes: list[str]
    token: str
    expires_at: str | None
    revoked: bool = False
    created_at: str = field(default_factory=now)

    @property
    def active(self) -> bool:
        if self.revoked:
            return False
        return self.expires_at is None or dt.date.fromisoformat(self.expires_at) > dt.date.today()


@dataclass
class Variable:
    key: str
    value: str
    variable_type: str = "env_var"
    protected: bool = False
    masked: bool = False
    raw: bool = False
    environment_scope: str = "*"
    description: str | None = None


@dataclass
class Group:
    id: int
    name: str
    path: str
    parent_id: int | None
    visibility: str
    description: str = ""
    custom_project_templates_group_id: int | None = None
    members: dict[int, int] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    created_at: str = field(default_factory=now)


@dataclass
class Protection:
    id: int
    name: str
    push_access_level: int
    merge_access_level: int
    unprotect_access_level: int
    allow_force_push: bool


@dataclass
class Job:
    id: int
    name: str
    stage: str
    status: str


@dataclass
class Pipeline:
    id: int
    iid: int
    project_id: int
    sha: str
    ref: str
    source: str
    user_id: int
    status: str = "pending"
    variables: list[dict[str, str]] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    finished_at: str | None = None

    def set_status(self, status: str) -> None:
        self.status = status
        self.updated_at = now()
        for job in self.jobs:
            job.status = status
        if status in TERMINAL:
            self.finished_at = self.updated_at


@dataclass
class Note:
    id: int
    body: str
    author_id: int
    system: bool = False
    created_at: str = field(default_factory=now)


@dataclass
class MergeRequest:
    """One merge request; ``sha`` follows the source branch's head while it is open (GitLab's diff head)."""

    id: int
    iid: int
    project_id: int
    source_branch: str
    target_branch: str
    title: str
    description: str
    author_id: int
    sha: str
    force_remove_source_branch: bool = False
    state: str = "opened"  # opened | closed | merged
    merged_at: str | None = None
    merge_commit_sha: str | None = None
    closed_at: str | None = None
    notes: list[Note] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)

    def touch(self) -> None:
        self.updated_at = now()


@dataclass
class Project:
    id: int
    name: str
    path: str
    namespace_id: int
    visibility: str
    default_branch: str | None = None
    members: dict[int, int] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    protected: dict[str, Protection] = field(default_factory=dict)
    pipelines: list[Pipeline] = field(default_factory=list)
    merge_requests: list[MergeRequest] = field(default_factory=list)
    created_at: str = field(default_factory=now)


@dataclass
class Runner:
    id: int
    runner_type: str
    description: str
    tag_list: list[str]
    run_untagged: bool
    locked: bool
    paused: bool
    access_level: str
    maximum_timeout: int | None
    token: str
    group_id: int | None = None
    project_id: int | None = None


class State:
    """Everything the double knows; every read and write holds ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.users: dict[int, User] = {}
        self.tokens: dict[int, Token] = {}
        self.groups: dict[int, Group] = {}
        self.projects: dict[int, Project] = {}
        self.runners: dict[int, Runner] = {}
        self.settings: dict[str, Any] = {"custom_project_templates_group_id": None}
        self.pipeline_script: list[str] = []
        self.fail_next: list[int] = []
        self.requests: list[tuple[str, str, int]] = []

    def next_id(self) -> int:
        return next(self._ids)

    # -- lookups
    def user_by_name(self, username: str) -> User | None:
        return next((u for u in self.users.values() if u.username.lower() == username.lower()), None)

    def token_by_value(self, value: str) -> Token | None:
        return next((t for t in self.tokens.values() if t.token == value), None)

    def group_full_path(self, group: Group) -> str:
        parts = [group.path]
        while group.parent_id is not None:
            group = self.groups[group.parent_id]
            parts.append(group.path)
        return "/".join(reversed(parts))

    def ancestors(self, group: Group) -> list[Group]:
        """The group and its parents, nearest first."""
        chain = [group]
        while chain[-1].parent_id is not None:
            chain.append(self.groups[chain[-1].parent_id])
        return chain

    def group_by_ref(self, ref: str) -> Group | None:
        if ref.isdigit():
            return self.groups.get(int(ref))
        return next((g for g in self.groups.values() if self.group_full_path(g).lower() == ref.lower()), None)

    def project_full_path(self, project: Project) -> str:
        return f"{self.group_full_path(self.groups[project.namespace_id])}/{project.path}"

    def project_by_ref(self, ref: str) -> Project | None:
        if ref.isdigit():
            return self.projects.get(int(ref))
        return next((p for p in self.projects.values() if self.project_full_path(p).lower() == ref.lower()), None)

    # -- access
    def group_level(self, user: User, group: Group) -> int:
        if user.is_admin:
            return OWNER
        return max((g.members.get(user.id, 0) for g in self.ancestors(group)), default=0)

    def project_level(self, user: User, project: Project) -> int:
        return max(project.members.get(user.id, 0), self.group_level(user, self.groups[project.namespace_id]))

    def can_see_group(self, user: User, group: Group) -> bool:
        if group.visibility != "private" or self.group_level(user, group) > 0:
            return True
        # Members of a subgroup or project may see the groups above it.
        below = [g for g in self.groups.values() if group in self.ancestors(g)]
        return any(g.members.get(user.id) for g in below) or any(
            p.members.get(user.id) for p in self.projects.values() if self.groups[p.namespace_id] in below)

    def can_see_project(self, user: User, project: Project) -> bool:
        return project.visibility != "private" or self.project_level(user, project) > 0
