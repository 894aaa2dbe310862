"""mercure as the receiver: setup_mercure.py, mercure.json against mercure's types, and the module's contract."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from bidsflux.cli import main
from bidsflux.settings import load_settings
from tests.unit.test_deploy_env import setup_mercure
from tests.unit.test_deploy_images import built_images
from tests.unit.test_deploy_stack import ENV_EXAMPLE, MERCURE, raw, site_environment


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    env = site_environment()
    env["MERCURE_DIR"] = str(tmp_path / "opt-mercure")
    env["BIDSFLUX_INDEXER_DIR"] = str(tmp_path / "indexer")
    env["BIDSFLUX_UID"], env["BIDSFLUX_GID"] = str(os.getuid()), str(os.getgid())
    return env


def settings_of_env_file() -> dict[str, str]:
    return setup_mercure().read_env_file(ENV_EXAMPLE)


def mercure_json(site: dict[str, str]) -> dict[str, Any]:
    return json.loads((Path(site["MERCURE_DIR"]) / "config" / "mercure.json").read_text())


def test_setup_makes_folders_secrets_and_the_module_once(site: dict[str, str]) -> None:
    module = setup_mercure()
    first = module.setup(site, settings_of_env_file())
    base = Path(site["MERCURE_DIR"])
    for folder in ("config", "db", "persistence", *(f"data/{n}" for n in module.DATA_FOLDERS)):
        assert (base / folder).is_dir(), folder
    secrets = {name: (base / "config" / name).read_text() for name in ("db.env", "bookkeeper.env", "redis.env",
                                                                        "webgui.env")}
    for name in secrets:
        assert stat.S_IMODE((base / "config" / name).stat().st_mode) == 0o600, name
    password = secrets["db.env"].split("=", 1)[1].strip()
    assert len(password) == 40 and f"mercure:{password}@db" in secrets["bookkeeper.env"]
    redis = secrets["redis.env"].splitlines()[0].split("=", 1)[1]
    assert f"redis://:{redis}@redis:6379/0" in secrets["redis.env"]
    assert "SECRET_KEY=PutSomethingRandomHere" not in secrets["webgui.env"]
    assert not any(value in "\n".join(first) for value in (password, redis)), "secrets are never shown"
    # A second run keeps mercure's secrets and changes nothing.
    again = module.setup(site, settings_of_env_file())
    assert {name: (base / "config" / name).read_text() for name in secrets} == secrets
    assert again == [f"{base / 'config' / 'mercure.json'}: unchanged"]


def test_the_module_and_rule_are_what_mercure_0_4_1_accepts(site: dict[str, str]) -> None:
    module = setup_mercure()
    module.setup(site, settings_of_env_file())
    config = mercure_json(site)
    bidsflux, rule = config["modules"]["bids-flux"], config["rules"]["bids-flux"]
    assert set(bidsflux) <= module.MODULE_FIELDS and set(rule) <= module.RULE_FIELDS
    assert rule["action"] == "process" and rule["processing_module"] == "bids-flux"
    assert rule["action_trigger"] == "study" and rule["rule"] == "True"
    assert rule["study_force_completion_action"] in {"discard", "proceed", "ignore"}
    assert bidsflux["network_enabled"] is False and bidsflux["requires_root"] is False
    assert len(config["bookkeeper_api_key"]) == 40 and config["process_runner"] == "docker"
    # The image is one containers/ builds, at the tag the stack runs.
    repository, tag = bidsflux["docker_tag"].rsplit(":", 1)
    assert repository == f"{site['BIDSFLUX_IMAGE_REPOSITORY']}/mercure-module" and "mercure-module" in built_images()
    assert tag == site["BIDSFLUX_IMAGE_TAG"]
    # mercure hands these JSON strings to the docker SDK: the indexer's folder where the indexer has it.
    volumes = json.loads(bidsflux["additional_volumes"])
    indexer_bind = next(v for v in raw()["services"]["indexer"]["volumes"] if v["type"] == "bind")
    assert volumes == {site["BIDSFLUX_INDEXER_DIR"]: {"bind": indexer_bind["target"], "mode": "rw"}}


def test_the_module_sees_the_naming_settings_of_env_and_no_deployment_values(site: dict[str, str]) -> None:
    setup_mercure().setup(site, settings_of_env_file())
    environment = json.loads(mercure_json(site)["modules"]["bids-flux"]["environment"])
    values = settings_of_env_file()
    for name in ("GITLAB_INDEXER_GROUP_TEMPLATE", "S3_URL_PATTERN", "BIDSFLUX_SESSION_TEMPLATE"):
        assert environment[name] == values[name]
    assert environment["BIDSFLUX_WORKDIR"] == "/var/lib/bidsflux"
    assert not {name for name in environment if name.startswith("MERCURE_") or name.endswith("_DIR")}
    assert "BIDSFLUX_IMAGE_TAG" not in environment and "BIDSFLUX_UID" not in environment


def test_edits_made_in_mercure_s_ui_survive_a_new_run(site: dict[str, str]) -> None:
    module = setup_mercure()
    module.setup(site, settings_of_env_file())
    path = Path(site["MERCURE_DIR"]) / "config" / "mercure.json"
    config = mercure_json(site)
    config["targets"]["pacs"] = {"target_type": "dicom", "ip": "192.0.2.7", "port": "104"}
    config["rules"]["to-pacs"] = {"rule": "True", "action": "route", "target": "pacs"}
    config["modules"]["bids-flux"]["comment"] = "edited by hand"
    key = config["bookkeeper_api_key"]
    path.write_text(json.dumps(config))
    site = {**site, "BIDSFLUX_IMAGE_TAG": "0.2.0"}
    lines = module.setup(site, settings_of_env_file())
    assert any("everything else kept" in line for line in lines)
    after = mercure_json(site)
    assert after["targets"]["pacs"]["ip"] == "192.0.2.7" and "to-pacs" in after["rules"]
    assert after["bookkeeper_api_key"] == key
    assert after["modules"]["bids-flux"]["docker_tag"].endswith("/mercure-module:0.2.0")
    assert after["modules"]["bids-flux"]["comment"] != "edited by hand"


def test_main_reports_missing_settings_and_dry_run_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    module = setup_mercure()
    empty = tmp_path / "empty.env"
    empty.write_text("# nothing\n")
    for name in module.NEEDED:
        monkeypatch.delenv(name, raising=False)
    assert module.main(["--env-file", str(empty)]) == 1
    assert "set MERCURE_DIR" in capsys.readouterr().err
    monkeypatch.setenv("MERCURE_DIR", str(tmp_path / "m"))
    assert module.main(["--env-file", str(ENV_EXAMPLE), "--dry-run"]) == 0
    assert "created" in capsys.readouterr().out and not (tmp_path / "m").exists()


def test_the_compose_file_wires_mercure_to_the_module_and_the_indexer_s_folder() -> None:
    compose = raw(MERCURE)
    assert compose["name"] == "mercure", "mercure's processor looks for the volume mercure_data"
    assert compose["volumes"]["data"]["driver_opts"]["device"].startswith("${MERCURE_DIR")
    services = compose["services"]
    for name in ("processor", "ui"):
        assert "/var/run/docker.sock:/var/run/docker.sock" in services[name]["volumes"]
        assert services[name]["user"].split("}:")[1].startswith("${MERCURE_DOCKER_GID")
        assert services[name]["environment"]["MERCURE_PROCESSOR_EXTRA_VOLUMES"].startswith("${BIDSFLUX_INDEXER_DIR")
    for name, service in services.items():
        if "user" in service:
            assert service["user"].startswith("${BIDSFLUX_UID"), f"{name} runs as the indexer's user"
    assert services["receiver"]["ports"] == ["${MERCURE_DICOM_PORT:?set MERCURE_DICOM_PORT in .env}:11112"]
    # The secrets env files the compose file reads are those setup_mercure.py writes.
    files = {Path(f).name for s in services.values() for f in s.get("env_file", [])}
    assert files <= {"db.env", "redis.env", "bookkeeper.env", "webgui.env"}


def test_the_module_imports_a_study_as_mercure_hands_it_over(site: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`bidsflux mercure-module` with the module's environment from mercure.json and mercure's folders."""
    setup_mercure().setup(site, settings_of_env_file())
    module = mercure_json(site)["modules"]["bids-flux"]
    environment = json.loads(module["environment"])
    workdir = Path(site["BIDSFLUX_INDEXER_DIR"])
    environment["BIDSFLUX_WORKDIR"] = str(workdir)  # the bind mount, seen from outside the container
    # mercure's processing folder: every instance flat in in/, with its .tags, and task.json.
    generated = tmp_path / "generated"
    assert main(["send-test-study", "--output", str(generated)]) == 0
    data, output = tmp_path / "tmp-data", tmp_path / "tmp-output"
    data.mkdir()
    output.mkdir()
    for number, path in enumerate(sorted(generated.rglob("*.dcm"))):
        path.rename(data / f"1.2.3#{number:05d}.dcm")
        (data / f"1.2.3#{number:05d}.tags").write_text("{}")
    (data / "task.json").write_text(json.dumps({"id": "task-1", "info": {"applied_rule": "bids-flux",
                                                                           "uid": "1.2.3", "uid_type": "study"}}))
    for name in list(os.environ):
        if name.startswith(("BIDSFLUX_", "GITLAB_", "S3_", "STORESCP_")):
            monkeypatch.delenv(name)
    for name, value in {**environment, "MERCURE_IN_DIR": str(data), "MERCURE_OUT_DIR": str(output)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["mercure-module"]) == 0, capsys.readouterr().err
    result = json.loads((output / "bidsflux-result.json").read_text())
    assert result["instances"] == len(list(data.glob("*.dcm"))) and len(result["batches"]) == 1
    assert result["mercure_rule"] == "bids-flux"
    settings = load_settings()
    assert list((settings.spool_dir / "complete").iterdir()), "the study waits in the indexer's spool"
    assert yaml.safe_load(json.dumps(module))  # plain JSON values, as mercure stores them
