"""The two bots, their users and their least-privilege tokens.

- ``dicom_bot`` (``GITLAB_BOT_USERNAME``) publishes studies: it creates groups
  and projects, adds bids_bot, sets CI/CD variables, protects branches and
  starts pipelines.  Only the ``api`` scope allows that (it also covers git
  over HTTPS); it may create top-level groups and owns what it creates.
- ``bids_bot`` (``GITLAB_BIDS_BOT_USERNAME``) is what CI jobs push as: only
  ``write_repository`` (clone and push over HTTPS); it may create no groups
  and gets Maintainer on each study group, nothing more.

A token's value is shown by GitLab only when it is made, so it is delivered
then, once: into a secret file (mode 0600) named as the setting that reads it,
or printed.  A later run checks the delivered token still works and leaves
it alone; ``--rotate`` issues new ones.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..forge._gitlab import GitLabAPIError, GitLabClient
from ..settings import Settings
from .report import Report

TOKEN_NAME = "bids-flux"
RENEW_DAYS = 30  # a token this close to expiry is replaced


@dataclass(frozen=True)
class Bot:
    username: str
    scopes: tuple[str, ...]
    can_create_group: bool
    setting: str  # the environment name of the setting that reads its token

    @property
    def secret_file(self) -> str:
        return self.setting.lower()


def site_bots(settings: Settings) -> list[Bot]:
    return [Bot(settings.gitlab_bot_username, ("api",), True, "GITLAB_DICOM_BOT_TOKEN"),
            Bot(settings.gitlab_bids_bot_username, ("write_repository",), False, "GITLAB_BIDS_BOT_TOKEN")]


def ensure_user(admin: GitLabClient, bot: Bot, report: Report) -> dict[str, Any]:
    what = f"user {bot.username}"
    found = admin.list_all("/users", what=f"look up {what}", username=bot.username)
    if not found:
        user = admin.post("/users", {
            "username": bot.username, "name": f"{bot.username} (bids-flux)",
            "email": f"{bot.username}@bids-flux.invalid", "force_random_password": True,
            "skip_confirmation": True, "can_create_group": bot.can_create_group, "projects_limit": 0,
        }, what=f"create {what}")
        report.add(what, "created", f"may create groups: {'yes' if bot.can_create_group else 'no'}")
        return user
    user = admin.get(f"/users/{found[0]['id']}", what=f"read {what}")
    if bool(user.get("can_create_group")) != bot.can_create_group:
        user = admin.put(f"/users/{user['id']}", {"can_create_group": bot.can_create_group}, what=f"update {what}")
        report.add(what, "changed", f"may create groups: {'yes' if bot.can_create_group else 'no'}")
    else:
        report.add(what, "unchanged")
    return user


def _far(expires_at: str | None) -> bool:
    return expires_at is None or dt.date.fromisoformat(expires_at) > dt.date.today() + dt.timedelta(days=RENEW_DAYS)


def known_token(settings: Settings, bot: Bot, secrets_dir: Path | None) -> str | None:
    """The bot's token as delivered earlier: from the settings (secrets), else from the secrets folder."""
    field = {"GITLAB_DICOM_BOT_TOKEN": "gitlab_dicom_bot_token", "GITLAB_BIDS_BOT_TOKEN": "gitlab_bids_bot_token"}
    value: str | None = getattr(settings, field[bot.setting])
    if value:
        return value
    if secrets_dir is not None and (secrets_dir / bot.secret_file).is_file():
        return (secrets_dir / bot.secret_file).read_text().strip() or None
    return None


def _still_good(settings: Settings, value: str, user: dict[str, Any], bot: Bot) -> str | None:
    """Its expiry date when ``value`` is the bot's working token with its scopes; None otherwise."""
    assert settings.gitlab_url
    client = GitLabClient(settings.gitlab_url, value, who=bot.username, retries=settings.gitlab_retries,
                          timeout=settings.gitlab_timeout)
    try:
        info = client.token_info()
    except GitLabAPIError as exc:
        if exc.status in {401, 403}:
            return None
        raise
    if info is None or info.get("user_id") not in (None, user["id"]) or not info.get("active", True):
        return None
    if not set(bot.scopes) <= set(info.get("scopes") or []) or not _far(info.get("expires_at")):
        return None
    return str(info.get("expires_at") or "never")


def write_secret(folder: Path, name: str, value: str) -> Path:
    """Write a secret file atomically, readable by its owner only."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / name


def ensure_token(settings: Settings, admin: GitLabClient, bot: Bot, user: dict[str, Any], report: Report, *,
                 secrets_dir: Path | None, show: Callable[[str], None] | None, rotate: bool) -> str | None:
    """The bot's token, issued when it has no working one; its value when known here."""
    what = f"token of {bot.username} ({', '.join(bot.scopes)})"
    value = known_token(settings, bot, secrets_dir)
    if value and not rotate:
        expires = _still_good(settings, value, user, bot)
        if expires:
            report.add(what, "unchanged", f"valid until {expires}")
            return value
    active = [t for t in admin.list_all("/personal_access_tokens", what=f"list the tokens of {bot.username}",
                                    user_id=user["id"], state="active") if t.get("name") == TOKEN_NAME]
    usable = [t for t in active if set(bot.scopes) <= set(t.get("scopes") or []) and _far(t.get("expires_at"))]
    if usable and not rotate and value is None:
        report.add(what, "unchanged", "exists; its value was handed out when it was made (--rotate issues a new one)")
        return None
    expires_at = (dt.date.today() + dt.timedelta(days=settings.gitlab_token_days)).isoformat()
    made = admin.post(f"/users/{user['id']}/personal_access_tokens",
                      {"name": TOKEN_NAME, "scopes": list(bot.scopes), "expires_at": expires_at},
                      what=f"issue the {what}")
    for old in active:  # replaced: the old value must stop working
        admin.delete(f"/personal_access_tokens/{old['id']}", what=f"revoke an old token of {bot.username}")
    token = str(made["token"])
    if show is not None:
        show(f"{bot.setting}={token}")
        where = "printed above, once"
    else:
        assert secrets_dir is not None
        where = f"written to {write_secret(secrets_dir, bot.secret_file, token)}"
    report.add(what, "changed" if active else "created", f"valid until {expires_at}; {where}")
    return token
