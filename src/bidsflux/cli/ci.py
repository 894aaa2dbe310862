"""``bidsflux ci ...``: the commands CI jobs run (``ci-pipelines/*.yml``).

Each reads what it works on from the pipeline's variables (``BIDSFLUX_*``,
set when the pipeline is started or handed on by an earlier job's dotenv
report); options override them.  Reports and the outcome (``<job>.json``) go
to the current folder, where GitLab collects artifacts; the clones go to a
job folder that is removed afterwards.  Exit code 0 means the job passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._core import settings_from


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _session_options(parser: argparse.ArgumentParser, *, commit: bool = True) -> None:
    parser.add_argument("--bids-url", default=_env("BIDSFLUX_BIDS_URL"), help="BIDS dataset (BIDSFLUX_BIDS_URL)")
    parser.add_argument("--session", default=_env("BIDSFLUX_SESSION"), help="session path (BIDSFLUX_SESSION)")
    parser.add_argument("--study", default=_env("BIDSFLUX_STUDY_UID"), help="StudyInstanceUID (BIDSFLUX_STUDY_UID)")
    if commit:
        parser.add_argument("--commit", default=_env("BIDSFLUX_CONVERT_COMMIT"),
                            help="the conversion commit (BIDSFLUX_CONVERT_COMMIT, from the convert job)")
        parser.add_argument("--merge-request", type=int, default=int(os.environ.get("BIDSFLUX_MERGE_REQUEST") or 0),
                            help="merge request to report to (BIDSFLUX_MERGE_REQUEST)")
    parser.add_argument("--job-dir", type=Path, help="scratch folder, removed afterwards (default .bidsflux-job/<job>-<pid>: jobs may share a folder)")
    parser.add_argument("--result", type=Path, help="write the outcome as JSON here (default ./<job>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the job folder")


def register(sub: Any) -> None:
    ci = sub.add_parser("ci", help="the commands CI jobs run (ci-pipelines/*.yml)")
    jobs = ci.add_subparsers(dest="job", metavar="JOB")
    jobs.required = True

    convert = jobs.add_parser("convert", help="convert a session on convert/<session>, open a merge request")
    _session_options(convert, commit=False)
    convert.add_argument("--branch", help="branch to commit on (default convert/<session>)")
    convert.set_defaults(func=cmd_convert)

    validate = jobs.add_parser("validate", help="BIDS validator on the conversion commit; report in the MR")
    _session_options(validate)
    validate.set_defaults(func=cmd_validate)

    phi = jobs.add_parser("phi-check", help="no identifying data beyond what the study allows (BIDSFLUX_PHI_ALLOW)")
    _session_options(phi)
    phi.set_defaults(func=cmd_phi)

    merge = jobs.add_parser("merge", help="merge the conversion into dev when the study allows auto-merge")
    _session_options(merge)
    merge.set_defaults(func=cmd_merge)

    derive = jobs.add_parser("derive", help="run one derivative (or QC) job into <group>/<kind>/<name>")
    derive.add_argument("--bids-url", default=_env("BIDSFLUX_BIDS_URL"))
    derive.add_argument("--study", default=_env("BIDSFLUX_STUDY_UID"))
    derive.add_argument("--name", default=_env("BIDSFLUX_DERIVATIVE") or _env("CI_JOB_NAME"),
                        help="dataset name (BIDSFLUX_DERIVATIVE, else the job's name)")
    derive.add_argument("--kind", default=_env("BIDSFLUX_DERIVATIVE_KIND") or "derivatives",
                        choices=("derivatives", "qc"))
    derive.add_argument("--command", dest="derive_command", default=_env("BIDSFLUX_DERIVATIVE_COMMAND"),
                        help="the command, split into words like a shell would but never run by one")
    derive.add_argument("--inputs", default=_env("BIDSFLUX_DERIVATIVE_INPUTS") or "",
                        help="derivatives used as inputs, comma-separated (BIDSFLUX_DERIVATIVE_INPUTS)")
    derive.add_argument("--image", default=_env("BIDSFLUX_DERIVATIVE_IMAGE") or _env("CI_JOB_IMAGE") or "")
    derive.add_argument("--ref", default=_env("BIDSFLUX_BIDS_REF") or "dev")
    derive.add_argument("--job-dir", type=Path)
    derive.add_argument("--result", type=Path)
    derive.add_argument("--keep", action="store_true")
    derive.set_defaults(func=cmd_derive)

    send = jobs.add_parser("dicom-send", help="C-STORE a derivative's DICOM results to destinations")
    send.add_argument("--bids-url", default=_env("BIDSFLUX_BIDS_URL"))
    send.add_argument("--study", default=_env("BIDSFLUX_STUDY_UID"))
    send.add_argument("--from", dest="source", default=_env("BIDSFLUX_DICOM_SEND_FROM"),
                      help="derivative whose DICOM files are sent (BIDSFLUX_DICOM_SEND_FROM)")
    send.add_argument("--kind", default=_env("BIDSFLUX_DICOM_SEND_KIND") or "derivatives",
                      choices=("derivatives", "qc"))
    send.add_argument("--to", default=_env("BIDSFLUX_DICOM_SEND_TO"),
                      help="destination names, comma-separated; `sender` returns results to the modality")
    send.add_argument("--sender", default=_env("BIDSFLUX_SENDER"),
                      help="AE@host of the modality that sent the study (BIDSFLUX_SENDER)")
    send.add_argument("--job-dir", type=Path)
    send.add_argument("--result", type=Path)
    send.add_argument("--keep", action="store_true")
    send.set_defaults(func=cmd_dicom_send)

    trigger = jobs.add_parser("trigger", help="start the bids pipeline of each session a push registered")
    trigger.add_argument("--dataset", type=Path, default=Path("."), help="the study superdataset's checkout")
    trigger.add_argument("--before", default=_env("CI_COMMIT_BEFORE_SHA"))
    trigger.add_argument("--after", default=_env("CI_COMMIT_SHA") or "HEAD")
    trigger.add_argument("--bids-url", default=_env("BIDSFLUX_BIDS_URL"),
                         help="the study's BIDS dataset (default: beside the superdataset)")
    trigger.add_argument("--result", type=Path)
    trigger.set_defaults(func=cmd_trigger)


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n.replace("-", "_"), None)]
    if missing:
        raise UsageError(f"missing {', '.join('--' + n for n in missing)}",
                         hint="set them as options or as the pipeline's BIDSFLUX_* variables")


def job_credentials() -> None:
    """Let git reach the forge with the job's token (BIDSFLUX_FORGE_TOKEN, or bids_bot's BIDS_API_TOKEN)."""
    from ..forge import credential_env

    token = os.environ.get("BIDSFLUX_FORGE_TOKEN") or os.environ.get("BIDS_API_TOKEN")
    if token and "GIT_CONFIG_COUNT" not in os.environ:
        os.environ.update(credential_env(token, os.environ.get("GIT_BOT_USERNAME") or
                                         os.environ.get("BIDSFLUX_FORGE_USER") or "bids-flux"))
    for name, default in (("GIT_AUTHOR_NAME", os.environ.get("GIT_BOT_USERNAME") or "bids_bot"),
                          ("GIT_AUTHOR_EMAIL", os.environ.get("GIT_BOT_EMAIL") or "bids_bot@bids-flux.invalid")):
        os.environ.setdefault(name, default)
        os.environ.setdefault(name.replace("AUTHOR", "COMMITTER"), os.environ[name])


def _finish(args: argparse.Namespace, job: str, outcome: Any, passed: bool, message: str) -> int:
    result = args.result or Path(f"{job}.json")
    outcome.write(result)
    if not getattr(args, "keep", False) and getattr(args, "job_dir", None) is not None:
        shutil.rmtree(args.job_dir, ignore_errors=True)
    print(f"[{job}] {message}", flush=True)
    return 0 if passed else 1


def _prepared(args: argparse.Namespace, *required: str) -> Any:
    _require(args, *required)
    job_credentials()
    args.job_dir = (args.job_dir or Path(".bidsflux-job") / f"{args.job}-{os.getpid()}").resolve()
    args.job_dir.mkdir(parents=True, exist_ok=True)
    return settings_from(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert.job import run_convert_job

    settings = _prepared(args, "bids-url", "session", "study")
    outcome = run_convert_job(settings, bids_url=args.bids_url, session=args.session, study_uid=args.study,
                              job_dir=args.job_dir, branch=args.branch)
    Path("convert.env").write_text(outcome.dotenv())
    return _finish(args, "convert", outcome, True,
                   f"{outcome.nifti_files} images on {outcome.branch} at {outcome.commit[:12]}"
                   + ("" if outcome.changed else " (unchanged)"))


def _check(args: argparse.Namespace, job: str, what: str) -> int:
    """A check of the converted commit (validate, phi-check): its report, and the exit code that gates merge."""
    from ..convert.job import run_phi_job, run_validate_job

    run = run_validate_job if job == "validate" else run_phi_job
    settings = _prepared(args, "bids-url", "session", "study", "commit")
    outcome = run(settings, bids_url=args.bids_url, session=args.session, study_uid=args.study, commit=args.commit,
                  job_dir=args.job_dir, out_dir=Path.cwd(), merge_request=args.merge_request or None)
    return _finish(args, job, outcome, outcome.passed, f"{what}: {outcome.summary}")


def cmd_validate(args: argparse.Namespace) -> int:
    return _check(args, "validate", "BIDS validator")


def cmd_phi(args: argparse.Namespace) -> int:
    return _check(args, "phi-check", "PHI check")


def cmd_merge(args: argparse.Namespace) -> int:
    from ..convert.job import run_merge_job

    settings = _prepared(args, "bids-url", "session", "study", "commit")
    outcome = run_merge_job(settings, bids_url=args.bids_url, session=args.session, study_uid=args.study,
                            commit=args.commit, job_dir=args.job_dir, merge_request=args.merge_request or None)
    return _finish(args, "merge", outcome, True, outcome.summary)


def cmd_derive(args: argparse.Namespace) -> int:
    from ..derive.job import DerivativeSpec, run_derive_job

    settings = _prepared(args, "bids-url", "name", "derive_command")
    try:
        words = tuple(shlex.split(args.derive_command))
    except ValueError as exc:
        raise UsageError(f"cannot read the derivative command: {exc}") from None
    spec = DerivativeSpec(name=args.name, kind=args.kind, command=words,
                          needs=tuple(n.strip() for n in args.inputs.split(",") if n.strip()), image=args.image)
    outcome = run_derive_job(settings, bids_url=args.bids_url, spec=spec, job_dir=args.job_dir, study=args.study,
                             bids_ref=args.ref)
    return _finish(args, f"derive-{args.name}", outcome, True,
                   f"{args.kind}/{args.name} at {outcome.commit[:12]}" + ("" if outcome.changed else " (unchanged)"))


def cmd_dicom_send(args: argparse.Namespace) -> int:
    from .. import _datalad
    from ..derive.job import derivative_url
    from ..destinations import find_dicom, resolve, send
    from ..errors import SendError

    settings = _prepared(args, "bids-url", "source", "to")
    url = derivative_url(args.bids_url, args.kind, args.source)
    dataset = args.job_dir / args.source
    shutil.rmtree(dataset, ignore_errors=True)
    _datalad.clone(url, dataset, study=args.study, error=SendError)
    sender = None
    if args.sender:
        aet, _, host = args.sender.rpartition("@")
        sender = (aet, host)
    destinations = resolve(settings, [n.strip() for n in args.to.split(",") if n.strip()], sender=sender)
    files = find_dicom(dataset, get=True)
    if not files:
        raise SendError(f"{args.kind}/{args.source} holds no DICOM files to send", study=args.study)
    reports = [send(files, d, calling_aet=settings.dicom_send_aet, timeout=settings.dicom_send_timeout,
                    study=args.study) for d in destinations]
    for report in reports:
        print(f"[dicom-send] {report.summary()}", flush=True)

    class _Out:
        def write(self, path: Path) -> None:
            path.write_text(json.dumps([vars(r) for r in reports], indent=2, sort_keys=True) + "\n")

    failed = sum(r.failed for r in reports)
    return _finish(args, "dicom-send", _Out(), failed == 0,
                   f"{sum(r.sent for r in reports)} sent, {failed} failed to {len(reports)} destination(s)")


def cmd_trigger(args: argparse.Namespace) -> int:
    from ..forge.trigger import trigger_sessions

    job_credentials()
    settings = settings_from(args)
    outcome = trigger_sessions(settings, args.dataset.resolve(), before=args.before, after=args.after,
                               bids_url=args.bids_url)
    return _finish(args, "trigger", outcome, outcome.ok, outcome.summary())
