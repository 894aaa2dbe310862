"""The BIDS validator (bids-validator-deno): the one place it is called."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._proc import run
from ..errors import ConvertError


UNREADABLE = "NIFTI_HEADER_UNREADABLE"


@dataclass(frozen=True)
class Validation:
    valid: bool
    errors: int
    warnings: int
    codes: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    not_read: int = 0  # images whose content was left in the store (other sessions, validated when converted)

    def summary(self) -> str:
        top = ", ".join(f"{code} x{n}" for code, n in sorted(self.codes.items())[:8])
        verdict = "valid" if self.valid else "INVALID"
        unread = f"; headers of {self.not_read} images of other sessions not read" if self.not_read else ""
        return f"{verdict}: {self.errors} errors, {self.warnings} warnings" + (f" ({top})" if top else "") + unread


def validate(root: Path, *, study: str | None, absent: frozenset[str] = frozenset()) -> Validation:
    """Validate the BIDS dataset at ``root``; exit 0 means valid, 16 means errors.

    ``absent``: images (paths relative to ``root``) deliberately left in the
    store.  The validator checks every file's name, sidecars and tables, but
    cannot read the NIfTI header of an image whose content is not here; that
    one issue, for exactly those images, is taken out of the report (and
    counted), every other issue stands.
    """
    proc = run(["bids-validator-deno", "--format", "json", root], error=ConvertError, study=study, check=False)
    if proc.returncode not in (0, 16):
        raise ConvertError(f"the BIDS validator could not run (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-400:]}", study=study)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ConvertError("the BIDS validator printed no JSON report", study=study) from exc
    issues = report.get("issues", {}).get("issues", [])
    kept = [issue for issue in issues
            if issue.get("code") != UNREADABLE or str(issue.get("location", "")).lstrip("/") not in absent]
    if len(kept) != len(issues):
        report.setdefault("issues", {})["issues"] = kept
    severities = Counter(issue.get("severity") for issue in kept)
    codes = Counter(f"{issue.get('severity')}:{issue.get('code')}" for issue in kept)
    return Validation(severities.get("error", 0) == 0, severities.get("error", 0), severities.get("warning", 0),
                      dict(codes), report, len(issues) - len(kept))
