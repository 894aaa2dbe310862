""".env.example and the deployment files name the same settings, both ways.

Every variable the stack, mercure's compose file, the deployment scripts and
bids-flux itself read is in .env.example; every variable in .env.example is
read by one of them. The deployment's own values are safe defaults of the
right form, and the file loads the three ways it is read: by the shell
(`set -a; . ./.env`), by docker's env_file, and by bids-flux.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from bidsflux.settings import load_settings, setting_names
from tests.unit.test_deploy_stack import COMPOSE_FILES, ENV_EXAMPLE, INTERPOLATION, ROOT, site_environment

# Read from the environment by the scripts, but set by someone else: GitLab CI
# (containers/build.sh), mercure (its modules' folders), the shell.
PROVIDED_ELSEWHERE = {"CI_REGISTRY_IMAGE", "CI_COMMIT_TAG", "CI_COMMIT_SHORT_SHA", "CI_COMMIT_SHA", "PATH", "HOME"}
SHELL_SCRIPTS = [ROOT / "deploy" / "generate_secrets.sh", ROOT / "containers" / "build.sh",
                 ROOT / "local-stack" / "minio" / "setup.sh"]


def documented() -> set[str]:
    """Names in .env.example: active lines and commented-out examples (`# NAME=...`).

    A secret's ``NAME_FILE`` counts as ``NAME``; settings whose own name ends in
    ``_FILE`` (``BIDSFLUX_TLS_CERT_FILE``) count as themselves.
    """
    import dataclasses

    from bidsflux.settings import Settings

    secrets = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["secret"]}
    names = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    return {name.removesuffix("_FILE") if name.removesuffix("_FILE") in secrets else name for name in names}


def compose_variables() -> set[str]:
    found = set()
    for path in COMPOSE_FILES:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        found |= {name for name, _ in INTERPOLATION.findall(text)}
    return found


def setup_mercure() -> Any:
    """local-stack/mercure/setup_mercure.py as a module (it is a script, not part of the package)."""
    import importlib.util
    import sys

    if "setup_mercure" not in sys.modules:
        spec = importlib.util.spec_from_file_location("setup_mercure",
                                                      ROOT / "local-stack" / "mercure" / "setup_mercure.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["setup_mercure"] = module
        spec.loader.exec_module(module)
    return sys.modules["setup_mercure"]


def script_variables() -> set[str]:
    """Upper-case names the deployment scripts read from the environment (their own variables are lower-case)."""
    found: set[str] = set(setup_mercure().NEEDED)
    for script in SHELL_SCRIPTS:
        text = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        found |= set(re.findall(r"\$\{?!?([A-Z][A-Z0-9_]*)", text))
        for names in re.findall(r"\bfor \w+ in ([A-Z][A-Z0-9_ ]*); do", text):  # read with ${!name}
            found |= set(names.split())
    return found - PROVIDED_ELSEWHERE


def test_every_variable_the_stack_the_compose_file_and_the_scripts_read_is_in_env_example() -> None:
    missing = {"stack and compose files": compose_variables() - documented(),
               "deployment scripts": script_variables() - documented()}
    assert not any(missing.values()), f"add to .env.example: {missing}"


def test_every_setting_the_code_reads_is_in_env_example() -> None:
    missing = set(setting_names()) - documented()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_every_variable_in_env_example_is_read_by_something() -> None:
    unused = documented() - set(setting_names()) - compose_variables() - script_variables()
    assert not unused, f"in .env.example but read by nothing: {sorted(unused)}"


def test_env_example_loads_in_the_shell_in_docker_env_file_form_and_in_bidsflux(tmp_path: Path) -> None:
    env = site_environment()  # bash: set -a; . ./.env; set +a (fails the test if the shell cannot)
    active = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"not NAME=value: {line!r}"
            assert value == value.strip() and not value.startswith(("'", '"')), \
                f"{name}: docker's env_file takes values literally: no quotes, no spaces around"
            active[name] = value
    # The shell and docker's env_file read the same values.
    assert {k: env[k] for k in active} == active
    load_settings({}, env_file=ENV_EXAMPLE, secrets_dir=tmp_path)


def test_deployment_defaults_are_safe_and_of_the_right_form() -> None:
    env = site_environment()
    for name in ("BIDSFLUX_GITLAB_HOST", "BIDSFLUX_REGISTRY_HOST", "BIDSFLUX_S3_HOST"):
        assert env[name].endswith(".example.org"), f"{name}: a reserved example name, never a real host"
    assert len({env["BIDSFLUX_GITLAB_HOST"], env["BIDSFLUX_REGISTRY_HOST"], env["BIDSFLUX_S3_HOST"]}) == 3
    assert env["BIDSFLUX_IMAGE_REPOSITORY"].startswith(env["BIDSFLUX_REGISTRY_HOST"] + "/")
    for name in ("BIDSFLUX_GITLAB_DIR", "BIDSFLUX_MINIO_DIR", "BIDSFLUX_INDEXER_DIR", "BIDSFLUX_RUNNER_DIR",
                 "MERCURE_DIR"):
        assert env[name].startswith("/") and ".." not in env[name], name
    ports = {name: int(env[name]) for name in ("BIDSFLUX_MINIO_CONSOLE_PORT", "BIDSFLUX_GITLAB_SSH_PORT",
                                                "STORESCP_PORT", "MERCURE_DICOM_PORT", "MERCURE_UI_PORT")}
    assert all(0 < port < 65536 for port in ports.values())
    # Each published port of the data node is used once (443, 80 and 2762 are the stack's own).
    assert len(set(ports.values()) | {443, 80, 2762}) == len(ports) + 3, ports
    assert ipaddress.ip_network(env["BIDSFLUX_NETWORK_SUBNET"]).is_private
    assert not ipaddress.ip_network(env["BIDSFLUX_NETWORK_SUBNET"]).overlaps(ipaddress.ip_network("10.0.0.0/8"))
    for name in ("BIDSFLUX_UID", "BIDSFLUX_GID", "MERCURE_DOCKER_GID"):
        assert int(env[name]) > 0, f"{name}: never root"
