"""Settings of the publish stage (the forge: local or GitLab) and of the site bootstrap.

``BIDSFLUX_FORGE_TYPE`` chooses the forge explicitly.  The GitLab settings
are read in every mode but only used with ``gitlab``; ``make_forge`` reports
the ones a GitLab forge cannot do without.  Tokens are secrets: from
``NAME_FILE`` or ``/run/secrets/<name>``, never from a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._settings_fields import choice, non_negative_int, path, port, positive_float, positive_int, setting


def http_url(raw: str) -> str:
    """An http(s) base URL with a host and nothing secret in it."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host name")
    if parts.username or parts.password:
        # A token in a URL ends up in logs and .git/config: tokens go in secrets only.
        raise ValueError("must not carry a user name or token; tokens go in secret files")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.strip().rstrip("/")



def token_days(raw: str) -> int:
    value = positive_int(raw)
    if value > 365:
        # GitLab refuses access tokens that live longer than a year by default.
        raise ValueError("must be between 1 and 365 days")
    return value


@dataclass(frozen=True)
class ForgeSettings:
    forge_type: str = setting("BIDSFLUX_FORGE_TYPE", "local", choice("local", "gitlab"))
    forge_host: str = setting("BIDSFLUX_FORGE_HOST", "127.0.0.1")
    forge_port: int = setting("BIDSFLUX_FORGE_PORT", 8418, port)
    forge_token: str | None = setting("BIDSFLUX_FORGE_TOKEN", None, secret=True)
    gitlab_bot_username: str = setting("GITLAB_BOT_USERNAME", "dicom_bot")
    gitlab_bids_bot_username: str = setting("GITLAB_BIDS_BOT_USERNAME", "bids_bot")
    # Marked secret so that the loader never echoes it: a URL pasted with a token
    # in it (https://oauth2:TOKEN@host) is refused without showing the token.
    gitlab_url: str | None = setting("CI_SERVER_URL", None, http_url, secret=True)
    gitlab_admin_token: str | None = setting("GITLAB_ADMIN_TOKEN", None, secret=True)
    gitlab_dicom_bot_token: str | None = setting("GITLAB_DICOM_BOT_TOKEN", None, secret=True)
    gitlab_bids_bot_token: str | None = setting("GITLAB_BIDS_BOT_TOKEN", None, secret=True)
    gitlab_ops_group: str = setting("BIDSFLUX_GITLAB_OPS_GROUP", "bids-flux")
    gitlab_template_group: str | None = setting("BIDSFLUX_GITLAB_TEMPLATE_GROUP", None)
    gitlab_visibility: str = setting("BIDSFLUX_GITLAB_VISIBILITY", "private",
                                     choice("private", "internal", "public"))
    gitlab_push: str = setting("BIDSFLUX_GITLAB_PUSH", "https", choice("https", "ssh"))
    gitlab_ssh_key: Path | None = setting("BIDSFLUX_GITLAB_SSH_KEY", None, path)
    gitlab_ssh_known_hosts: Path | None = setting("BIDSFLUX_GITLAB_SSH_KNOWN_HOSTS", None, path)
    gitlab_ci_variables_group: str | None = setting("BIDSFLUX_GITLAB_CI_VARIABLES_GROUP", None)
    gitlab_token_days: int = setting("BIDSFLUX_GITLAB_TOKEN_DAYS", 365, token_days)
    gitlab_retries: int = setting("BIDSFLUX_GITLAB_RETRIES", 5, non_negative_int)
    gitlab_timeout: float = setting("BIDSFLUX_GITLAB_TIMEOUT", 30.0, positive_float)
    pipeline_poll: float = setting("BIDSFLUX_PIPELINE_POLL", 5.0, positive_float)
    pipeline_poll_max: float = setting("BIDSFLUX_PIPELINE_POLL_MAX", 60.0, positive_float)
    pipeline_timeout: float = setting("BIDSFLUX_PIPELINE_TIMEOUT", 21600.0, positive_float)
