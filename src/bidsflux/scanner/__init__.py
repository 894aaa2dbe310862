"""A synthetic Siemens MR scanner: generate, write or send a ReproIn study.

The study looks like a real Siemens Prisma session whose protocols follow the
ReproIn naming convention, so heudiconv's ``reproin`` heuristic turns it into
BIDS without a custom heuristic::

    01 anat-scout_ses-<session>     3-plane localizer (kept as DICOM only)
    02 anat-T1w                     3D sagittal
    03 fmap-epi_dir-AP              SE-EPI, same geometry and shims as BOLD
    04 fmap-epi_dir-PA
    05 func-bold_task-rest_run-01   2D EPI, one instance per slice and volume
    06 func-bold_task-rest_run-02

Siemens CSA headers (see :mod:`._csa`) carry the shim state and phase-encoding
polarity, which is what lets heudiconv fill ``IntendedFor`` in the field maps.
Everything derives from :class:`StudySpec`: the same spec gives byte-identical
files, and a different seed gives different UIDs and noise.
"""

from __future__ import annotations

from bidsflux.scanner._generate import StudySpec, generate_study, instance_count, study_uid, write_study
from bidsflux.scanner._send import SendResult, send_study

__all__ = [
    "SendResult",
    "StudySpec",
    "generate_study",
    "instance_count",
    "send_study",
    "study_uid",
    "write_study",
]
