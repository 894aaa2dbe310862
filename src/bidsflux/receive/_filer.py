"""Filing journaled instances in the background, in arrival order, one thread per association.

Once an instance is in the journal it is durable and the sender has its
answer; putting it under its study folder is bookkeeping that need not hold
the sender up.  Creating a file can take most of a millisecond on a busy
disk, longer than everything else the endpoint does for an instance, so it
happens on this thread while the association thread receives the next one.
The queue is bounded in bytes: a filer that falls behind slows its sender
down instead of growing memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ._threads import start

log = logging.getLogger(__name__)

QUEUE_BYTES = 64 << 20
QUEUE_SLACK = 8 << 20  # wake a waiting sender once this much room is free


class Filer:
    def __init__(self, name: str, limit: int = QUEUE_BYTES):
        self._limit = limit
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], int] | None] = queue.SimpleQueue()
        self._queued = 0  # bytes submitted and not yet filed
        self._room = threading.Condition()  # only waited on when the queue is full, or to drain it
        self._thread = start(self._run, name)

    def submit(self, job: Callable[[], None], size: int) -> None:
        """Queue ``job`` (after the ones before it); waits while ``limit`` bytes are already queued."""
        with self._room:
            while self._queued and self._queued + size > self._limit:
                self._room.wait()
            self._queued += size
        self._jobs.put((job, size))

    def drain(self) -> None:
        """Wait until every queued job has run."""
        with self._room:
            while self._queued:
                self._room.wait()

    def close(self) -> None:
        self.drain()
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, size = item
            try:
                job()
            except Exception:  # noqa: BLE001 - the instance is in the journal; replay files it after a restart
                log.exception("filing a received instance failed")
            finally:
                with self._room:
                    self._queued -= size
                    if not self._queued or self._queued + QUEUE_SLACK > self._limit:
                        self._room.notify_all()
