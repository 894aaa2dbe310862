"""The CI templates: valid for GitLab, and read by the local runner as GitLab would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bidsflux import cifile
from bidsflux.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "ci-pipelines"
SESSION = {"BIDSFLUX_PIPELINE": "convert", "BIDSFLUX_SESSION": "1.2.3", "BIDSFLUX_STUDY_UID": "1.2.3"}


def test_every_template_passes_gitlabs_ci_schema() -> None:
    files = sorted(PIPELINES.glob("*.yml")) + sorted((ROOT / "deploy" / "project-templates").glob("*/.gitlab-ci.yml"))
    checker = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.gitlab-ci", *map(str, files)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {f.name for f in files} >= {"study.yml", "bids.yml", "derivatives.yml"}


def test_bids_pipeline_runs_convert_then_both_checks_then_merge_each_one_bidsflux_command() -> None:
    pipeline = cifile.load(PIPELINES / "bids.yml")
    plan = pipeline.plan(SESSION)
    names = [job.name for job in plan]
    assert names[0] == "convert" and names[-1] == "merge" and set(names[1:3]) == {"validate", "phi-check"}
    assert all(job.tags == ["bids"] for job in plan)
    assert [job.script for job in plan] == [[f"bidsflux ci {name}"] for name in names]
    assert plan[0].dotenv == "convert.env"


def test_bids_pipeline_plans_nothing_without_a_session_and_derivatives_only_when_asked() -> None:
    assert cifile.load(PIPELINES / "bids.yml").plan({"BIDSFLUX_PIPELINE": "convert"}) == []
    assert cifile.load(PIPELINES / "bids.yml").plan({"BIDSFLUX_PIPELINE": "derivatives"}) == []


def test_study_jobs_extend_the_templates_and_needs_make_the_order(tmp_path: Path) -> None:
    (tmp_path / "derivatives.yml").write_text((PIPELINES / "derivatives.yml").read_text())
    (tmp_path / ".gitlab-ci.yml").write_text(
        "include:\n  - local: /derivatives.yml\n"
        "qc-a:\n  extends: .bidsflux-qc\n  needs: [gpu-b]\n"
        "gpu-b:\n  extends: .bidsflux-derivative-gpu\n  needs: [stats]\n"
        "stats:\n  extends: .bidsflux-derivative\n")
    pipeline = cifile.load(tmp_path / ".gitlab-ci.yml")
    plan = pipeline.plan({"BIDSFLUX_PIPELINE": "derivatives"})
    assert [job.name for job in plan] == ["stats", "gpu-b", "qc-a"]
    assert plan[1].tags == ["gpu"] and plan[2].variables["BIDSFLUX_DERIVATIVE_KIND"] == "qc"
    merged = pipeline.plan({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "dev",
                            "CI_COMMIT_MESSAGE": "[bids-flux] Merge convert/x into dev"})
    assert [job.name for job in merged] == ["stats", "gpu-b", "qc-a"]
    assert pipeline.plan({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "dev", "CI_COMMIT_MESSAGE": "x"}) == []


def test_script_lines_are_split_and_expanded_without_a_shell(tmp_path: Path) -> None:
    hostile = "1.2;rm -rf /$(id)"
    argv = cifile.command('bidsflux ci convert --session "$BIDSFLUX_SESSION"', {"BIDSFLUX_SESSION": hostile},
                          tmp_path / "x.yml", "convert")
    assert argv == ["bidsflux", "ci", "convert", "--session", hostile]
    with pytest.raises(UsageError, match="bidsflux ci"):
        cifile.command("curl http://example.org", {}, tmp_path / "x.yml", "job")
    with pytest.raises(UsageError, match="shell"):
        cifile.command("bidsflux ci convert | tee log", {}, tmp_path / "x.yml", "job")


def test_what_the_local_runner_cannot_honour_is_refused_by_name(tmp_path: Path) -> None:
    ci = tmp_path / "ci.yml"
    ci.write_text("a:\n  script: [bidsflux ci merge]\n  rules:\n    - if: ($X == '1')\n")
    with pytest.raises(UsageError, match="parentheses"):
        cifile.load(ci).plan({})
    ci.write_text("a:\n  trigger:\n    project: x/y\n")
    with pytest.raises(UsageError, match="trigger"):
        cifile.load(ci)
    ci.write_text("a:\n  script: [bidsflux ci merge]\n  needs: [b]\nb:\n  script: [bidsflux ci merge]\n  needs: [a]\n")
    with pytest.raises(UsageError, match="cycle"):
        cifile.load(ci).plan({})
