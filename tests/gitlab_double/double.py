"""The double as a whole: state, bare repositories, pipelines, and the handles tests use.

Repositories are real bare git repositories (``<root>/repos/<project id>.git``)
served by ``git http-backend``; a pre-receive hook enforces protected branches.
A push or an API call creates a pipeline when the pushed commit holds a
``.gitlab-ci.yml``; nothing runs its jobs: tests drive a pipeline's status
(:meth:`GitLabDouble.set_pipeline_status`, :meth:`GitLabDouble.script_pipelines`).
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from . import routes_groups, routes_projects, routes_runners, routes_users  # noqa: F401 - they register routes
from .model import TERMINAL, Group, Job, Pipeline, Project, Protection, State, Token, User, Variable
from .server import DoubleServer

_HOOK = Path(__file__).with_name("hook.py")
_NOT_JOBS = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache", "before_script",
             "after_script", "spec"}


def _git(*args: str, cwd: Path, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip() if proc.returncode == 0 else ""


class GitLabDouble:
    """A strict, stateful stand-in for GitLab's REST API and its git-over-HTTP, on loopback."""

    def __init__(self, root: Path):
        self.root = root
        self.repos = root / "repos"
        self.repos.mkdir(parents=True, exist_ok=True)
        self.state = State()
        self.instance_variables: dict[str, Variable] = {}
        admin = self.add_user("root", admin=True)
        self.admin = admin
        self.admin_token = self.token_for("root", ["api", "admin_mode"], name="bootstrap").token
        self._server = DoubleServer(self)

    @property
    def url(self) -> str:
        return self._server.base_url

    def start(self) -> GitLabDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def pause(self) -> None:
        """GitLab goes away: the port closes (connections are refused)."""
        self._server.stop()

    def resume(self) -> None:
        """GitLab comes back on the same address, with the same state."""
        self._server = DoubleServer(self, self._server.host, self._server.port)
        self._server.start()

    # -- test handles
    def add_user(self, username: str, *, admin: bool = False, can_create_group: bool = True) -> User:
        with self.state.lock:
            user = User(self.state.next_id(), username, username, f"{username}@example.org", is_admin=admin,
                        can_create_group=can_create_group)
            self.state.users[user.id] = user
            return user

    def token_for(self, username: str, scopes: list[str], *, name: str = "test",
                  expires_at: str | None = None) -> Token:
        import secrets

        with self.state.lock:
            user = self.state.user_by_name(username)
            assert user is not None, username
            token = Token(self.state.next_id(), user.id, name, list(scopes), "glpat-" + secrets.token_urlsafe(15),
                          expires_at)
            self.state.tokens[token.id] = token
            return token

    def group(self, path: str) -> Group | None:
        with self.state.lock:
            return self.state.group_by_ref(path)

    def project(self, path: str) -> Project | None:
        with self.state.lock:
            return self.state.project_by_ref(path)

    def projects(self) -> list[str]:
        with self.state.lock:
            return sorted(self.state.project_full_path(p) for p in self.state.projects.values())

    def pipelines(self, path: str) -> list[Pipeline]:
        project = self.project(path)
        assert project is not None, path
        with self.state.lock:
            return list(project.pipelines)

    def set_pipeline_status(self, pipeline_id: int, status: str) -> None:
        with self.state.lock:
            for project in self.state.projects.values():
                for pipeline in project.pipelines:
                    if pipeline.id == pipeline_id:
                        pipeline.script.clear()
                        pipeline.set_status(status)
                        return
        raise KeyError(pipeline_id)

    def script_pipelines(self, statuses: list[str]) -> None:
        """New pipelines take these statuses, one per read of the pipeline."""
        with self.state.lock:
            self.state.pipeline_script = list(statuses)

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next ``count`` API requests fail with ``status`` (GitLab restarting, a proxy error)."""
        with self.state.lock:
            self.state.fail_next.extend([status] * count)

    def api_requests(self) -> list[tuple[str, str, int]]:
        with self.state.lock:
            return list(self.state.requests)

    # -- repositories
    def repo_dir(self, project: Project) -> Path:
        return self.repos / f"{project.id}.git"

    def init_repo(self, project: Project, template: Project | None) -> None:
        target = self.repo_dir(project)
        if template is not None:
            subprocess.run(["git", "clone", "--quiet", "--bare", str(self.repo_dir(template)), str(target)],
                           check=True, capture_output=True)
            _git("remote", "remove", "origin", cwd=target, check=False)
            project.default_branch = template.default_branch
        else:
            target.mkdir(parents=True)
            _git("init", "--quiet", "--bare", "--initial-branch=main", ".", cwd=target)
        _git("config", "http.receivepack", "true", cwd=target)
        hook = target / "hooks" / "pre-receive"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!{sys.executable}\n" + _HOOK.read_text())
        hook.chmod(0o755)

    def branches(self, project: Project) -> dict[str, str]:
        out = _git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads",
                   cwd=self.repo_dir(project))
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def merge_base(self, project: Project, refs: list[str]) -> str | None:
        return _git("merge-base", *[f"refs/heads/{r}" for r in refs], cwd=self.repo_dir(project), check=False) or None

    def set_head(self, project: Project, branch: str) -> None:
        _git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=self.repo_dir(project))
        project.default_branch = branch

    def protection_for(self, project: Project, branch: str) -> Protection | None:
        return next((rule for name, rule in project.protected.items() if fnmatch.fnmatchcase(branch, name)), None)

    def after_push(self, project: Project, before: dict[str, str], after: dict[str, str], user: User) -> None:
        """What GitLab does after a push: a default branch for a new repository, pipelines."""
        if project.default_branch is None and after:
            head = _git("symbolic-ref", "--short", "HEAD", cwd=self.repo_dir(project), check=False)
            self.set_head(project, head if head in after else sorted(after)[0])
        for branch, sha in sorted(after.items()):
            if before.get(branch) != sha:
                self.start_pipeline(project, branch, sha, "push", user, [])

    def start_pipeline(self, project: Project, ref: str, sha: str, source: str, user: User,
                       variables: list[dict[str, str]]) -> Pipeline | None:
        """A pipeline for ``sha`` when it has a ``.gitlab-ci.yml``; None otherwise."""
        text = _git("show", f"{sha}:.gitlab-ci.yml", cwd=self.repo_dir(project), check=False)
        if not text:
            return None
        try:
            config: Any = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            config = {}
        jobs = [Job(self.state.next_id(), name, str(spec.get("stage", "test")), "created")
                for name, spec in (config.items() if isinstance(config, dict) else [])
                if isinstance(spec, dict) and name not in _NOT_JOBS and not str(name).startswith(".")]
        pipeline = Pipeline(self.state.next_id(), len(project.pipelines) + 1, project.id, sha, ref, source, user.id,
                            variables=variables, script=list(self.state.pipeline_script), jobs=jobs)
        pipeline.set_status("pending")
        project.pipelines.append(pipeline)
        return pipeline


__all__ = ["GitLabDouble", "TERMINAL"]
