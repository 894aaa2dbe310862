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
        # Short waits: the kernel may deliver the signal to another thread, and the
        # handler then runs only when the main thread next wakes up.
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
