"""Routing rules: matching, the default rule, and a bad file reported with lines and reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsflux.routing import Route, RoutingError, load_rules, parse_rules, rules_from_settings
from bidsflux.settings import Settings

RULES = """\
rules:
  - name: phantom
    match:
      PatientName: "(?i)phantom"
    ignore: true
  - name: memory
    match:
      StudyDescription: "^Smith\\\\^Memory"
      InstitutionName: "~(?i)external"
    group_template: "smith/{StudyDescriptionPath[1]}"
    s3_url_pattern: "bidsflux-smith/memory"
    pipelines: [mriqc, fmriprep, qc/mriqc]
    priority: 10
    expected_series: ["anat-T1w", "func-bold"]
default:
  pipelines: [mriqc]
"""
BASE = Route(group_template="{ReferringPhysicianName}/{StudyDescriptionPath[1]}", s3_url_pattern="b-{PatientID}")


def test_first_matching_rule_wins_and_tilde_excludes() -> None:
    rules = parse_rules(RULES, "rules.yml", BASE)
    memory = rules.route({"StudyDescription": "Smith^Memory", "InstitutionName": "Main Hospital"})
    assert memory.as_json() == {"rule": "memory", "group_template": "smith/{StudyDescriptionPath[1]}",
                                "s3_url_pattern": "bidsflux-smith/memory", "pipelines": ["mriqc", "fmriprep", "qc/mriqc"],
                                "priority": 10, "ignore": False, "expected_series": ["anat-T1w", "func-bold"]}
    external = rules.route({"StudyDescription": "Smith^Memory", "InstitutionName": "External Clinic"})
    assert external.rule == "default" and external.pipelines == ("mriqc",)
    assert external.group_template == BASE.group_template  # the default rule falls back to the settings
    assert rules.route({"PatientName": "QA^Phantom", "StudyDescription": "Smith^Memory"}).ignore
    assert rules.route({}).rule == "default"  # a missing tag matches nothing, so '~' patterns hold


def test_values_are_matched_as_text_and_bounded() -> None:
    rules = parse_rules("rules:\n  - name: two\n    match: {ImageType: 'ORIGINAL\\\\PRIMARY'}\n",
                        "r.yml", BASE)
    assert rules.route({"ImageType": ["ORIGINAL", "PRIMARY", "M"]}).rule == "two"
    huge = {"ImageType": "A" * 65536 + "ORIGINAL\\PRIMARY"}
    assert rules.route(huge).rule == "default"  # only the first 4096 characters are looked at


def test_no_rules_file_routes_by_the_settings() -> None:
    rules = rules_from_settings(Settings())
    assert rules.rules == () and rules.route({}).group_template == Settings().group_template


def test_bad_file_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text("""\
rules:
  - name: first
    match: {PatientNam: "x", Modality: "(["}
    priority: high
  - name: first
    match: {Modality: MR}
    group_template: "{Nope}/x"
    pipelines: [Not Ok, a..b]
    colour: red
  - match: {Modality: CT}
default:
  name: other
""")
    with pytest.raises(RoutingError) as caught:
        load_rules(path, BASE)
    problems = caught.value.problems
    assert problems == sorted(problems, key=lambda p: int(p.split(":")[1]))
    text = "\n".join(problems)
    for line, reason in [(3, "'PatientNam' is not a DICOM keyword"), (3, "not a valid regular expression"),
                         (4, "priority must be a whole number"), (5, "'first' is used twice"),
                         (7, "{Nope} is not a DICOM keyword"), (8, "'Not Ok' is not NAME or qc/NAME"),
                         (8, "'a..b' is not NAME or qc/NAME"),
                         (9, "unknown key 'colour'"), (10, "has no name"), (12, "unknown key 'name'")]:
        assert any(p.startswith(f"{path}:{line}: ") and reason in p for p in problems), (line, reason, text)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("text", "reason"), [
    ("rules: [\n  {name: a,\n", "not valid YAML"),
    ("- just a list\n", "must be a mapping"),
    ("rules:\n  - name: a\n    match: {}\n", "at least one tag pattern"),
    ("rules:\n  - name: a\n", "needs 'match'"),
])
def test_other_bad_files(text: str, reason: str) -> None:
    with pytest.raises(RoutingError, match=reason):
        parse_rules(text, "r.yml", BASE)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="cannot read"):
        load_rules(tmp_path / "missing.yml", BASE)
    (tmp_path / "latin1.yml").write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(RoutingError, match="not UTF-8"):
        load_rules(tmp_path / "latin1.yml", BASE)
