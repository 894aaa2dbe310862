"""A strict GitLab double for the tests: GitLab's REST API and git over HTTP on loopback.

Stateful (users and tokens with scopes, nested groups, members, projects from
custom templates, CI/CD variables, protected branches, pipelines, merge requests
opened by push options, runners),
with GitLab's status codes and error bodies and its pagination headers, so
python-gitlab talks to it unchanged.  Repositories are real bare repositories
behind ``git http-backend``.  Not shipped: it lives under tests/.
"""

from .double import GitLabDouble

__all__ = ["GitLabDouble"]
