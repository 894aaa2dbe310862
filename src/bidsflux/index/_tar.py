"""Deterministic series archives: the same instances always give the same bytes.

Members are sorted, with fixed mtime, owner and mode, in USTAR format (no
PAX headers carrying times), so a resent identical series yields the same
annex key.  The SHA-256 is computed while writing, so the archive's bytes
are hashed once, as they are written; that hash is the annex key the index
hands to git-annex.  Optional gzip compression is deterministic too (no
name, mtime 0 in its header).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path


class _HashingWriter(io.RawIOBase):
    def __init__(self, raw: io.BufferedWriter):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)


@dataclass(frozen=True)
class Archive:
    path: Path
    members: int
    size: int
    sha256: str

    @property
    def annex_key(self) -> str:
        # SHA256E keeps the extensions, as git-annex does for "x.tar.gz".
        return f"SHA256E-s{self.size}--{self.sha256}{''.join(self.path.suffixes[-2:])}"


COMPRESSIONS = {"none": ".tar", "gzip": ".tar.gz"}


def build_archive(members: dict[str, Path | bytes], target: Path, *, compression: str = "none",
                  fsync: bool = True) -> Archive:
    """Write ``members`` (name -> file or bytes) as a deterministic tar at ``target``."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}")
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            stream: io.RawIOBase | gzip.GzipFile = writer
            if compression == "gzip":
                stream = gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0, compresslevel=6)
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name in sorted(members):
                    source = members[name]
                    data = source if isinstance(source, bytes) else None
                    info = tarfile.TarInfo(name)
                    info.size = len(data) if data is not None else source.stat().st_size  # type: ignore[union-attr]
                    info.mtime = 0
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if data is not None:
                        tar.addfile(info, io.BytesIO(data))
                    else:
                        with open(source, "rb") as fh:
                            tar.addfile(info, fh)
            if stream is not writer:
                stream.close()
            raw.flush()
            if fsync:
                os.fsync(raw.fileno())
    except BaseException:
        # A half-written archive must not stay in the dataset, where a later save would commit it.
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return Archive(target, len(members), writer.size, writer.sha.hexdigest())


def read_members(path: Path) -> dict[str, bytes]:
    """All members of an archive, by name (used to amend a series)."""
    with tarfile.open(path, "r:*") as tar:
        result = {}
        for info in tar.getmembers():
            if info.isfile():
                fh = tar.extractfile(info)
                if fh is not None:
                    result[info.name] = fh.read()
        return result
