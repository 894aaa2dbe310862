"""Routing rules: which group, storage, pipelines and priority a study gets (or none: ignore).

A YAML file of rules, each matching DICOM tags by regular expression (all
patterns must match; a pattern with a leading ``~`` must not), tried in
order; a study no rule matches follows the ``default`` rule, whose missing
fields come from the settings.  The chosen route travels with the study's
batch as ``route.json`` and into the ledger.  A bad file is refused at
start-up with every problem and its line::

    rules:
      - name: phantom-qa
        match: {PatientName: "(?i)phantom"}
        ignore: true
      - name: memory-lab
        match:
          StudyDescription: "^Smith\\\\^Memory"
          InstitutionName: "~(?i)external"
        group_template: "smith/memory"
        pipelines: [mriqc]
        priority: 10
        expected_series: ["anat-T1w", "func-bold"]
    default:
      pipelines: []
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BidsfluxError
from ._load import load_rules, parse_rules
from ._rules import Pattern, Route, Rule, Rules, tag_text

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Pattern", "Route", "Rule", "Rules", "RoutingError", "load_rules", "parse_rules", "rules_from_settings",
           "tag_text"]


class RoutingError(BidsfluxError):
    """The routing rules file cannot be used; every problem is listed with its line."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid routing rules: " + "; ".join(self.problems),
                         hint="fix the file named by BIDSFLUX_ROUTING_RULES and start again")


def default_route(settings: Settings) -> Route:
    return Route(rule="default", group_template=settings.group_template,
                 s3_url_pattern=getattr(settings, "s3_url_pattern", None))


def rules_from_settings(settings: Settings) -> Rules:
    """The site's rules (or just the default route when no rules file is set)."""
    base = default_route(settings)
    path: Path | None = settings.routing_rules
    if path is None:
        return Rules((), base)
    return load_rules(path, base)
