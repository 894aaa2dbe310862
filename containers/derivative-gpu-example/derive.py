#!/usr/bin/env python3
"""Example derivative for the `gpu` runner: per-image statistics of a BIDS dataset.

It shows what a GPU derivative job does around its tool: check that the job
got the GPUs it was scheduled for (the NVIDIA Container Toolkit puts
``nvidia-smi`` into the container), run the tool over the BIDS dataset, and
write a BIDS derivative dataset (``dataset_description.json`` with
``GeneratedBy``) that the job then saves and pushes with DataLad. The "tool"
here is a few lines of NumPy, standing in for fMRIPrep, FastSurfer and the like.

    bidsflux-derive-example BIDS_DIR OUT_DIR [--require-gpu]

Exit status: 0 done, 2 usage, 3 no GPU where one is required, 4 nothing to do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

NAME = "bidsflux-derive-example"
VERSION = "1"


def gpus() -> list[str]:
    """The GPUs this container was given (empty without the toolkit or a GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def image_stats(path: Path) -> dict[str, object]:
    import nibabel
    import numpy

    image = nibabel.load(str(path))
    data = numpy.asanyarray(image.dataobj, dtype=numpy.float64)  # type: ignore[attr-defined]
    return {"shape": list(data.shape), "mean": float(data.mean()), "std": float(data.std()),
            "min": float(data.min()), "max": float(data.max())}


def derive(bids: Path, out: Path, devices: list[str]) -> int:
    images = sorted(p for p in bids.rglob("sub-*/**/*.nii*") if ".git" not in p.parts and p.is_file())
    if not images:
        print(f"{NAME}: no NIfTI images under {bids}", file=sys.stderr)
        return 4
    out.mkdir(parents=True, exist_ok=True)
    description = {"Name": "Image statistics (bids-flux GPU example)", "BIDSVersion": "1.9.0",
                   "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": NAME, "Version": VERSION,
                                    "Description": f"GPUs: {', '.join(devices) or 'none'}"}]}
    (out / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    for image in images:
        relative = image.relative_to(bids)
        stem = relative.name.split(".nii")[0]
        target = out / relative.parent / f"{stem}_desc-stats.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"Source": str(relative), **image_stats(image)}, indent=2) + "\n")
        print(f"{relative} -> {target.relative_to(out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n\n")[0])
    parser.add_argument("bids", type=Path, help="the BIDS dataset")
    parser.add_argument("out", type=Path, help="the derivative dataset to write")
    parser.add_argument("--require-gpu", action="store_true", help="fail when the job got no GPU")
    args = parser.parse_args(argv)
    if not args.bids.is_dir():
        print(f"{NAME}: {args.bids} is not a folder", file=sys.stderr)
        return 2
    devices = gpus()
    if args.require_gpu and not devices:
        print(f"{NAME}: no GPU in this container: run it on the runner tagged gpu "
              "(gpus = \"all\", NVIDIA Container Toolkit on the node)", file=sys.stderr)
        return 3
    print(f"GPUs: {', '.join(devices) or 'none'}")
    return derive(args.bids, args.out, devices)


if __name__ == "__main__":
    sys.exit(main())
