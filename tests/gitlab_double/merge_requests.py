"""What GitLab does with a push after the refs moved: merge requests from push options, and their refresh.

Follows GitLab's own services:

- ``Gitlab::PushOptions``: ``<namespace>.<key>[=<value>]`` (``mr`` is an alias
  of ``merge_request``), unknown keys ignored, a value-less option is ``true``;
- ``MergeRequests::PushOptionsHandlerService``: for each pushed branch (not the
  default branch, not deleted) an open merge request with that source branch is
  updated with the options given (``title``, ``description``, ``target``,
  ``remove_source_branch``), even without ``create``; otherwise one is created
  when ``merge_request.create`` is there (target: the default branch; title:
  the single commit's title, else the branch name).  Problems (an unknown
  target branch, ``create`` missing) do not refuse the push: they come back as
  one warning on the push's output;
- ``MergeRequests::RefreshService``: a push to a source branch moves its open
  merge requests' ``sha`` (with a system note "added N commits"); deleting it
  closes them; a push to a target branch
  whose new commits include an open merge request's ``sha`` marks it merged,
  with ``merge_commit_sha`` the commit of that push that brought it in.
"""

from __future__ import annotations

import re
from typing import Any

from .model import MergeRequest, Note, Project, User, now

ZERO = "0" * 40
BRANCH_LIMIT = 10
MR_KEYS = {"assign", "create", "description", "draft", "label", "merge_when_pipeline_succeeds", "milestone",
           "remove_source_branch", "squash", "target", "target_project", "title", "unassign", "unlabel"}
_OPTION = re.compile(r"(?P<namespace>[^.]+)\.(?P<key>[^=]+)=?(?P<value>.*)", re.DOTALL)
_FALSE = {"0", "f", "false", "off", "no", "n"}


def parse_merge_request_options(raw: list[str]) -> dict[str, Any]:
    """The ``merge_request`` namespace of the push options, as ``Gitlab::PushOptions`` reads them."""
    options: dict[str, Any] = {}
    for option in raw:
        found = _OPTION.match(option)
        if found is None:
            continue
        namespace, key, value = (found[name].strip() for name in ("namespace", "key", "value"))
        namespace = "merge_request" if namespace == "mr" else namespace
        if namespace == "merge_request" and key in MR_KEYS:
            options[key] = value or True
    return options


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() not in _FALSE


def _changes(lines: list[str]) -> list[tuple[str, str, str]]:
    """(old, new, branch) for each updated branch; tags and other refs are not GitLab's business here."""
    found = []
    for line in lines:
        old, new, ref = line.split()
        if ref.startswith("refs/heads/"):
            found.append((old, new, ref[len("refs/heads/"):]))
    return found


def post_receive(double: Any, project: Project, user: User, lines: list[str], raw_options: list[str],
                 base: str) -> list[dict[str, str]]:
    """Everything GitLab does after a push to ``project`` by ``user``; returns the messages for the pusher."""
    changes = _changes(lines)
    refresh(double, project, user, changes)
    messages = []
    options = parse_merge_request_options(raw_options)
    if options:
        errors = handle_push_options(double, project, user, changes, options)
        if errors:
            quoted = " ".join(f"'{o}'" for o in raw_options)
            messages.append({"type": "alert", "message": "WARNINGS:\nError encountered with push options "
                                                         f"{quoted}: " + "\n\n".join(errors)})
    full = double.state.project_full_path(project)
    for _old, new, branch in changes:
        if new == ZERO or branch == project.default_branch:
            continue
        mr = open_for_source(project, branch)
        if mr is not None:
            messages.append({"type": "basic", "message": f"View merge request for {branch}:\n  "
                                                         f"{base}/{full}/-/merge_requests/{mr.iid}"})
        else:
            messages.append({"type": "basic", "message": f"To create a merge request for {branch}, visit:\n  "
                                                         f"{base}/{full}/-/merge_requests/new"
                                                         f"?merge_request%5Bsource_branch%5D={branch}"})
    return messages


def open_for_source(project: Project, branch: str) -> MergeRequest | None:
    return next((mr for mr in project.merge_requests if mr.state == "opened" and mr.source_branch == branch), None)


def refresh(double: Any, project: Project, user: User, changes: list[tuple[str, str, str]]) -> None:
    for old, new, branch in changes:
        for mr in project.merge_requests:
            if mr.state != "opened":
                continue
            if mr.source_branch == branch:
                if new == ZERO:
                    mr.state, mr.closed_at = "closed", now()
                elif new != mr.sha:
                    added = double.new_commits(project, old, new, branch)
                    mr.notes.append(Note(double.state.next_id(), f"added {len(added)} commit"
                                         f"{'' if len(added) == 1 else 's'}", user.id, system=True))
                    mr.sha = new
                mr.touch()
            elif mr.target_branch == branch and new != ZERO:
                pushed = double.new_commits(project, old, new, branch)
                if mr.sha in pushed:
                    mr.state, mr.merged_at = "merged", now()
                    mr.merge_commit_sha = double.merging_commit(project, old, new, mr.sha)
                    mr.touch()


def handle_push_options(double: Any, project: Project, user: User, changes: list[tuple[str, str, str]],
                        options: dict[str, Any]) -> list[str]:
    """Create or update merge requests for the pushed branches; the errors GitLab would report."""
    branches = {branch: new for _old, new, branch in changes if new != ZERO and branch != project.default_branch}
    existing = double.branches(project)
    target = options.get("target")
    errors = []
    if len(branches) > BRANCH_LIMIT:
        errors.append(f"Too many branches pushed ({len(branches)} were pushed, limit is {BRANCH_LIMIT})")
    if target is not None and str(target) not in existing:
        errors.append(f"Target branch {double.state.project_full_path(project)}:{target} does not exist")
    if errors:
        return errors
    for branch, head in branches.items():
        mr = open_for_source(project, branch)
        if mr is not None:
            _apply(mr, options)
            mr.touch()
        elif not options.get("create"):
            errors.append(f"A merge_request.create push option is required to create a merge request for branch "
                          f"{branch}")
        else:
            errors.extend(_create(double, project, user, branch, head, options))
    return errors


def _apply(mr: MergeRequest, options: dict[str, Any]) -> None:
    if isinstance(options.get("title"), str):
        mr.title = options["title"]
    if isinstance(options.get("description"), str):
        mr.description = options["description"].replace("\\n", "\n")
    if isinstance(options.get("target"), str):
        mr.target_branch = options["target"]
    if "remove_source_branch" in options:
        mr.force_remove_source_branch = _flag(options["remove_source_branch"])


def _create(double: Any, project: Project, user: User, branch: str, head: str, options: dict[str, Any]) -> list[str]:
    target = str(options["target"]) if isinstance(options.get("target"), str) else project.default_branch
    if target is None or target == branch:
        return ["Validate branches You can't use same project/branch for source and target"]
    commits = double.commits_between(project, target, head)
    title, description = branch.replace("-", " ").replace("_", " ").capitalize(), ""
    if len(commits) == 1:
        title, description = double.commit_message(project, commits[0])
    if not commits:
        title = f"Draft: {title}"
    mr = MergeRequest(double.state.next_id(), len(project.merge_requests) + 1, project.id, branch, target, title,
                      description, user.id, head)
    _apply(mr, {k: v for k, v in options.items() if k != "target"})
    project.merge_requests.append(mr)
    return []
