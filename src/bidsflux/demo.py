"""``bidsflux demo``: the whole path on this machine, watched step by step.

Starts the embedded default (forge, endpoint, worker), sends one synthetic
study to itself over DICOM, follows it through every stage, prints a summary
and, last, the ``datalad clone`` command for the BIDS dataset.  Then it keeps
serving until Ctrl-C, so the clone can be made from another shell.
"""

from __future__ import annotations

import os
import sys
import time

from ._signals import wait_for_stop
from .embedded import Service
from .ledger import State
from .scanner import StudySpec, send_study
from .settings import Settings
from .status import format_table

DEMO_QUIET_PERIOD = 2.0


def run_demo(settings: Settings, *, seed: int = 1, keep_serving: bool = True, timeout: float = 900) -> int:
    if "BIDSFLUX_QUIET_PERIOD" not in os.environ:
        settings = settings.replace(quiet_period=DEMO_QUIET_PERIOD)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    def progress(study: str, message: str) -> None:
        say(f"…{study[-10:]} {message}")

    say(f"work folder {settings.workdir}")
    service = Service(settings, progress=progress).start()
    try:
        assert service.endpoint is not None
        say(f"DICOM endpoint {settings.storescp_aet} listening on {service.endpoint.host}:{service.endpoint.port}")
        say(f"forge serving {settings.forge_dir} at {service.forge_server.base_url}")
        spec = StudySpec(seed=seed)
        say(f"sending a synthetic study (seed {seed}) with C-STORE")
        last = [0.0]

        def sent(done: int, total: int) -> None:
            if done == total or time.monotonic() - last[0] > 1:
                last[0] = time.monotonic()
                say(f"  sent {done}/{total} instances")

        result = send_study(spec, service.endpoint.host, service.endpoint.port,
                            called_aet=settings.storescp_aet, progress=sent)
        say(f"sent {result.sent} instances in {result.series} series ({result.failed} failed); "
            f"waiting {settings.quiet_period:g}s of quiet for completion")
        service.wait_until_idle(result.study_uid, timeout)
        record = service.ledger.require(result.study_uid)
        print()
        print(format_table([record]))
        print()
        ok = record.state is State.MERGED
        if not ok:
            print(f"demo: study ended {record.state}: {record.error}", file=sys.stderr)
            return 1
        bids_url = record.details["bids_url"]
        print(f"BIDS dataset: {bids_url} (branch dev; {record.details.get('validation', '')})")
        print(f"session dataset: {record.details['session_url']}")
        print(f"finished in {time.monotonic() - started:.1f}s. To get the data, from any shell run the "
              "command below, then `datalad get .` in the clone:")
        print(f"datalad clone {bids_url}", flush=True)
        if keep_serving:
            print("(serving the forge and the DICOM endpoint; Ctrl-C stops)", file=sys.stderr, flush=True)
            wait_for_stop()
        return 0
    finally:
        service.stop()
