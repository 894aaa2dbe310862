"""Writing gitlab-runner's ``config.toml``: the few TOML forms it needs, quoted safely."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

HEADER = """\
# gitlab-runner configuration of this node, written by `bidsflux deploy runners`
# from deploy/runners.yml. It holds the runners' authentication tokens: keep it
# mode 0600 and out of version control. Edits are overwritten by the next run.
"""


def value(item: Any) -> str:
    """A TOML value: strings as basic strings (JSON escapes are valid TOML), lists, numbers, booleans."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float)):
        return str(item)
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(i) for i in item) + "]"
    return json.dumps(str(item), ensure_ascii=True)


def render_config(concurrent: int, url: str, runners: Sequence[tuple[Any, dict[str, Any]]]) -> str:
    """config.toml for one node; ``runners`` pairs a RunnerSpec with its GitLab id and token."""
    lines = [HEADER, f"concurrent = {int(concurrent)}", "check_interval = 0", ""]
    for spec, made in runners:
        lines += ["[[runners]]", f"  name = {value(spec.name)}", f"  url = {value(url)}",
                  f"  id = {int(made['id'])}", f"  token = {value(made['token'])}",
                  f"  executor = {value(spec.executor)}"]
        if spec.executor == "docker":
            docker = {"image": "docker:27", "privileged": False, "volumes": ["/cache"], **spec.docker}
            lines.append("  [runners.docker]")
            lines += [f"    {key} = {value(docker[key])}" for key in sorted(docker)]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
