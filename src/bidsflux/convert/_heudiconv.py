"""heudiconv + dcm2niix: the one place the converter is called."""

from __future__ import annotations

import sys
from pathlib import Path

from .._proc import run
from ..errors import ConvertError


def tool_versions() -> dict[str, str]:
    """Converter versions, recorded in every conversion commit."""
    heudiconv = run([Path(sys.executable).parent / "heudiconv", "--version"], error=ConvertError).stdout.strip()
    dcm2niix = run(["dcm2niix", "--version"], error=ConvertError, check=False).stdout.strip().splitlines()
    return {"heudiconv": heudiconv, "dcm2niix": dcm2niix[-1] if dcm2niix else "unknown"}


def convert(files: list[Path], outdir: Path, heuristic: str, *, study: str | None) -> str:
    """Run heudiconv on ``files`` (series archives) into the BIDS root ``outdir``."""
    proc = run(
        [Path(sys.executable).parent / "heudiconv", "--files", *files, "-f", heuristic, "--bids",
         "-o", outdir, "-l", "", "-c", "dcm2niix", "--minmeta", "--overwrite"],
        error=ConvertError, study=study, check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise ConvertError(f"heudiconv failed with exit code {proc.returncode}: {tail}", study=study,
                           hint="check the series names against the heuristic")
    return proc.stdout + proc.stderr
