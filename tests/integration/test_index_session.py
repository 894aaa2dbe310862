"""Indexing a session: archives, keys, resends, amendments, conflicts, naming."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pydicom
import pytest

from bidsflux.errors import NamingError
from bidsflux.index import index_batch
from bidsflux.scanner import StudySpec, study_uid
from bidsflux.settings import Settings

from ..batches import make_batch


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings().replace(workdir=tmp_path / "work", **changes)


def _commits(dataset: Path) -> list[str]:
    return subprocess.run(["git", "log", "--format=%s"], cwd=dataset, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_index_writes_one_archive_per_series_with_matching_keys(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spec = StudySpec(seed=11)
    batch = make_batch(settings.spool_dir, spec, tmp_path / "dicoms")
    received = len(list(batch.rglob("*.dcm")))
    result = index_batch(settings, study_uid(spec), batch)

    assert result.dataset == settings.datasets_dir / "Doe-Jane" / "Demo" / "sourcedata" / "dicoms" / study_uid(spec)
    manifest = json.loads((result.dataset / "manifest.json").read_text())
    assert manifest["instances"] == received
    assert [s["description"] for s in manifest["series"]][:2] == ["anat-scout_ses-01", "anat-T1w"]
    for entry in manifest["series"]:
        archive = result.dataset / entry["archive"]
        assert archive.is_symlink()  # annexed, not in git
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert entry["annex_key"] == f"SHA256E-s{archive.stat().st_size}--{digest}.tar"
    fsck = subprocess.run(["git", "annex", "fsck", "--quiet"], cwd=result.dataset, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=result.dataset, capture_output=True, text=True)
    assert status.stdout == ""


def test_resend_identical_is_a_no_op_and_a_late_series_is_an_amendment(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spec = StudySpec(seed=12)
    first = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / "a",
                                                              only_series={1, 2, 3}))
    commits = _commits(first.dataset)

    again = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / "b",
                                                              only_series={1, 2, 3}))
    assert not again.changed and _commits(again.dataset) == commits and again.commit == first.commit

    late = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / "c",
                                                             only_series={4}))
    assert late.dataset == first.dataset
    log = subprocess.run(["git", "log", "-1", "--format=%B"], cwd=late.dataset, capture_output=True,
                         text=True, check=True).stdout
    assert log.startswith(f"[bids-flux] Amend session {study_uid(spec)}")
    assert "added series 4 'fmap-epi_dir-PA'" in log
    assert len(late.manifest.series) == 4


def test_a_changed_instance_is_a_conflict_and_the_archive_keeps_the_original(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spec = StudySpec(seed=13)
    first = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / "a",
                                                              only_series={1}))
    resend = make_batch(settings.spool_dir, spec, tmp_path / "b", only_series={1})
    changed = sorted(resend.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(changed)
    ds.InstitutionName = "Somewhere else"
    ds.save_as(changed)
    result = index_batch(settings, study_uid(spec), resend)
    assert [name for name, _ in result.conflicts] == [changed.name]
    assert not result.changed and result.commit == first.commit


def test_gzip_archives_are_deterministic(tmp_path: Path) -> None:
    keys = []
    for run in ("one", "two"):
        settings = _settings(tmp_path / run, archive_compression="gzip")
        spec = StudySpec(seed=14)
        result = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / run / "d",
                                                                   only_series={1, 2}))
        keys.append(sorted(e.annex_key for e in result.manifest.series.values()))
        assert all(e.archive.endswith(".tar.gz") for e in result.manifest.series.values())
    assert keys[0] == keys[1] and all(k.endswith(".tar.gz") for k in keys[0])


def test_missing_tags_use_the_sites_defaults_or_quarantine(tmp_path: Path) -> None:
    spec = StudySpec(seed=15, referring_physician="")
    plain = _settings(tmp_path / "plain")
    with pytest.raises(NamingError) as caught:
        index_batch(plain, study_uid(spec), make_batch(plain.spool_dir, spec, tmp_path / "a", only_series={1}))
    assert "ReferringPhysicianName" in str(caught.value) and study_uid(spec) in str(caught.value)
    assert not plain.datasets_dir.exists() or not any(plain.datasets_dir.rglob("manifest.json"))

    site = _settings(tmp_path / "site", tag_defaults={"ReferringPhysicianName": "Unassigned"})
    result = index_batch(site, study_uid(spec), make_batch(site.spool_dir, spec, tmp_path / "b", only_series={1}))
    assert result.names.group_path == "Unassigned/Demo" and result.defaulted == ["ReferringPhysicianName"]


@pytest.mark.parametrize("hostile", ["../../etc", "/abs/path", "a/../../b", "$(touch /tmp/x);|&", "..",
                                     "x" * 5000, "Nul\x00Byte", "日本語^../..^.git"])
def test_hostile_tags_never_leave_the_dataset_root(tmp_path: Path, hostile: str) -> None:
    settings = _settings(tmp_path)
    spec = StudySpec(seed=16, referring_physician=hostile[:64], study_description=f"{hostile[:30]}^{hostile[:30]}")
    try:
        batch = make_batch(settings.spool_dir, spec, tmp_path / "d", only_series={1})
    except Exception:  # noqa: BLE001 - the scanner refuses values DICOM cannot carry
        pytest.skip("the synthetic scanner cannot encode this value")
    try:
        result = index_batch(settings, study_uid(spec), batch)
    except NamingError as exc:
        assert study_uid(spec) in str(exc)
        return
    root = settings.datasets_dir.resolve()
    assert result.dataset.resolve().is_relative_to(root)
    for segment in result.names.group_path.split("/"):
        assert segment not in {"", ".", ".."} and not segment.endswith(".git")
