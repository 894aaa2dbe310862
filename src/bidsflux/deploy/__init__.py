"""Site bootstrap on GitLab: bots and tokens, the operations group, templates, variables, runners.

``bootstrap`` is ``bidsflux deploy init`` (with an administrator's token);
``deploy_runners`` is ``bidsflux deploy runners`` (runners from
``deploy/runners.yml`` and their ``config.toml``).  Both are idempotent and
report item by item; see docs/gitlab.md for what each item is and why.
"""

from .bootstrap import Sources, bootstrap
from .report import Report, Step
from .runners import deploy_runners, load_runners

__all__ = ["Report", "Sources", "Step", "bootstrap", "deploy_runners", "load_runners"]
