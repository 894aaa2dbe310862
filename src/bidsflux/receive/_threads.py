"""Threads of the endpoint, which leave SIGINT and SIGTERM to the main thread.

The kernel may deliver a process-directed signal to any thread that does
not block it; Python runs handlers only in the main thread, and a main
thread asleep in a long wait then learns of the signal only when that wait
ends.  ``docker stop`` must stop the service promptly, so every thread the
endpoint starts blocks these two signals.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
