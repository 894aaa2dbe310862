"""The CI templates of ``ci-pipelines/`` as the local runner reads them.

GitLab (and gitlab-ci-local) run these files for real; the embedded
default's local runner reads the very same files so that it runs the same
jobs, in the same order, with the same commands.  It understands the part of
GitLab's CI syntax the templates use, and refuses anything else by name
instead of guessing:

- ``include: local:`` (other files of ``ci-pipelines/``), ``extends:``
  (GitLab's deep merge: mappings merged, lists replaced), hidden ``.jobs``;
- ``stages``, ``needs`` (the order), top-level and job ``variables``;
- ``workflow: rules`` and job ``rules`` with ``if:`` expressions made of
  ``$VAR``, ``$VAR == "x"``, ``$VAR != "x"``, ``$VAR =~ /re/`` joined by
  ``&&`` or ``||``; ``when: never``/``on_success``;
- ``script`` lines of the form ``bidsflux ci ...``: split like a shell would
  split words, ``$VAR``/``${VAR}`` expanded, but never run by a shell;
- ``artifacts: reports: dotenv:``: the variables a job writes there reach the
  jobs after it, as in GitLab.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

RESERVED = {"stages", "variables", "include", "workflow", "default", "image", "services", "before_script",
            "after_script", "cache", "pages"}
DEFAULT_STAGES = [".pre", "build", "test", "deploy", ".post"]
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_CLAUSE = re.compile(r"""^\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)\s*(?:(?P<op>==|!=|=~|!~)\s*(?P<rhs>"[^"]*"|'[^']*'|/.*/[a-z]*|null))?$""")


@dataclass(frozen=True)
class Job:
    name: str
    stage: str
    script: list[str]
    needs: list[str] | None
    variables: dict[str, str] = field(default_factory=dict)
    rules: list[dict[str, Any]] | None = None
    dotenv: str | None = None
    tags: list[str] = field(default_factory=list)
    image: str | None = None


@dataclass(frozen=True)
class PipelineFile:
    path: Path
    stages: list[str]
    variables: dict[str, str]
    workflow_rules: list[dict[str, Any]] | None
    jobs: dict[str, Job]

    def plan(self, variables: Mapping[str, str]) -> list[Job]:
        """The jobs a pipeline with ``variables`` runs, in an order that honours stages and ``needs``."""
        env = {**self.variables, **variables}
        if self.workflow_rules is not None and not _rules_pass(self.workflow_rules, env, self.path):
            return []
        chosen = {name: job for name, job in self.jobs.items()
                  if job.rules is None or _rules_pass(job.rules, {**env, **job.variables}, self.path)}
        order = {stage: i for i, stage in enumerate(self.stages)}
        for job in chosen.values():
            if job.stage not in order:
                raise UsageError(f"{self.path.name}: job {job.name} is in stage {job.stage!r}, "
                                 f"which is not in stages {self.stages}")
            for need in job.needs or []:
                if need not in self.jobs:
                    raise UsageError(f"{self.path.name}: job {job.name} needs {need!r}, which does not exist")
        done: list[Job] = []
        placed: set[str] = set()
        pending = sorted(chosen.values(), key=lambda j: (order[j.stage], list(self.jobs).index(j.name)))
        while pending:
            for job in pending:
                before = ([n for n in job.needs if n in chosen] if job.needs is not None else
                          [j.name for j in chosen.values() if order[j.stage] < order[job.stage]])
                if all(name in placed for name in before):
                    done.append(job)
                    placed.add(job.name)
                    pending.remove(job)
                    break
            else:
                raise UsageError(f"{self.path.name}: the needs of {', '.join(j.name for j in pending)} form a cycle")
        return done


def load(path: Path) -> PipelineFile:
    """Read a CI file and the local files it includes; resolve ``extends``."""
    raw = _read(path, set())
    stages = list(raw.get("stages") or DEFAULT_STAGES)
    if ".pre" not in stages:
        stages = [".pre", *stages, ".post"]
    variables = _variables(raw.get("variables") or {}, path)
    workflow = raw.get("workflow") or {}
    templates = {name: body for name, body in raw.items() if name not in RESERVED and isinstance(body, dict)}
    jobs: dict[str, Job] = {}
    for name, body in templates.items():
        if name.startswith("."):
            continue
        spec = _extended(name, templates, path, [])
        if "trigger" in spec:
            raise UsageError(f"{path.name}: job {name} uses trigger:, which the local runner does not run",
                             hint="start downstream pipelines from a `bidsflux ci` command")
        script = spec.get("script")
        if not script:
            raise UsageError(f"{path.name}: job {name} has no script")
        reports = (spec.get("artifacts") or {}).get("reports") or {}
        jobs[name] = Job(
            name=name, stage=str(spec.get("stage", "test")),
            script=[str(line) for line in (script if isinstance(script, list) else [script])],
            needs=[n if isinstance(n, str) else n["job"] for n in spec["needs"]] if "needs" in spec else None,
            variables=_variables(spec.get("variables") or {}, path), rules=spec.get("rules"),
            dotenv=reports.get("dotenv"), tags=list(spec.get("tags") or []), image=spec.get("image"))
    return PipelineFile(path, stages, variables, workflow.get("rules"), jobs)


def _read(path: Path, seen: set[Path]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UsageError(f"{path.name} includes itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the CI file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path.name}: a CI file is a mapping of jobs")
    merged: dict[str, Any] = {}
    includes = data.pop("include", None) or []
    for item in includes if isinstance(includes, list) else [includes]:
        local = item.get("local") if isinstance(item, dict) else item
        if not isinstance(local, str):
            raise UsageError(f"{path.name}: the local runner follows only `include: local:` ({item!r})")
        target = path.parent / local.lstrip("/")
        for key, value in _read(target, seen | {path}).items():
            merged[key] = _merge(merged[key], value) if key == "variables" and key in merged else value
    for key, value in data.items():
        merged[key] = _merge(merged[key], value) if key == "variables" and key in merged else value
    return merged


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def _extended(name: str, templates: Mapping[str, Any], path: Path, chain: list[str]) -> dict[str, Any]:
    if name in chain:
        raise UsageError(f"{path.name}: extends loops through {' -> '.join([*chain, name])}")
    body = templates.get(name)
    if body is None:
        raise UsageError(f"{path.name}: {chain[-1] if chain else name} extends {name!r}, which does not exist")
    parents = body.get("extends") or []
    result: dict[str, Any] = {}
    for parent in parents if isinstance(parents, list) else [parents]:
        result = _merge(result, _extended(parent, templates, path, [*chain, name]))
    own = {k: v for k, v in body.items() if k != "extends"}
    return _merge(result, own)


def _variables(raw: Mapping[str, Any], path: Path) -> dict[str, str]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            value = value.get("value", "")
        out[str(key)] = "" if value is None else str(value)
    return out


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` replaced by their values (unset: empty), as GitLab does."""
    return _VAR.sub(lambda m: env.get(m.group("braced") or m.group("bare"), ""), text)


def resolve_variables(variables: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """A job's variables with references to other variables expanded (one level, like GitLab)."""
    return {key: expand(value, {**env, **variables}) if "$" in value else value for key, value in variables.items()}


def command(line: str, env: Mapping[str, str], path: Path, job: str) -> list[str]:
    """A script line as an argument list: words split, variables expanded per word, no shell."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{path.name}: job {job}: cannot read script line {line!r}: {exc}") from None
    if len(words) < 2 or words[0] != "bidsflux" or words[1] != "ci":
        raise UsageError(f"{path.name}: job {job}: the local runner runs `bidsflux ci ...` lines only, "
                         f"not {line!r}")
    if any(ch in line for ch in "|;&<>`") or "$(" in line:
        raise UsageError(f"{path.name}: job {job}: {line!r} needs a shell; keep script lines to one command")
    return [expand(word, env) for word in words]


def _rules_pass(rules: list[dict[str, Any]], env: Mapping[str, str], path: Path) -> bool:
    """GitLab's rules: the first rule whose ``if`` holds decides; none holding means the job does not run."""
    for rule in rules:
        condition = rule.get("if")
        if condition is None or _condition(str(condition), env, path):
            return rule.get("when", "on_success") != "never"
    return False


def _condition(expr: str, env: Mapping[str, str], path: Path) -> bool:
    if "(" in expr:
        raise UsageError(f"{path.name}: the local runner reads no parentheses in rules ({expr!r})")
    return any(all(_clause(part.strip(), env, path) for part in alternative.split("&&"))
               for alternative in expr.split("||"))


def _clause(text: str, env: Mapping[str, str], path: Path) -> bool:
    match = _CLAUSE.match(text)
    if match is None:
        raise UsageError(f"{path.name}: the local runner cannot read the rule clause {text!r}")
    value = env.get(match.group("var"))
    op, rhs = match.group("op"), match.group("rhs")
    if op is None:
        return bool(value)
    if rhs == "null":
        return (value is None) == (op == "==")
    if op in ("=~", "!~"):
        body, _, flags = rhs[1:].rpartition("/")
        found = re.search(body, value or "", re.IGNORECASE if "i" in flags else 0) is not None
        return found == (op == "=~")
    equal = (value or "") == rhs[1:-1]
    return equal == (op == "==")
