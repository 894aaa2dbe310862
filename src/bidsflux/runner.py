"""The local runner: runs a pipeline of ``ci-pipelines/`` on this machine, as GitLab's runner would.

It reads the same template GitLab runs (:mod:`.cifile`), plans the jobs the
pipeline's variables select, in the order stages and ``needs`` give, and
runs each job's ``bidsflux ci ...`` lines in its own process and job folder,
with the settings and forge credentials in the environment (as CI/CD
variables would be) and the variables earlier jobs wrote to their dotenv
reports.  A failed job stops the pipeline: the jobs after it do not run, as
on GitLab.  Output lines go to ``on_line`` as they come (progress).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cifile, storage
from ._fs import remove_tree
from ._proc import mask_secrets, tool_env
from .errors import ConvertError
from .forge import credential_env
from .settings import Settings


def job_environment(settings: Settings, token: str) -> dict[str, str]:
    env = {
        "BIDSFLUX_WORKDIR": str(settings.workdir),
        "BIDSFLUX_FORGE_TYPE": settings.forge_type,
        "BIDSFLUX_HEURISTIC": settings.bids_heuristic,
        "BIDSFLUX_AUTO_MERGE": "true" if settings.bids_auto_merge else "false",
        "BIDSFLUX_PHI_ALLOW": ",".join(sorted(settings.phi_allow)),
        "GIT_AUTHOR_NAME": "bids_bot", "GIT_AUTHOR_EMAIL": "bids_bot@bids-flux.invalid",
        "GIT_COMMITTER_NAME": "bids_bot", "GIT_COMMITTER_EMAIL": "bids_bot@bids-flux.invalid",
    }
    env.update(credential_env(token))
    env.update(storage.job_environment(settings, env))
    return env


@dataclass
class PipelineRun:
    kind: str
    jobs: list[str]                      # planned, in order
    status: dict[str, str] = field(default_factory=dict)  # success | failed | skipped
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.status.get(job) == "success" for job in self.jobs)

    def failed(self) -> list[str]:
        return [job for job in self.jobs if self.status.get(job) == "failed"]

    def log_tail(self, job: str, limit: int) -> str:
        """Where the job's log is and its last three lines (at most ``limit`` characters of them)."""
        tail = " | ".join(self.logs[job].read_text().splitlines()[-3:])
        return f"log in {self.logs[job]}: {tail[-limit:]}"


JobDone = Callable[[str, dict[str, Any]], None]


def run_pipeline(settings: Settings, token: str, kind: str, variables: Mapping[str, str], *, study: str,
                 on_line: Callable[[str], None] | None = None, on_job: JobDone | None = None,
                 path: Path | None = None) -> PipelineRun:
    """Run pipeline ``kind`` (``ci-pipelines/<kind>.yml``, or ``path``) with ``variables``."""
    pipeline = cifile.load(path or settings.ci_pipelines_dir / f"{kind}.yml")
    plan = pipeline.plan(variables)
    run = PipelineRun(kind, [job.name for job in plan])
    base = {**cifile.resolve_variables(pipeline.variables, variables), "CI_PIPELINE_SOURCE": "api",
            **variables, **job_environment(settings, token)}
    handed_on: dict[str, str] = {}
    for job in plan:
        if run.failed():
            run.status[job.name] = "skipped"
            continue
        job_dir = settings.jobs_dir / f"{kind}-{job.name}-{study}-{time.time_ns()}"
        job_dir.mkdir(parents=True)
        env = {**base, **handed_on, "CI_JOB_NAME": job.name, "CI_JOB_STAGE": job.stage}
        env.update(cifile.resolve_variables(job.variables, env))
        lines: list[str] = [f"$ job {job.name} ({kind}.yml, stage {job.stage})"]
        if on_line is not None:
            on_line(lines[0])
        code = 0
        for line in job.script:
            argv = cifile.command(line, env, pipeline.path, job.name)
            lines.append(f"$ {' '.join(argv)}")
            code = _run(argv, env, job_dir, lines, on_line)
            if code != 0:
                break
        log = job_dir / "job.log"
        log.write_text("\n".join(lines) + "\n")
        run.logs[job.name] = log
        run.status[job.name] = "success" if code == 0 else "failed"
        if job.dotenv and (job_dir / job.dotenv).exists():
            handed_on.update(_dotenv(job_dir / job.dotenv))
        outcome = _outcome(job_dir, job.script)
        run.outcomes[job.name] = outcome
        if on_job is not None:
            on_job(job.name, {"status": run.status[job.name], **outcome})
        if code == 0:
            remove_tree(job_dir / ".bidsflux-job")
    return run


def _run(argv: list[str], env: Mapping[str, str], cwd: Path, lines: list[str],
         on_line: Callable[[str], None] | None) -> int:
    command = [sys.executable, "-m", "bidsflux", *argv[1:]]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=tool_env(env), cwd=cwd) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = mask_secrets(line.rstrip("\n"), env)
            lines.append(line)
            if on_line is not None:
                on_line(line)
        return proc.wait()


def _dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return values


def _outcome(job_dir: Path, script: list[str]) -> dict[str, Any]:
    """The outcome JSON a ``bidsflux ci JOB`` command wrote (``JOB.json``) in its folder."""
    for path in sorted(job_dir.glob("*.json")):
        if path.name not in {"bids-validator.json"}:
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            return data if isinstance(data, dict) else {"results": data}
    return {}


def require_success(run: PipelineRun, *, study: str) -> None:
    """ConvertError naming the failed job and the tail of its log."""
    for job in run.failed():
        raise ConvertError(f"job {job} of the {run.kind} pipeline failed; {run.log_tail(job, 500)}", study=study)
