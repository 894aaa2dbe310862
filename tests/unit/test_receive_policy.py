"""Who may send, what is accepted, when to push back: settings parsing and the decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsflux.errors import ReceiveError, SettingsError
from bidsflux.receive import AllowList, EndpointOptions
from bidsflux.receive._policy import STORAGE_CLASSES, TRANSFER_SYNTAXES, Pressure
from bidsflux.settings import load_settings


def test_settings_parse_and_report_every_problem(tmp_path: Path) -> None:
    settings = load_settings({"BIDSFLUX_ALLOWED_PEERS": "SCANNER1@10.0.0.5, *@192.168.1.0/24 PACS@*",
                              "BIDSFLUX_SPOOL_MIN_FREE": "1.5GiB", "BIDSFLUX_MAX_BACKLOG": "0",
                              "BIDSFLUX_EXTRA_SOP_CLASSES": "1.3.12.2.1107.5.9.1, 1.2.3"},
                             secrets_dir=tmp_path)
    assert settings.allowed_peers == (("SCANNER1", "10.0.0.5"), ("*", "192.168.1.0/24"), ("PACS", "*"))
    assert settings.spool_min_free == int(1.5 * 2**30) and settings.max_backlog == 0
    assert settings.extra_sop_classes == ("1.3.12.2.1107.5.9.1", "1.2.3")
    with pytest.raises(SettingsError) as caught:
        load_settings({"BIDSFLUX_ALLOWED_PEERS": "SCANNER1@scanner.example.org", "BIDSFLUX_SPOOL_MIN_FREE": "lots",
                       "BIDSFLUX_STOP_GRACE": "-1", "BIDSFLUX_EXTRA_SOP_CLASSES": "1.2.x"}, secrets_dir=tmp_path)
    text = str(caught.value)
    for name in ("BIDSFLUX_ALLOWED_PEERS", "BIDSFLUX_SPOOL_MIN_FREE", "BIDSFLUX_STOP_GRACE",
                 "BIDSFLUX_EXTRA_SOP_CLASSES"):
        assert name in text
    assert "names are not resolved" in text


def test_allow_list() -> None:
    allow = AllowList.parse((("SCANNER1", "10.0.0.5"), ("*", "192.168.1.0/24"), ("PACS", "*")))
    assert allow.allows("SCANNER1", "10.0.0.5")
    assert not allow.allows("SCANNER1", "10.0.0.6")
    assert allow.allows("ANYONE", "192.168.1.77") and allow.allows("PACS", "8.8.8.8")
    assert allow.allows("SCANNER1", "::ffff:10.0.0.5")  # IPv4-mapped, as a dual-stack socket reports it
    assert not allow.allows("scanner1", "10.0.0.5")  # AE titles are case-sensitive
    assert not allow.allows("SCANNER1", "not an address")
    assert AllowList().allows("WHOEVER", "1.2.3.4")  # no list: everyone


def test_tls_settings_need_all_files(tmp_path: Path) -> None:
    settings = load_settings({"BIDSFLUX_TLS_PORT": "2762", "BIDSFLUX_TLS_CERT_FILE": str(tmp_path / "c.pem")},
                             secrets_dir=tmp_path)
    with pytest.raises(ReceiveError, match="missing: BIDSFLUX_TLS_KEY_FILE, BIDSFLUX_TLS_CA_FILE"):
        EndpointOptions.from_settings(settings)
    with pytest.raises(ReceiveError, match="PLAIN_DICOM=false needs DICOM TLS"):
        EndpointOptions.from_settings(load_settings({"BIDSFLUX_PLAIN_DICOM": "false"}, secrets_dir=tmp_path))
    options = EndpointOptions.from_settings(load_settings({}, secrets_dir=tmp_path))
    assert options == EndpointOptions()  # the defaults match the settings' defaults


def test_every_storage_class_and_transfer_syntax() -> None:
    from pynetdicom.sop_class import _STORAGE_CLASSES

    options = EndpointOptions()
    assert all(options.accepts_abstract(uid) for uid in _STORAGE_CLASSES.values())
    assert "1.2.840.10008.3.1.2.3.3" not in STORAGE_CLASSES  # modality performed procedure step is no storage
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert uid in TRANSFER_SYNTAXES
    assert options.accepts_abstract("1.3.12.2.1107.5.9.1")  # Siemens CSA non-image, by default
    assert not options.accepts_abstract("1.2.840.10008.5.1.4.1.2.1.1")  # a query model


def test_pressure_is_cached_and_says_why() -> None:
    free, waiting, calls = [10 * 2**30], [3], []

    def free_bytes() -> int:
        calls.append(1)
        return free[0]

    pressure = Pressure(free_bytes, lambda: waiting[0], min_free=2**30, max_backlog=5, interval=3600)
    assert pressure.reason() is None and pressure.reason() is None
    assert len(calls) == 1  # evaluated once per interval, not per instance
    free[0] = 2**20
    pressure.interval = 0
    assert "under the 1.07 GB threshold" in (pressure.reason() or "")
    free[0], waiting[0] = 10 * 2**30, 6
    assert "6 studies wait for indexing, over the bound of 5" == pressure.reason()
