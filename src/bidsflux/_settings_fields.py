"""Typed setting fields: parsers and the ``setting()`` declaration.

Each stage's settings are a frozen dataclass of ``setting(ENV_NAME, default,
parser)`` fields in its own ``_settings_*`` module; ``bidsflux.settings``
combines them into one object.  A parser raises ``ValueError`` with a short
reason; the loader reports every problem at once.
"""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Any, Callable

AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 0 and 65535 (0 picks a free one)")
    return value


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of true/false/yes/no/1/0")


def aet(raw: str) -> str:
    if not AET_RE.match(raw) or not raw.strip():
        raise ValueError("must be 1-16 printable ASCII characters without backslash")
    return raw.strip()


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return parse


def text(raw: str) -> str:
    return raw


def log_level(raw: str) -> str:
    upper = raw.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return upper


def setting(env: str, default: Any, parse: Callable[[str], Any] = text, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "secret": secret})




def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be a whole number of 0 or more (0: no bound)")
    return value


def path(raw: str) -> Path:
    return Path(raw).expanduser()
