"""The derivative dataset's DataLad and git operations: inputs, ``datalad run``, provenance.

DataLad is driven through its command line here (an argument list, never a
shell of ours): ``datalad run`` then executes the derivative's command with
this interpreter's ``bin/`` first on PATH (``_proc.tool_env``), so ``python``
in a command is the job's own interpreter, and its output streams into the
job log as it comes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .._proc import git, mask_secrets, run, tool_env
from ..errors import DeriveError
from ..forge._git import branch_heads

DESCRIPTION = "dataset_description.json"
JOB_ENTRY_NAME = "bids-flux"
BIDS_VERSION = "1.10.0"
_ROUTINE = re.compile(r"^\s*(\w+\((ok|notneeded)\):|\[INFO\])")  # DataLad's progress, not why it failed
_RECORD = re.compile(r"=== Do not change lines below ===\n(.*?)\n\^\^\^ Do not change lines above \^\^\^", re.S)


def remote_branch(url: str, branch: str, *, study: str | None) -> str | None:
    """The commit ``branch`` of ``url`` points at; None when the repository has no such branch."""
    heads = remote_heads(url, study=study)
    return heads.get(branch)


def remote_heads(url: str, *, study: str | None) -> dict[str, str]:
    """Branch -> commit of ``url``; raises DeriveError when the repository cannot be read."""
    proc = run(["git", "ls-remote", "--heads", url], check=False)
    if proc.returncode != 0:
        tail = mask_secrets((proc.stderr or proc.stdout).strip(), tool_env())[-400:]
        raise DeriveError(f"cannot read {url}: {tail}", study=study)
    return branch_heads(proc.stdout)


def gitlinks(ds: Path, *, study: str | None, rev: str = "HEAD") -> dict[str, str]:
    """Subdataset name under ``inputs/`` -> the commit ``rev`` records for it."""
    if not _has_commit(ds, rev):
        return {}
    out = git("ls-tree", rev, "inputs/", cwd=ds, error=DeriveError, study=study)
    links = {}
    for line in out.splitlines():
        meta, _, path = line.partition("\t")
        mode, kind, sha = meta.split()
        if kind == "commit" and path.startswith("inputs/"):
            links[path[len("inputs/"):]] = sha
    return links


def _has_commit(ds: Path, rev: str) -> bool:
    return run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ds, check=False).returncode == 0


def head(ds: Path, *, study: str | None) -> str | None:
    return git("rev-parse", "HEAD", cwd=ds, error=DeriveError, study=study) if _has_commit(ds, "HEAD") else None


def is_registered(ds: Path, path: str) -> bool:
    if not (ds / ".gitmodules").exists():
        return False
    proc = run(["git", "config", "-f", ".gitmodules", "--get-regexp", r"submodule\..*\.path"], cwd=ds, check=False)
    return path in proc.stdout.split()


def install_input(ds: Path, name: str, url: str, branch: str, commit: str, *, study: str | None) -> None:
    """Have ``inputs/<name>`` installed from ``url`` with ``branch`` checked out at ``commit``.

    Registers it as a subdataset (``.gitmodules`` names ``url``) when it is
    new; the new gitlink itself is left for the run's commit to record.
    """
    path = f"inputs/{name}"
    if is_registered(ds, path):
        run(["datalad", "get", "--no-data", path], cwd=ds, error=DeriveError, study=study)
    else:
        run(["datalad", "clone", "--dataset", ".", url, path], cwd=ds, error=DeriveError, study=study)
    sub = ds / path
    if not _has_commit(sub, commit):
        git("fetch", "--quiet", "origin", branch, cwd=sub, error=DeriveError, study=study)
    git("checkout", "--quiet", "-B", branch, commit, cwd=sub, error=DeriveError, study=study)


def last_run_record(ds: Path, *, study: str | None) -> dict[str, Any] | None:
    """The ``datalad run`` record of HEAD, if HEAD is a run commit."""
    if not _has_commit(ds, "HEAD"):
        return None
    message = git("log", "-1", "--format=%B", cwd=ds, error=DeriveError, study=study)
    match = _RECORD.search(message)
    if match is None:
        return None
    try:
        record = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None  # a sidecar record id: treat as unknown, so the derivative runs again
    return record if isinstance(record, dict) else None


def command_text(command: Sequence[str]) -> str:
    """The command as ``datalad run`` records it (DataLad's own quoting)."""
    return command[0] if len(command) == 1 else shlex.join(command)


def datalad_run(ds: Path, command: Sequence[str], *, inputs: Sequence[str], outputs: Sequence[str],
                message: str, label: str, study: str | None) -> None:
    """``datalad run --explicit`` the command; its output streams to ours, prefixed.

    ``--explicit``: the saved outputs are exactly the declared ones (and the
    inputs' new commits, updated beforehand, are not a "dirty dataset").
    """
    argv = ["datalad", "--on-failure", "stop", "run", "--explicit", "--message", message]
    for path in inputs:
        argv += ["--input", path]
    for path in outputs:
        argv += ["--output", path]
    argv += ["--", *command]
    env = tool_env()
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(argv, cwd=ds, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise DeriveError("datalad is not installed or not on PATH", study=study, hint="run `make install`") from exc
    with proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = mask_secrets(raw.rstrip("\n"), env)
            tail.append(line)
            print(f"  {line}", flush=True)
        code = proc.wait()
    if code != 0:
        shown = " | ".join([line for line in tail if line.strip() and not _ROUTINE.match(line)][-6:])[-600:]
        raise DeriveError(f"{label}: `datalad run {command_text(command)[:200]}` failed (exit {code}): {shown}",
                          study=study, hint="nothing was pushed; fix the command or its inputs and run the job again")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def committed_json(ds: Path, name: str) -> dict[str, Any]:
    proc = run(["git", "show", f"HEAD:{name}"], cwd=ds, check=False)
    if proc.returncode != 0:
        return {}
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def job_entry(label: str, command: Sequence[str], image: str) -> dict[str, Any]:
    """The GeneratedBy entry that says which bids-flux job made the dataset, in which container."""
    entry: dict[str, Any] = {"Name": JOB_ENTRY_NAME, "Version": __version__,
                             "Description": f"{label}: datalad run {command_text(command)}"}
    if image:
        entry["Container"] = {"Type": "docker", "Tag": image}
    return entry


def with_provenance(found: Mapping[str, Any], *, label: str, entry: dict[str, Any],
                    sources: list[dict[str, str]]) -> dict[str, Any]:
    """``found`` (what the tool wrote, if anything) with the job's GeneratedBy entry and SourceDatasets."""
    description = dict(found)
    description.setdefault("Name", label)
    description.setdefault("BIDSVersion", BIDS_VERSION)
    description["DatasetType"] = "derivative"
    tools = [g for g in description.get("GeneratedBy") or [] if isinstance(g, dict) and g.get("Name") != entry["Name"]]
    description["GeneratedBy"] = [*tools, entry]
    description["SourceDatasets"] = sources
    return description


def write_description(ds: Path, description: Mapping[str, Any]) -> None:
    (ds / DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def staged_changes(ds: Path) -> bool:
    return run(["git", "diff", "--cached", "--quiet"], cwd=ds, check=False).returncode != 0


def has_unsaved_changes(ds: Path) -> bool:
    """Modified or untracked files left in the dataset itself (subdatasets' insides ignored)."""
    proc = run(["git", "status", "--porcelain", "--ignore-submodules=all"], cwd=ds, check=False)
    return bool(proc.stdout.strip())


def tracked_outputs(ds: Path, *, study: str | None) -> list[str]:
    """The dataset's own files: everything tracked except inputs/ and DataLad/git housekeeping."""
    files = git("ls-files", "-z", cwd=ds, error=DeriveError, study=study).split("\0")
    hidden = (".datalad/", "inputs/", ".gitattributes", ".gitmodules")
    return sorted(f for f in files if f and f != "inputs" and not f.startswith(hidden))
