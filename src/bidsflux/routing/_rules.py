"""Routing rules and the route they choose for a study."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_MAX_VALUE = 4096  # a hostile 64 KiB tag value is matched on its start only


@dataclass(frozen=True)
class Route:
    """Where a study goes and what runs on it; written as ``route.json`` with its batch."""

    rule: str = "default"
    group_template: str | None = None  # None: the GITLAB_INDEXER_GROUP_TEMPLATE setting
    s3_url_pattern: str | None = None  # None: the S3_URL_PATTERN setting
    pipelines: tuple[str, ...] = ()
    priority: int = 0
    ignore: bool = False
    expected_series: tuple[re.Pattern[str], ...] = field(default=(), compare=False)

    def replace(self, **changes: Any) -> Route:
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "group_template": self.group_template, "s3_url_pattern": self.s3_url_pattern,
                "pipelines": list(self.pipelines), "priority": self.priority, "ignore": self.ignore,
                "expected_series": [p.pattern for p in self.expected_series]}


@dataclass(frozen=True)
class Pattern:
    """One tag's regular expression; ``negate`` (a leading ``~`` in the file) excludes instead."""

    keyword: str
    regex: re.Pattern[str]
    negate: bool = False

    def matches(self, tags: Mapping[str, Any]) -> bool:
        found = self.regex.search(tag_text(tags, self.keyword)) is not None
        return found != self.negate


@dataclass(frozen=True)
class Rule:
    name: str
    patterns: tuple[Pattern, ...]
    route: Route

    def matches(self, tags: Mapping[str, Any]) -> bool:
        return all(pattern.matches(tags) for pattern in self.patterns)


@dataclass(frozen=True)
class Rules:
    """Rules in file order; the first that matches wins, else the default route."""

    rules: tuple[Rule, ...] = ()
    default: Route = Route()

    def route(self, tags: Mapping[str, Any]) -> Route:
        for rule in self.rules:
            if rule.matches(tags):
                return rule.route
        return self.default


def tag_text(tags: Mapping[str, Any], keyword: str) -> str:
    """A tag's value as text for matching: multi-values joined with ``\\``, missing as ''."""
    if keyword == "StudyDescriptionPath":
        keyword = "StudyDescription"
    value = tags.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        text = value.decode("latin-1")
    else:
        text = str(value)
    return text[:_MAX_VALUE]
