"""The double as a whole: state, bare repositories, pipelines, and the handles tests use.

Repositories are real bare git repositories (``<root>/repos/<project id>.git``)
served by ``git http-backend``; a pre-receive hook enforces protected branches,
and a post-receive hook hands the updated refs and the push options back to the
double (:meth:`GitLabDouble.post_receive`), which opens, updates and closes
merge requests as GitLab does (:mod:`.merge_requests`).
A push or an API call creates a pipeline when the pushed commit holds a
``.gitlab-ci.yml``; nothing runs its jobs: tests drive a pipeline's status
(:meth:`GitLabDouble.set_pipeline_status`, :meth:`GitLabDouble.script_pipelines`).
"""

from __future__ import annotations

import fnmatch
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from . import merge_requests
from . import routes_groups, routes_merge_requests, routes_projects, routes_runners, routes_users  # noqa: F401
from .model import TERMINAL, Group, Job, MergeRequest, Pipeline, Project, Protection, State, Token, User, Variable
from .server import DoubleServer

_HOOKS = {"pre-receive": Path(__file__).with_name("hook.py"),
          "post-receive": Path(__file__).with_name("post_receive.py")}
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
        # What the repositories' hooks show the internal API (GitLab's shared secret).
        self.internal_secret = secrets.token_hex(16)
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

    def merge_requests(self, path: str) -> list[MergeRequest]:
        project = self.project(path)
        assert project is not None, path
        with self.state.lock:
            return list(project.merge_requests)

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
        _git("config", "receive.advertisePushOptions", "true", cwd=target)
        (target / "hooks").mkdir(exist_ok=True)
        for name, source in _HOOKS.items():
            hook = target / "hooks" / name
            hook.write_text(f"#!{sys.executable}\n" + source.read_text())
            hook.chmod(0o755)

    def branches(self, project: Project) -> dict[str, str]:
        out = _git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads",
                   cwd=self.repo_dir(project))
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def merge_base(self, project: Project, refs: list[str]) -> str | None:
        return _git("merge-base", *[f"refs/heads/{r}" for r in refs], cwd=self.repo_dir(project), check=False) or None

    def new_commits(self, project: Project, old: str, new: str, branch: str) -> set[str]:
        """The commits a push of ``branch`` from ``old`` to ``new`` brought (for a new branch: none elsewhere)."""
        if old != merge_requests.ZERO:
            exclude = [f"^{old}"]
        else:
            exclude = [f"^{sha}" for name, sha in self.branches(project).items() if name != branch]
        return set(_git("rev-list", new, *exclude, cwd=self.repo_dir(project), check=False).split())

    def merging_commit(self, project: Project, old: str, new: str, sha: str) -> str | None:
        """The first commit along ``new``'s first parents (after ``old``) that contains ``sha``."""
        exclude = [f"^{old}"] if old != merge_requests.ZERO else []
        line = _git("rev-list", "--first-parent", "--reverse", new, *exclude, cwd=self.repo_dir(project),
                    check=False).split()
        repo = self.repo_dir(project)
        return next((c for c in line if subprocess.run(["git", "merge-base", "--is-ancestor", sha, c], cwd=repo,
                                                       capture_output=True, check=False).returncode == 0), None)

    def commits_between(self, project: Project, target: str, head: str) -> list[str]:
        return _git("rev-list", head, f"^refs/heads/{target}", cwd=self.repo_dir(project), check=False).split()

    def commit_message(self, project: Project, sha: str) -> tuple[str, str]:
        """A commit's title and the rest of its message."""
        text = _git("log", "-1", "--format=%B", sha, cwd=self.repo_dir(project))
        title, _, body = text.partition("\n")
        return title, body.strip()

    def post_receive(self, project: Project, user: User, changes: list[str], push_options: list[str],
                     base: str) -> list[dict[str, str]]:
        """GitLab's internal post-receive call: merge requests; the messages the pusher sees."""
        return merge_requests.post_receive(self, project, user, changes, push_options, base)

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
