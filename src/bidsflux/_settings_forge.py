"""Settings of the publish stage (the forge: local or GitLab)."""

from __future__ import annotations

from dataclasses import dataclass

from ._settings_fields import choice, port, setting


@dataclass(frozen=True)
class ForgeSettings:
    forge_type: str = setting("BIDSFLUX_FORGE_TYPE", "local", choice("local"))
    forge_host: str = setting("BIDSFLUX_FORGE_HOST", "127.0.0.1")
    forge_port: int = setting("BIDSFLUX_FORGE_PORT", 8418, port)
    forge_token: str | None = setting("BIDSFLUX_FORGE_TOKEN", None, secret=True)
    gitlab_bot_username: str = setting("GITLAB_BOT_USERNAME", "dicom_bot")
