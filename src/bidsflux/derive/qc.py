"""A QC step over a statistics derivative: a verdict per image, and a report.

    python -m bidsflux.derive.qc STATS_DIR OUTPUT_DIR [--min-volumes N] [--max-anisotropy R]

Reads ``STATS_DIR/stats.tsv`` (written by :mod:`bidsflux.derive.stats`) and
writes ``OUTPUT_DIR/qc.tsv`` (``path``, ``verdict`` pass/fail, ``reasons``),
``OUTPUT_DIR/report.md`` and a ``dataset_description.json``.  An image fails
when it is all zero, constant, has NaN voxels, is a time series (bold, cbv)
with fewer than N volumes, or its voxels are more anisotropic than R (largest
over smallest spatial voxel size).

Failing images are the output, not an error: the exit status is 0 whenever
the verdicts were written, 1 when the stats table is missing or malformed,
2 for usage errors.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .stats import read_tsv, write_json

TOOL = "bidsflux.derive.qc"
QC_COLUMNS = ("path", "verdict", "reasons")
TIME_SERIES_SUFFIXES = frozenset({"bold", "cbv"})
NEEDED_COLUMNS = ("path", "shape", "zooms", "std", "nonzero", "nan")


@dataclass(frozen=True)
class Thresholds:
    min_volumes: int = 10
    max_anisotropy: float = 3.0


@dataclass(frozen=True)
class Verdict:
    path: str
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "fail" if self.reasons else "pass"


class StatsTableError(ValueError):
    """The stats table cannot be judged (missing, or a row that does not parse)."""


def _number(row: dict[str, str], column: str) -> float:
    text = row.get(column, "")
    if text == "n/a":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise StatsTableError(f"{row.get('path', '?')}: column {column} is {text!r}, not a number") from None


def _dims(row: dict[str, str], column: str) -> list[float]:
    text = row.get(column, "")
    try:
        return [float(part) for part in text.split("x")]
    except ValueError:
        raise StatsTableError(f"{row.get('path', '?')}: column {column} is {text!r}, not NxMx...") from None


def _suffix(path: str) -> str:
    name = re.sub(r"\.nii(\.gz)?$", "", path.rsplit("/", 1)[-1])
    return name.rsplit("_", 1)[-1]


def judge(row: dict[str, str], thresholds: Thresholds = Thresholds()) -> Verdict:
    """The verdict on one stats row."""
    reasons = []
    shape = _dims(row, "shape")
    zooms = _dims(row, "zooms")
    nans = _number(row, "nan")
    nonzero = _number(row, "nonzero")
    std = _number(row, "std")
    voxels = math.prod(shape)
    if nans > 0:
        reasons.append("every voxel is NaN" if nans >= voxels else f"{int(nans)} NaN voxel{'' if nans == 1 else 's'}")
    if nonzero == 0 and nans < voxels:
        reasons.append("all-zero image")
    elif std == 0:
        reasons.append("constant image")
    if len(shape) >= 4 and _suffix(row["path"]) in TIME_SERIES_SUFFIXES and shape[3] < thresholds.min_volumes:
        reasons.append(f"{int(shape[3])} volumes, fewer than {thresholds.min_volumes}")
    spatial = [z for z in zooms[:3] if z > 0]
    if len(spatial) >= 2:
        ratio = max(spatial) / min(spatial)
        if ratio > thresholds.max_anisotropy:
            reasons.append(f"voxel anisotropy {ratio:.2f} above {thresholds.max_anisotropy:g}")
    return Verdict(row["path"], tuple(reasons))


def load_stats(stats_dir: Path) -> list[dict[str, str]]:
    table = stats_dir / "stats.tsv"
    if not table.is_file():
        raise StatsTableError(f"{table} is missing (is this a bidsflux.derive.stats derivative?)")
    header = table.read_text(encoding="utf-8").split("\n", 1)[0]
    missing = [c for c in NEEDED_COLUMNS if c not in header.split("\t")]
    if missing:
        raise StatsTableError(f"{table} lacks the columns {', '.join(missing)}")
    return read_tsv(table)


def report(verdicts: list[Verdict], thresholds: Thresholds, source: str) -> str:
    failed = [v for v in verdicts if v.reasons]
    lines = [
        "# Image QC", "",
        f"Source: `{source}` ({len(verdicts)} images).", "",
        f"- pass: {len(verdicts) - len(failed)}",
        f"- fail: {len(failed)}", "",
        f"Rules: no NaN voxels; not all zero or constant; {', '.join(sorted(TIME_SERIES_SUFFIXES))} series with "
        f"at least {thresholds.min_volumes} volumes; voxel anisotropy at most {thresholds.max_anisotropy:g}.", "",
    ]
    if failed:
        lines += ["## Failed", "", "| image | reasons |", "| --- | --- |"]
        lines += [f"| `{v.path}` | {'; '.join(v.reasons)} |" for v in failed]
        lines.append("")
    return "\n".join(lines)


def description(thresholds: Thresholds) -> dict[str, Any]:
    return {
        "Name": "bids-flux image QC",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": TOOL, "Version": __version__,
                         "Description": f"min volumes {thresholds.min_volumes}, "
                                        f"max anisotropy {thresholds.max_anisotropy:g}"}],
    }


def run_qc(stats_dir: Path, out: Path, thresholds: Thresholds = Thresholds()) -> list[Verdict]:
    verdicts = sorted((judge(row, thresholds) for row in load_stats(stats_dir)), key=lambda v: v.path)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(QC_COLUMNS)]
    lines += ["\t".join([v.path, v.verdict, "; ".join(v.reasons) or "n/a"]) for v in verdicts]
    (out / "qc.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(verdicts, thresholds, stats_dir.as_posix()), encoding="utf-8")
    write_json(out / "dataset_description.json", description(thresholds))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {TOOL}", description=__doc__.split("\n\n")[0])
    parser.add_argument("stats", type=Path, help="a statistics derivative (holding stats.tsv)")
    parser.add_argument("out", type=Path, help="where qc.tsv and report.md are written")
    parser.add_argument("--min-volumes", type=int, default=Thresholds.min_volumes, metavar="N",
                        help="fewest volumes a bold/cbv series may have (default %(default)s)")
    parser.add_argument("--max-anisotropy", type=float, default=Thresholds.max_anisotropy, metavar="R",
                        help="largest voxel size over smallest allowed (default %(default)s)")
    args = parser.parse_args(argv)
    if args.min_volumes < 1 or not args.max_anisotropy >= 1:
        parser.error("--min-volumes must be at least 1 and --max-anisotropy at least 1")
    try:
        verdicts = run_qc(args.stats, args.out, Thresholds(args.min_volumes, args.max_anisotropy))
    except (StatsTableError, OSError, UnicodeDecodeError, KeyError) as exc:
        print(f"{TOOL}: cannot judge {args.stats}: {exc}", file=sys.stderr)
        return 1
    failed = sum(1 for v in verdicts if v.reasons)
    print(f"QC: {len(verdicts) - failed} pass, {failed} fail", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
