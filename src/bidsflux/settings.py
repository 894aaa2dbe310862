"""One frozen, typed settings object, built once at start-up.

Sources, lowest precedence first: built-in defaults, a ``.env`` file, the
process environment.  A secret ``NAME`` set in neither is read from the file
named by ``NAME_FILE`` or, failing that, from ``/run/secrets/name`` (Docker
swarm secrets); command-line options win over everything.  An empty value
leaves an optional setting unset.  Every problem is collected and reported
at once as one :class:`SettingsError`; no bad value is silently replaced.

Names follow the original BIDS-flux where it had one
(``GITLAB_INDEXER_GROUP_TEMPLATE``, ``S3_URL_PATTERN``, ``STORESCP_AET`` ...).
``.env.example`` documents each of them; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._settings_destinations import DestinationSettings
from ._settings_fields import boolean, choice, log_level, setting
from ._settings_forge import ForgeSettings
from ._settings_index import IndexSettings
from ._settings_receive import ReceiveSettings
from ._settings_storage import StorageSettings
from .errors import SettingsError

SECRETS_DIR = Path("/run/secrets")


@dataclass(frozen=True)
class GeneralSettings:
    workdir: Path = setting("BIDSFLUX_WORKDIR", Path("bidsflux-work"), Path)
    log_level: str = setting("BIDSFLUX_LOG_LEVEL", "INFO", log_level)
    group_template: str = setting("GITLAB_INDEXER_GROUP_TEMPLATE", "{ReferringPhysicianName}/{StudyDescriptionPath[1]}")
    session_template: str = setting("BIDSFLUX_SESSION_TEMPLATE", "{StudyInstanceUID}")


@dataclass(frozen=True)
class ConvertSettings:
    bids_heuristic: str = setting("BIDSFLUX_HEURISTIC", "reproin")
    bids_auto_merge: bool = setting("BIDSFLUX_AUTO_MERGE", True, boolean)
    runner: str = setting("BIDSFLUX_RUNNER", "local", choice("local", "external"))
    phi_allow: frozenset[str] = setting("BIDSFLUX_PHI_ALLOW", frozenset({"patient-id", "acquisition-time"}),
                                        lambda text: _phi_allow(text))
    ci_pipelines_dir: Path = setting("BIDSFLUX_CI_PIPELINES_DIR", Path(__file__).resolve().parents[2] / "ci-pipelines",
                                     Path)


def _phi_allow(text: str) -> frozenset[str]:
    from .convert.phi import parse_allow  # the words are the PHI check's; imported when read

    return parse_allow(text)


@dataclass(frozen=True)
class Settings(DestinationSettings, ConvertSettings, ForgeSettings, StorageSettings, IndexSettings, ReceiveSettings,
               GeneralSettings):
    """Every setting of bids-flux, one frozen object; build with :func:`load_settings`.

    Each stage declares its own fields (``_settings_*`` modules); this class
    only combines them and derives the work folder's layout.
    """

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
        if raw is None or (raw == "" and f.default is None):
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
