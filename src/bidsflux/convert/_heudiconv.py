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


def convert(files: list[Path], outdir: Path, heuristic: Path, *, study: str | None) -> dict[str, list[str]]:
    """Run heudiconv on ``files`` (series archives) into the BIDS root ``outdir``; return its conversion table.

    A conversion table left by an earlier run is removed first: heudiconv would
    reuse it instead of asking the heuristic again.
    """
    shutil.rmtree(outdir / ".heudiconv", ignore_errors=True)
    _heudiconv(files, outdir, heuristic, "dcm2niix", study=study)
    return conversion_table(outdir / ".heudiconv")


def plan(files: list[Path], heuristic: Path, *, study: str | None) -> dict[str, list[str]]:
    """The conversion table ``heuristic`` gives for ``files``, converting nothing (``-c none``)."""
    with tempfile.TemporaryDirectory(prefix="bidsflux-plan-") as tmp:
        _heudiconv(files, Path(tmp), heuristic, "none", study=study)
        return conversion_table(Path(tmp) / ".heudiconv")


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
