"""A routing rule's `pipelines` on the embedded default: built-in derivatives run after the merge, status tells."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bidsflux.embedded import Service
from bidsflux.ledger import State
from bidsflux.runner import job_environment
from bidsflux.scanner import StudySpec, send_study, study_uid
from bidsflux.settings import Settings

pytestmark = pytest.mark.integration

RULES = """\
rules:
  - name: derive-lab
    match: {StudyDescription: "^Doe\\\\^Derive$"}
    pipelines: [stats, qc/stats, mriqc]
  - name: qc-only
    match: {StudyDescription: "^Doe\\\\^QcOnly$"}
    pipelines: [qc/stats]
"""


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str, str]]:
    root = tmp_path_factory.mktemp("routed")
    (root / "rules.yml").write_text(RULES)
    settings = Settings().replace(workdir=root / "work", storescp_port=0, forge_port=0, quiet_period=1.0,
                                  routing_rules=root / "rules.yml")
    service = Service(settings).start()
    try:
        uids = []
        for seed, description in ((51, "Doe^Derive"), (52, "Doe^QcOnly")):
            spec = StudySpec(seed=seed, study_description=description)
            assert send_study(spec, "127.0.0.1", service.endpoint.port).failed == 0
            uids.append(study_uid(spec))
            service.wait_until_idle(uids[-1], timeout=600)
        yield service, uids[0], uids[1]
    finally:
        service.stop()


def status(service: Service, uid: str, *extra: str) -> str:
    done = subprocess.run(["bidsflux", "status", *extra, "--study", uid, "--workdir", str(service.settings.workdir)],
                          capture_output=True, text=True, env={**os.environ, "BIDSFLUX_FORGE_PORT": "0"}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_rules_built_in_derivatives_run_after_the_merge_and_are_clonable(
        studies: tuple[Service, str, str], tmp_path: Path) -> None:
    service, uid, _ = studies
    record = service.ledger.require(uid)
    assert record.state is State.MERGED, record.error
    derivatives = record.details["derivatives"]
    assert derivatives["stats"]["status"] == "success" and derivatives["qc/stats"]["status"] == "success"
    assert derivatives["mriqc"]["status"] == "not run here" and "not built in" in derivatives["mriqc"]["reason"]

    # The jobs extend the same templates GitLab runs; QC waits for stats through needs:.
    jobs = yaml.safe_load((service.settings.workdir / "pipelines" / f"derivatives-{uid}.yml").read_text())
    assert jobs["stats"]["extends"] == ".bidsflux-derivative"
    assert jobs["qc-stats"]["extends"] == ".bidsflux-qc" and jobs["qc-stats"]["needs"] == ["stats"]
    assert "mriqc" not in jobs

    env = {**os.environ, **job_environment(service.settings, service.forge.token)}
    stats_url = derivatives["stats"]["url"]
    assert stats_url == record.details["bids_url"].removesuffix("bids.git") + "derivatives/stats.git"
    heads = subprocess.run(["git", "ls-remote", stats_url, "refs/heads/main"], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert heads[0] == derivatives["stats"]["commit"]
    clone = tmp_path / "stats"
    subprocess.run(["datalad", "clone", stats_url, str(clone)], env=env, capture_output=True, check=True)
    assert (clone / "stats.tsv").exists() or (clone / "stats.tsv").is_symlink()
    message = subprocess.run(["git", "log", "-1", "--format=%B"], cwd=clone, capture_output=True, text=True,
                             check=True).stdout
    assert "DATALAD RUNCMD" in message and "bidsflux.derive.stats" in message

    assert "mriqc not run here, qc/stats success, stats success" in status(service, uid)  # by name
    shown = status(service, uid, "--history")
    assert f"derivative stats: success at {derivatives['stats']['commit'][:12]}" in shown
    assert "derivative qc/stats: success" in shown
    assert "derivative mriqc: not run here - not built in" in shown


def test_a_failing_derivative_is_told_and_the_conversion_stands(studies: tuple[Service, str, str]) -> None:
    service, _, uid = studies
    record = service.ledger.require(uid)
    # QC of stats without stats: the QC job fails; the study stays converted and merged.
    assert record.state is State.MERGED and record.error is None
    entry = record.details["derivatives"]["qc/stats"]
    assert entry["status"] == "failed" and "job.log" in entry["error"]
    assert "derivatives/stats" in entry["error"] or "stats" in entry["error"]
    forge = service.settings.forge_dir / (record.group_path or "") / "qc" / "stats.git"
    assert not forge.exists(), "a derivative that never succeeded leaves no project on the local forge"
    assert "qc/stats failed" in status(service, uid)
    assert "derivative qc/stats: failed - log in" in status(service, uid, "--history")


def test_retry_runs_a_failed_derivative_again_once_its_input_is_there(studies: tuple[Service, str, str],
                                                                       tmp_path: Path) -> None:
    service, _, uid = studies
    record = service.ledger.require(uid)
    env = {**os.environ, **job_environment(service.settings, service.forge.token)}
    # What the QC needed: the study's stats derivative, made by the same job command a pipeline runs.
    made = subprocess.run(["bidsflux", "ci", "derive", "--bids-url", record.details["bids_url"], "--study", uid,
                           "--name", "stats", "--command", "python -m bidsflux.derive.stats inputs/bids ."],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]

    retried = subprocess.run(["bidsflux", "retry", uid, "--workdir", str(service.settings.workdir)],
                             capture_output=True, text=True, env={**os.environ, "BIDSFLUX_FORGE_PORT": "0"}, timeout=120)
    assert retried.returncode == 0, retried.stderr
    assert "derivative(s) qc/stats pending again" in retried.stdout
    service.wait_until_idle(uid, timeout=600)
    entry = service.ledger.require(uid).details["derivatives"]["qc/stats"]
    assert entry["status"] == "success" and entry["url"].endswith("/qc/stats.git")
    assert "qc/stats success" in status(service, uid)

    again = subprocess.run(["bidsflux", "retry", uid, "--workdir", str(service.settings.workdir)],
                           capture_output=True, text=True, env={**os.environ, "BIDSFLUX_FORGE_PORT": "0"}, timeout=120)
    assert again.returncode != 0 and "none of its derivatives failed" in again.stderr
