"""The embedded default: every stage on one machine, driven by durable state.

``Service`` starts the forge (smart HTTP on loopback), the DICOM endpoint,
the assembler, and one worker thread.  The worker reads only durable state
(completed spool batches, the ledger) and moves each study one stage at a
time: a batch is indexed, then the study is stored, published and converted
from what the ledger says.  So a restart resumes every study from its last
recorded state, and `bidsflux retry` only has to put a study back into a
state the worker acts on.

Transient errors (``exc.transient``) are retried with exponential backoff
while the study stays in its last good state; permanent ones end it FAILED
with the reason; naming errors QUARANTINE it.  A batch that cannot be
indexed is kept under ``spool/failed`` or ``spool/quarantine``, never dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import faults, storage
from ._datalad import head as dataset_head
from ._fs import remove_tree
from .assemble import AssembleOptions, Assembler
from .derive import routed
from .errors import BidsfluxError, NamingError
from .forge import ForgeServer, forge_token, make_forge
from .forge.publish import Published, publish_session
from .index import IndexResult, Manifest, SessionNames, index_batch
from .ledger import TERMINAL_STATES, Ledger, State, StudyRecord
from .metrics import MetricsServer
from .naming import identity_fields
from .receive import Batch, Endpoint, EndpointOptions, Spool, StudyCounters
from .runner import require_success, run_pipeline
from .settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]

# What the worker does for a study in each state (batches are handled apart).
RESUME = {
    State.INDEXED: "store",
    State.STORED: "publish",
    State.PUBLISHED: "convert",
    State.CONVERTING: "convert",
    State.CONVERTED: "convert",
    State.VALIDATED: "convert",  # killed before merging; with auto-merge off it waits for review
}


def _quiet(study: str, message: str) -> None:
    log.info(message, extra={"study_uid": study})


def park_batch(spool: Spool, batch: Batch, folder: str, reason: str | None = None) -> Path:
    """Move a batch out of the queue into ``spool/<folder>`` (with why, if given)."""
    target_dir = spool.root / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / batch.path.name
    os.rename(batch.path, target)
    if reason is not None:
        (target / "reason.json").write_text(json.dumps({"study": batch.study_uid, "reason": reason}))
    return target


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
        self.forge = make_forge(settings, self.forge_server.base_url)
        self.metrics: MetricsServer | None = None
        self.endpoint: Endpoint | None = None
        self.assembler: Assembler | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="bidsflux-worker", daemon=True)
        self._not_before: dict[str, float] = {}
        self._attempts: dict[str, int] = {}

    # -- lifecycle
    def start(self, *, receive: bool = True) -> Service:
        for name, template in (("GITLAB_INDEXER_GROUP_TEMPLATE", self.settings.group_template),
                               ("BIDSFLUX_SESSION_TEMPLATE", self.settings.session_template)):
            if identity_fields(template):
                log.warning("%s uses %s: patient identity will appear in forge paths and dataset names",
                            name, ", ".join(sorted(identity_fields(template))))
        # Checked before anything listens: a bad rules file or incomplete TLS settings stop the start.
        assemble_options = AssembleOptions.from_settings(self.settings) if receive else None
        endpoint_options = EndpointOptions.from_settings(self.settings) if receive else None
        self.forge_server.start()
        if self.settings.metrics_port is not None:
            self.metrics = MetricsServer(self.ledger, self.settings.metrics_host, self.settings.metrics_port).start()
        if receive:
            self.endpoint = Endpoint(self.spool, aet=self.settings.storescp_aet,
                                     host=self.settings.storescp_host, port=self.settings.storescp_port,
                                     on_new_study=self._on_new_study, options=endpoint_options)
            self.assembler = Assembler(self.spool, self.endpoint.state, self.ledger, self.settings.quiet_period,
                                       options=assemble_options)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.endpoint is not None:
            self.endpoint.stop()
        self._worker.join(timeout=600)
        if self.metrics is not None:
            self.metrics.stop()
        self.forge_server.stop()
        self.ledger.close()

    def _on_new_study(self, study_uid: str, counters: StudyCounters) -> None:
        self.ledger.transition(study_uid, State.RECEIVING, calling_aet=counters.calling_aet, peer=counters.peer,
                               first_arrival=counters.first_arrival)
        self.progress(study_uid, f"receiving from {counters.calling_aet} ({counters.peer})")

    # -- the worker
    def _work(self) -> None:
        while not self._stop.is_set():
            if self.assembler is not None:
                self._flush_counters()
                for batch in self.assembler.tick():
                    self.progress(batch.study_uid, "complete")
            if not self.step():
                self._stop.wait(self.tick)

    def step(self) -> bool:
        """Do one unit of due work (a batch, or one stage of one study); False when idle."""
        now = time.time()
        pending = set()
        for batch in self.spool.batches():
            pending.add(batch.study_uid)
            if self._due(batch.study_uid, now):
                self._attempt(batch.study_uid, partial(self._index, batch), batch)
                return True
        for batch in self._parked_unrecorded():
            # Killed after parking the batch but before the ledger said INDEXED.
            if self._due(batch.study_uid, now):
                self._attempt(batch.study_uid, partial(self._index, batch), batch)
                return True
        for record in self.ledger.studies(RESUME):
            study = record.study_uid
            if study in pending or not self._due(study, now):
                continue
            if record.state is State.VALIDATED and not self.settings.bids_auto_merge:
                continue
            if record.state is State.PUBLISHED and self._external_runner:
                continue  # another runner (GitLab CI, gitlab-ci-local) converts
            action = getattr(self, f"_{RESUME[record.state]}")
            self._attempt(study, partial(action, study))
            return True
        for record in self.ledger.studies([State.MERGED]):
            if _pending_derivatives(record) and record.study_uid not in pending and self._due(record.study_uid, now):
                self._attempt(record.study_uid, partial(self._derive, record.study_uid))
                return True
        return False

    def _parked_unrecorded(self) -> list[Batch]:
        folder = self.spool.root / "indexed"
        if not folder.is_dir():
            return []
        waiting = {r.study_uid for r in self.ledger.studies([State.COMPLETE, State.RECEIVING])}
        found = []
        for path in sorted(folder.iterdir()):
            uid, sep, _ = path.name.partition("@")
            if sep and uid in waiting:
                found.append(Batch(uid, path))
        return found

    def _due(self, study: str, now: float) -> bool:
        return self._not_before.get(study, 0.0) <= now

    def _attempt(self, study: str, action: Callable[[], None], batch: Batch | None = None) -> None:
        try:
            action()
        except NamingError as exc:
            self._give_up(study, batch, State.QUARANTINED, str(exc), "quarantine")
        except BidsfluxError as exc:
            if exc.transient:
                self._retry_later(study, exc, batch)
            else:
                self._give_up(study, batch, State.FAILED, str(exc), "failed")
        except Exception as exc:  # noqa: BLE001 - one study's bug must not stop the others
            log.exception("unexpected error", extra={"study_uid": study})
            self._give_up(study, batch, State.FAILED, f"internal error: {type(exc).__name__}: {exc}", "failed")
        else:
            self._attempts.pop(study, None)
            self._not_before.pop(study, None)

    def _retry_later(self, study: str, exc: BidsfluxError, batch: Batch | None) -> None:
        attempt = self._attempts.get(study, 0) + 1
        if attempt > self.settings.retry_attempts:
            self._give_up(study, batch, State.FAILED, f"gave up after {attempt - 1} attempts: {exc}", "failed")
            return
        self._attempts[study] = attempt
        delay = min(self.settings.retry_initial * 2 ** (attempt - 1), self.settings.retry_max)
        self._not_before[study] = time.time() + delay
        record = self.ledger.get(study)
        state = record.state if record is not None else State.COMPLETE
        self.ledger.transition(study, state, error=f"retrying in {delay:.0f}s: {exc}", attempt=attempt)
        self.progress(study, f"waiting in {state} (attempt {attempt}, retry in {delay:.0f}s): {exc}")

    def _give_up(self, study: str, batch: Batch | None, state: State, reason: str, folder: str) -> None:
        self._attempts.pop(study, None)
        self._not_before.pop(study, None)
        details = {}
        if batch is not None and batch.path.exists():
            details["kept_at"] = str(park_batch(self.spool, batch, folder, reason))
        record = self.ledger.get(study)
        attempt = (record.attempt if record else 0) + 1
        self.ledger.transition(study, state, error=reason[:2000], attempt=attempt, details=details)
        self.progress(study, f"{state}: {reason}")

    def _flush_counters(self) -> None:
        if self.endpoint is None:
            return
        with self.endpoint.state.lock:
            snapshot = [(uid, c.instances, c.bytes, len(c.series), c.last_arrival)
                        for uid, c in self.endpoint.state.studies.items()]
        for uid, instances, nbytes, series, last in snapshot:
            self.ledger.update(uid, instances=instances, bytes=nbytes, series=series, last_arrival=last)

    # -- the stages
    def _index(self, batch: Batch) -> None:
        study = batch.study_uid
        self.progress(study, "indexing")
        route = _read_route(batch.path)
        if route.get("ignore"):
            # A routing rule says this study is not ours to convert: kept, visible, releasable.
            self._give_up(study, batch, State.QUARANTINED,
                          f"ignored by routing rule {route.get('rule')!r}", "quarantine")
            return
        template = route.get("group_template")
        result = index_batch(self.settings, study, batch.path,
                             group_template=template if isinstance(template, str) else None)
        pattern = route.get("s3_url_pattern")
        storage.plan(self.settings, result.dataset, study=study, tags=result.tags,
                     pattern=pattern if isinstance(pattern, str) else None)
        for name, path in result.conflicts:
            self.spool.keep_conflict(study, name.rsplit(".", 1)[0], path.read_bytes())
        parked = park_batch(self.spool, batch, "indexed") if batch.path.parent.name == "complete" else batch.path
        faults.point("worker.before_indexed")
        self.ledger.transition(
            study, State.INDEXED, group_path=result.names.group_path, series=len(result.manifest.series),
            counts={"series": len(result.manifest.series), "instances": result.manifest.instances,
                    "changes": result.changes, "conflicts": len(result.conflicts), "commit": result.commit,
                    "tags_defaulted": result.defaulted},
            details={"dataset": str(result.dataset), "session_path": result.names.session_path,
                     "changed": result.changed or _previous_unmerged(self.ledger, study),
                     "route": route.get("rule"), "pipelines": _names(route.get("pipelines")),
                     "indexed_batch": str(parked)},
        )
        self.progress(study, f"indexed: {len(result.manifest.series)} series, {result.manifest.instances} "
                             f"instances" + ("" if result.changed else " (resend, nothing changed)"))

    def _store(self, study: str) -> None:
        record = self.ledger.require(study)
        dataset = Path(record.details["dataset"])
        stored = storage.push(self.settings, dataset, study=study)
        manifest = Manifest.load(dataset, study)
        if stored.keys < len(manifest.series):
            raise BidsfluxError(f"{stored.keys} archives verified in the store, the manifest has "
                                f"{len(manifest.series)}", study=study)
        self.ledger.transition(study, State.STORED, counts={"keys": stored.keys, "bytes": stored.bytes})
        self.progress(study, f"stored and verified: {stored.keys} archives, {stored.bytes / 1e6:.1f} MB")
        for parked in (self.spool.root / "indexed").glob(f"{study}@*"):
            remove_tree(parked)  # every instance is now in a verified archive

    def _publish(self, study: str) -> None:
        record = self.ledger.require(study)
        dataset = Path(record.details["dataset"])
        result = IndexResult(
            study, SessionNames(record.group_path or "", record.details["session_path"]), dataset,
            Manifest.load(dataset, study), [], dataset_head(dataset, study=study),
        )
        pipelines = _names(record.details.get("pipelines"))
        published = publish_session(self.settings, self.forge, result, derivatives=pipelines)
        details: dict[str, Any] = {
            "session_url": published.session_url, "study_url": published.study_url,
            "bids_url": published.bids_url, "session_commit": published.session_commit,
            "study_commit": published.study_commit}
        if pipelines and self.settings.forge_type == "gitlab":
            details["derivatives"] = routed.initial(pipelines, local=False)
        self.ledger.transition(study, State.PUBLISHED, details=details)
        self.progress(study, f"published: {published.session_url}")

    @property
    def _external_runner(self) -> bool:
        return self.settings.forge_type == "local" and self.settings.runner == "external"

    def _convert(self, study: str) -> None:
        record = self.ledger.require(study)
        if not record.details.get("changed", True) and record.details.get("merge_commit"):
            self.ledger.transition(study, State.MERGED, counts={"unchanged": True})
            self.progress(study, "conversion unchanged (identical resend)")
            return
        if self.settings.forge_type == "gitlab":
            self._follow_pipeline(study, record)
            return
        self.ledger.transition(study, State.CONVERTING)
        self.progress(study, "converting: the bids pipeline on the local runner (ci-pipelines/bids.yml)")
        variables = {"BIDSFLUX_PIPELINE": "convert", "BIDSFLUX_STUDY_UID": study,
                     "BIDSFLUX_SESSION": record.details["session_path"],
                     "BIDSFLUX_BIDS_URL": record.details["bids_url"],
                     "BIDSFLUX_SESSION_COMMIT": record.details.get("session_commit", ""),
                     "BIDSFLUX_STUDY_COMMIT": record.details.get("study_commit", "")}
        checks: dict[str, dict[str, Any]] = {}

        def job_done(job: str, outcome: dict[str, Any]) -> None:
            self.progress(study, f"job {job}: {outcome['status']}")
            if job == "convert" and outcome["status"] == "success":
                self.ledger.transition(study, State.CONVERTED, counts={
                    "nifti_files": outcome["nifti_files"], "commit": outcome["commit"],
                    "versions": outcome["versions"]},
                    details={"branch": outcome["branch"], "merge_request": outcome.get("merge_request"),
                             "heuristic": outcome.get("heuristic")})
            elif job in ("validate", "phi-check"):
                checks[job] = outcome
                if len(checks) == 2 and all(c["status"] == "success" for c in checks.values()):
                    validation = checks["validate"]
                    self.ledger.transition(study, State.VALIDATED, counts=validation.get("details", {}),
                                           details={"validation": validation.get("summary"),
                                                    "phi_check": checks["phi-check"].get("summary"),
                                                    "changed": False})
            elif job == "merge" and outcome["status"] == "success":
                merged = outcome.get("details", {})
                if isinstance(merged, dict) and merged.get("merged"):
                    pipelines = _names(record.details.get("pipelines"))
                    after = {"derivatives": routed.initial(pipelines, local=True)} if pipelines else {}
                    self.ledger.transition(study, State.MERGED, counts={"merge_commit": merged["merge_commit"]},
                                           details={"merge_commit": merged["merge_commit"], **after})
                    self.progress(study, f"merged convert/{record.details['session_path']} into dev")

        run = run_pipeline(self.settings, self.forge.token, "bids", variables, study=study,
                           on_line=lambda line: self.progress(study, "  " + line), on_job=job_done)
        if not run.jobs:
            raise BidsfluxError("the bids pipeline planned no job for this session", study=study)
        require_success(run, study=study)

    def _derive(self, study: str) -> None:
        """Run the study's routed built-in derivatives after a merge (the local runner's derivatives pipeline)."""
        record = self.ledger.require(study)
        recorded: dict[str, dict[str, Any]] = dict(record.details.get("derivatives") or {})
        entries = [name for name, entry in recorded.items() if entry.get("status") == routed.PENDING]
        path = routed.pipeline_file(self.settings, study, entries)
        self.progress(study, f"derivatives: {', '.join(entries)} on the local runner ({path.name})")
        variables = {"BIDSFLUX_PIPELINE": "derivatives", "BIDSFLUX_STUDY_UID": study,
                     "BIDSFLUX_SESSION": record.details["session_path"],
                     "BIDSFLUX_BIDS_URL": record.details["bids_url"]}

        def job_done(job: str, outcome: dict[str, Any]) -> None:
            name = routed.entry_of_job(job, entries)
            if name is None:
                return
            done: dict[str, Any] = {"status": outcome["status"]}
            done.update({k: outcome[k] for k in ("url", "commit", "changed") if k in outcome})
            recorded[name] = done
            self.ledger.merge_details(study, {"derivatives": recorded})
            self.progress(study, f"derivative {name}: {outcome['status']}"
                                 + (f" at {str(outcome.get('commit'))[:12]}" if outcome.get("commit") else ""))

        try:
            run = run_pipeline(self.settings, self.forge.token, "derivatives", variables, study=study, path=path,
                               on_line=lambda line: self.progress(study, "  " + line), on_job=job_done)
        except BidsfluxError as exc:
            if exc.transient:
                raise
            # The conversion stands (the study stays MERGED); the derivatives say why they did not run.
            for entry in entries:
                if recorded[entry].get("status") == routed.PENDING:
                    recorded[entry] = {"status": routed.FAILED, "error": str(exc)[:500]}
            self.ledger.merge_details(study, {"derivatives": recorded})
            return
        for job in run.jobs:
            found = routed.entry_of_job(job, entries)
            if found is not None and recorded[found].get("status") == routed.PENDING:
                recorded[found] = {"status": run.status.get(job, "skipped")}  # after a failed job, as on GitLab
        for job in run.failed():
            found = routed.entry_of_job(job, entries)
            if found is not None:
                recorded[found]["error"] = run.log_tail(job, 400)
        self.ledger.merge_details(study, {"derivatives": recorded})

    def _follow_pipeline(self, study: str, record: StudyRecord) -> None:
        """On GitLab the conversion is a CI pipeline: start or find it, follow it into the ledger."""
        from .forge.gitlab import GitLabForge
        from .forge.pipelines import follow_conversion

        if not isinstance(self.forge, GitLabForge):
            raise BidsfluxError("BIDSFLUX_FORGE_TYPE=gitlab but the forge is not GitLab", study=study)

        published = Published(
            record.details["session_url"], record.details["study_url"], record.details["bids_url"],
            record.details["session_path"], group_path=record.group_path or "",
            session_commit=record.details.get("session_commit", ""),
            study_commit=record.details.get("study_commit", ""))
        follow_conversion(self.settings, self.forge, self.ledger, study, published, self.progress)

    def wait_until_idle(self, study: str, timeout: float) -> None:
        """Block until ``study`` reaches a final state (or raise on timeout)."""
        deadline = time.monotonic() + timeout
        final = set(TERMINAL_STATES)
        if not self.settings.bids_auto_merge:
            final.add(State.VALIDATED)  # waits for a person to review and merge
        if self._external_runner:
            final.add(State.PUBLISHED)
        while time.monotonic() < deadline:
            record = self.ledger.get(study)
            if record is not None and record.state in final and not _pending_derivatives(record):
                return
            time.sleep(0.2)
        raise BidsfluxError(f"not finished after {timeout:.0f}s", study=study)


def _names(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _pending_derivatives(record: StudyRecord) -> bool:
    derivatives = record.details.get("derivatives")
    return isinstance(derivatives, dict) and any(
        isinstance(entry, dict) and entry.get("status") == routed.PENDING for entry in derivatives.values())


def _read_route(batch_dir: Path) -> dict[str, object]:
    """The routing decision the receiver stored with the batch, if any."""
    path = batch_dir / "route.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _previous_unmerged(ledger: Ledger, study: str) -> bool:
    """An unchanged resend still needs converting if the last conversion never merged."""
    record = ledger.get(study)
    return record is None or not record.details.get("merge_commit")
