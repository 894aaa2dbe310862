"""Per-item outcomes of a deploy command: what was created, changed, left alone, or failed.

A deploy command goes on after an item fails where the next items do not
depend on it, and says at the end whether anything changed: a second run on
a bootstrapped site reports every item ``unchanged``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import BidsfluxError

T = TypeVar("T")
CHANGES = frozenset({"created", "changed"})


@dataclass(frozen=True)
class Step:
    what: str
    outcome: str  # created | changed | unchanged | skipped | error
    detail: str = ""

    def line(self) -> str:
        return f"{self.outcome:>9}  {self.what}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    echo: Callable[[str], None] | None = None

    def add(self, what: str, outcome: str, detail: str = "") -> Step:
        step = Step(what, outcome, detail)
        self.steps.append(step)
        if self.echo is not None:
            self.echo(step.line())
        return step

    def attempt(self, what: str, func: Callable[[], T]) -> T | None:
        """Run one item; a bids-flux error becomes an ``error`` line instead of stopping the run."""
        try:
            return func()
        except BidsfluxError as exc:
            self.add(what, "error", str(exc))
            return None

    @property
    def changed(self) -> bool:
        return any(step.outcome in CHANGES for step in self.steps)

    @property
    def failed(self) -> bool:
        return any(step.outcome == "error" for step in self.steps)

    def summary(self) -> str:
        errors = sum(step.outcome == "error" for step in self.steps)
        changes = sum(step.outcome in CHANGES for step in self.steps)
        if errors:
            return f"{errors} item(s) failed, {changes} changed; fix the errors above and run again"
        if not changes:
            return "nothing changed: everything was already in place"
        return f"{changes} item(s) created or changed; a second run changes nothing"
