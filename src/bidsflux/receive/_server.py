"""The DICOM endpoint: listening sockets, one thread per association, graceful stop.

The network engine is bids-flux's own (``_wire``, ``_dimse``,
``_association``): a thread per association reading whole PDUs with few
system calls, TCP_NODELAY on every socket, and a C-STORE path that writes
the received bytes plus File Meta Information and decodes only the element
headers it needs.  A success status goes back only after the instance is
fsynced and linked into its fsynced study folder.

``stop()`` stops accepting, lets open associations finish within a grace
period, then aborts what is left; an aborted instance was never
acknowledged, and its temporary file is removed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from ..errors import ReceiveError
from ._association import Association, Shared
from ._policy import EndpointOptions, Pressure
from ._state import ReceiveState, StudyCounters
from ._threads import start
from ._tls import server_context
from .spool import Spool

log = logging.getLogger(__name__)

_ACCEPT_POLL = 0.25  # how often an idle accept loop looks at the stop flag


class Endpoint:
    """A running DICOM endpoint; ``stop()`` ends it."""

    def __init__(self, spool: Spool, *, aet: str, host: str, port: int,
                 on_new_study: Callable[[str, StudyCounters], None] | None = None,
                 options: EndpointOptions | None = None):
        self.spool = spool
        self.options = options or EndpointOptions()
        self.state = ReceiveState()
        pressure = Pressure(spool.free_bytes, self.options.backlog or spool.backlog,
                            min_free=self.options.min_free_bytes, max_backlog=self.options.max_backlog,
                            interval=self.options.pressure_interval)
        self._shared = Shared(spool, self.state, aet, self.options, pressure, on_new_study)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Association] = set()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        tls = server_context(self.options.tls) if self.options.tls is not None else None
        spool.journal.start()
        self.host, self.port = host, 0
        self.tls_port: int | None = None
        try:
            if self.options.plain:
                self.host, self.port = self._listen(host, port, None)
            if tls is not None and self.options.tls_port is not None:
                self.tls_port = self._listen(host, self.options.tls_port, tls)[1]
        except BaseException:
            self._close_listeners()
            raise

    def _listen(self, host: str, port: int, tls: object) -> tuple[str, int]:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(64)
        except OSError as exc:
            raise ReceiveError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               hint="pick a free port with STORESCP_PORT (or BIDSFLUX_TLS_PORT)") from exc
        listener.settimeout(_ACCEPT_POLL)
        self._listeners.append(listener)
        self._threads.append(start(self._accept_loop, f"dicom-accept-{listener.getsockname()[1]}", listener, tls))
        bound = listener.getsockname()
        return str(bound[0]), int(bound[1])

    def _accept_loop(self, listener: socket.socket, tls: object) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                time.sleep(_ACCEPT_POLL)
                continue
            # Nagle plus delayed ACK costs ~40 ms per C-STORE exchange: off on every association.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            association = Association(self._shared, sock, peer, tls)  # type: ignore[arg-type]
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                self._open.add(association)
            start(self._run, f"dicom-assoc-{peer[0]}:{peer[1]}", association)

    def _run(self, association: Association) -> None:
        try:
            association.run()
        finally:
            with self._lock:
                self._open.discard(association)

    def open_associations(self) -> int:
        with self._lock:
            return len(self._open)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            try:
                listener.close()
            except OSError:
                pass

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; give open associations ``grace`` seconds to finish, then abort them."""
        grace = self.options.stop_grace if grace is None else grace
        self._stopping.set()
        self._close_listeners()
        for thread in self._threads:
            thread.join(timeout=5)
        deadline = time.monotonic() + grace
        while self.open_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._open)
        if left:
            log.warning("stopping: aborting %d association(s) still open after %.0fs", len(left), grace)
        for association in left:
            association.interrupt()
        deadline = time.monotonic() + 10
        while self.open_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.spool.journal.stop()  # a last checkpoint: the files are on disk, the journal can go
