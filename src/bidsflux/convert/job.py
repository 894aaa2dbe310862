"""The jobs of the bids pipeline (``ci-pipelines/bids.yml``): convert, validate, phi-check, merge.

GitLab runs them as CI jobs; the embedded default's local runner runs the
same ``bidsflux ci ...`` commands from the same file.  Each starts from a
fresh clone in its own job folder, so a job can run on any runner that can
reach the forge and the store:

- ``convert``: clone the BIDS dataset, branch ``convert/<session>`` off
  ``dev``, get the session's series archives, run heudiconv (the study's
  heuristic) + dcm2niix, record heuristic and converter versions in the
  commit and in ``.bidsflux/conversions/<session>.json``, copy the content to
  the store, push the branch and open a merge request into ``dev``;
- ``validate``: the BIDS validator on that commit, its report in the merge request;
- ``phi-check``: no identifying data beyond what the study allows (:mod:`.phi`);
- ``merge``: merge into ``dev`` when the study allows auto-merge; otherwise the
  merge request waits for a data manager.

Later jobs work on the exact commit ``convert`` made (``BIDSFLUX_CONVERT_COMMIT``,
handed on as a dotenv report), never on whatever the branch holds by then.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import _datalad, storage
from .._proc import git, run
from ..errors import ConvertError, ForgeError
from ..forge.review import LocalReview, MergeRequest, gitlab_push_options, project_path
from ..settings import Settings
from . import _heudiconv, heuristics
from ._reports import junit
from ._validator import Validation, validate

log = logging.getLogger(__name__)
RECORDS = ".bidsflux/conversions"


@dataclass
class ConvertOutcome:
    study_uid: str
    session: str
    branch: str
    base: str
    commit: str
    changed: bool
    nifti_files: int
    stored_keys: int
    heuristic: str
    heuristic_sha256: str
    versions: dict[str, str]
    merge_request: int | None = None
    outputs: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    def dotenv(self) -> str:
        """What the later jobs of the pipeline need (a GitLab dotenv report)."""
        return (f"BIDSFLUX_CONVERT_COMMIT={self.commit}\nBIDSFLUX_CONVERT_BRANCH={self.branch}\n"
                f"BIDSFLUX_MERGE_REQUEST={self.merge_request or ''}\n")


def step(job: str, message: str) -> None:
    # Progress for whoever watches the job log (GitLab's job page, the demo).
    print(f"[{job}] {message}", flush=True)


def review_for(settings: Settings) -> LocalReview | None:
    """The local forge's merge requests; None on GitLab, where GitLab keeps them."""
    return LocalReview(settings.forge_dir) if settings.forge_type == "local" else None


def conversion_message(session: str, study: str, heuristic: heuristics.Heuristic, versions: dict[str, str],
                       super_commit: str) -> str:
    return (f"[bids-flux] Convert session {session}\n\n"
            f"study: {study}\nheuristic: {heuristic.name}\nheuristic-source: {heuristic.source}\n"
            f"heuristic-sha256: {heuristic.sha256}\n"
            + "".join(f"{tool}: {version}\n" for tool, version in sorted(versions.items()))
            + f"sourcedata/dicoms: {super_commit}\n")


def clone_at(bids_url: str, job_dir: Path, ref: str, *, study: str) -> Path:
    """A fresh clone of the BIDS dataset with ``ref`` (a branch of origin, or a commit) checked out."""
    bids = job_dir / "bids"
    if bids.exists():
        shutil.rmtree(bids)
    _datalad.clone(bids_url, bids, study=study, error=ConvertError)
    target = f"origin/{ref}" if not _is_sha(ref) else ref
    git("checkout", "--quiet", "--detach", target, cwd=bids, error=ConvertError, study=study)
    return bids


def _is_sha(ref: str) -> bool:
    return len(ref) == 40 and all(c in "0123456789abcdef" for c in ref)


def session_archives(bids: Path, session: str, *, study: str, get: bool = True) -> list[Path]:
    """Update ``sourcedata/dicoms`` to the study's latest and return (and get) the session's archives."""
    dicoms = bids / "sourcedata" / "dicoms"
    _datalad.get(bids, ["sourcedata/dicoms"], study=study, no_data=True, error=ConvertError)
    git("fetch", "--quiet", "origin", cwd=dicoms, error=ConvertError, study=study)
    git("checkout", "--quiet", "-B", "main", "origin/main", cwd=dicoms, error=ConvertError, study=study)
    registered = git("config", "-f", ".gitmodules", "--get-regexp", r"submodule\..*\.path", cwd=dicoms,
                     error=ConvertError, study=study) if (dicoms / ".gitmodules").exists() else ""
    if session not in registered.split():
        raise ConvertError(f"session {session} is not registered in the study superdataset", study=study)
    _datalad.get(dicoms, [session], study=study, error=ConvertError, no_data=not get)
    archives = sorted((dicoms / session).glob("*.tar*"))
    if not archives:
        raise ConvertError(f"session {session} has no series archives", study=study)
    return archives


def run_convert_job(settings: Settings, *, bids_url: str, session: str, study_uid: str, job_dir: Path,
                    branch: str | None = None, base: str = "dev", target: str | None = None,
                    open_review: bool = True) -> ConvertOutcome:
    """Convert ``session`` onto ``branch`` (off ``base``) and open a merge request into ``target`` (``base``)."""
    study = study_uid
    target = target or base
    branch = branch or f"convert/{session}"
    step("convert", f"clone {bids_url} ({base})")
    bids = clone_at(bids_url, job_dir, base, study=study)
    git("checkout", "--quiet", "-B", branch, cwd=bids, error=ConvertError, study=study)
    base_commit = git("rev-parse", "HEAD", cwd=bids, error=ConvertError, study=study)

    step("convert", "update sourcedata/dicoms and get the session's archives")
    archives = session_archives(bids, session, study=study)
    heuristic = heuristics.resolve(settings.bids_heuristic, bids, study=study)
    versions = _heudiconv.tool_versions()
    previous = read_record(bids, session)
    if previous:
        # A re-conversion: what the last one made goes first, so that nothing a new heuristic
        # no longer produces stays behind.
        old = [p for p in previous.get("outputs", []) if p.startswith(("sub-", "sourcedata/sub-"))]
        if old:
            git("rm", "-r", "--quiet", "--ignore-unmatch", "--", *old, cwd=bids, error=ConvertError, study=study)
    step("convert", f"heudiconv with heuristic {heuristic.describe()} on {len(archives)} series")
    mapping = _heudiconv.convert(archives, bids, heuristic.path, study=study,
                                 dicom_archives="dicom-archives" in settings.phi_allow)
    # heudiconv's own folder holds the DICOM headers it read (patient ID, names, dates):
    # never committed. What a review needs of it, the conversion table, goes into the record.
    shutil.rmtree(bids / ".heudiconv", ignore_errors=True)
    git("rm", "-r", "--cached", "--quiet", "--ignore-unmatch", ".heudiconv", cwd=bids, error=ConvertError,
        study=study)
    if "acquisition-date" not in settings.phi_allow:
        from .phi import scrub_acquisition_dates

        scrubbed = scrub_acquisition_dates(bids)
        if scrubbed:
            step("convert", f"acquisition dates shifted to 1925-01-01 in {len(scrubbed)} scans.tsv "
                            "(the study does not allow them: BIDSFLUX_PHI_ALLOW)")
    super_commit = git("rev-parse", "HEAD", cwd=bids / "sourcedata" / "dicoms", error=ConvertError, study=study)
    outputs = session_outputs(bids, study=study)
    record = {"outputs": outputs, "session": session, "study": study, "heuristic": heuristic.name, "heuristic_source": heuristic.source,
              "heuristic_sha256": heuristic.sha256, "versions": versions, "mapping": mapping,
              "sourcedata_dicoms": super_commit, "dicom_archives": "dicom-archives" in settings.phi_allow}
    (bids / RECORDS).mkdir(parents=True, exist_ok=True)
    (bids / RECORDS / f"{session}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    _datalad.save(bids, conversion_message(session, study, heuristic, versions, super_commit), study=study,
                  error=ConvertError)
    commit = git("rev-parse", "HEAD", cwd=bids, error=ConvertError, study=study)
    changed_files = git("diff", "--name-only", base_commit, commit, cwd=bids, error=ConvertError,
                        study=study).splitlines()
    nifti = len(list(bids.glob("sub-*/**/*.nii.gz")))

    step("convert", "store content")
    stored = storage.push(settings, bids, study=study)
    step("convert", f"push {branch}")
    title = f"Convert session {session}" if target == base else f"Re-convert into {target}: {branch}"
    description = (f"Study {study}: {len(archives)} series converted with {heuristic.describe()}; "
                   + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if settings.forge_type == "gitlab":
        push_for_review(bids, branch, target, title, description, study=study)
    # A re-run replaces the branch: it always starts again from the base.
    _datalad.push(bids, "origin", study=study, error=ConvertError, force=True)
    iid = None
    review = review_for(settings)
    if open_review and review is not None:
        mr = review.open(project_path(bids_url), branch, target, title, description, commit)
        iid = mr.iid
        step("convert", f"merge request {mr.summary()}")
    return ConvertOutcome(
        study_uid=study, session=session, branch=branch, base=base, commit=commit,
        changed=commit != base_commit, nifti_files=nifti, stored_keys=stored.keys, heuristic=heuristic.name,
        heuristic_sha256=heuristic.sha256, versions=versions, merge_request=iid, outputs=changed_files)


def push_for_review(clone: Path, branch: str, target: str, title: str, description: str, *,
                    study: str | None) -> str:
    """Push HEAD to ``branch`` on GitLab with the push options that open (or update) its merge request.

    The merge request comes with the push, so ``bids_bot`` needs no API scope.
    ``--force``: a re-run rebuilds the branch from its base.  Returns git's
    output, which carries GitLab's messages (the merge request's address).
    """
    pushed = run(["git", "push", "--force", *[f"--push-option={o}" for o in
                                              gitlab_push_options(target, title, description)],
                  "origin", f"HEAD:refs/heads/{branch}"], cwd=clone, error=ConvertError, study=study)
    refused_options(pushed.stderr, branch, study=study)
    return pushed.stderr


def refused_options(stderr: str, branch: str, *, study: str | None) -> None:
    """GitLab accepts a push whose options it cannot honour and only warns: make that a failed job.

    Otherwise the branch would be pushed, the job green, and no merge request
    would wait for review (e.g. a target branch that does not exist).
    """
    lines = [line.removeprefix("remote:").strip() for line in stderr.splitlines()]
    problems = [line for line in lines if "Error encountered with push options" in line]
    if problems:
        raise ConvertError(f"{branch} was pushed but GitLab opened no merge request: {' '.join(problems)[:500]}",
                           study=study, hint="check the target branch and the push options the job sends")


def read_record(bids: Path, session: str) -> dict[str, Any] | None:
    """The record of the session's last conversion in this dataset, if any."""
    path = bids / RECORDS / f"{session}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def session_outputs(bids: Path, *, study: str) -> list[str]:
    """What the converter wrote for the session: new or changed files under sub-* and sourcedata/sub-*."""
    raw = run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"], cwd=bids, error=ConvertError,
              study=study).stdout
    paths = [entry[3:] for entry in raw.split("\0") if len(entry) > 3]
    return sorted(p for p in paths if p.startswith(("sub-", "sourcedata/sub-")))


@dataclass
class CheckOutcome:
    job: str
    study_uid: str
    session: str
    commit: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def _note(settings: Settings, bids_url: str, merge_request: int | None, body: str) -> None:
    review = review_for(settings)
    if review is not None and merge_request:
        review.note(project_path(bids_url), merge_request, body)


def run_validate_job(settings: Settings, *, bids_url: str, session: str, study_uid: str, commit: str,
                     job_dir: Path, out_dir: Path, merge_request: int | None = None,
                     sessions: Sequence[str] = ()) -> CheckOutcome:
    """Validate the dataset at ``commit``, reading the images of ``session`` (or ``sessions``) only.

    The validator sees every file of the dataset (names, sidecars, tables);
    the content of other sessions' images stays in the store, because those
    were validated when they were converted and fetching them would make each
    session's check cost the whole dataset.
    """
    study = study_uid
    step("validate", f"clone {bids_url} at {commit[:12]}")
    bids = clone_at(bids_url, job_dir, commit, study=study)
    images = [p for p in git("ls-files", "--", "sub-*", cwd=bids, error=ConvertError, study=study).splitlines()
              if p.endswith((".nii", ".nii.gz"))]
    wanted = _session_images(bids, list(sessions) or [session], images)
    absent = frozenset(images) - frozenset(wanted)
    step("validate", f"get {len(wanted)} images of this conversion from the store"
                     + (f"; {len(absent)} images of other sessions stay there" if absent else ""))
    if wanted:
        _datalad.get(bids, wanted, study=study, error=ConvertError)
    step("validate", "BIDS validator")
    result = validate(bids, study=study, absent=absent)
    (out_dir / "bids-validator.json").write_text(json.dumps(result.report, indent=1))
    markdown = validation_markdown(session, commit, result)
    (out_dir / "bids-validator.md").write_text(markdown)
    (out_dir / "bids-validator.xml").write_text(junit("bids-validator", _validator_cases(result)))
    _note(settings, bids_url, merge_request, markdown)
    return CheckOutcome("validate", study, session, commit, result.valid, result.summary(),
                        {"errors": result.errors, "warnings": result.warnings, "codes": result.codes})


def _session_images(bids: Path, sessions: Sequence[str], images: Sequence[str]) -> list[str]:
    """The images the sessions' conversion records list; every image when a record is missing."""
    listed: set[str] = set()
    for name in sessions:
        record = read_record(bids, name)
        if record is None or not isinstance(record.get("outputs"), list):
            return list(images)
        listed.update(str(path) for path in record["outputs"])
    return [image for image in images if image in listed]


def validation_markdown(session: str, commit: str, result: Validation) -> str:
    lines = [f"### BIDS validator: {'passed' if result.valid else 'FAILED'}", "",
             f"Session {session}, commit {commit[:12]}: {result.errors} errors, {result.warnings} warnings.", ""]
    if result.not_read:
        lines += [f"The headers of {result.not_read} images of other sessions were not read (their content stays "
                  "in the store; each was validated when it was converted).", ""]
    if result.codes:
        lines += ["| severity | code | count |", "| --- | --- | --- |"]
        lines += [f"| {key.split(':', 1)[0]} | {key.split(':', 1)[1]} | {n} |" for key, n in sorted(result.codes.items())]
    return "\n".join(lines) + "\n"


def _validator_cases(result: Validation) -> list[tuple[str, str | None]]:
    issues = result.report.get("issues", {}).get("issues", [])
    cases: list[tuple[str, str | None]] = []
    for issue in issues:
        if issue.get("severity") == "error":
            cases.append((f"{issue.get('code')} {issue.get('location', '')}".strip(),
                          str(issue.get("issueMessage") or issue.get("code"))))
    if not cases:
        cases.append(("BIDS validation", None))
    return cases


def run_phi_job(settings: Settings, *, bids_url: str, session: str, study_uid: str, commit: str, job_dir: Path,
                out_dir: Path, base: str = "dev", merge_request: int | None = None) -> CheckOutcome:
    from .phi import check_tree, identity_from_archive

    study = study_uid
    step("phi-check", f"clone {bids_url} at {commit[:12]}")
    bids = clone_at(bids_url, job_dir, commit, study=study)
    archives = session_archives(bids, session, study=study, get=False)
    smallest = min(archives, key=_archive_size)
    _datalad.get(bids / "sourcedata" / "dicoms", [str(smallest.relative_to(bids / "sourcedata" / "dicoms"))],
                 study=study, error=ConvertError)
    identity = identity_from_archive(smallest)
    log_range = f"origin/{base}..{commit}"
    raw = git("log", "--format=%H%x00%B%x1e", log_range, cwd=bids, error=ConvertError, study=study)
    messages = {}
    for entry in filter(None, (e.strip("\n") for e in raw.split("\x1e"))):
        sha, _, body = entry.partition("\x00")
        messages[sha] = body
    step("phi-check", f"sidecars, tables, .heudiconv and {len(messages)} commit message(s); "
                      f"allowed: {', '.join(sorted(settings.phi_allow)) or 'nothing'}")
    findings = check_tree(bids, identity, settings.phi_allow, commit_messages=messages)
    for finding in findings:
        step("phi-check", f"FOUND {finding}")
    passed = not findings
    summary = "no identifying data found" if passed else f"{len(findings)} finding(s)"
    lines = [f"### PHI check: {'passed' if passed else 'FAILED'}", "",
             f"Session {session}, commit {commit[:12]}: {summary} "
             f"(allowed: {', '.join(sorted(settings.phi_allow)) or 'nothing'}).", ""]
    lines += [f"- `{finding}`" for finding in findings]
    markdown = "\n".join(lines) + "\n"
    (out_dir / "phi-check.md").write_text(markdown)
    (out_dir / "phi-check.xml").write_text(junit("phi-check", [(str(f), f"{f.what} in {f.path}") for f in findings]
                                                 or [("no identifying data", None)]))
    _note(settings, bids_url, merge_request, markdown)
    return CheckOutcome("phi-check", study, session, commit, passed, summary,
                        {"findings": [str(f) for f in findings]})


def _archive_size(path: Path) -> int:
    # Annexed: the key in the symlink target carries the size (SHA256E-s<size>--...).
    target = str(path.readlink()) if path.is_symlink() else ""
    for part in Path(target).name.split("-"):
        if part.startswith("s") and part[1:].isdigit():
            return int(part[1:])
    return path.stat().st_size if path.exists() else 0


def run_merge_job(settings: Settings, *, bids_url: str, session: str, study_uid: str, commit: str,
                  job_dir: Path, base: str = "dev", merge_request: int | None = None) -> CheckOutcome:
    study = study_uid
    branch = f"convert/{session}"
    if not settings.bids_auto_merge:
        message = f"auto-merge is off for this study: {branch} waits for review"
        step("merge", message)
        _note(settings, bids_url, merge_request, f"Checks passed; {message}.")
        return CheckOutcome("merge", study, session, commit, True, message, {"merged": False})
    step("merge", f"merge {commit[:12]} ({branch}) into {base}")
    bids = clone_at(bids_url, job_dir, base, study=study)
    git("checkout", "--quiet", "-B", base, f"origin/{base}", cwd=bids, error=ConvertError, study=study)
    git("merge", "--quiet", "--no-ff", "-m", f"[bids-flux] Merge {branch} into {base}", commit,
        cwd=bids, error=ConvertError, study=study)
    merge_commit = git("rev-parse", "HEAD", cwd=bids, error=ConvertError, study=study)
    storage.confirm_remote(settings, bids, study=study)  # git-annex pushes its branch only after this
    try:
        _datalad.push(bids, "origin", study=study, error=ConvertError)
    except ConvertError as exc:
        raise ConvertError(f"could not push the merge into {base} (did {base} move meanwhile?): {exc}",
                           study=study, hint="run the pipeline again") from None
    review = review_for(settings)
    if review is not None and merge_request:
        try:
            review.mark_merged(project_path(bids_url), merge_request, merge_commit)
        except ForgeError as exc:
            log.warning("merged, but the merge request could not be marked: %s", exc)
    return CheckOutcome("merge", study, session, commit, True, f"merged into {base}: {merge_commit[:12]}",
                        {"merged": True, "merge_commit": merge_commit})


def open_requests(settings: Settings, bids_url: str) -> list[MergeRequest]:
    review = review_for(settings)
    return review.list(project_path(bids_url), "opened") if review is not None else []
