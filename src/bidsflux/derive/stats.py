"""A small real derivative: per-image statistics of a BIDS dataset.

    python -m bidsflux.derive.stats INPUT_BIDS_DIR OUTPUT_DIR [--mean-images]

For every ``sub-*/**/*.nii[.gz]`` of the input it records shape, voxel sizes,
mean, standard deviation, minimum, maximum, the fraction of non-zero voxels
and the number of NaN voxels, in ``OUTPUT_DIR/stats.tsv`` (one row per image,
sorted by path) and in ``OUTPUT_DIR/<same folder>/<stem>_stats.json``, and
writes a BIDS derivative ``dataset_description.json``.  With
``--mean-images`` each 4D series also gets its temporal mean as
``<entities>_desc-mean_<suffix>.nii.gz`` (byte-identical for identical input,
so an unchanged image keeps its annex key).

Mean, std, min and max are over the voxels that are not NaN ("n/a" when every
voxel is NaN); ``nonzero`` is the fraction of all voxels that are neither 0
nor NaN.  Images are read one 3D volume at a time and summed in float64, so
memory stays at one volume whatever the series length.

Output paths are written atomically; this tool's own outputs from an earlier
run whose image is gone are removed.  Exit status: 0 done (also for no
images), 1 an image could not be read, 2 usage.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__

TOOL = "bidsflux.derive.stats"
TSV_COLUMNS = ("path", "shape", "zooms", "mean", "std", "min", "max", "nonzero", "nan")
STATS_SUFFIX = "_stats.json"
MEAN_DESC = "desc-mean"


@dataclass(frozen=True)
class ImageStats:
    path: str  # relative to the input dataset, '/'-separated
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    mean: float
    std: float
    min: float
    max: float
    nonzero: float
    nan: int

    def as_json(self) -> dict[str, Any]:
        return {"Source": self.path, "Shape": list(self.shape), "Zooms": list(self.zooms),
                "Mean": _json_float(self.mean), "Std": _json_float(self.std), "Min": _json_float(self.min),
                "Max": _json_float(self.max), "NonzeroFraction": self.nonzero, "NaNCount": self.nan}

    def tsv_row(self) -> list[str]:
        return [self.path, "x".join(map(str, self.shape)), "x".join(fmt(z) for z in self.zooms),
                fmt(self.mean), fmt(self.std), fmt(self.min), fmt(self.max), fmt(self.nonzero), str(self.nan)]


def fmt(value: float) -> str:
    """Deterministic text for a float: 10 significant digits, ``n/a`` for NaN (BIDS's missing value)."""
    if math.isnan(value):
        return "n/a"
    text = f"{value:.10g}"
    return "0" if text == "-0" else text


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


class _Moments:
    """Count, mean, M2, min, max over chunks (Chan et al.'s pairwise update: stable in one pass)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        n_b = int(values.size)
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        delta = mean_b - self.mean
        total = self.n + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


def _volumes(image: Any) -> Iterator[np.ndarray]:
    """The image's 3D volumes in order, as float64 (one in memory at a time)."""
    shape = tuple(image.shape)
    if len(shape) <= 3:
        yield np.asarray(image.dataobj, dtype=np.float64)
        return
    for index in np.ndindex(*shape[3:]):
        yield np.asarray(image.dataobj[(slice(None),) * 3 + index], dtype=np.float64)


def image_stats(path: Path, relative: str, mean_out: Path | None = None) -> ImageStats:
    """Statistics of one NIfTI image; with ``mean_out``, also write its temporal mean there (4D only)."""
    import nibabel

    # keep_file_open: volumes are read in order from one open (gzip) stream, not re-decompressed each time.
    image: Any = nibabel.load(str(path), keep_file_open=True)
    try:
        moments, voxels, nonzero, nans = _Moments(), 0, 0, 0
        total: np.ndarray | None = None
        count = 0
        for volume in _volumes(image):
            missing = np.isnan(volume)
            nans += int(missing.sum())
            voxels += int(volume.size)
            nonzero += int(np.count_nonzero(volume[~missing]))
            moments.add(volume[~missing])
            if mean_out is not None:
                total = volume.copy() if total is None else total + volume
                count += 1
        shape = tuple(int(s) for s in image.shape)
        zooms = tuple(float(z) for z in image.header.get_zooms())
        if mean_out is not None and total is not None and len(shape) > 3:
            _write_mean(image, total / count, mean_out)
    finally:
        dataobj = getattr(image, "dataobj", None)
        closer = getattr(dataobj, "_opener", None)
        if closer is not None and hasattr(closer, "close_if_mine"):
            closer.close_if_mine()
    empty = moments.n == 0
    return ImageStats(
        path=relative, shape=shape, zooms=zooms,
        mean=math.nan if empty else moments.mean, std=moments.std,
        min=math.nan if empty else moments.min, max=math.nan if empty else moments.max,
        nonzero=nonzero / voxels if voxels else 0.0, nan=nans,
    )


def _write_mean(image: Any, mean: np.ndarray, target: Path) -> None:
    import nibabel

    header = image.header.copy()
    header.set_data_dtype(np.float32)
    out = nibabel.Nifti1Image(mean.astype(np.float32), image.affine, header)
    # gzip with no name and mtime 0: identical means give identical bytes (and annex keys).
    _write_bytes(target, gzip.compress(out.to_bytes(), compresslevel=6, mtime=0))


def _write_bytes(target: Path, data: bytes) -> None:
    """Atomic write; replaces a symlink (a locked annexed file) rather than writing through it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.partial")
    with open(temp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, target)


def write_json(target: Path, data: Any) -> None:
    _write_bytes(target, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def find_images(bids: Path) -> list[Path]:
    """Every NIfTI under a ``sub-*`` folder, sorted; git and annex internals excluded."""
    found: set[Path] = set()
    for pattern in ("sub-*/**/*.nii.gz", "sub-*/**/*.nii"):
        for path in bids.glob(pattern):
            relative = path.relative_to(bids)
            if not any(part.startswith(".") for part in relative.parts):
                found.add(path)
    return sorted(found, key=lambda p: p.relative_to(bids).as_posix())


def _stem(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name)


def mean_image_name(name: str) -> str:
    """``sub-01_task-rest_bold.nii.gz`` -> ``sub-01_task-rest_desc-mean_bold.nii.gz``."""
    stem = _stem(name)
    entities, _, suffix = stem.rpartition("_")
    kept = [e for e in entities.split("_") if e and not e.startswith("desc-")]
    return "_".join([*kept, MEAN_DESC, suffix]) + ".nii.gz"


def description() -> dict[str, Any]:
    return {
        "Name": "bids-flux image statistics",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": TOOL, "Version": __version__,
                         "Description": "shape, voxel sizes, mean, std, min, max, non-zero fraction and NaN "
                                        "count of every image; temporal means of 4D series on request"}],
    }


def _own_outputs(out: Path) -> set[Path]:
    """What an earlier run of this tool left under ``sub-*`` of ``out``."""
    found: set[Path] = set()
    for pattern in (f"sub-*/**/*{STATS_SUFFIX}", f"sub-*/**/*_{MEAN_DESC}_*.nii.gz"):
        found.update(p for p in out.glob(pattern) if p.is_file() or p.is_symlink())
    return found


def derive(bids: Path, out: Path, *, mean_images: bool = False) -> list[ImageStats]:
    """Write the statistics derivative of ``bids`` into ``out``; return the rows."""
    images = find_images(bids)
    out.mkdir(parents=True, exist_ok=True)
    stale = _own_outputs(out)
    rows = []
    for path in images:
        relative = path.relative_to(bids)
        target_dir = out / relative.parent
        mean_out = target_dir / mean_image_name(path.name) if mean_images else None
        stats = image_stats(path, relative.as_posix(), mean_out)
        rows.append(stats)
        json_out = target_dir / f"{_stem(path.name)}{STATS_SUFFIX}"
        write_json(json_out, stats.as_json())
        stale.discard(json_out)
        if mean_out is not None and len(stats.shape) > 3:
            stale.discard(mean_out)
        print(f"{relative.as_posix()}: shape {'x'.join(map(str, stats.shape))}, mean {fmt(stats.mean)}", flush=True)
    for path in sorted(stale):
        path.unlink()
    lines = ["\t".join(TSV_COLUMNS)] + ["\t".join(row.tsv_row()) for row in rows]
    _write_bytes(out / "stats.tsv", ("\n".join(lines) + "\n").encode())
    write_json(out / "dataset_description.json", description())
    return rows


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV file with a header line, as dictionaries."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {TOOL}", description=__doc__.split("\n\n")[0])
    parser.add_argument("bids", type=Path, help="the BIDS dataset (its sub-* folders are read)")
    parser.add_argument("out", type=Path, help="where the derivative is written (created if missing)")
    parser.add_argument("--mean-images", action="store_true", help="also write the temporal mean of each 4D image")
    args = parser.parse_args(argv)
    if not args.bids.is_dir():
        print(f"{TOOL}: {args.bids} is not a folder", file=sys.stderr)
        return 2
    try:
        rows = derive(args.bids, args.out, mean_images=args.mean_images)
    except (OSError, ValueError) as exc:
        # nibabel raises ImageFileError (a ValueError) for what is not a NIfTI; a missing file
        # is usually annexed content not got yet.
        print(f"{TOOL}: {exc} (is the content there? `datalad get` it first)", file=sys.stderr)
        return 1
    if not rows:
        print(f"{TOOL}: no NIfTI images under {args.bids}/sub-*; wrote an empty table", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
