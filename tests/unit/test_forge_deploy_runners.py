"""The runners file and the config.toml it turns into (no network)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from bidsflux.deploy import load_runners
from bidsflux.deploy._toml import render_config
from bidsflux.deploy.report import Report
from bidsflux.errors import ForgeError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_runners_file_has_the_site_layout() -> None:
    concurrent, specs = load_runners(ROOT / "deploy" / "runners.yml")
    by_node: dict[str, list[tuple[str, ...]]] = {}
    for spec in specs:
        by_node.setdefault(spec.node, []).append(spec.tags)
    assert sorted(by_node["processing"]) == [("bids",), ("gpu",)]
    assert sorted(by_node["data"]) == [(), ("dind",)]
    assert [s.name for s in specs if not s.tags and s.run_untagged] == ["data-untagged"]
    assert all(s.runner_type == "instance_type" for s in specs) and concurrent >= 1


def test_every_problem_of_a_runners_file_is_reported_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "runners.yml"
    bad.write_text("runners:\n"
                   "  - {name: a, node: n, tags: [x], colour: red}\n"
                   "  - {name: a, node: n, tags: [], run_untagged: false}\n"
                   "  - {name: c, node: n, runner_type: project_type}\n")
    with pytest.raises(UsageError) as caught:
        load_runners(bad)
    message = str(caught.value)
    assert "colour" in message and "used twice" in message and "untagged" in message and "runner_type" in message


def test_config_toml_round_trips_with_awkward_values() -> None:
    from bidsflux.deploy.runners import RunnerSpec

    spec = RunnerSpec('we"ird\\name', "n", ("bids",), False, "ref_protected",
                      docker={"volumes": ["/data:/data:ro", 'odd"path'], "gpus": "all", "shm_size": 1024})
    text = render_config(3, "https://gitlab.example.org", [(spec, {"id": 5, "token": "glrt-abc"})])
    data = tomllib.loads(text)
    runner = data["runners"][0]
    assert data["concurrent"] == 3 and runner["name"] == 'we"ird\\name' and runner["token"] == "glrt-abc"
    assert runner["docker"]["volumes"] == ["/data:/data:ro", 'odd"path'] and runner["docker"]["shm_size"] == 1024
    assert runner["docker"]["privileged"] is False and runner["id"] == 5


def test_a_report_goes_on_after_a_failed_item() -> None:
    lines: list[str] = []
    report = Report(echo=lines.append)
    report.attempt("first", lambda: (_ for _ in ()).throw(ForgeError("boom")))
    report.add("second", "unchanged")
    assert report.failed and not report.changed
    assert lines == ["    error  first: boom", "unchanged  second"]
    assert "1 item(s) failed" in report.summary()


def test_processing_jobs_join_the_stack_s_attachable_network_in_config_toml() -> None:
    # What `bidsflux deploy runners` writes for the processing node, from the shipped file.
    concurrent, specs = load_runners(ROOT / "deploy" / "runners.yml")
    processing = [s for s in specs if s.node == "processing"]
    made = [(spec, {"id": number, "token": f"glrt-{number}"}) for number, spec in enumerate(processing, start=1)]
    config = tomllib.loads(render_config(concurrent, "https://gitlab.example.org", made))
    docker = {runner["name"]: runner["docker"] for runner in config["runners"]}
    networks = yaml.safe_load((ROOT / "BIDSflux_stack.yml").read_text())["networks"]
    stack_network = networks["bidsflux"]
    assert stack_network["driver"] == "overlay" and stack_network["attachable"] is True
    for name in ("processing-bids", "processing-gpu"):
        assert docker[name]["network_mode"] == stack_network["name"] == "bidsflux", name
        # A runner's docker section replaces the defaults': the rest must still be there.
        assert docker[name]["image"] == "docker:27" and docker[name]["volumes"] == ["/cache"], name
        assert docker[name]["privileged"] is False, name
    assert docker["processing-gpu"]["gpus"] == "all" and "gpus" not in docker["processing-bids"]
