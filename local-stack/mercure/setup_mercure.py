#!/usr/bin/env python3
"""Set up mercure (docker-compose-mercure.yml) with bids-flux as its processing module.

Run as root on the data node, from the repository's root, with .env loaded
(``set -a; . ./.env; set +a``)::

    python3 local-stack/mercure/setup_mercure.py [--env-file .env] [--dry-run]

It makes, under ``MERCURE_DIR`` and owned by ``BIDSFLUX_UID:BIDSFLUX_GID``:

- the folders mercure expects (``config``, ``data/<incoming, studies, ...>``,
  ``db``, ``persistence``);
- mercure's own secrets, once, as its installer does (database and Redis
  passwords, the UI's session key, the bookkeeper's API key): mode 0600 files
  in ``config``, never shown and never replaced;
- ``config/mercure.json``: the ``bids-flux`` module and the ``bids-flux`` rule
  (every study, once complete, to the module) are written afresh from .env on
  every run; everything else in the file (rules, targets, settings made in
  mercure's UI) is kept.

The module is the image ``$BIDSFLUX_IMAGE_REPOSITORY/mercure-module:$BIDSFLUX_IMAGE_TAG``
with the indexer's folder (``BIDSFLUX_INDEXER_DIR``) at ``/var/lib/bidsflux``
and every bids-flux setting of the env file, as the stack's indexer has them,
so that both see the same naming and routing settings.

Exit status: 0 done, 1 a problem (reported), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import string
import sys
from pathlib import Path
from typing import Any

MODULE = "bids-flux"
RULE = "bids-flux"
WORKDIR_IN_MODULE = "/var/lib/bidsflux"
DATA_FOLDERS = ("incoming", "studies", "outgoing", "success", "error", "discard", "processing", "jobs")
NEEDED = ("MERCURE_DIR", "BIDSFLUX_UID", "BIDSFLUX_GID", "BIDSFLUX_INDEXER_DIR", "BIDSFLUX_IMAGE_REPOSITORY",
          "BIDSFLUX_IMAGE_TAG")
# Settings of the deployment itself, which mean nothing inside the module.
NOT_FOR_THE_MODULE = re.compile(r"^(MERCURE_|BIDSFLUX_(GITLAB|REGISTRY|S3)_HOST$|BIDSFLUX_(GITLAB|MINIO|INDEXER|RUNNER)_DIR$"
                                r"|BIDSFLUX_(UID|GID|IMAGE_REPOSITORY|IMAGE_TAG|NETWORK_SUBNET|MINIO_CONSOLE_PORT"
                                r"|GITLAB_SSH_PORT)$)")

# mercure 0.4.1's Module and Rule fields (app/common/types.py): what mercure.json may hold for them.
MODULE_FIELDS = {"docker_tag", "additional_volumes", "environment", "docker_arguments", "settings", "contact",
                 "comment", "constraints", "resources", "requires_root", "requires_persistence",
                 "persistence_folder_name", "network_enabled"}
RULE_FIELDS = {"rule", "target", "disabled", "fallback", "contact", "comment", "tags", "action", "action_trigger",
               "study_trigger_condition", "study_force_completion_action", "study_trigger_series", "priority",
               "processing_module", "processing_settings", "processing_retain_images", "notification_email",
               "notification_webhook", "notification_payload", "notification_payload_body",
               "notification_email_body", "notification_email_type", "notification_trigger_reception",
               "notification_trigger_completion", "notification_trigger_completion_on_request",
               "notification_trigger_error", "dynamic_routing", "dynamic_routing_allowed_targets",
               "conditional_alternate_target"}

SERVICES = {  # mercure's configuration/default_services.json, for the UI's service page (compose names)
    "receiver": ("Receiver", "mercure-receiver-1"), "router": ("Router", "mercure-router-1"),
    "processor": ("Processor", "mercure-processor-1"), "dispatcher": ("Dispatcher", "mercure-dispatcher-1"),
    "cleaner": ("Cleaner", "mercure-cleaner-1"), "bookkeeper": ("Bookkeeper", "mercure-bookkeeper-1"),
    "ui": ("WebUI", "mercure-ui-1"), "redis": ("Redis", "mercure-redis-1"),
}
WORKERS = ["mercure-worker_fast-1", "mercure-worker_fast-2", "mercure-worker_slow-1", "mercure-worker_slow-2"]


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines as docker's env_file reads them (values literal, # comments, blank lines)."""
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{path}:{number}: expected NAME=value")
        values[name] = value
    return values


def random_text(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def module_config(site: dict[str, str], settings: dict[str, str]) -> dict[str, Any]:
    environment = {name: value for name, value in sorted(settings.items()) if not NOT_FOR_THE_MODULE.match(name)}
    environment["BIDSFLUX_WORKDIR"] = WORKDIR_IN_MODULE
    volumes = {site["BIDSFLUX_INDEXER_DIR"]: {"bind": WORKDIR_IN_MODULE, "mode": "rw"}}
    return {
        "docker_tag": f"{site['BIDSFLUX_IMAGE_REPOSITORY']}/mercure-module:{site['BIDSFLUX_IMAGE_TAG']}",
        "additional_volumes": json.dumps(volumes),
        "environment": json.dumps(environment),
        "docker_arguments": "",
        "settings": {},
        "contact": "",
        "comment": "bids-flux: imports the study into the indexer's spool (written by setup_mercure.py)",
        "constraints": "",
        "resources": "",
        "requires_root": False,
        "requires_persistence": False,
        "persistence_folder_name": "",
        # It only writes files: no network at all.
        "network_enabled": False,
    }


def rule_config() -> dict[str, Any]:
    return {
        "rule": "True",
        "target": "",
        "disabled": False,
        "fallback": False,
        "contact": "",
        "comment": "bids-flux: every study, once complete, to the bids-flux module (written by setup_mercure.py)",
        "tags": "",
        "action": "process",
        "action_trigger": "study",
        "study_trigger_condition": "timeout",
        # A study still receiving after mercure's force-completion time goes on as it is.
        "study_force_completion_action": "proceed",
        "priority": "normal",
        "processing_module": MODULE,
        "processing_settings": {},
        "processing_retain_images": False,
    }


def mercure_json(existing: dict[str, Any] | None, site: dict[str, str], settings: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = dict(existing or {
        "appliance_name": "bids-flux",
        "port": 11112,
        "bookkeeper": "bookkeeper:8080",
        "bookkeeper_api_key": random_text(40),
        "process_runner": "docker",
        "support_root_modules": False,
        "targets": {},
        "rules": {},
        "modules": {},
    })
    config.setdefault("bookkeeper_api_key", random_text(40))
    config["modules"] = {**config.get("modules", {}), MODULE: module_config(site, settings)}
    config["rules"] = {**config.get("rules", {}), RULE: rule_config()}
    return config


def secret_files(config_dir: Path) -> dict[str, str]:
    """mercure's secret files, with new values: written only where the file does not exist yet."""
    db, redis, key = random_text(40), random_text(40), random_text(50)
    return {
        "db.env": f"POSTGRES_PASSWORD={db}\n",
        "bookkeeper.env": f"PORT=8080\nHOST=0.0.0.0\nDATABASE_URL=postgresql://mercure:{db}@db\n",
        "redis.env": f"REDIS_PASSWORD={redis}\nREDIS_URL=redis://:{redis}@redis:6379/0\n",
        "webgui.env": f"SECRET_KEY={key}\nPORT=8000\nHOST=0.0.0.0\n",
    }


def services_json() -> dict[str, Any]:
    found: dict[str, Any] = {key: {"name": name, "systemd_service": f"mercure_{key}.service",
                                   "docker_service": container} for key, (name, container) in SERVICES.items()}
    found["workers"] = {"name": "Workers", "systemd_service": [], "docker_service": WORKERS}
    return found


def write(path: Path, text: str, uid: int, gid: int, mode: int, dry_run: bool, echo: list[str], what: str) -> None:
    echo.append(f"{path}: {what}")
    if dry_run:
        return
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, mode)
    if os.geteuid() == 0:
        os.chown(temporary, uid, gid)
    os.replace(temporary, path)


def setup(site: dict[str, str], settings: dict[str, str], *, dry_run: bool = False) -> list[str]:
    """Do the set-up; return one line per thing made or changed."""
    echo: list[str] = []
    base = Path(site["MERCURE_DIR"])
    uid, gid = int(site["BIDSFLUX_UID"]), int(site["BIDSFLUX_GID"])
    folders = [base / "config", base / "db", base / "persistence", base / "data",
               *(base / "data" / name for name in DATA_FOLDERS)]
    for folder in folders:
        if not folder.is_dir():
            echo.append(f"{folder}: created")
            if not dry_run:
                folder.mkdir(parents=True, exist_ok=True)
                if os.geteuid() == 0 and folder.name != "db":  # the database container owns its folder
                    os.chown(folder, uid, gid)
    config_dir = base / "config"
    for name, text in secret_files(config_dir).items():
        if not (config_dir / name).exists():
            write(config_dir / name, text, uid, gid, 0o600, dry_run, echo, "created (mercure's secrets, kept there)")
    if not (config_dir / "services.json").exists():
        write(config_dir / "services.json", json.dumps(services_json(), indent=4) + "\n", uid, gid, 0o644, dry_run,
              echo, "created")
    target = config_dir / "mercure.json"
    existing = json.loads(target.read_text(encoding="utf-8")) if target.exists() else None
    config = mercure_json(existing, site, settings)
    if config != existing:
        write(target, json.dumps(config, indent=4) + "\n", uid, gid, 0o600, dry_run, echo,
              "bids-flux module and rule written" + (", everything else kept" if existing else ""))
    else:
        echo.append(f"{target}: unchanged")
    return echo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, default=Path(".env"),
                        help="the site's .env (default ./.env): the module gets its bids-flux settings")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    args = parser.parse_args(argv)
    try:
        settings = read_env_file(args.env_file)
    except (OSError, ValueError) as exc:
        print(f"setup_mercure: cannot read the env file: {exc}", file=sys.stderr)
        return 2
    site = {**settings, **{k: v for k, v in os.environ.items() if k in NEEDED}}
    missing = [name for name in NEEDED if not site.get(name)]
    if missing:
        print(f"setup_mercure: set {', '.join(missing)} (in .env, then: set -a; . ./.env; set +a)", file=sys.stderr)
        return 1
    for line in setup(site, settings, dry_run=args.dry_run):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
