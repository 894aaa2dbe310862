"""The derivative job: what a ``derivatives``/``qc`` CI job and the local runner both run.

Given the study's BIDS dataset URL and a :class:`DerivativeSpec`, in a fresh
job folder:

1. clone the derivative dataset from ``<group>/<kind>/<name>`` (or create it:
   a DataLad dataset whose large files are annexed, json/tsv/md in git);
2. find the commits of its inputs on the forge (the BIDS dataset's
   ``bids_ref``, each needed derivative's ``main``); when they, the command
   and the container image are those of the last run, stop: nothing changed;
3. install the inputs as subdatasets ``inputs/bids`` and ``inputs/<need>``
   at those commits (YODA);
4. ``datalad run`` the command, so the commit records command, inputs,
   outputs and (through the gitlinks) the exact input commits; the job's
   provenance (GeneratedBy with the container, SourceDatasets with the input
   commits) is folded into ``dataset_description.json`` of that same commit;
5. copy annexed outputs to the store, beside the BIDS dataset's, and verify;
6. push ``main`` to the forge (creating the project on the local forge).

Nothing reaches the forge before the command succeeded and the content is
verified in the store.  The outcome is written as JSON like the conversion
job's.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import _datalad, storage
from .._locks import dataset_lock
from .._proc import git
from ..errors import BidsfluxError, DeriveError
from ..forge import LocalForge
from ..forge.publish import BIDS_GITATTRIBUTES
from ..settings import Settings
from . import _dataset as dsops
from .spec import DerivativeSpec, derivative_url

log = logging.getLogger(__name__)

BRANCH = "main"
DERIVATIVE_GITATTRIBUTES = BIDS_GITATTRIBUTES + """\
*.md annex.largefiles=nothing
"""


@dataclass
class DeriveOutcome:
    name: str
    kind: str
    url: str
    commit: str
    changed: bool
    outputs: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    stored_keys: int = 0  # annexed files verified in the store by this run (0 when unchanged)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    def summary(self) -> str:
        what = "new commit" if self.changed else "unchanged"
        return f"{self.kind}/{self.name}: {what} {self.commit[:12]}, {len(self.outputs)} files"


def _step(text: str) -> None:
    # Progress for whoever watches the job log (GitLab's job page, the local runner).
    print(f"[derive] {text}", flush=True)


def _forge_project(bids_url: str, url: str) -> tuple[str, str]:
    """(base URL, project path) of a local-forge URL: the forge serves its root at ``/``."""
    parts = urlsplit(url)
    path = parts.path.strip("/").removesuffix(".git")
    return f"{parts.scheme}://{parts.netloc}", path


def run_derive_job(settings: Settings, *, bids_url: str, spec: DerivativeSpec, job_dir: Path,
                   study: str | None, bids_ref: str = "dev") -> DeriveOutcome:
    url = derivative_url(bids_url, spec.kind, spec.name)
    ds = job_dir / f"{spec.kind}-{spec.name}"
    if ds.exists() and any(ds.iterdir()):
        raise DeriveError(f"{spec.label}: {ds} is not empty", study=study, hint="give the job a fresh folder")
    base, project = _forge_project(bids_url, url)
    local = settings.forge_type == "local"
    # One writer per derivative: on the local forge, a second job waits here rather than
    # failing its push; GitLab serialises its jobs with resource_group.
    lock = dataset_lock(settings.workdir / "locks", settings.forge_dir / f"{project}.git") if local else nullcontext()
    with lock:
        return _run_locked(settings, bids_url=bids_url, spec=spec, ds=ds, url=url, base=base, project=project,
                           local=local, study=study, bids_ref=bids_ref)


def _run_locked(settings: Settings, *, bids_url: str, spec: DerivativeSpec, ds: Path, url: str, base: str,
                project: str, local: bool, study: str | None, bids_ref: str) -> DeriveOutcome:
    label = spec.label
    targets = _input_targets(bids_url, spec, bids_ref, study)
    _step(f"{label}: inputs " + ", ".join(f"{name}@{sha[:12]}" for name, sha in targets.items()))

    if local and not (settings.forge_dir / f"{project}.git" / "HEAD").exists():
        heads: dict[str, str] = {}  # made at the first push, so a failed first run leaves no empty project
    else:
        heads = _derivative_heads(url, label, local, study)
    if heads:
        _step(f"clone {url}")
        _datalad.clone(url, ds, study=study, error=DeriveError)
        start = f"origin/{BRANCH}" if BRANCH in heads else "HEAD"
        git("checkout", "--quiet", "-B", BRANCH, start, cwd=ds, error=DeriveError, study=study)
        _make_datalad_dataset(ds, label, study)  # a GitLab project made from a template has only its commits
    else:
        _step(f"new dataset {label}")
        _make_datalad_dataset(ds, label, study)
        git("remote", "add", "origin", url, cwd=ds, error=DeriveError, study=study)
    git("config", "remote.origin.annex-ignore", "true", cwd=ds, error=DeriveError, study=study)

    entry = dsops.job_entry(label, spec.command, spec.image)
    if _unchanged(ds, spec, targets, entry, study):
        commit = dsops.head(ds, study=study) or ""
        _step(f"{label}: inputs, command and image as in the last run ({commit[:12]}); nothing to do")
        return DeriveOutcome(spec.name, spec.kind, url, commit, False, dsops.tracked_outputs(ds, study=study),
                             targets, 0)

    _step("install inputs")
    for name, sha in targets.items():
        dep_url = bids_url if name == "bids" else derivative_url(bids_url, "derivatives", name)
        dsops.install_input(ds, name, dep_url, bids_ref if name == "bids" else BRANCH, sha, study=study)

    sources = [{"URL": bids_url if name == "bids" else derivative_url(bids_url, "derivatives", name),
                "Version": sha} for name, sha in targets.items()]
    _commit_run(ds, spec, entry, sources, study)
    commit = dsops.head(ds, study=study) or ""

    _step("store content")
    storage.ensure_remote(settings, ds, study=study, like=ds / "inputs" / "bids")
    stored = storage.push(settings, ds, study=study)
    _step(f"push {BRANCH} to {url}")
    if local:
        LocalForge(settings, base).ensure_project(project, study=study)
    _datalad.push(ds, "origin", study=study, error=DeriveError)
    _step(f"{label}: {commit[:12]}, {stored.keys} annexed files verified in the store")
    return DeriveOutcome(spec.name, spec.kind, url, commit, True, dsops.tracked_outputs(ds, study=study),
                         targets, stored.keys)


def _input_targets(bids_url: str, spec: DerivativeSpec, bids_ref: str, study: str | None) -> dict[str, str]:
    """Input name -> the commit to use: the BIDS dataset's ``bids_ref``, each need's ``main``."""
    targets = {}
    bids = dsops.remote_branch(bids_url, bids_ref, study=study)
    if bids is None:
        raise DeriveError(f"{spec.label}: the BIDS dataset {bids_url} has no branch {bids_ref}", study=study,
                          hint="convert a session first")
    targets["bids"] = bids
    for need in spec.needs:
        dep_url = derivative_url(bids_url, "derivatives", need)
        try:
            sha = dsops.remote_branch(dep_url, BRANCH, study=study)
        except DeriveError:
            sha = None
        if sha is None:
            raise DeriveError(f"{spec.label} needs derivatives/{need}, which has no {BRANCH} at {dep_url}",
                              study=study, hint=f"run the derivative {need} first")
        targets[need] = sha
    return targets


def _derivative_heads(url: str, label: str, local: bool, study: str | None) -> dict[str, str]:
    try:
        return dsops.remote_heads(url, study=study)
    except DeriveError as exc:
        if local:
            raise
        raise DeriveError(f"{label}: the project {url} cannot be read ({exc})", study=study,
                          hint="create the project on GitLab first, from the site's derivatives or qc project "
                               "template, with bids_bot allowed to push to main") from exc


def _make_datalad_dataset(ds: Path, label: str, study: str | None) -> None:
    """Turn ``ds`` into a DataLad dataset on ``main`` unless it is one; commit the attributes."""
    try:
        created = _datalad.ensure_dataset(ds, description=f"bids-flux {label}", gitattributes=DERIVATIVE_GITATTRIBUTES,
                                          study=study)
    except BidsfluxError as exc:
        raise DeriveError(f"{label}: cannot create the dataset: {exc}", study=study) from exc
    if created:
        git("commit", "--quiet", "-m", f"[bids-flux] New {label} dataset", cwd=ds, error=DeriveError, study=study)


def _unchanged(ds: Path, spec: DerivativeSpec, targets: dict[str, str], entry: dict[str, Any],
               study: str | None) -> bool:
    """Same input commits, command, inputs/outputs and job entry (image) as the last run."""
    record = dsops.last_run_record(ds, study=study)
    if record is None or dsops.gitlinks(ds, study=study) != targets:
        return False
    if record.get("cmd") != dsops.command_text(spec.command) or record.get("exit", 0) != 0:
        return False
    if list(record.get("inputs") or []) != list(spec.run_inputs) or \
            list(record.get("outputs") or []) != list(_run_outputs(spec)):
        return False
    described = dsops.committed_json(ds, dsops.DESCRIPTION).get("GeneratedBy") or []
    return entry in described


def _run_outputs(spec: DerivativeSpec) -> tuple[str, ...]:
    # The description always goes into the run commit: its SourceDatasets change with the inputs.
    if "." in spec.outputs or dsops.DESCRIPTION in spec.outputs:
        return spec.outputs
    return (*spec.outputs, dsops.DESCRIPTION)


def _commit_run(ds: Path, spec: DerivativeSpec, entry: dict[str, Any], sources: list[dict[str, str]],
                study: str | None) -> None:
    """``datalad run`` the command; fold the provenance and the input commits into its commit."""
    label = spec.label
    before = dsops.head(ds, study=study)
    description = ds / dsops.DESCRIPTION
    # Written before the run too, so a run whose tool writes no description still records it.
    dsops.write_description(ds, dsops.with_provenance(dsops.read_json(description), label=label, entry=entry,
                                                      sources=sources))
    _step(f"datalad run {dsops.command_text(spec.command)}")
    dsops.datalad_run(ds, spec.command, inputs=spec.run_inputs, outputs=_run_outputs(spec),
                      message=f"[bids-flux] {spec.kind} {spec.name}", label=label, study=study)
    # The tool may have rewritten the description: merge the provenance in again.
    dsops.write_description(ds, dsops.with_provenance(dsops.read_json(description), label=label, entry=entry,
                                                      sources=sources))
    git("add", "--", dsops.DESCRIPTION, *(f"inputs/{name}" for name in spec.input_datasets), cwd=ds,
        error=DeriveError, study=study)
    after = dsops.head(ds, study=study)
    if after != before:
        if dsops.staged_changes(ds):
            git("commit", "--quiet", "--amend", "--no-edit", cwd=ds, error=DeriveError, study=study)
    elif dsops.staged_changes(ds):
        # Cannot happen with the description among the outputs; kept so that provenance is never lost.
        git("commit", "--quiet", "-m", f"[bids-flux] {spec.kind} {spec.name}: provenance", cwd=ds,
            error=DeriveError, study=study)
    if dsops.has_unsaved_changes(ds):
        log.warning("%s: the command changed files outside its declared outputs; they are not saved", label,
                    extra={"study_uid": study})
