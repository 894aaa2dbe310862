"""Reading a routing rules file: YAML with every problem reported with its line.

The file is composed into YAML nodes (which keep their line numbers) and
checked node by node: unknown keys, wrong types, regexes that do not
compile, unknown DICOM keywords, malformed templates, duplicate names.
Every problem is collected, then reported together.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import yaml
from pydicom.datadict import keyword_dict

from ._rules import Pattern, Route, Rule, Rules

_RULE_KEYS = {"name", "match", "group_template", "s3_url_pattern", "pipelines", "priority", "ignore",
              "expected_series"}
_DEFAULT_KEYS = _RULE_KEYS - {"name", "match"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PIPELINE = re.compile(r"^(?:(?:derivatives|qc)/)?[a-z0-9][a-z0-9_.-]{0,63}$")  # NAME, derivatives/NAME, qc/NAME
_DERIVED = {"StudyDescriptionPath"}


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def problem(self, node: yaml.Node | None, text: str) -> None:
        where = f"{self.source}:{node.start_mark.line + 1}" if node is not None else self.source
        self.problems.append(f"{where}: {text}")

    def mapping(self, node: yaml.Node, what: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of keys to values")
            return {}
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if not isinstance(name, str):
                self.problem(key, f"{what}: keys must be plain names")
            elif name in found:
                self.problem(key, f"{what}: {name!r} appears twice")
            elif allowed and name not in allowed:
                self.problem(key, f"{what}: unknown key {name!r} (known: {', '.join(sorted(allowed))})")
            else:
                found[name] = (key, value)
        return found

    def scalar(self, node: yaml.Node, what: str, tag: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{what} must be a single value")
            return None
        if tag == "str":
            return node.value
        value = yaml.safe_load(yaml.serialize(node))
        wanted = {"int": int, "bool": bool}[tag]
        if not isinstance(value, wanted) or (tag == "int" and isinstance(value, bool)):
            self.problem(node, f"{what} must be {'a whole number' if tag == 'int' else 'true or false'}, "
                               f"not {node.value!r}")
            return None
        return value

    def regex(self, node: yaml.Node, what: str) -> re.Pattern[str] | None:
        text = self.scalar(node, what, "str")
        if text is None:
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.problem(node, f"{what}: {text!r} is not a valid regular expression ({exc})")
            return None

    def template(self, node: yaml.Node, what: str) -> str | None:
        text = self.scalar(node, what, "str")
        if text is None:
            return None
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
        except ValueError as exc:
            self.problem(node, f"{what}: {text!r} is not a valid template ({exc})")
            return None
        for field in fields:
            keyword = re.split(r"[.\[]", field, maxsplit=1)[0]
            if keyword not in keyword_dict and keyword not in _DERIVED:
                self.problem(node, f"{what}: {{{field}}} is not a DICOM keyword")
        if not text.strip("/ "):
            self.problem(node, f"{what} is empty")
        return text

    def names(self, node: yaml.Node, what: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{what} must be a list")
            return ()
        found = []
        for item in node.value:
            value = self.scalar(item, what, "str")
            if value is not None and (not pattern.match(value) or ".." in value or value.endswith(".git")):
                self.problem(item, f"{what}: {value!r} is not NAME or qc/NAME (NAME: lower-case letters, "
                                   "digits, _ . -)")
            elif value is not None:
                found.append(value)
        return tuple(found)

    def patterns(self, node: yaml.Node, what: str) -> tuple[re.Pattern[str], ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{what} must be a list of regular expressions")
            return ()
        return tuple(p for p in (self.regex(item, what) for item in node.value) if p is not None)

    def route(self, fields: dict[str, tuple[yaml.Node, yaml.Node]], name: str, base: Route) -> Route:
        values: dict[str, Any] = {"rule": name}
        if "group_template" in fields:
            values["group_template"] = self.template(fields["group_template"][1], f"{name}: group_template")
        if "s3_url_pattern" in fields:
            values["s3_url_pattern"] = self.template(fields["s3_url_pattern"][1], f"{name}: s3_url_pattern")
        if "pipelines" in fields:
            values["pipelines"] = self.names(fields["pipelines"][1], f"{name}: pipelines", _PIPELINE)
        if "priority" in fields:
            priority = self.scalar(fields["priority"][1], f"{name}: priority", "int")
            if priority is not None and not -1000 <= priority <= 1000:
                self.problem(fields["priority"][1], f"{name}: priority must be between -1000 and 1000")
            values["priority"] = priority
        if "ignore" in fields:
            values["ignore"] = self.scalar(fields["ignore"][1], f"{name}: ignore", "bool")
        if "expected_series" in fields:
            values["expected_series"] = self.patterns(fields["expected_series"][1], f"{name}: expected_series")
        return base.replace(**{k: v for k, v in values.items() if v is not None})

    def rule(self, node: yaml.Node, index: int, base: Route) -> Rule | None:
        fields = self.mapping(node, f"rule {index + 1}", _RULE_KEYS)
        if "name" not in fields:
            if isinstance(node, yaml.MappingNode):
                self.problem(node, f"rule {index + 1} has no name")
            return None
        name = self.scalar(fields["name"][1], f"rule {index + 1}: name", "str")
        if name is None or not _NAME.match(name):
            self.problem(fields["name"][1], f"rule {index + 1}: {name!r} is not a valid rule name")
            return None
        if "match" not in fields:
            self.problem(node, f"{name}: a rule needs 'match' (the default rule is the one without)")
            return None
        patterns = []
        for keyword, (key, value) in self.mapping(fields["match"][1], f"{name}: match", set()).items():
            if keyword not in keyword_dict and keyword not in _DERIVED:
                self.problem(key, f"{name}: match: {keyword!r} is not a DICOM keyword")
                continue
            text = self.scalar(value, f"{name}: match: {keyword}", "str")
            if text is None:
                continue
            negate = text.startswith("~")
            compiled = self.regex(yaml.ScalarNode("tag:yaml.org,2002:str", text[1:] if negate else text,
                                                  value.start_mark, value.end_mark), f"{name}: match: {keyword}")
            if compiled is not None:
                patterns.append(Pattern(keyword, compiled, negate))
        if not patterns and not self.problems:
            self.problem(fields["match"][1], f"{name}: match needs at least one tag pattern")
        return Rule(name, tuple(patterns), self.route(fields, name, base))


def parse_rules(text: str, source: str, base: Route) -> Rules:
    """Rules from YAML ``text``; ``base`` supplies what the default rule leaves out (the settings)."""
    from . import RoutingError

    checker = _Checker(source)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RoutingError([f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if root is None:
        return Rules((), base)
    top = checker.mapping(root, "the rules file", {"rules", "default"})
    default = base
    if "default" in top:
        default = checker.route(checker.mapping(top["default"][1], "default", _DEFAULT_KEYS), "default", base)
    rules: list[Rule] = []
    if "rules" in top:
        node = top["rules"][1]
        if not isinstance(node, yaml.SequenceNode):
            checker.problem(node, "rules must be a list")
        else:
            seen: dict[str, int] = {}
            for index, item in enumerate(node.value):
                rule = checker.rule(item, index, default)
                if rule is None:
                    continue
                if rule.name in seen or rule.name == "default":
                    checker.problem(item, f"rule name {rule.name!r} is used twice")
                seen[rule.name] = index
                rules.append(rule)
    if checker.problems:
        raise RoutingError(sorted(checker.problems, key=_line))
    return Rules(tuple(rules), default)


def _line(problem: str) -> int:
    match = re.search(r":(\d+): ", problem)
    return int(match.group(1)) if match else 0


def load_rules(path: Path, base: Route) -> Rules:
    from . import RoutingError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingError([f"{path}: cannot read the rules file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise RoutingError([f"{path}: the rules file is not UTF-8 text"]) from None
    return parse_rules(text, str(path), base)
