"""heudiconv + dcm2niix: the one place the converter is called."""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
from pathlib import Path

from .._proc import run
from ..errors import ConvertError


def tool_versions() -> dict[str, str]:
    """Converter versions, recorded in every conversion commit."""
    heudiconv = run([Path(sys.executable).parent / "heudiconv", "--version"], error=ConvertError).stdout.strip()
    dcm2niix = run(["dcm2niix", "--version"], error=ConvertError, check=False).stdout.strip().splitlines()
    return {"heudiconv": heudiconv, "dcm2niix": dcm2niix[-1] if dcm2niix else "unknown"}


def _heudiconv(files: list[Path], outdir: Path, heuristic: Path, converter: str, *, study: str | None) -> None:
    proc = run(
        [Path(sys.executable).parent / "heudiconv", "--files", *files, "-f", heuristic, "--bids",
         "-o", outdir, "-l", "", "-c", converter, "--minmeta", "--overwrite"],
        error=ConvertError, study=study, check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise ConvertError(f"heudiconv failed with exit code {proc.returncode}: {tail}", study=study,
                           hint="check the series names against the heuristic")


_WITHOUT_DICOM = '''"""bids-flux: {name} without DICOM archives in the BIDS dataset.

Its DICOMs are the dataset's sourcedata/dicoms subdataset already; a copy as
sourcedata/sub-*/...dicom.tgz would carry every header (patient name, birth
date) into the dataset researchers get.  Written for one heudiconv run.
"""
import importlib.util as _util

_spec = _util.spec_from_file_location("_bidsflux_site_heuristic", {path!r})
_site = _util.module_from_spec(_spec)
_spec.loader.exec_module(_site)
globals().update({{k: v for k, v in vars(_site).items() if not k.startswith("__")}})


def infotodict(seqinfo, *args, **kwargs):
    kept = {{}}
    for key, series in _site.infotodict(seqinfo, *args, **kwargs).items():
        outtypes = tuple(t for t in key[1] if t != "dicom")
        if outtypes:
            kept[(key[0], outtypes, *key[2:])] = series
    return kept
'''


def _heuristic_for_run(heuristic: Path, folder: Path, dicom_archives: bool) -> Path:
    """``heuristic`` itself, or (the default) a wrapper that drops its ``dicom`` outputs."""
    if dicom_archives:
        return heuristic
    wrapper = folder / "bidsflux_heuristic.py"
    wrapper.write_text(_WITHOUT_DICOM.format(name=heuristic.stem, path=str(heuristic)))
    return wrapper


def convert(files: list[Path], outdir: Path, heuristic: Path, *, study: str | None,
            dicom_archives: bool = False) -> dict[str, list[str]]:
    """Run heudiconv on ``files`` (series archives) into the BIDS root ``outdir``; return its conversion table.

    A conversion table left by an earlier run is removed first: heudiconv would
    reuse it instead of asking the heuristic again.  Without ``dicom_archives``
    the heuristic's ``dicom`` outputs are dropped.
    """
    shutil.rmtree(outdir / ".heudiconv", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bidsflux-heuristic-") as tmp:
        _heudiconv(files, outdir, _heuristic_for_run(heuristic, Path(tmp), dicom_archives), "dcm2niix", study=study)
    return conversion_table(outdir / ".heudiconv")


def plan(files: list[Path], heuristic: Path, *, study: str | None, dicom_archives: bool = False) -> dict[str, list[str]]:
    """The conversion table ``heuristic`` gives for ``files``, converting nothing (``-c none``)."""
    with tempfile.TemporaryDirectory(prefix="bidsflux-plan-") as tmp:
        _heudiconv(files, Path(tmp) / "out", _heuristic_for_run(heuristic, Path(tmp), dicom_archives), "none",
                   study=study)
        return conversion_table(Path(tmp) / "out" / ".heudiconv")


def conversion_table(folder: Path) -> dict[str, list[str]]:
    """heudiconv's ``*.auto.txt`` tables as {series id: sorted output templates}."""
    mapping: dict[str, list[str]] = {}
    for table_file in sorted(folder.glob("**/info/*.auto.txt")):
        table = ast.literal_eval(table_file.read_text())
        for key, series in table.items():
            template, outtypes = key[0], key[1]
            for series_id in series:
                mapping.setdefault(str(series_id), []).append(f"{template} [{','.join(outtypes)}]")
    return {k: sorted(v) for k, v in sorted(mapping.items())}
