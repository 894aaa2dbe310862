"""Publishing a session: its dataset, the study superdataset, the BIDS seed.

The study superdataset registers each session as a subdataset by writing
``.gitmodules`` and the gitlink directly: one constant-cost commit per
session, with no operation that walks the other subdatasets (DataLad's own
save inspects every subdataset, which takes hours at tens of thousands).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .._locks import dataset_lock
from .._proc import git
from ..errors import ForgeError
from ..index import IndexResult, dataset_id, ensure_dataset, save_dataset
from ..settings import Settings
from ..storage import ensure_remote
from . import LocalForge

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


def register_subdataset(superds: Path, path: str, url: str, ds_id: str, commit: str, message: str,
                        *, study: str | None) -> bool:
    """Point ``superds``'s subdataset ``path`` at ``commit``; False when nothing changed."""
    current = git("ls-files", "-s", "--", path, cwd=superds, error=ForgeError, study=study)
    if current.startswith("160000 ") and current.split()[1] == commit:
        return False
    for key, value in (("path", path), ("url", url), ("datalad-id", ds_id)):
        git("config", "-f", ".gitmodules", f"submodule.{path}.{key}", value, cwd=superds,
            error=ForgeError, study=study)
    (superds / path).mkdir(parents=True, exist_ok=True)
    git("update-index", "--add", "--cacheinfo", f"160000,{commit},{path}", cwd=superds,
        error=ForgeError, study=study)
    git("add", ".gitmodules", cwd=superds, error=ForgeError, study=study)
    git("commit", "--quiet", "-m", message, cwd=superds, error=ForgeError, study=study)
    return True


def publish_session(settings: Settings, forge: LocalForge, result: IndexResult) -> Published:
    """Push the session, register it in the study superdataset, seed the BIDS dataset."""
    study = result.study_uid
    group = result.names.group_path
    session = forge.ensure_project(f"{group}/sourcedata/dicoms/{result.names.session_path}", study=study)
    forge.push(result.dataset, session, ["main", "git-annex"], study=study)

    super_path = settings.datasets_dir / group / "sourcedata" / "dicoms" / "study"
    study_project = forge.ensure_project(f"{group}/sourcedata/dicoms/study", study=study)
    with dataset_lock(settings.workdir / "locks", super_path):
        ensure_dataset(super_path, description=f"bids-flux study {group}", gitattributes="",
                       study=study, annex=False)
        register_subdataset(
            super_path, result.names.session_path, session.url, dataset_id(result.dataset, study=study),
            result.commit, f"[bids-flux] Register session {study}", study=study,
        )
        forge.push(super_path, study_project, ["main"], study=study)
        super_commit = git("rev-parse", "HEAD", cwd=super_path, error=ForgeError, study=study)

    bids_project = ensure_bids_dataset(settings, forge, group, study_project.url,
                                       dataset_id(super_path, study=study), super_commit, study=study)
    return Published(session.url, study_project.url, bids_project, result.names.session_path)


def ensure_bids_dataset(settings: Settings, forge: LocalForge, group: str, study_url: str, study_id: str,
                        study_commit: str, *, study: str | None) -> str:
    """Create the study's BIDS dataset (branches ``base`` and ``dev``) once; return its URL."""
    bids_path = settings.datasets_dir / group / "bids"
    project = forge.ensure_project(f"{group}/bids", default_branch="dev", study=study)
    with dataset_lock(settings.workdir / "locks", bids_path):
        if ensure_dataset(bids_path, description=f"bids-flux BIDS {group}",
                          gitattributes=BIDS_GITATTRIBUTES, study=study):
            git("branch", "-M", "base", cwd=bids_path, error=ForgeError, study=study)
            ensure_remote(settings, bids_path, study=study)
            register_subdataset(bids_path, "sourcedata/dicoms", study_url, study_id, study_commit,
                                "[bids-flux] Add the study's DICOM superdataset as sourcedata/dicoms",
                                study=study)
            save_dataset(bids_path, "[bids-flux] BIDS dataset seed", study=study)
            git("branch", "dev", "base", cwd=bids_path, error=ForgeError, study=study)
            forge.push(bids_path, project, ["base", "dev", "git-annex"], study=study)
            forge.set_default_branch(f"{group}/bids", "dev", study=study)
    return project.url
