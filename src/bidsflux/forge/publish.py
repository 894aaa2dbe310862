"""Publishing a session: its dataset, the study superdataset, the BIDS seed.

The study superdataset registers each session as a subdataset by writing
``.gitmodules`` and the gitlink directly: one constant-cost commit per
session, with no operation that walks the other subdatasets (DataLad's own
save inspects every subdataset, which takes hours at tens of thousands).

It works with either forge (:class:`~bidsflux.forge.Forge`); on GitLab a new
project made from a template starts with the template's commits, which the
forge merges into the dataset before its first push, so what is registered
is always the commit that was pushed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._locks import dataset_lock
from .._proc import git
from ..errors import ForgeError
from ..index import IndexResult, dataset_id, ensure_dataset, save_dataset
from ..index.superdataset import register_subdataset as _register
from ..settings import Settings
from ..storage import ensure_remote
from . import Forge

log = logging.getLogger(__name__)

BIDS_GITATTRIBUTES = """\
* annex.backend=SHA256E
* annex.largefiles=(largerthan=256kb)
*.nii.gz annex.largefiles=anything
*.nii annex.largefiles=anything
*.json annex.largefiles=nothing
*.tsv annex.largefiles=nothing
*.bval annex.largefiles=nothing
*.bvec annex.largefiles=nothing
README* annex.largefiles=nothing
CHANGES annex.largefiles=nothing
.bidsignore annex.largefiles=nothing
**/.git* annex.largefiles=nothing
"""


@dataclass(frozen=True)
class Published:
    session_url: str
    study_url: str
    bids_url: str
    session_path: str
    group_path: str = ""
    session_commit: str = ""
    study_commit: str = ""


def register_subdataset(superds: Path, path: str, url: str, ds_id: str, commit: str, message: str,
                        *, study: str | None) -> bool:
    """Point ``superds``'s subdataset ``path`` at ``commit`` (constant cost); False when unchanged."""
    return _register(superds, path, url, ds_id, commit, message, study=study, error=ForgeError)


def publish_session(settings: Settings, forge: Forge, result: IndexResult, *,
                    derivatives: Sequence[str] = ()) -> Published:
    """Push the session, register it in the study superdataset, seed the BIDS dataset.

    ``derivatives`` (the routing rule's ``pipelines``) are the derivative and
    QC datasets the study gets: on GitLab their projects are made here, by
    the indexer's bot, because the CI jobs that fill them (``bids_bot``) may
    push but not create projects.  The local forge makes a project at its
    first push, so a derivative that never succeeds leaves no empty one.

    Idempotent: a second call after a crash (or an identical resend) pushes
    nothing new and makes no commit.  Failures to reach the forge are raised
    as transient :class:`ForgeError`; nothing here touches the ledger.
    """
    study = result.study_uid
    group = result.names.group_path
    session = forge.ensure_project(f"{group}/sourcedata/dicoms/{result.names.session_path}", study=study)
    with dataset_lock(settings.workdir / "locks", result.dataset):
        forge.push(result.dataset, session, ["main", "git-annex"], study=study)
        session_commit = git("rev-parse", "refs/heads/main", cwd=result.dataset, error=ForgeError, study=study)

    super_path = settings.datasets_dir / group / "sourcedata" / "dicoms" / "study"
    study_project = forge.ensure_project(f"{group}/sourcedata/dicoms/study", study=study)
    with dataset_lock(settings.workdir / "locks", super_path):
        ensure_dataset(super_path, description=f"bids-flux study {group}", gitattributes="",
                       study=study, annex=False)
        register_subdataset(
            super_path, result.names.session_path, session.url, dataset_id(result.dataset, study=study),
            session_commit, f"[bids-flux] Register session {study}", study=study,
        )
        forge.push(super_path, study_project, ["main"], study=study)
        super_commit = git("rev-parse", "HEAD", cwd=super_path, error=ForgeError, study=study)

    bids_project = ensure_bids_dataset(settings, forge, group, study_project.url,
                                       dataset_id(super_path, study=study), super_commit, study=study,
                                       like=result.dataset)
    if forge.kind == "gitlab":
        from ..derive.routed import project_paths

        for path in project_paths(group, derivatives):
            forge.ensure_project(path, study=study)
    return Published(session.url, study_project.url, bids_project, result.names.session_path,
                     group_path=group, session_commit=session_commit, study_commit=super_commit)


def ensure_bids_dataset(settings: Settings, forge: Forge, group: str, study_url: str, study_id: str,
                        study_commit: str, *, study: str | None, like: Path | None = None) -> str:
    """Create the study's BIDS dataset (branches ``base`` and ``dev``) once; return its URL.

    The seed is pushed when the dataset is made, and again whenever the forge
    still lacks ``dev`` (a crash between the two); never afterwards, because
    ``dev`` then belongs to the conversion jobs.
    """
    bids_path = settings.datasets_dir / group / "bids"
    project = forge.ensure_project(f"{group}/bids", default_branch="dev", study=study)
    with dataset_lock(settings.workdir / "locks", bids_path):
        created = ensure_dataset(bids_path, description=f"bids-flux BIDS {group}",
                                 gitattributes=BIDS_GITATTRIBUTES, study=study)
        if created:
            git("branch", "-M", "base", cwd=bids_path, error=ForgeError, study=study)
            register_subdataset(bids_path, "sourcedata/dicoms", study_url, study_id, study_commit,
                                "[bids-flux] Add the study's DICOM superdataset as sourcedata/dicoms",
                                study=study)
            save_dataset(bids_path, "[bids-flux] BIDS dataset seed", study=study)
        # Outside `created`: a store outage right after creation must not leave it without one.
        # `like`: the store location sits beside the session's.
        ensure_remote(settings, bids_path, study=study, like=like)
        if created or "dev" not in forge.remote_branches(project, study=study):
            # base first: a template's commits are merged into it, and dev starts from the result.
            forge.push(bids_path, project, ["base", "git-annex"], study=study)
            if not git("branch", "--list", "dev", cwd=bids_path, error=ForgeError, study=study):
                git("branch", "dev", "base", cwd=bids_path, error=ForgeError, study=study)
            forge.push(bids_path, project, ["dev"], study=study)
            forge.set_default_branch(f"{group}/bids", "dev", study=study)
    return project.url
