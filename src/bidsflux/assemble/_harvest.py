"""Instances kept aside by the endpoint, with their reasons, into the ledger.

The endpoint writes a reason file beside each instance it could not file
(``quarantine/unfiled-*/<digest>.<n>.reason.json``) and beside each conflicting
resend (``conflicts/<study>/<sop>.<digest>.json``); it has no ledger of its
own.  Each tick moves what is new into the ledger: a quarantined instance
becomes a QUARANTINED record of its own (``rejected-<digest>``, as it may
have no usable study UID) and is noted on its study when that is known; a
conflict is added to its study's details.  A recorded reason file is renamed
``*.recorded.json``, so that a tick looks only at what is new, also after a
restart; recording is idempotent either way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..ledger import Ledger, State
from ..naming import is_uid
from ..receive import Spool

log = logging.getLogger(__name__)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Harvester:
    def __init__(self, spool: Spool, ledger: Ledger):
        self.spool = spool
        self.ledger = ledger
        self._seen: set[Path] = set()

    def run(self) -> int:
        """Record every reason file not recorded yet; returns how many were new."""
        return self._quarantined() + self._conflicts()

    def _quarantined(self) -> int:
        new = 0
        for folder in self.spool.quarantine_dir.glob("unfiled-*"):
            for path in folder.glob("*.reason.json"):
                if path in self._seen:
                    continue
                info = _read(path)
                if info is None:
                    continue  # being written; next tick
                self._seen.add(path)
                digest, when = path.name.split(".")[:2]
                key = f"rejected-{digest[:16]}-{when[-9:]}"
                if self.ledger.get(key) is not None:
                    _mark(path)
                    continue
                kept = str(path.with_name(f"{digest}.dcm"))
                reason = str(info.get("reason", "unknown"))[:2000]
                study = str(info.get("study_uid") or "")
                details = {"kept_at": kept, "study_uid": study, "sop_instance": info.get("sop_instance"),
                           "transfer_syntax": info.get("transfer_syntax"), "association": info.get("association")}
                self.ledger.transition(key, State.QUARANTINED, error=reason, details=details,
                                       calling_aet=str(info.get("calling_aet") or "")[:64] or None,
                                       peer=str(info.get("peer") or "")[:128] or None,
                                       first_arrival=info.get("at") if isinstance(info.get("at"), float) else None)
                if is_uid(study) and self.ledger.get(study) is not None:
                    record = self.ledger.require(study)
                    rejected = dict(record.details.get("rejected") or {})
                    rejected[key] = {"reason": reason, "kept_at": kept}
                    self.ledger.merge_details(study, {"rejected": rejected})
                log.warning("instance kept in quarantine: %s", reason, extra={"study_uid": study or key})
                _mark(path)
                new += 1
        return new

    def _conflicts(self) -> int:
        new = 0
        for study_dir in self.spool.conflicts.iterdir():
            study = study_dir.name
            if not is_uid(study) or not study_dir.is_dir():
                continue
            fresh = [p for p in study_dir.glob("*.json") if p not in self._seen
                     and not p.name.endswith(".recorded.json")]
            if not fresh or self.ledger.get(study) is None:
                continue  # recorded once the study is in the ledger (at the latest when it completes)
            record = self.ledger.require(study)
            conflicts = dict(record.details.get("conflicts") or {})
            added = 0
            for path in fresh:
                info = _read(path)
                if info is None:
                    continue
                self._seen.add(path)
                if path.stem in conflicts:
                    _mark(path)
                    continue
                conflicts[path.stem] = {
                    "sop": info.get("sop"), "series": info.get("series"), "reason": info.get("reason"),
                    "calling_aet": info.get("calling_aet"), "peer": info.get("peer"), "at": info.get("at"),
                    "kept_at": str(path.with_suffix(".dcm"))}
                added += 1
            if added:
                self.ledger.merge_details(study, {"conflicts": conflicts})
                new += added
            for path in fresh:
                if path.stem in conflicts:
                    _mark(path)
        return new


def _mark(path: Path) -> None:
    """Recorded in the ledger: out of the next ticks' way."""
    try:
        path.rename(path.with_name(path.name[: -len(".json")] + ".recorded.json"))
    except OSError:
        pass  # looked at again next time; recording is idempotent
