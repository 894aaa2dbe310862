"""The embedded default: every stage on one machine, one study at a time.

``Service`` starts the forge (smart HTTP on loopback), the DICOM endpoint,
the assembler, and one worker thread that takes each completed batch
through index -> store -> publish -> convert, writing every outcome to the
ledger.  The worker reads only durable state (spool batches, the ledger),
so a restart picks up where the last run stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from . import storage
from ._fs import remove_tree
from .assemble import Assembler
from .errors import BidsfluxError, NamingError
from .forge import ForgeServer, LocalForge, forge_token
from .forge.publish import publish_session
from .index import index_batch
from .ledger import TERMINAL_STATES, Ledger, State
from .receive import Batch, Endpoint, Spool, StudyCounters
from .runner import run_job
from .settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]


def _quiet(study: str, message: str) -> None:
    log.info(message, extra={"study_uid": study})


class Service:
    """All stages of the embedded default, running in this process."""

    def __init__(self, settings: Settings, *, progress: Progress = _quiet, tick: float = 0.5):
        self.settings = settings
        self.progress = progress
        self.tick = tick
        settings.workdir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.ledger_path)
        self.spool = Spool(settings.spool_dir)
        self.forge_server = ForgeServer(settings.forge_dir, forge_token(settings),
                                        settings.forge_host, settings.forge_port)
        self.forge = LocalForge(settings, self.forge_server.base_url)
        self.endpoint: Endpoint | None = None
        self.assembler: Assembler | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="bidsflux-worker", daemon=True)
        self.idle = threading.Event()

    # -- lifecycle
    def start(self, *, receive: bool = True) -> Service:
        self.forge_server.start()
        if receive:
            self.endpoint = Endpoint(self.spool, aet=self.settings.storescp_aet,
                                     host=self.settings.storescp_host, port=self.settings.storescp_port,
                                     on_new_study=self._on_new_study)
            self.assembler = Assembler(self.spool, self.endpoint.state, self.ledger, self.settings.quiet_period)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.endpoint is not None:
            self.endpoint.stop()
        self._worker.join(timeout=600)
        self.forge_server.stop()
        self.ledger.close()

    def _on_new_study(self, study_uid: str, counters: StudyCounters) -> None:
        self.ledger.transition(study_uid, State.RECEIVING, calling_aet=counters.calling_aet, peer=counters.peer,
                               first_arrival=counters.first_arrival)
        self.progress(study_uid, f"receiving from {counters.calling_aet} ({counters.peer})")

    # -- the worker
    def _work(self) -> None:
        while not self._stop.is_set():
            busy = False
            if self.assembler is not None:
                self._flush_counters()
                for batch in self.assembler.tick():
                    self.progress(batch.study_uid, "complete")
            for batch in self.spool.batches():
                if self._stop.is_set():
                    return
                busy = True
                self.process_batch(batch)
            if busy:
                continue
            self.idle.set()
            self._stop.wait(self.tick)
            self.idle.clear()

    def _flush_counters(self) -> None:
        if self.endpoint is None:
            return
        with self.endpoint.state.lock:
            snapshot = [(uid, c.instances, c.bytes, len(c.series), c.last_arrival)
                        for uid, c in self.endpoint.state.studies.items()]
        for uid, instances, nbytes, series, last in snapshot:
            self.ledger.update(uid, instances=instances, bytes=nbytes, series=series, last_arrival=last)

    def process_batch(self, batch: Batch) -> None:
        """Take one completed batch as far as it goes; every outcome lands in the ledger."""
        study = batch.study_uid
        try:
            self._process(batch)
        except NamingError as exc:
            where = self.spool.quarantine_batch(batch, str(exc))
            self.ledger.transition(study, State.QUARANTINED, error=str(exc), counts={"kept_at": str(where)})
            self.progress(study, f"QUARANTINED: {exc}")
        except BidsfluxError as exc:
            record = self.ledger.get(study)
            attempt = (record.attempt if record else 0) + 1
            self.ledger.transition(study, State.FAILED, error=str(exc), attempt=attempt)
            self.progress(study, f"FAILED: {exc}")
            if batch.path.exists():
                # Kept for `bidsflux retry`; out of the queue so it does not spin.
                self.spool.quarantine_batch(batch, f"failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - one study's bug must not stop the others
            log.exception("unexpected error", extra={"study_uid": study})
            message = f"internal error: {type(exc).__name__}: {exc}"
            self.ledger.transition(study, State.FAILED, error=message[:500])
            self.progress(study, f"FAILED: {message}")
            if batch.path.exists():
                self.spool.quarantine_batch(batch, message)

    def _process(self, batch: Batch) -> None:
        study = batch.study_uid
        settings = self.settings
        self.progress(study, "indexing")
        result = index_batch(settings, study, batch.path)
        for name, path in result.conflicts:
            self.spool.keep_conflict(study, name[:-4], path.read_bytes())
        self.ledger.transition(
            study, State.INDEXED, group_path=result.names.group_path, series=len(result.manifest.series),
            counts={"series": len(result.manifest.series), "instances": result.manifest.instances,
                    "changes": result.changes, "conflicts": len(result.conflicts), "commit": result.commit},
            details={"dataset": str(result.dataset), "session_path": result.names.session_path},
        )
        self.progress(study, f"indexed: {len(result.manifest.series)} series, {result.manifest.instances} "
                             f"instances" + ("" if result.changed else " (resend, nothing changed)"))
        stored = storage.push(settings, result.dataset, study=study)
        self.ledger.transition(study, State.STORED, counts={"keys": stored.keys, "bytes": stored.bytes})
        self.progress(study, f"stored and verified: {stored.keys} archives, {stored.bytes / 1e6:.1f} MB")
        remove_tree(batch.path)  # every instance is now in a verified archive
        published = publish_session(settings, self.forge, result)
        self.ledger.transition(study, State.PUBLISHED, details={
            "session_url": published.session_url, "study_url": published.study_url,
            "bids_url": published.bids_url})
        self.progress(study, f"published: {published.session_url}")
        previous = self.ledger.require(study).details.get("merge_commit")
        if not result.changed and previous:
            self.ledger.transition(study, State.MERGED, counts={"unchanged": True})
            self.progress(study, "conversion unchanged (identical resend)")
            return
        self.convert(study, published.bids_url, published.session_path)

    def convert(self, study: str, bids_url: str, session: str) -> None:
        """Run the conversion job through the local runner and record its outcome."""
        self.ledger.transition(study, State.CONVERTING)
        self.progress(study, "converting (local runner: bidsflux ci convert)")
        outcome = run_job(
            self.settings, self.forge.token, "convert",
            ["--bids-url", bids_url, "--session", session, "--study", study],
            study=study, on_line=lambda line: self.progress(study, "  " + line),
        )
        self.ledger.transition(study, State.CONVERTED, counts={
            "nifti_files": outcome["nifti_files"], "commit": outcome["commit"], "versions": outcome["versions"]},
            details={"branch": outcome["branch"]})
        if not outcome["valid"]:
            self.ledger.transition(study, State.FAILED, error=f"BIDS validation: {outcome['summary']}",
                                   details={"validation": outcome["summary"]})
            self.progress(study, f"FAILED validation: {outcome['summary']}")
            return
        self.ledger.transition(study, State.VALIDATED, counts={"errors": outcome["errors"],
                                                               "warnings": outcome["warnings"]},
                               details={"validation": outcome["summary"]})
        if outcome["merged"]:
            self.ledger.transition(study, State.MERGED, counts={"merge_commit": outcome["merge_commit"]},
                                   details={"merge_commit": outcome["merge_commit"]})
            self.progress(study, f"merged {outcome['branch']} into dev")

    def wait_until_idle(self, study: str, timeout: float) -> None:
        """Block until ``study`` reaches a terminal state (or raise on timeout)."""
        deadline = time.monotonic() + timeout
        final = set(TERMINAL_STATES)
        if not self.settings.bids_auto_merge:
            final.add(State.VALIDATED)  # waits for a person to review and merge
        while time.monotonic() < deadline:
            record = self.ledger.get(study)
            if record is not None and record.state in final:
                return
            time.sleep(0.2)
        raise BidsfluxError(f"not finished after {timeout:.0f}s", study=study)
