"""Running external tools (git, git-annex, heudiconv, validators) safely.

Always an argument list, never a shell: tag values may reach these calls.
Failures become the calling stage's error type with the tail of stderr,
after any secret in the environment has been masked out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import BidsfluxError

SECRET_ENV = ("BIDSFLUX_FORGE_TOKEN", "BIDSFLUX_S3_ACCESS_KEY", "BIDSFLUX_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "GITLAB_ADMIN_TOKEN", "GITLAB_DICOM_BOT_TOKEN", "GITLAB_BIDS_BOT_TOKEN",
              "BIDS_API_TOKEN", "CI_JOB_TOKEN")


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child tools: this interpreter's bin/ first on PATH.

    DataLad and git use whichever git-annex is first on PATH; the pinned one
    lives beside the interpreter in the virtual environment.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bindir:
        env["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p != bindir]])
    env.setdefault("NO_ET", "1")  # heudiconv: no telemetry call
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    if extra:
        env.update(extra)
    return env


def mask_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def run(
    args: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    error: type[BidsfluxError] = BidsfluxError,
    study: str | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a tool; raise ``error`` naming the command and its stderr tail on failure."""
    full_env = tool_env(env)
    argv = [str(a) for a in args]
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, capture_output=True, text=input is None,
            input=input, check=False,
        )
    except FileNotFoundError as exc:
        raise error(f"{argv[0]} is not installed or not on PATH", study=study,
                    hint="run `make install`") from exc
    if isinstance(proc.stdout, bytes):
        proc = subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        tail = mask_secrets((proc.stderr or proc.stdout or "").strip(), full_env)[-600:]
        shown = " ".join(argv[:3])
        raise error(f"`{shown} ...` failed with exit code {proc.returncode}: {tail}", study=study)
    return proc


def git(*args: str | Path, cwd: Path, error: type[BidsfluxError] = BidsfluxError,
        study: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run ``git ARGS`` in ``cwd`` and return its stripped stdout."""
    return run(["git", *args], cwd=cwd, error=error, study=study, env=env).stdout.strip()
