"""Heuristics as plug-ins: which heudiconv heuristic a study converts with.

``BIDSFLUX_HEURISTIC`` (a group CI/CD variable on GitLab, so each study can
choose) names one of, in this order:

1. a file in the study's BIDS dataset, e.g. ``code/heuristic.py`` (the site
   or study keeps its heuristic under version control with its data);
2. an entry point of the group ``bidsflux.heuristics`` (a site package:
   ``[project.entry-points."bidsflux.heuristics"] mysite = "mysite.heuristic"``);
3. a heuristic shipped with heudiconv (``reproin``, the default).

The file's SHA-256 is recorded with its name in every conversion commit, so
a changed heuristic is visible in history and ``bidsflux reconvert`` knows
which conversions used an older one.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import ConvertError

ENTRY_POINT_GROUP = "bidsflux.heuristics"


@dataclass(frozen=True)
class Heuristic:
    name: str     # what the setting said
    source: str   # "dataset", "entry point" or "heudiconv"
    path: Path    # the file heudiconv loads
    sha256: str

    def describe(self) -> str:
        return f"{self.name} ({self.source}, sha256 {self.sha256[:12]})"


def resolve(name: str, dataset: Path | None, *, study: str | None = None) -> Heuristic:
    """The heuristic ``name`` stands for; ConvertError naming what was tried when none matches."""
    if not name.strip():
        raise ConvertError("BIDSFLUX_HEURISTIC is empty", study=study)
    if dataset is not None and ("/" in name or name.endswith(".py")):
        candidate = (dataset / name).resolve()
        if not candidate.is_relative_to(dataset.resolve()):
            raise ConvertError(f"heuristic {name!r} lies outside the dataset", study=study)
        if candidate.is_file():
            return _made(name, "dataset", candidate)
        raise ConvertError(f"heuristic {name!r} is not in the BIDS dataset", study=study,
                           hint="commit it to the dataset's dev branch, or name an installed heuristic")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _made(name, "entry point", _module_file(ep.value.split(":")[0], name, study))
    try:
        return _made(name, "heudiconv", _module_file(f"heudiconv.heuristics.{name}", name, study))
    except ConvertError:
        pass
    known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise ConvertError(f"unknown heuristic {name!r}", study=study,
                       hint="a file in the dataset (code/heuristic.py), an entry point of "
                            f"{ENTRY_POINT_GROUP} ({', '.join(known) or 'none installed'}), or a heudiconv "
                            "heuristic such as reproin")


def _module_file(module: str, name: str, study: str | None) -> Path:
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ConvertError(f"heuristic {name!r}: cannot import {module}: {exc}", study=study) from None
    if not getattr(loaded, "__file__", None):
        raise ConvertError(f"heuristic {name!r}: {module} is not a file", study=study)
    return Path(str(loaded.__file__))


def _made(name: str, source: str, path: Path) -> Heuristic:
    return Heuristic(name, source, path, hashlib.sha256(path.read_bytes()).hexdigest())
