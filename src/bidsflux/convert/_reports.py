"""JUnit XML reports: GitLab shows them in a merge request's test summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def junit(suite: str, cases: list[tuple[str, str | None]]) -> str:
    """One test suite; a case with a message is a failure."""
    failures = sum(1 for _, message in cases if message is not None)
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures))
    for name, message in cases:
        case = ET.SubElement(node, "testcase", classname=suite, name=name)
        if message is not None:
            ET.SubElement(case, "failure", message=message[:500]).text = message
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
