"""BIDSflux_stack.yml and docker-compose-mercure.yml, checked by the real validators and against the code.

``docker stack config`` (the docker client, no engine) interpolates and
validates the stack as ``docker stack deploy`` would; ``check-jsonschema``
checks every compose file against the compose specification; nginx checks
the edge's configuration. A missing validator fails the test: nothing is
skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bidsflux.settings import load_settings, setting_names

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "BIDSflux_stack.yml"
MERCURE = ROOT / "docker-compose-mercure.yml"
COMPOSE_FILES = [STACK, MERCURE]
ENV_EXAMPLE = ROOT / ".env.example"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: the deployment checks need it (see .ci and scripts/install-system.sh)"
    return found


def site_environment(env_file: Path = ENV_EXAMPLE) -> dict[str, str]:
    """What `set -a; . ./.env; set +a` leaves in the shell, with .env.example as the .env."""
    done = subprocess.run(["bash", "-c", 'set -euo pipefail; set -a; . "$1"; set +a; env -0', "bash", str(env_file)],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in {"PWD", "SHLVL", "_", "OLDPWD", "PATH"}}


def sandbox(tmp: Path) -> Path:
    """The files `docker stack deploy` reads (the stack, its configs, .env) in a folder of their own."""
    site = tmp / "site"
    site.mkdir()
    shutil.copy(STACK, site / STACK.name)
    shutil.copytree(ROOT / "local-stack", site / "local-stack")
    shutil.copy(ENV_EXAMPLE, site / ".env")
    return site


def stack_config(site: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("docker"), "stack", "config", "-c", STACK.name], cwd=site, capture_output=True,
                          text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(site), **env},
                          timeout=60)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    site = sandbox(tmp_path_factory.mktemp("stack"))
    done = stack_config(site, site_environment())
    assert done.returncode == 0, f"docker stack config failed: {done.stderr}"
    return yaml.safe_load(done.stdout)


def raw(path: Path = STACK) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_docker_stack_config_accepts_the_stack_with_the_example_settings(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"gitlab", "edge", "minio", "minio-setup", "indexer", "gitlab-runner",
                                         "gitlab-runner-dind"}
    assert resolved["services"]["indexer"]["image"].endswith("/indexer:" + site_environment()["BIDSFLUX_IMAGE_TAG"])
    # Configs resolve to the files of local-stack/, which exist.
    for config in resolved["configs"].values():
        assert Path(config["file"]).is_file(), config


def test_docker_stack_config_refuses_a_stack_without_its_settings(tmp_path: Path) -> None:
    done = stack_config(sandbox(tmp_path), {})
    assert done.returncode != 0
    assert "load .env first" in done.stderr or "in .env" in done.stderr


def test_every_variable_of_the_stack_and_of_mercure_is_required_not_silently_empty() -> None:
    # docker stack deploy replaces an unset ${VAR} with nothing; ${VAR:?...} stops it instead.
    for path in COMPOSE_FILES:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        for name, rest in INTERPOLATION.findall(text):
            assert rest.startswith(":?"), f"{path.name}: ${{{name}{rest}}} must be ${{{name}:?...}}"


def test_every_compose_file_passes_the_compose_spec_schema() -> None:
    for path in COMPOSE_FILES:
        done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_can_fail() -> None:
    # A validator that accepts anything would make the test above worthless.
    bad = yaml.safe_dump({"services": {"x": {"image": "a", "deploy": {"replicas": "many"}}}})
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "-"], input=bad,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1


def test_services_are_placed_by_node_labels_only(resolved: dict[str, Any]) -> None:
    expected = {"gitlab": "data", "edge": "data", "minio": "data", "minio-setup": "data", "indexer": "data",
                "gitlab-runner-dind": "data", "gitlab-runner": "processing"}
    for name, service in resolved["services"].items():
        constraints = service["deploy"]["placement"]["constraints"]
        assert constraints == [f"node.labels.bidsflux.node == {expected[name]}"], name
    assert "hostname ==" not in STACK.read_text() and "node.id" not in STACK.read_text()


def test_every_service_has_restart_policy_limits_logging_and_a_health_check(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        deploy = service["deploy"]
        assert deploy["restart_policy"]["condition"] in {"any", "on-failure"}, name
        assert deploy["resources"]["limits"]["memory"], name
        assert service["logging"]["options"]["max-size"], name
        if deploy.get("mode") == "replicated-job":
            assert deploy["restart_policy"]["max_attempts"] > 0, name
        else:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
            assert deploy["replicas"] == 1, name
            assert deploy["update_config"]["order"] == "stop-first", name


def test_secrets_mounted_are_exactly_those_the_secrets_step_creates(resolved: dict[str, Any]) -> None:
    from tests.unit.test_deploy_secrets import listed_secrets

    listed = listed_secrets()
    declared = raw()["secrets"]
    assert set(declared) == set(listed)
    assert all(spec == {"external": True} for spec in declared.values()), "secrets come from the secrets step only"
    mounted: dict[str, set[str]] = {}
    for name, service in resolved["services"].items():
        for mount in service.get("secrets", []):
            assert mount["target"] == mount["source"], "secrets keep their names under /run/secrets"
            assert mount["mode"] == 0o400, (name, mount)
            mounted.setdefault(mount["source"], set()).add(name)
    assert {name: services for name, (_, services) in listed.items()} == mounted


def test_secrets_the_indexer_reads_are_where_the_settings_look(resolved: dict[str, Any]) -> None:
    import dataclasses

    from bidsflux.settings import Settings

    secret_settings = {f.metadata["env"].lower() for f in dataclasses.fields(Settings) if f.metadata["secret"]}
    indexer = resolved["services"]["indexer"]
    uid, gid = site_environment()["BIDSFLUX_UID"], site_environment()["BIDSFLUX_GID"]
    for mount in indexer["secrets"]:
        assert (mount["uid"], mount["gid"]) == (uid, gid), "readable by the user the indexer runs as"
    names = {m["source"] for m in indexer["secrets"]}
    assert {"gitlab_dicom_bot_token", "bidsflux_s3_access_key", "bidsflux_s3_secret_key"} <= names & secret_settings


def test_the_indexer_container_gets_settings_bidsflux_accepts(resolved: dict[str, Any], tmp_path: Path) -> None:
    indexer = resolved["services"]["indexer"]
    environment = {k: str(v) for k, v in indexer["environment"].items()}
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    for mount in indexer["secrets"]:
        (secrets / mount["target"]).write_text("value-of-" + mount["target"] + "\n")
    (tmp_path / "empty.env").write_text("")
    settings = load_settings(environment, env_file=tmp_path / "empty.env", secrets_dir=secrets)
    assert settings.forge_type == "gitlab" and settings.storage_type == "s3"
    env = site_environment()
    assert settings.gitlab_url == f"https://{env['BIDSFLUX_GITLAB_HOST']}"
    assert settings.s3_endpoint_url == f"https://{env['BIDSFLUX_S3_HOST']}"
    assert settings.gitlab_dicom_bot_token == "value-of-gitlab_dicom_bot_token"
    assert settings.s3_access_key == "value-of-bidsflux_s3_access_key"
    # The container's layout: the work folder is the bind mount, the ports are the published targets.
    targets = {v["target"] for v in indexer["volumes"]}
    assert str(settings.workdir) in targets
    ports = {p["target"] for p in indexer["ports"]}
    assert settings.storescp_port in ports and 2762 in ports
    assert settings.storescp_host == "0.0.0.0" and settings.metrics_port == 9108
    assert indexer["user"] == f"{env['BIDSFLUX_UID']}:{env['BIDSFLUX_GID']}"
    # Scanners' own addresses reach the endpoint (allowed peers): host-mode publishing.
    assert all(p["mode"] == "host" for p in indexer["ports"])


def test_images_are_built_by_containers_or_are_pinned_third_party_images() -> None:
    from tests.unit.test_deploy_images import built_images, third_party_images

    built, pinned = built_images(), third_party_images()
    for path in COMPOSE_FILES:
        for name, service in raw(path)["services"].items():
            image = service["image"]
            if image.startswith("${BIDSFLUX_IMAGE_REPOSITORY"):
                repository_name = image.split("}/", 1)[1].split(":", 1)[0]
                assert repository_name in built, f"{path.name}: {name} uses {image}, which containers/ does not build"
                assert image.endswith(":${BIDSFLUX_IMAGE_TAG:?set BIDSFLUX_IMAGE_TAG in .env}")
            else:
                assert image in pinned, f"{path.name}: {image} is not in containers/README.md's pinned list"
                assert pinned_exactly(image), f"{image}: pin an exact version"


def pinned_exactly(image: str) -> bool:
    """A full version: x.y.z (vx.y.z), MinIO's RELEASE.<date>, or PostgreSQL's two-part x.y."""
    tag = image.rsplit(":", 1)[1]
    return bool(re.match(r"v?\d+\.\d+\.\d+([.-]|$)|RELEASE\.\d{4}-\d\d-\d\dT", tag)
                or (image.startswith("postgres:") and re.match(r"\d+\.\d+-", tag)))


def test_volumes_come_from_env_paths(resolved: dict[str, Any]) -> None:
    env = site_environment()
    roots = {env[n] for n in ("BIDSFLUX_GITLAB_DIR", "BIDSFLUX_MINIO_DIR", "BIDSFLUX_INDEXER_DIR",
                              "BIDSFLUX_RUNNER_DIR")}
    used = set()
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "tmpfs":
                continue
            assert volume["type"] == "bind", (name, volume)
            if volume["source"] == "/var/run/docker.sock":
                assert name.startswith("gitlab-runner"), "only the runners get the Docker socket"
                continue
            root = next((r for r in roots if volume["source"] == r or volume["source"].startswith(r + "/")), None)
            assert root, (name, volume["source"])
            used.add(root)
    assert used == roots


def test_the_network_is_an_attachable_overlay_with_a_fixed_name(resolved: dict[str, Any]) -> None:
    network = resolved["networks"]["bidsflux"]
    assert (network["name"], network["driver"], network["attachable"]) == ("bidsflux", "overlay", True)
    assert network["ipam"]["config"][0]["subnet"] == site_environment()["BIDSFLUX_NETWORK_SUBNET"]
    env = site_environment()
    aliases = resolved["services"]["edge"]["networks"]["bidsflux"]["aliases"]
    assert set(aliases) == {env["BIDSFLUX_GITLAB_HOST"], env["BIDSFLUX_REGISTRY_HOST"], env["BIDSFLUX_S3_HOST"]}


def test_the_s3_api_is_on_443_and_the_console_on_a_port_of_its_own(resolved: dict[str, Any]) -> None:
    edge = resolved["services"]["edge"]
    published = {p["target"]: p["published"] for p in edge["ports"]}
    assert published[8443] == 443
    assert published[9443] == int(site_environment()["BIDSFLUX_MINIO_CONSOLE_PORT"]) != 443
    conf = (ROOT / "local-stack" / "edge" / "default.conf.template").read_text()
    s3 = conf[conf.index("server_name ${BIDSFLUX_S3_HOST};"):]
    assert "listen 8443 ssl;" in conf[conf.rindex("server {", 0, conf.index("server_name ${BIDSFLUX_S3_HOST};")):]
    assert "http://minio:9000" in s3.split("}")[0] + s3.split("}")[1]
    assert "proxy_set_header Host $http_host;" in s3
    assert "minio:9001" in conf and "listen 9443 ssl;" in conf
    minio = raw()["services"]["minio"]
    assert minio["command"][-4:] == ["--address", ":9000", "--console-address", ":9001"]


def test_the_edge_configuration_passes_nginx(tmp_path: Path) -> None:
    from tests.unit.test_deploy_secrets import HOSTS, make_certificate

    cert, key = make_certificate(tmp_path / "tls", list(HOSTS.values()))
    template = (ROOT / "local-stack" / "edge" / "default.conf.template").read_text()
    # As the nginx image does: envsubst with the variables the service has.
    rendered = subprocess.run([tool("envsubst"), " ".join(f"${{{n}}}" for n in HOSTS)], input=template,
                              capture_output=True, text=True, env=HOSTS, check=True).stdout
    assert "${" not in rendered
    rendered = rendered.replace("/run/secrets/tls_cert", str(cert)).replace("/run/secrets/tls_key", str(key))
    (tmp_path / "default.conf").write_text(rendered)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                                         f"http {{\n  include {tmp_path}/default.conf;\n}}\n")
    done = subprocess.run([tool("nginx"), "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # And nginx does refuse a broken file.
    (tmp_path / "default.conf").write_text(rendered.replace("proxy_pass $gitlab;", "proxy_pass $gitlab"))
    assert subprocess.run([tool("nginx"), "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, timeout=60).returncode != 0


def test_gitlab_reads_only_what_its_service_gives_it(resolved: dict[str, Any]) -> None:
    omnibus = (ROOT / "local-stack" / "gitlab" / "omnibus_config.rb").read_text()
    gitlab = resolved["services"]["gitlab"]
    assert set(re.findall(r"ENV\.fetch\('([A-Z_]+)'\)", omnibus)) <= set(gitlab["environment"])
    for path in re.findall(r"/run/secrets/([a-z_]+)", omnibus):
        assert path in {m["target"] for m in gitlab["secrets"]}
    assert gitlab["environment"]["GITLAB_OMNIBUS_CONFIG"] == "from_file('/omnibus_config.rb')"
    assert {c["target"] for c in gitlab["configs"]} == {"/omnibus_config.rb"}
    ssh = next(p for p in gitlab["ports"] if p["target"] == 22)
    assert ssh["published"] == int(site_environment()["BIDSFLUX_GITLAB_SSH_PORT"])


def test_the_runners_use_the_docker_socket_and_their_nodes_config(resolved: dict[str, Any]) -> None:
    for name in ("gitlab-runner", "gitlab-runner-dind"):
        targets = {v["target"] for v in resolved["services"][name]["volumes"]}
        assert targets == {"/etc/gitlab-runner", "/var/run/docker.sock"}
    text = STACK.read_text()
    assert 'gpus = "all"' in text and "NVIDIA Container Toolkit" in text


def test_minio_setup_grants_the_buckets_of_the_url_pattern(tmp_path: Path) -> None:
    """setup.sh with a stand-in `mc` that records what it was asked to do."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("minio_root_user", "minio_root_password", "bidsflux_s3_access_key", "bidsflux_s3_secret_key"):
        (secrets / name).write_text(f"{name}-value\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mc.log"
    (bin_dir / "mc").write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> {log}
for arg in "$@"; do case "$arg" in *.json) cp "$arg" {tmp_path}/$(basename "$arg");; esac; done
""")
    (bin_dir / "mc").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "S3_URL_PATTERN": site_environment()["S3_URL_PATTERN"]}
    done = subprocess.run(["sh", str(ROOT / "local-stack" / "minio" / "setup.sh"), str(secrets)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "alias set site http://minio:9000 minio_root_user-value minio_root_password-value"
    assert "admin user add site bidsflux_s3_access_key-value bidsflux_s3_secret_key-value" in calls
    bucket_prefix = site_environment()["S3_URL_PATTERN"].split("/")[0].split("{")[0]
    readwrite = json.loads((tmp_path / "readwrite.json").read_text())
    resources = {r for s in readwrite["Statement"] for r in s["Resource"]}
    assert f"arn:aws:s3:::{bucket_prefix}*" in resources and f"arn:aws:s3:::{bucket_prefix}*/*" in resources
    readonly = json.loads((tmp_path / "readonly.json").read_text())
    actions = {a for s in readonly["Statement"] for a in s["Action"]}
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}


def test_setting_names_used_by_the_stack_are_real_settings() -> None:
    # Names the stack sets for bids-flux inside the indexer must be names bids-flux reads.
    indexer = raw()["services"]["indexer"]["environment"]
    assert set(indexer) <= set(setting_names())
