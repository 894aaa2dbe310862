"""Crash points for recovery tests: ``BIDSFLUX_CRASH_AT=<name>`` kills the process there.

The stages call :func:`point` between durable steps (archive written, commit
made, ledger updated).  Unset, it costs one dictionary look-up.  The tests use
it to prove that a kill -9 at each of those moments loses nothing and
duplicates nothing after a restart.
"""

from __future__ import annotations

import os
import signal

ENV = "BIDSFLUX_CRASH_AT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
