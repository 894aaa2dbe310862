"""One frozen, typed settings object, built once at start-up.

Sources, lowest precedence first: built-in defaults, a ``.env`` file, the
process environment.  A secret ``NAME`` set in neither is read from the file
named by ``NAME_FILE`` or, failing that, from ``/run/secrets/name`` (Docker
swarm secrets); command-line options win over everything.  Every problem is collected and reported at once as
one :class:`SettingsError`; no bad value is silently replaced.

Names follow the original BIDS-flux where it had one
(``GITLAB_INDEXER_GROUP_TEMPLATE``, ``S3_URL_PATTERN``, ``STORESCP_AET`` ...).
``.env.example`` documents each of them; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import SettingsError

SECRETS_DIR = Path("/run/secrets")
AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 0 and 65535 (0 picks a free one)")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of true/false/yes/no/1/0")


def _aet(raw: str) -> str:
    if not AET_RE.match(raw) or not raw.strip():
        raise ValueError("must be 1-16 printable ASCII characters without backslash")
    return raw.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return parse


def _text(raw: str) -> str:
    return raw


def _log_level(raw: str) -> str:
    upper = raw.upper()
    if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return upper


def _setting(env: str, default: Any, parse: Callable[[str], Any] = _text, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every setting of bids-flux; build with :func:`load_settings`."""

    # -- general
    workdir: Path = _setting("BIDSFLUX_WORKDIR", Path("bidsflux-work"), Path)
    log_level: str = _setting("BIDSFLUX_LOG_LEVEL", "INFO", _log_level)

    # -- receive: the DICOM endpoint
    storescp_aet: str = _setting("STORESCP_AET", "BIDSFLUX", _aet)
    storescp_port: int = _setting("STORESCP_PORT", 11112, _port)
    storescp_host: str = _setting("STORESCP_HOST", "127.0.0.1")

    # -- assemble: when is a study complete
    quiet_period: float = _setting("BIDSFLUX_QUIET_PERIOD", 60.0, _positive_float)

    # -- naming: templates over DICOM tags
    group_template: str = _setting(
        "GITLAB_INDEXER_GROUP_TEMPLATE", "{ReferringPhysicianName}/{StudyDescriptionPath[1]}"
    )
    session_template: str = _setting("BIDSFLUX_SESSION_TEMPLATE", "{StudyInstanceUID}")
    s3_url_pattern: str = _setting(
        "S3_URL_PATTERN", "bidsflux-{ReferringPhysicianName}/{StudyDescriptionPath[1]}"
    )

    # -- storage: where annexed content goes
    storage_type: str = _setting("BIDSFLUX_STORAGE_TYPE", "local", _choice("local"))
    storage_remote: str = _setting("BIDSFLUX_STORAGE_REMOTE", "bidsflux-storage")
    storage_local_path: Path | None = _setting("BIDSFLUX_STORAGE_LOCAL_PATH", None, Path)

    # -- forge: where git history goes
    forge_type: str = _setting("BIDSFLUX_FORGE_TYPE", "local", _choice("local"))
    forge_host: str = _setting("BIDSFLUX_FORGE_HOST", "127.0.0.1")
    forge_port: int = _setting("BIDSFLUX_FORGE_PORT", 8418, _port)
    forge_token: str | None = _setting("BIDSFLUX_FORGE_TOKEN", None, secret=True)
    gitlab_bot_username: str = _setting("GITLAB_BOT_USERNAME", "dicom_bot")

    # -- convert: BIDS conversion
    bids_heuristic: str = _setting("BIDSFLUX_HEURISTIC", "reproin")
    bids_auto_merge: bool = _setting("BIDSFLUX_AUTO_MERGE", True, _bool)

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    @property
    def datasets_dir(self) -> Path:
        return self.workdir / "datasets"

    @property
    def forge_dir(self) -> Path:
        return self.workdir / "forge"

    @property
    def jobs_dir(self) -> Path:
        return self.workdir / "jobs"

    @property
    def ledger_path(self) -> Path:
        return self.workdir / "ledger.sqlite"

    @property
    def store_dir(self) -> Path:
        return self.storage_local_path or self.workdir / "store"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        # Secrets never reach a log line, not even through repr().
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def setting_names() -> list[str]:
    """Every environment variable name the settings read, in declaration order."""
    return [f.metadata["env"] for f in dataclasses.fields(Settings)]


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values, problems = _parse_env_file(path)
    if problems:
        raise SettingsError(problems)
    return values


def _parse_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Return (values, problems) so that the caller can report them with all others."""
    values: dict[str, str] = {}
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return values, [f"{path}: cannot read the .env file ({exc.strerror})"]
    except UnicodeDecodeError:
        return values, [f"{path}: the .env file is not UTF-8 text"]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):]
        name, sep, value = stripped.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name.strip()):
            problems.append(f"{path}:{number}: expected NAME=value")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values, problems


def _read_secret(name: str, environ: Mapping[str, str], secrets_dir: Path) -> tuple[str | None, str | None]:
    """Return (value, problem) for a secret from NAME_FILE or the secrets folder."""
    file_var = f"{name}_FILE"
    if file_var in environ:
        path = Path(environ[file_var])
        try:
            return path.read_text(encoding="utf-8").strip(), None
        except OSError as exc:
            return None, f"{file_var}: cannot read the secret file {path} ({exc.strerror})"
        except UnicodeDecodeError:
            return None, f"{file_var}: the secret file {path} is not UTF-8 text"
    candidate = secrets_dir / name.lower()
    if candidate.is_file():
        try:
            return candidate.read_text(encoding="utf-8").strip(), None
        except OSError as exc:
            return None, f"{name}: cannot read the secret file {candidate} ({exc.strerror})"
        except UnicodeDecodeError:
            return None, f"{name}: the secret file {candidate} is not UTF-8 text"
    return None, None


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = None,
    secrets_dir: Path = SECRETS_DIR,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, ``.env``, the environment and secrets.

    ``overrides`` (field name -> already typed value) come from command-line
    options and win over everything else.
    """
    environ = dict(os.environ if environ is None else environ)
    if env_file is None and Path(".env").is_file():
        env_file = Path(".env")
    merged: dict[str, str] = {}
    problems: list[str] = []
    if env_file is not None:
        # Collected, not raised: a bad .env line is reported with every other problem.
        file_values, problems = _parse_env_file(env_file)
        merged.update(file_values)
    merged.update(environ)

    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = f.metadata["env"]
        raw: str | None = merged.get(name)
        if f.metadata["secret"] and raw is None:
            raw, problem = _read_secret(name, merged, secrets_dir)
            if problem:
                problems.append(problem)
                continue
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            shown = "<secret>" if f.metadata["secret"] else repr(raw)
            problems.append(f"{name}={shown}: {exc}")
    values.update(overrides or {})
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    return settings.replace(workdir=settings.workdir.expanduser().resolve())
