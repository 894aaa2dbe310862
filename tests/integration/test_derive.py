"""Derivative and QC jobs on a real converted study, checked the way a researcher sees them.

The embedded default receives a synthetic study, converts it and publishes
the BIDS dataset on its local forge.  The derivative jobs then run in this
process with the environment a CI job gets (forge credentials, storage
settings): the statistics derivative, a second derivative built on it (a
DAG), and a QC job into ``<group>/qc``.  A researcher clones the results over
HTTP in a fresh HOME and gets their content from the store.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel
import pytest

from bidsflux._fs import remove_tree
from bidsflux.derive import DerivativeSpec, DeriveOutcome, qc_spec, run_derive_job, stats_spec
from bidsflux.embedded import Service
from bidsflux.errors import DeriveError
from bidsflux.ledger import State
from bidsflux.runner import job_environment
from bidsflux.scanner import StudySpec, send_study, study_uid
from bidsflux.settings import Settings

from ..conftest import researcher_env

IMAGE = "registry.example.org/bidsflux/derive:1"
MEANSTATS = DerivativeSpec(name="meanstats", needs=("stats",), inputs=("inputs/stats",),
                           command=("python", "-m", "bidsflux.derive.stats", "inputs/stats", "."))


class Study:
    def __init__(self, service: Service, bids_url: str, group: str, root: Path):
        self.service = service
        self.settings = service.settings
        self.bids_url = bids_url
        self.group = group
        self.root = root
        self.researcher = researcher_env(root / "researcher-home")

    def run(self, spec: DerivativeSpec, **kwargs: Any) -> DeriveOutcome:
        job_dir = self.root / "jobs" / f"{spec.kind}-{spec.name}-{time.time_ns()}"
        job_dir.mkdir(parents=True)
        outcome = run_derive_job(self.settings, bids_url=self.bids_url, spec=spec, job_dir=job_dir,
                                 study=None, **kwargs)
        outcome.write(job_dir / "result.json")
        remove_tree(job_dir)  # what the researcher gets below comes from the forge and the store only
        return outcome

    def heads(self, url: str) -> dict[str, str]:
        out = self.git(["ls-remote", "--heads", url], Path("/"))
        return {ref.removeprefix("refs/heads/"): sha for sha, ref in (line.split("\t") for line in out.splitlines())}

    def clone(self, url: str, name: str) -> Path:
        target = self.root / "clones" / f"{name}-{time.time_ns()}"
        self.datalad(["clone", url, str(target)], self.root)
        return target

    def datalad(self, args: list[str], cwd: Path) -> str:
        done = subprocess.run(["datalad", *args], cwd=cwd, env=self.researcher, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    def git(self, args: list[str], cwd: Path) -> str:
        return subprocess.run(["git", *args], cwd=cwd, env=self.researcher, capture_output=True, text=True,
                              check=True).stdout.strip()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    root = tmp_path_factory.mktemp("derive")
    settings = Settings().replace(workdir=root / "work", storescp_port=0, forge_port=0, quiet_period=1.0)
    service = Service(settings).start()
    try:
        spec = StudySpec(seed=11, patient_id="DER01", study_description="Smith^Derive")
        assert service.endpoint is not None
        send_study(spec, "127.0.0.1", service.endpoint.port)
        uid = study_uid(spec)
        service.wait_until_idle(uid, timeout=600)
        record = service.ledger.require(uid)
        assert record.state is State.MERGED, record.error
        with pytest.MonkeyPatch.context() as patch:
            # What a CI job's environment holds: forge credentials, storage settings, a bot identity.
            for key, value in job_environment(settings, service.forge.token).items():
                patch.setenv(key, value)
            yield Study(service, record.details["bids_url"], record.group_path or "", root)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def stats(study: Study) -> DeriveOutcome:
    return study.run(stats_spec(image=IMAGE))


def run_record(clone: Path, study: Study) -> tuple[str, dict[str, Any]]:
    message = study.git(["log", "-1", "--format=%B"], clone)
    body = message.split("=== Do not change lines below ===\n", 1)[1].split("\n^^^ Do not change lines above", 1)[0]
    return message, json.loads(body)


def tsv(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


def test_stats_derivative_is_a_recorded_run_a_researcher_can_clone_and_get(study: Study,
                                                                          stats: DeriveOutcome) -> None:
    dev = study.heads(study.bids_url)["dev"]
    url = study.bids_url.removesuffix("bids.git") + "derivatives/stats.git"
    assert (stats.url, stats.kind, stats.name, stats.changed) == (url, "derivatives", "stats", True)
    assert stats.inputs == {"bids": dev}
    assert study.heads(url)["main"] == stats.commit

    clone = study.clone(url, "stats")
    study.datalad(["get", "."], clone)  # annexed outputs (the temporal means) come from the store
    study.datalad(["get", "-n", "inputs/bids"], clone)
    images = sorted(p.relative_to(clone / "inputs" / "bids").as_posix()
                    for p in (clone / "inputs" / "bids").glob("sub-*/**/*.nii.gz"))
    assert len(images) == 5  # T1w, two field maps, two BOLD runs

    rows = tsv(clone / "stats.tsv")
    assert [r["path"] for r in rows] == images
    for row in rows:
        dims = [int(d) for d in row["shape"].split("x")]
        assert len(dims) in (3, 4) and all(d > 0 for d in dims), row
        assert float(row["max"]) > float(row["mean"]) > float(row["min"]) >= 0, row
        assert float(row["std"]) > 0 and 0 < float(row["nonzero"]) <= 1 and row["nan"] == "0", row
        assert (clone / Path(row["path"]).parent / (row["path"].rsplit("/", 1)[1][:-7] + "_stats.json")).is_file()
    bold = [r for r in rows if r["path"].endswith("_bold.nii.gz")]
    assert len(bold) == 2 and all(r["shape"].endswith("x10") for r in bold)

    means = sorted(clone.glob("sub-*/**/*_desc-mean_*.nii.gz"))
    assert len(means) == sum(1 for r in rows if r["shape"].count("x") == 3) == stats.stored_keys == 4
    for mean in means:
        assert mean.is_symlink() and mean.resolve().is_file(), "annexed, and its content was got"
        image: Any = nibabel.load(str(mean))
        assert len(image.shape) == 3
    assert set(stats.outputs) >= {"stats.tsv", "dataset_description.json", *(m.relative_to(clone).as_posix()
                                                                           for m in means)}

    message, record = run_record(clone, study)
    assert message.startswith("[DATALAD RUNCMD] [bids-flux] derivatives stats")
    assert "inputs/bids" in record["cmd"] and record["cmd"].startswith("python -m bidsflux.derive.stats")
    assert record["inputs"] == ["inputs/bids"] and record["exit"] == 0
    assert study.git(["rev-parse", "HEAD:inputs/bids"], clone) == dev
    assert study.git(["config", "-f", ".gitmodules", "submodule.inputs/bids.url"], clone) == study.bids_url

    description = json.loads((clone / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["SourceDatasets"] == [{"URL": study.bids_url, "Version": dev}]
    names = [g["Name"] for g in description["GeneratedBy"]]
    assert names == ["bidsflux.derive.stats", "bids-flux"]
    assert description["GeneratedBy"][1]["Container"] == {"Type": "docker", "Tag": IMAGE}


def test_unchanged_inputs_make_no_commit(study: Study, stats: DeriveOutcome) -> None:
    again = study.run(stats_spec(image=IMAGE))
    assert (again.changed, again.commit, again.inputs) == (False, stats.commit, stats.inputs)
    assert study.heads(stats.url)["main"] == stats.commit


def test_a_derivative_builds_on_another_and_gets_its_content_from_the_store(study: Study,
                                                                           stats: DeriveOutcome) -> None:
    outcome = study.run(MEANSTATS)
    assert outcome.changed and outcome.inputs == {"bids": stats.inputs["bids"], "stats": stats.commit}
    clone = study.clone(outcome.url, "meanstats")
    assert study.git(["rev-parse", "HEAD:inputs/stats"], clone) == stats.commit
    rows = tsv(clone / "stats.tsv")
    assert len(rows) == 4 and all(r["path"].endswith("_desc-mean_bold.nii.gz") or
                                  r["path"].endswith("_desc-mean_epi.nii.gz") for r in rows)
    assert all(r["shape"].count("x") == 2 for r in rows), "temporal means are 3D"
    _, record = run_record(clone, study)
    assert record["inputs"] == ["inputs/stats"]
    description = json.loads((clone / "dataset_description.json").read_text())
    assert [s["Version"] for s in description["SourceDatasets"]] == [stats.inputs["bids"], stats.commit]


def test_qc_job_writes_verdicts_into_the_qc_group(study: Study, stats: DeriveOutcome) -> None:
    outcome = study.run(qc_spec("stats", min_volumes=20))
    assert outcome.url == study.bids_url.removesuffix("bids.git") + "qc/stats.git" and outcome.changed
    assert Path(study.settings.forge_dir / study.group / "qc" / "stats.git").is_dir()
    clone = study.clone(outcome.url, "qc")
    verdicts = {r["path"]: r for r in tsv(clone / "qc.tsv")}
    assert len(verdicts) == 5
    for path, row in verdicts.items():
        if path.endswith("_bold.nii.gz"):
            assert (row["verdict"], row["reasons"]) == ("fail", "10 volumes, fewer than 20")
        else:
            assert row["verdict"] == "pass", row
    assert "- fail: 2" in (clone / "report.md").read_text()
    _, record = run_record(clone, study)
    assert record["inputs"] == ["inputs/stats/stats.tsv"]


def test_a_new_container_image_runs_the_derivative_again(study: Study, stats: DeriveOutcome) -> None:
    before = study.heads(stats.url)["main"]
    outcome = study.run(stats_spec(image=IMAGE.replace(":1", ":2")))
    assert outcome.changed and outcome.commit != before
    clone = study.clone(stats.url, "stats-image")
    assert study.git(["rev-parse", "HEAD^"], clone) == before, "one commit on top of the last run"
    description = json.loads((clone / "dataset_description.json").read_text())
    assert description["GeneratedBy"][-1]["Container"]["Tag"].endswith(":2")
    changed = study.git(["diff", "--name-only", "HEAD^", "HEAD"], clone).split()
    assert changed == ["dataset_description.json"], "identical outputs keep their content and keys"


def test_a_failing_command_raises_and_leaves_the_forge_unchanged(study: Study, stats: DeriveOutcome) -> None:
    before = study.heads(stats.url)
    failing = DerivativeSpec(name="stats", command=("python", "-c", "import sys; sys.exit('broken tool')"))
    with pytest.raises(DeriveError) as caught:
        study.run(failing)
    assert "derivatives/stats" in str(caught.value) and "broken tool" in str(caught.value)
    assert study.heads(stats.url) == before

    new = DerivativeSpec(name="broken", kind="qc", command=("python", "-c", "raise SystemExit(3)"))
    with pytest.raises(DeriveError, match="qc/broken"):
        study.run(new)
    assert not (study.settings.forge_dir / study.group / "qc" / "broken.git").exists()


def test_a_derivative_needing_one_that_was_never_run_says_so(study: Study) -> None:
    spec = DerivativeSpec(name="later", needs=("fmriprep",), command=("true",))
    with pytest.raises(DeriveError, match="needs derivatives/fmriprep"):
        study.run(spec)


def test_a_gitlab_style_project_made_from_a_template_becomes_a_datalad_dataset(study: Study,
                                                                              stats: DeriveOutcome) -> None:
    """On GitLab the project exists beforehand with the template's commit (its .gitlab-ci.yml)."""
    url = study.bids_url.removesuffix("bids.git") + "qc/templated.git"
    bare = study.settings.forge_dir / study.group / "qc" / "templated.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)], check=True)
    subprocess.run(["git", "config", "http.receivepack", "true"], cwd=bare, check=True)
    seed = study.root / "template-seed"
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(seed)], check=True)
    (seed / ".gitlab-ci.yml").write_text("include:\n  - project: ci-pipelines\n    file: /derivatives.yml\n")
    subprocess.run(["git", "add", "."], cwd=seed, check=True)
    subprocess.run(["git", "commit", "--quiet", "-m", "Template"], cwd=seed, check=True)
    subprocess.run(["git", "push", "--quiet", str(bare), "main"], cwd=seed, check=True)

    spec = DerivativeSpec(name="templated", kind="qc", command=("python", "-m", "bidsflux.derive.qc",
                                                                  "inputs/stats", "."),
                          needs=("stats",), inputs=("inputs/stats/stats.tsv",))
    outcome = study.run(spec)
    assert outcome.changed and outcome.url == url
    clone = study.clone(url, "templated")
    assert (clone / ".gitlab-ci.yml").is_file() and (clone / ".datalad" / "config").is_file()
    subjects = study.git(["log", "--format=%s"], clone).splitlines()
    assert subjects[-1] == "Template" and subjects[0] == "[DATALAD RUNCMD] [bids-flux] qc templated"
    assert (clone / "qc.tsv").is_file()
