"""What a derivative is: its name, kind, command and the derivatives it needs.

A derivative dataset lives beside the study's BIDS dataset on the forge:
``<group>/bids`` -> ``<group>/derivatives/<name>`` or ``<group>/qc/<name>``.
Its inputs are subdatasets under ``inputs/``: the BIDS dataset as
``inputs/bids`` and each needed derivative as ``inputs/<name>`` (YODA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import UsageError

KINDS = ("derivatives", "qc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BIDS_URL = re.compile(r"^(?P<base>.+)/bids(?:\.git)?/?$")


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value) or value.endswith(".git") or len(value) > 100:
        raise UsageError(f"{what} {value!r} is not one path segment of letters, digits, '_', '.' and '-'",
                         hint="e.g. mriqc, fmriprep-24.1")


def _check_relative(value: str, what: str) -> None:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise UsageError(f"{what} {value!r} must be a path inside the derivative dataset")


@dataclass(frozen=True, kw_only=True)
class DerivativeSpec:
    """One derivative (or QC) job.

    ``command`` is an argument list run through ``datalad run`` in the
    derivative dataset's root; DataLad's ``{inputs}``/``{outputs}``
    placeholders work (literal braces must be doubled).  ``inputs`` are the
    paths ``datalad run`` gets before running (default: every input dataset,
    ``inputs/bids`` and ``inputs/<need>``); ``outputs`` the paths it saves
    (default: the whole dataset).  ``image`` is the container image the CI
    job runs in, recorded in ``dataset_description.json``.
    """

    name: str
    kind: str = "derivatives"
    command: tuple[str, ...]
    needs: tuple[str, ...] = ()
    image: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = (".",)

    def __post_init__(self) -> None:
        for field in ("command", "needs", "inputs", "outputs"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise UsageError(f"{field} must be a list of strings, not the string {value!r}")
            object.__setattr__(self, field, tuple(value))
        _check_name(self.name, "derivative name")
        if self.kind not in KINDS:
            raise UsageError(f"derivative kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.command or not all(isinstance(a, str) for a in self.command) or not self.command[0]:
            raise UsageError(f"{self.label}: the command must be a non-empty list of strings")
        for need in self.needs:
            _check_name(need, f"{self.label}: needed derivative")
        if len(set(self.needs)) != len(self.needs):
            raise UsageError(f"{self.label}: a derivative is needed twice in {list(self.needs)}")
        if "bids" in self.needs:
            raise UsageError(f"{self.label}: 'bids' is always an input (inputs/bids); it cannot be a need")
        if self.kind == "derivatives" and self.name in self.needs:
            raise UsageError(f"{self.label} cannot need itself")
        for path in (*self.inputs, *self.outputs):
            _check_relative(path, f"{self.label}: input/output")
        if not self.outputs:
            raise UsageError(f"{self.label}: give at least one output (\".\" for the whole dataset)")

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def input_datasets(self) -> tuple[str, ...]:
        """The subdataset names under ``inputs/``: ``bids`` first, then the needs in order."""
        return ("bids", *self.needs)

    @property
    def run_inputs(self) -> tuple[str, ...]:
        return self.inputs or tuple(f"inputs/{name}" for name in self.input_datasets)


def derivative_url(bids_url: str, kind: str, name: str) -> str:
    """``.../<group>/bids.git`` -> ``.../<group>/<kind>/<name>.git``."""
    if kind not in KINDS:
        raise UsageError(f"derivative kind {kind!r} is not one of {', '.join(KINDS)}")
    _check_name(name, "derivative name")
    match = _BIDS_URL.match(bids_url)
    if match is None:
        raise UsageError(f"{bids_url} is not the URL of a BIDS dataset (.../<group>/bids.git)")
    return f"{match.group('base')}/{kind}/{name}.git"


def stats_spec(*, image: str = "", mean_images: bool = True) -> DerivativeSpec:
    """The built-in statistics derivative (``derivatives/stats``), written at the dataset root."""
    extra = ("--mean-images",) if mean_images else ()
    return DerivativeSpec(name="stats", command=("python", "-m", "bidsflux.derive.stats", *extra, "inputs/bids", "."),
                          image=image)


def qc_spec(source: str = "stats", *, image: str = "", min_volumes: int | None = None) -> DerivativeSpec:
    """The built-in QC of a statistics derivative (``qc/<source>``); only its stats.tsv is needed."""
    extra = ("--min-volumes", str(min_volumes)) if min_volumes is not None else ()
    return DerivativeSpec(name=source, kind="qc", needs=(source,), image=image,
                          command=("python", "-m", "bidsflux.derive.qc", *extra, f"inputs/{source}", "."),
                          inputs=(f"inputs/{source}/stats.tsv",))


def builtin_spec(name: str, *, image: str = "") -> DerivativeSpec:
    """``stats`` or ``qc/stats`` (what ``bidsflux ci derive --builtin`` would offer)."""
    if name in {"stats", "derivatives/stats"}:
        return stats_spec(image=image)
    if name == "qc/stats":
        return qc_spec("stats", image=image)
    raise UsageError(f"no built-in derivative {name!r}", hint="built-ins: stats, qc/stats")

