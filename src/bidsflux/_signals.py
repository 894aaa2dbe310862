"""Waiting for Ctrl-C or SIGTERM (docker stop) in the main thread."""

from __future__ import annotations

import signal
import threading


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM arrives; restores the old handlers."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    # SIGINT is ignored in background jobs of a non-interactive shell: install ours anyway.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(3600):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
