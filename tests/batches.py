"""Test helper: put a synthetic study into the spool as a completed batch."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from bidsflux.scanner import StudySpec, write_study


def make_batch(spool: Path, spec: StudySpec, scratch: Path, *, only_series: set[int] | None = None) -> Path:
    """Write ``spec`` and file it as ``complete/<study>@<ns>/<series>/<sop>.dcm``; returns the batch."""
    files = write_study(spec, scratch)
    batch = None
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if only_series is not None and int(ds.SeriesNumber) not in only_series:
            continue
        if batch is None:
            batch = spool / "complete" / f"{ds.StudyInstanceUID}@{time.time_ns()}"
        target = batch / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert batch is not None
    return batch
