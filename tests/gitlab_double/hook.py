"""pre-receive hook of the double's repositories: GitLab's protected-branch rules.

Copied into every repository (with this interpreter as its ``#!`` line); the
server passes the pusher's access level and the project's rules in the
environment, as GitLab's own hooks ask Rails.  Standard library only.
"""

import fnmatch
import json
import os
import subprocess
import sys

ZERO = "0" * 40


def refuse(message: str) -> None:
    print(f"GitLab: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    level = int(os.environ.get("DOUBLE_LEVEL", "0"))
    rules = json.loads(os.environ.get("DOUBLE_PROTECTED", "[]"))
    for line in sys.stdin:
        old, new, ref = line.split()
        if not ref.startswith("refs/heads/"):
            continue
        branch = ref[len("refs/heads/"):]
        rule = next((r for r in rules if fnmatch.fnmatchcase(branch, r["name"])), None)
        if rule is None:
            continue
        if new == ZERO:
            refuse("You can only delete protected branches using the web interface.")
        if rule["push_access_level"] == 0 or level < rule["push_access_level"]:
            refuse("You are not allowed to push code to protected branches on this project.")
        if old != ZERO and not rule["allow_force_push"]:
            if subprocess.run(["git", "merge-base", "--is-ancestor", old, new], check=False).returncode != 0:
                refuse("You are not allowed to force push code to a protected branch on this project.")


if __name__ == "__main__":
    main()
