"""Following pipelines: backoff, the outcome recorded in the ledger, orders' arguments (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bidsflux.errors import ForgeError, UsageError
from bidsflux.forge.orders import parse_variables, pipeline_project
from bidsflux.forge.pipelines import PipelineResult, follow, record_conversion
from bidsflux.forge.publish import Published
from bidsflux.ledger import Ledger, State
from bidsflux.settings import Settings

PUB = Published("s", "t", "b", "1.2.3", group_path="g/p", session_commit="c1", study_commit="c2")


class FakeAPI:
    """Answers GETs from a script of pipeline statuses and fixed branch data."""

    def __init__(self, statuses: list[str], *, jobs: list[dict[str, Any]] | None = None,
                 branches: dict[str, str] | None = None, merge_base: str | None = None):
        self.statuses = statuses
        self.jobs = jobs or []
        self.branches = branches or {}
        self.merge_base = merge_base
        self.calls: list[str] = []

    def get(self, path: str, **_: Any) -> dict[str, Any]:
        self.calls.append(path)
        if "/branches/" in path:
            return {"commit": {"id": self.branches[path.rsplit("/", 1)[1].replace("%2F", "/")]}}
        return {"id": 7, "status": self.statuses.pop(0), "web_url": "http://gitlab/p/-/pipelines/7"}

    def get_or_none(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        if path.endswith("merge_base"):
            return {"id": self.merge_base} if self.merge_base else None
        name = path.rsplit("/", 1)[1].replace("%2F", "/")
        return self.get(path, **kwargs) if name in self.branches else None

    def list_all(self, path: str, **_: Any) -> list[dict[str, Any]]:
        return self.jobs


class FakeForge:
    def __init__(self, api: FakeAPI):
        self.api = api


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings().replace(workdir=tmp_path, pipeline_poll=1.0, pipeline_poll_max=3.0, **changes)


def test_polling_backs_off_and_reports_each_change(tmp_path: Path) -> None:
    api = FakeAPI(["pending", "running", "running", "running", "success"])
    slept: list[float] = []
    said: list[str] = []
    result = follow(settings(tmp_path), FakeForge(api), "g/p/bids",  # type: ignore[arg-type]
                    {"id": 7, "status": "created", "web_url": "u"}, study="1.2.3",
                    progress=lambda study, message: said.append(message), sleep=slept.append)
    assert result == PipelineResult("g/p/bids", 7, "success", "http://gitlab/p/-/pipelines/7", [])
    assert slept == [1.0, 1.5, 2.25, 3.0, 3.0]
    assert [m.split(":")[0] for m in said] == ["pipeline #7 created", "pipeline #7 pending", "pipeline #7 running",
                                               "pipeline #7 success"]


def test_a_failed_pipeline_names_its_failed_jobs(tmp_path: Path) -> None:
    api = FakeAPI(["failed"], jobs=[{"name": "convert", "status": "failed"}, {"name": "lint", "status": "success"}])
    forge: Any = FakeForge(api)
    result = follow(settings(tmp_path), forge, "g/p/bids", {"id": 7, "status": "running"}, study="1.2.3",
                    sleep=lambda _: None)
    assert not result.ok and result.failed_jobs == ["convert"] and "failed jobs: convert" in result.summary()


def test_a_pipeline_outlasting_the_timeout_is_a_transient_error(tmp_path: Path) -> None:
    api = FakeAPI(["running"] * 100)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ForgeError) as caught:
        follow(settings(tmp_path, pipeline_timeout=5.0), FakeForge(api), "g/p/bids",  # type: ignore[arg-type]
               {"id": 7, "status": "running"}, study="1.2.3", sleep=sleep, clock=lambda: now[0])
    assert caught.value.transient and "still running" in str(caught.value)
    assert now[0] == 4.75 and len(api.calls) == 3  # slept 1 + 1.5 + 2.25; 3 more would pass the deadline


@pytest.mark.parametrize(("status", "branches", "base", "final"), [
    ("success", {"convert/1.2.3": "abc", "dev": "def"}, "abc", State.MERGED),
    ("success", {"convert/1.2.3": "abc", "dev": "def"}, "old", State.VALIDATED),
    ("manual", {"convert/1.2.3": "abc"}, None, State.VALIDATED),
    ("success", {}, None, State.FAILED),
    ("canceled", {}, None, State.FAILED),
])
def test_the_outcome_lands_in_the_ledger(tmp_path: Path, status: str, branches: dict[str, str], base: str | None,
                                         final: State) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.transition("1.2.3", State.CONVERTING)
    result = PipelineResult("g/p/bids", 7, status, "u")
    forge: Any = FakeForge(FakeAPI([], branches=branches, merge_base=base))
    reached = record_conversion(settings(tmp_path), forge, ledger, "1.2.3", PUB, result)
    record = ledger.require("1.2.3")
    assert reached is final and record.state is final
    assert record.details["pipeline_status"] == status
    if final is State.MERGED:
        assert record.details["merge_commit"] == "def"
    if final is State.FAILED:
        assert "pipeline #7" in str(record.error)
    ledger.close()


def test_order_arguments() -> None:
    assert parse_variables(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in ("=1", "1A=2", "A-B=3", "novalue"):
        with pytest.raises(UsageError):
            parse_variables([bad])
    assert pipeline_project("g/p", "convert") == "g/p/bids"
    assert pipeline_project("g/p", "derivatives") == "g/p/bids"
    assert pipeline_project("g/p", "mriqc") == "g/p/derivatives/mriqc"
    assert pipeline_project("g/p", "qc/mriqc") == "g/p/qc/mriqc"
