"""Stage 1, receive: the DICOM endpoint and the durable spool it writes."""

from ._dataset import Header, HeaderError, read_header
from ._part10 import NotPart10, Part10, read_part10
from ._policy import AllowList, EndpointOptions, TlsFiles
from ._server import Endpoint
from ._state import AssociationRecord, ReceiveState, SeriesCounters, StudyCounters
from .spool import Batch, Incoming, Spool, StoreOutcome, atomic_write, fsync_dir

__all__ = [
    "AllowList", "AssociationRecord", "Batch", "Endpoint", "EndpointOptions", "Header", "HeaderError",
    "Incoming", "NotPart10", "Part10", "ReceiveState", "SeriesCounters", "Spool", "StoreOutcome",
    "StudyCounters", "TlsFiles", "atomic_write", "fsync_dir", "read_header", "read_part10",
]
