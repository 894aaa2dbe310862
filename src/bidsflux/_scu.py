"""What every pynetdicom association bids-flux opens as a sender (SCU) needs.

Used by the synthetic scanner (``scanner._send``) and by the results sender
(``destinations``).
"""

from __future__ import annotations

import queue
import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY right after connect(), before A-ASSOCIATE-RQ.

    C-STORE is a strict request/response exchange of small PDUs; without it
    Nagle's algorithm adds up to ~40 ms per object on loopback.
    """
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SenderOnlyQueue(queue.Queue[Any]):
    """A DIMSE message queue that only blocking readers can take from.

    pynetdicom 3.0.4's association reactor polls the same queue as
    ``send_c_store`` (``get_msg(block=False)``), and its pause handshake has a
    window in which it can take a C-STORE response meant for the sender, log
    "Received unexpected C-STORE service message", drop it, and leave the
    sender waiting for the DIMSE timeout and then aborting (upstream issues
    #435, #875).  On loopback this hit about once per 10,000 instances.  An
    SCU association never receives requests, so the reactor is simply shown
    an empty queue; release, abort and timeouts still work as before.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            raise queue.Empty
        return super().get(block, timeout)


def guard_responses(assoc: Association) -> None:
    """Swap in :class:`SenderOnlyQueue` while the association is still idle."""
    current = getattr(assoc.dimse, "msg_queue", None)
    if isinstance(current, queue.Queue) and current.empty():
        assoc.dimse.msg_queue = SenderOnlyQueue()
