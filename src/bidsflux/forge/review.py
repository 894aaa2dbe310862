"""Merge requests: every conversion is reviewed as one, on either forge.

- GitLab: the ``convert`` job opens it while pushing ``convert/<session>``,
  with git push options (``merge_request.create``), which needs no API scope
  beyond ``bids_bot``'s ``write_repository``; the validator's and the PHI
  check's reports reach it as JUnit reports of their jobs (GitLab shows them
  in the merge request's test summary), and GitLab marks it merged when the
  ``merge`` job pushes the merge into ``dev``.
- The local forge keeps merge requests beside each bare repository, in
  ``<repo>.git/bidsflux/merge_requests/<iid>.json`` (title, branches, state,
  the reports as notes); ``bidsflux review`` lists and shows them.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ForgeError


@dataclass
class MergeRequest:
    iid: int
    project: str
    source_branch: str
    target_branch: str
    title: str
    description: str = ""
    state: str = "opened"  # opened | merged | closed
    source_commit: str = ""
    merge_commit: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    notes: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return f"!{self.iid} {self.title} ({self.source_branch} -> {self.target_branch}, {self.state})"


def project_path(url: str) -> str:
    """``http://host/a/b/bids.git`` -> ``a/b/bids``."""
    path = urlparse(url).path.strip("/")
    return path[:-4] if path.endswith(".git") else path


def gitlab_push_options(target: str, title: str, description: str) -> list[str]:
    """The push options that make GitLab open (or update) a merge request for the pushed branch."""
    return ["merge_request.create", f"merge_request.target={target}", f"merge_request.title={title}",
            f"merge_request.description={description}", "merge_request.remove_source_branch"]


class LocalReview:
    """Merge requests of the local forge's projects, as JSON files beside the bare repositories."""

    def __init__(self, forge_dir: Path):
        self.root = forge_dir

    def _folder(self, project: str) -> Path:
        repo = (self.root / f"{project}.git").resolve()
        if not repo.is_relative_to(self.root.resolve()) or not (repo / "HEAD").exists():
            raise ForgeError(f"the local forge has no project {project}")
        folder = repo / "bidsflux" / "merge_requests"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextmanager
    def _locked(self, project: str) -> Iterator[Path]:
        folder = self._folder(project)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder

    def list(self, project: str, state: str | None = None) -> list[MergeRequest]:
        folder = self._folder(project)
        found = [MergeRequest(**json.loads(p.read_text())) for p in folder.glob("*.json")]
        return sorted((mr for mr in found if state is None or mr.state == state), key=lambda mr: mr.iid)

    def get(self, project: str, iid: int) -> MergeRequest:
        path = self._folder(project) / f"{iid}.json"
        if not path.exists():
            raise ForgeError(f"{project} has no merge request !{iid}")
        return MergeRequest(**json.loads(path.read_text()))

    def open(self, project: str, source: str, target: str, title: str, description: str,
             source_commit: str) -> MergeRequest:
        """Open a merge request for ``source``, or update the open one (a re-run pushes the branch again)."""
        with self._locked(project) as folder:
            now = time.time()
            existing = [mr for mr in self.list(project, "opened") if mr.source_branch == source]
            if existing:
                mr = existing[0]
                mr.title, mr.description, mr.source_commit, mr.updated_at = title, description, source_commit, now
                mr.notes.append({"at": now, "body": f"new conversion pushed: {source_commit[:12]}"})
            else:
                iid = max((int(p.stem) for p in folder.glob("*.json")), default=0) + 1
                mr = MergeRequest(iid, project, source, target, title, description, source_commit=source_commit,
                                  created_at=now, updated_at=now)
            _write(folder / f"{mr.iid}.json", mr)
            return mr

    def note(self, project: str, iid: int, body: str) -> None:
        with self._locked(project) as folder:
            mr = self.get(project, iid)
            mr.notes.append({"at": time.time(), "body": body})
            mr.updated_at = time.time()
            _write(folder / f"{iid}.json", mr)

    def mark_merged(self, project: str, iid: int, merge_commit: str) -> None:
        with self._locked(project) as folder:
            mr = self.get(project, iid)
            mr.state, mr.merge_commit, mr.updated_at = "merged", merge_commit, time.time()
            _write(folder / f"{iid}.json", mr)


def _write(path: Path, mr: MergeRequest) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(mr), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
