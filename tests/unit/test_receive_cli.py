"""`bidsflux check-rules`: what an admin runs before pointing BIDSFLUX_ROUTING_RULES at a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsflux.cli import main


def test_check_rules_shows_each_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("rules:\n  - name: lab\n    match: {Modality: '^MR$', InstitutionName: '~External'}\n"
                     "    priority: 4\n")
    assert main(["check-rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "lab: Modality ~ /^MR$/, InstitutionName !~ /External/" in out and '"priority": 4' in out
    assert out.splitlines()[-1].startswith("default -> ")


def test_check_rules_reports_lines_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("rules:\n  - name: lab\n    match: {Modality: '(['}\n")
    assert main(["check-rules", str(rules)]) == 2
    assert f"{rules}:3:" in capsys.readouterr().err
