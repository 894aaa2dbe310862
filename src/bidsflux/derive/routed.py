"""The derivatives a routing rule gives a study (its ``pipelines``), as a pipeline of the derivatives template.

A rule's ``pipelines: [stats, qc/stats]`` names derivative datasets: ``NAME``
is ``<group>/derivatives/NAME`` and ``qc/NAME`` is ``<group>/qc/NAME``.

- On GitLab the indexer creates those projects when it publishes the study
  (``bids_bot`` may push to them but cannot create them), and the jobs that
  fill them are the study's own, in its bids project's ``.gitlab-ci.yml``.
- On the embedded default the local runner runs them after each merge into
  ``dev``: the built-in ones (:func:`~bidsflux.derive.spec.builtin_spec`) are
  written as jobs extending the same templates GitLab runs
  (``ci-pipelines/derivatives.yml``), one file per study under
  ``<workdir>/pipelines/``; a name that is not built in is recorded as not
  run here, never silently dropped.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..settings import Settings
from .spec import KINDS, builtin_spec

PENDING, FAILED, NOT_RUN = "pending", "failed", "not run here"


def split(entry: str) -> tuple[str, str]:
    """``stats`` -> (derivatives, stats); ``qc/stats`` -> (qc, stats); ``derivatives/x`` -> (derivatives, x)."""
    kind, sep, name = entry.partition("/")
    if not sep:
        return "derivatives", entry
    if kind not in KINDS or not name or "/" in name:
        raise UsageError(f"pipeline {entry!r} is not NAME, derivatives/NAME or qc/NAME")
    return kind, name


def label(entry: str) -> str:
    """The canonical name: ``stats`` and ``derivatives/stats`` are both ``stats``; QC keeps its ``qc/``."""
    kind, name = split(entry)
    return name if kind == "derivatives" else f"{kind}/{name}"


def project_paths(group: str, entries: Iterable[str]) -> list[str]:
    """The forge projects the entries write, in order, each once."""
    paths: list[str] = []
    for entry in entries:
        kind, name = split(entry)
        path = f"{group}/{kind}/{name}"
        if path not in paths:
            paths.append(path)
    return paths


def job_name(entry: str) -> str:
    kind, name = split(entry)
    return name if kind == "derivatives" else f"{kind}-{name}"


def initial(entries: Iterable[str], *, local: bool) -> dict[str, dict[str, Any]]:
    """What the ledger records when a conversion merges: pending where this machine runs it."""
    recorded: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not local:
            recorded[label(entry)] = {"status": "on GitLab", "reason": "a job of the study's bids pipeline"}
        elif _is_builtin(entry):
            recorded[label(entry)] = {"status": PENDING}
        else:
            recorded[label(entry)] = {"status": NOT_RUN, "reason": "not built in (built-ins: stats, qc/stats); "
                                                                   "on GitLab it is a job of the study's "
                                                                   ".gitlab-ci.yml"}
    return recorded


def _is_builtin(entry: str) -> bool:
    try:
        builtin_spec(label(entry))
    except UsageError:
        return False
    return True


def pipeline_file(settings: Settings, study: str, entries: Iterable[str]) -> Path:
    """Write the study's derivative jobs (built-ins only) as a CI file including the derivatives template."""
    wanted = [label(e) for e in entries if _is_builtin(e)]
    folder = settings.workdir / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"derivatives-{study}.yml"
    template = Path(os.path.relpath(settings.ci_pipelines_dir / "derivatives.yml", folder))
    jobs: dict[str, Any] = {"include": [{"local": template.as_posix()}]}
    for entry in wanted:
        spec = builtin_spec(entry)
        variables = {"BIDSFLUX_DERIVATIVE": spec.name, "BIDSFLUX_DERIVATIVE_COMMAND": shlex.join(spec.command)}
        job: dict[str, Any] = {"extends": ".bidsflux-qc" if spec.kind == "qc" else ".bidsflux-derivative",
                               "variables": variables}
        if spec.needs:
            variables["BIDSFLUX_DERIVATIVE_INPUTS"] = ",".join(spec.needs)
            present = [need for need in spec.needs if need in wanted]
            if present:
                job["needs"] = present
        jobs[job_name(entry)] = job
    header = (f"# bids-flux: the derivative jobs study {study}'s routing rule gives it, for the local runner\n"
              "# (written by the worker; the same templates a study's .gitlab-ci.yml extends on GitLab).\n")
    path.write_text(header + yaml.safe_dump(jobs, sort_keys=False))
    return path


def entry_of_job(job: str, entries: Iterable[str]) -> str | None:
    return next((label(e) for e in entries if job_name(e) == job), None)
