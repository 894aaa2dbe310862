"""post-receive hook of the double's repositories: hands the push to the double, as GitLab's hooks hand it to Rails.

Copied into every repository (with this interpreter as its ``#!`` line).  The
updated refs (stdin) and the push options (``GIT_PUSH_OPTION_*``, there because
the repositories set ``receive.advertisePushOptions``) go to the double's
internal endpoint, like GitLab's ``POST /api/v4/internal/post_receive``; what
it answers (a warning about push options, a merge request's address) is
printed, so that git shows it to the pusher as ``remote:`` lines.  A
post-receive hook cannot refuse a push: whatever happens here, it exits 0.
Standard library only.
"""

import json
import os
import sys
import urllib.request

RULE = "=" * 72


def push_options() -> list[str]:
    count = int(os.environ.get("GIT_PUSH_OPTION_COUNT", "0") or 0)
    return [os.environ.get(f"GIT_PUSH_OPTION_{i}", "") for i in range(count)]


def show(message: dict) -> None:
    if message.get("type") == "alert":
        print(f"{RULE}\n\n{message['message']}\n\n{RULE}\n")
    else:
        print(f"{message['message']}\n")


def main() -> None:
    changes = [line.strip() for line in sys.stdin if line.strip()]
    payload = {"gl_repository": os.environ.get("GL_REPOSITORY", ""), "identifier": os.environ.get("GL_ID", ""),
               "changes": changes, "push_options": push_options()}
    request = urllib.request.Request(f"{os.environ['DOUBLE_INTERNAL_API']}/post_receive",
                                     data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Gitlab-Shared-Secret": os.environ.get("DOUBLE_SECRET", "")})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    except OSError as exc:
        print(f"GitLab: post-receive could not reach the API: {exc}", file=sys.stderr)
        return
    for message in answer.get("messages", []):
        show(message)


if __name__ == "__main__":
    main()
