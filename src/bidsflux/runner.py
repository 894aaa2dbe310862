"""The local runner: runs CI jobs' commands on this machine, as GitLab's runner would.

Each job is the same ``bidsflux ci ...`` command a ``.gitlab-ci.yml`` job
runs, in its own process and job folder, with the settings and forge
credentials passed through the environment (as CI/CD variables would be).
Its output lines are handed to ``on_line`` as they come (progress).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import storage
from ._fs import remove_tree
from ._proc import mask_secrets, tool_env
from .errors import ConvertError
from .forge import credential_env
from .settings import Settings


def job_environment(settings: Settings, token: str) -> dict[str, str]:
    env = {
        "BIDSFLUX_WORKDIR": str(settings.workdir),
        "BIDSFLUX_HEURISTIC": settings.bids_heuristic,
        "BIDSFLUX_AUTO_MERGE": "true" if settings.bids_auto_merge else "false",
        "GIT_AUTHOR_NAME": "bids_bot", "GIT_AUTHOR_EMAIL": "bids_bot@bids-flux.invalid",
        "GIT_COMMITTER_NAME": "bids_bot", "GIT_COMMITTER_EMAIL": "bids_bot@bids-flux.invalid",
    }
    env.update(credential_env(token))
    env.update(storage.job_environment(settings, env))
    return env


def run_job(settings: Settings, token: str, name: str, args: list[str], *, study: str,
            on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``bidsflux ci NAME ARGS`` as a job; return its JSON outcome."""
    job_dir = settings.jobs_dir / f"{name}-{study}-{time.time_ns()}"
    job_dir.mkdir(parents=True)
    result_file = job_dir / "result.json"
    argv = [sys.executable, "-m", "bidsflux", "ci", name, *args, "--job-dir", str(job_dir),
            "--result", str(result_file)]
    env = tool_env(job_environment(settings, token))
    lines: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=job_dir) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = mask_secrets(line.rstrip("\n"), env)
            lines.append(line)
            if on_line is not None:
                on_line(line)
        code = proc.wait()
    (job_dir / "job.log").write_text("\n".join(lines) + "\n")
    if code != 0 or not result_file.exists():
        tail = " | ".join(lines[-3:])
        raise ConvertError(f"job {name} failed (exit {code}); log in {job_dir / 'job.log'}: {tail[-500:]}",
                           study=study)
    outcome: dict[str, Any] = json.loads(result_file.read_text())
    remove_tree(job_dir / "bids")
    return outcome
