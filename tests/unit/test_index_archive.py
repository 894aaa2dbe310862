"""Deterministic series archives and the session manifest."""

from __future__ import annotations

import hashlib
import os
import random
import re
import tarfile
from pathlib import Path

import pytest

from bidsflux.index._tar import build_archive, read_members
from bidsflux.index.manifest import MANIFEST_NAME, Manifest, SeriesEntry, describe_changes, hash_uids

CONTENT = {
    f"1.2.3.4.{n}.dcm": (f"instance {n} ".encode() * (n * 97 + 1)) + bytes(range(256)) for n in range(1, 8)
}
ANNEX_KEY = r"SHA256E-s(\d+)--([0-9a-f]{64})\.tar"


def write_sources(folder: Path, content: dict[str, bytes], mode: int, mtime: float) -> dict[str, Path | bytes]:
    folder.mkdir()
    result: dict[str, Path | bytes] = {}
    for name, data in content.items():
        path = folder / name
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
        result[name] = path
    return result


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_members_same_bytes(tmp_path: Path) -> None:
    from_files_a = write_sources(tmp_path / "a", CONTENT, 0o600, 1_000_000)
    from_files_b = write_sources(tmp_path / "b", CONTENT, 0o755, 1_700_000_000)
    names = list(CONTENT)
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != names
    variants = {
        "files-a": from_files_a,
        "files-b-shuffled": {name: from_files_b[name] for name in shuffled},
        "bytes-reversed": {name: CONTENT[name] for name in reversed(names)},
        "mixed": {name: (CONTENT[name] if i % 2 else from_files_a[name]) for i, name in enumerate(shuffled)},
    }
    out = tmp_path / "out"
    out.mkdir()
    archives = {label: build_archive(members, out / f"{label}.tar") for label, members in variants.items()}

    blobs = {label: archive.path.read_bytes() for label, archive in archives.items()}
    assert len(set(blobs.values())) == 1
    assert len({archive.annex_key for archive in archives.values()}) == 1
    for archive in archives.values():
        assert archive.members == len(CONTENT)
        assert archive.size == archive.path.stat().st_size
        assert archive.sha256 == file_sha(archive.path)
        assert archive.annex_key == f"SHA256E-s{archive.path.stat().st_size}--{file_sha(archive.path)}.tar"


def test_annex_key_format(tmp_path: Path) -> None:
    archive = build_archive({"x.dcm": b"x"}, tmp_path / "001-x.tar")
    match = re.fullmatch(ANNEX_KEY, archive.annex_key)
    assert match
    assert int(match.group(1)) == len((tmp_path / "001-x.tar").read_bytes())
    assert match.group(2) == file_sha(tmp_path / "001-x.tar")


def test_different_content_different_key(tmp_path: Path) -> None:
    one = build_archive({"a.dcm": b"one"}, tmp_path / "one.tar")
    two = build_archive({"a.dcm": b"two"}, tmp_path / "two.tar")
    renamed = build_archive({"b.dcm": b"one"}, tmp_path / "three.tar")
    assert len({one.annex_key, two.annex_key, renamed.annex_key}) == 3


def test_member_headers_are_normalised(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src", CONTENT, 0o751, 1_650_000_000)
    archive = build_archive(sources, tmp_path / "s.tar")
    with tarfile.open(archive.path) as tar:
        infos = tar.getmembers()
    assert [info.name for info in infos] == sorted(CONTENT)
    for info in infos:
        assert info.isfile()
        assert info.mtime == 0
        assert info.uid == 0 and info.gid == 0
        assert info.uname == "" and info.gname == ""
        assert info.mode == 0o644
        assert info.size == len(CONTENT[info.name])
        assert not info.pax_headers


def test_read_members_round_trips(tmp_path: Path) -> None:
    archive = build_archive(dict(CONTENT), tmp_path / "r.tar")
    assert read_members(archive.path) == CONTENT
    rebuilt = build_archive(read_members(archive.path), tmp_path / "rebuilt.tar")
    assert rebuilt.annex_key == archive.annex_key


def test_empty_archive(tmp_path: Path) -> None:
    archive = build_archive({}, tmp_path / "empty.tar")
    assert archive.members == 0
    assert read_members(archive.path) == {}
    assert archive.sha256 == file_sha(archive.path)


def test_rebuild_replaces_target_and_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "series.tar"
    build_archive({"a.dcm": b"old"}, target)
    archive = build_archive({"a.dcm": b"new", "b.dcm": b"b"}, target)
    assert read_members(target) == {"a.dcm": b"new", "b.dcm": b"b"}
    assert archive.members == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.tar"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "series.tar"
    build_archive({"a.dcm": b"kept"}, target)
    with pytest.raises(FileNotFoundError):
        build_archive({"a.dcm": b"x", "b.dcm": tmp_path / "missing.dcm"}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.tar"]
    assert read_members(target) == {"a.dcm": b"kept"}


# -- manifest -------------------------------------------------------------------

def entry(uid: str, number: int | None, key: str = "K", instances: int = 2, description: str = "T1w") -> SeriesEntry:
    return SeriesEntry(
        series_uid=uid, number=number, description=description, modality="MR",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", instances=instances,
        sop_uids_sha256=hash_uids([f"{uid}.{n}" for n in range(instances)]),
        archive=f"{number or 0:03d}-{description}.tar", annex_key=key, bytes=instances * 1024,
    )


def test_manifest_json_round_trip_is_stable() -> None:
    manifest = Manifest("1.2.3", {
        "1.2.3.30": entry("1.2.3.30", 3, "K3"),
        "1.2.3.10": entry("1.2.3.10", 1, "K1", description="scout"),
        "1.2.3.99": entry("1.2.3.99", None, "K0", instances=5),
    })
    text = manifest.to_json()
    assert text == manifest.to_json()
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.to_json() == text
    assert text.endswith("\n")
    assert manifest.instances == 9
    assert '"instances": 9' in text
    assert '"StudyInstanceUID": "1.2.3"' in text


def test_manifest_text_does_not_depend_on_insertion_order() -> None:
    entries = [entry("1.2.3.30", 3, "K3"), entry("1.2.3.10", 1, "K1"), entry("1.2.3.20", 2, "K2")]
    forward = Manifest("1.2.3", {e.series_uid: e for e in entries})
    backward = Manifest("1.2.3", {e.series_uid: e for e in reversed(entries)})
    assert forward.to_json() == backward.to_json()
    positions = [forward.to_json().index(f'"series_uid": "1.2.3.{n}"') for n in (10, 20, 30)]
    assert positions == sorted(positions)


def test_manifest_load(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path, "1.2.3") == Manifest("1.2.3")
    manifest = Manifest("1.2.3", {"1.2.3.1": entry("1.2.3.1", 1)})
    (tmp_path / MANIFEST_NAME).write_text(manifest.to_json())
    assert Manifest.load(tmp_path, "1.2.3") == manifest


def test_describe_changes_reports_added_and_changed() -> None:
    old = Manifest("1.2.3", {
        "1.2.3.1": entry("1.2.3.1", 1, "K1"),
        "1.2.3.2": entry("1.2.3.2", 2, "K2", instances=2, description="bold"),
    })
    new = Manifest("1.2.3", dict(old.series))
    new.series["1.2.3.2"] = entry("1.2.3.2", 2, "K2-new", instances=4, description="bold")
    new.series["1.2.3.3"] = entry("1.2.3.3", 3, "K3", instances=7, description="dwi")
    assert describe_changes(old, new) == [
        "changed series 2 'bold': 2 -> 4 instances",
        "added series 3 'dwi': 7 instances",
    ]
    assert describe_changes(new, new) == []
    assert describe_changes(Manifest("1.2.3"), old) == [
        "added series 1 'T1w': 2 instances",
        "added series 2 'bold': 2 instances",
    ]


def test_hash_uids_is_order_independent() -> None:
    uids = [f"1.2.3.{n}" for n in range(50)]
    shuffled = uids[:]
    random.Random(3).shuffle(shuffled)
    assert hash_uids(uids) == hash_uids(shuffled)
    assert hash_uids(uids) != hash_uids(uids[:-1])
    assert hash_uids(uids) == hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()
