"""The BIDS validator (bids-validator-deno): the one place it is called."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._proc import run
from ..errors import ConvertError


@dataclass(frozen=True)
class Validation:
    valid: bool
    errors: int
    warnings: int
    codes: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        top = ", ".join(f"{code} x{n}" for code, n in sorted(self.codes.items())[:8])
        verdict = "valid" if self.valid else "INVALID"
        return f"{verdict}: {self.errors} errors, {self.warnings} warnings" + (f" ({top})" if top else "")


def validate(root: Path, *, study: str | None) -> Validation:
    """Validate the BIDS dataset at ``root``; exit 0 means valid, 16 means errors."""
    proc = run(["bids-validator-deno", "--format", "json", root], error=ConvertError, study=study, check=False)
    if proc.returncode not in (0, 16):
        raise ConvertError(f"the BIDS validator could not run (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-400:]}", study=study)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ConvertError("the BIDS validator printed no JSON report", study=study) from exc
    issues = report.get("issues", {}).get("issues", [])
    severities = Counter(issue.get("severity") for issue in issues)
    codes = Counter(f"{issue.get('severity')}:{issue.get('code')}" for issue in issues)
    return Validation(proc.returncode == 0, severities.get("error", 0), severities.get("warning", 0),
                      dict(codes), report)
