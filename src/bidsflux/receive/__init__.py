"""Stage 1, receive: the DICOM endpoint and the durable spool it writes."""

from ._server import Endpoint, ReceiveState, StudyCounters
from .spool import Batch, Spool, StoreOutcome, atomic_write

__all__ = ["Batch", "Endpoint", "ReceiveState", "Spool", "StoreOutcome", "StudyCounters", "atomic_write"]
