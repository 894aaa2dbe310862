"""Rendering the ledger for people: the ``bidsflux status`` table."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .ledger import StudyRecord, Transition


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(records: Sequence[StudyRecord], now: float | None = None) -> str:
    if not records:
        return "no studies yet"
    now = time.time() if now is None else now
    header = ("STUDY", "STATE", "GROUP", "SERIES", "INSTANCES", "MB", "UPDATED", "ERROR / DERIVATIVES")
    rows = [header]
    for r in records:
        rows.append((r.study_uid, str(r.state), r.group_path or "-", str(r.series), str(r.instances),
                     f"{r.bytes / 1e6:.1f}", _age(now - r.updated_at) + " ago",
                     (r.error or _derivatives_summary(r))[:80]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _derivatives_summary(record: StudyRecord) -> str:
    """``stats success, qc/stats failed``: what became of the study's routed derivatives."""
    derivatives = record.details.get("derivatives")
    if not isinstance(derivatives, dict):
        return ""
    return ", ".join(f"{name} {entry.get('status', '?')}" for name, entry in derivatives.items()
                     if isinstance(entry, dict))


def format_history(record: StudyRecord, transitions: Sequence[Transition]) -> str:
    """One study in full: its summary, then every transition with counts and errors."""
    lines = [f"study {record.study_uid}: {record.state}" + (f" - {record.error}" if record.error else "")]
    if record.calling_aet:
        lines.append(f"  from {record.calling_aet} ({record.peer or '?'}), {record.series} series, "
                     f"{record.instances} instances, {record.bytes / 1e6:.1f} MB")
    for key in ("dataset", "session_url", "bids_url", "branch", "validation", "kept_at"):
        if record.details.get(key):
            lines.append(f"  {key}: {record.details[key]}")
    derivatives = record.details.get("derivatives")
    for name, entry in (derivatives.items() if isinstance(derivatives, dict) else ()):
        if isinstance(entry, dict):
            line = f"  derivative {name}: {entry.get('status', '?')}"
            if entry.get("commit"):
                line += f" at {str(entry['commit'])[:12]}" + ("" if entry.get("changed", True) else " (unchanged)")
            reason = entry.get("error") or entry.get("reason")
            lines.append(line + (f" - {str(reason)[:300]}" if reason else ""))
    for t in transitions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.at))
        counts = ", ".join(f"{k}={v}" for k, v in sorted(t.counts.items()) if v not in (None, [], {}))
        line = f"  {stamp}  {t.from_state or '-'} -> {t.to_state}"
        if t.attempt:
            line += f" (attempt {t.attempt})"
        if counts:
            line += f"  {counts[:200]}"
        if t.error:
            line += f"\n      error: {t.error[:500]}"
        lines.append(line)
    return "\n".join(lines)
