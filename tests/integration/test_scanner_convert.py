"""The synthetic study against real tools: heudiconv/dcm2niix/bids-validator and dcmtk storescp.

These prove the headers are good enough for the real pipeline: ReproIn names
land in the right BIDS places, BOLD stacks to 4D, field maps get IntendedFor
(which needs the Siemens CSA ShimSetting), the validator reports no errors,
and one association delivers every instance to a stock Storage SCP.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import pytest

from bidsflux.errors import ScannerError
from bidsflux.scanner import StudySpec, _send, generate_study, send_study, write_study

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent  # heudiconv, dcm2niix and the validator live in the venv
SES = Path("sub-sub01") / "ses-01"
BOLD_RUNS = [f"ses-01/func/sub-sub01_ses-01_task-rest_run-0{run}_bold.nii.gz" for run in (1, 2)]


def tool_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_ET": "1"}


def require(tool: str) -> str:
    path = shutil.which(tool, path=tool_env()["PATH"])
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small study converted with heudiconv's ReproIn heuristic."""
    heudiconv = require("heudiconv")
    require("dcm2niix")
    root = tmp_path_factory.mktemp("reproin")
    write_study(StudySpec(), root / "dicom")
    out = root / "bids"
    # '-l .' replaces ReproIn's locator (StudyDescription 'Doe^Demo' -> Doe/Demo/) so
    # the dataset lands directly in `out`.
    cmd = [heudiconv, "--files", str(root / "dicom"), "-f", "reproin", "--bids", "-o", str(out),
           "-l", ".", "-c", "dcm2niix", "--overwrite"]
    done = subprocess.run(cmd, check=False, cwd=root, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def shape(path: Path) -> tuple[int, ...]:
    image: Any = nib.load(path)  # a Nifti1Image; nibabel's stubs only promise FileBasedImage
    return tuple(image.shape)


def sidecar(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def test_t1w_lands_in_anat(bids: Path) -> None:
    t1w = bids / SES / "anat" / "sub-sub01_ses-01_T1w.nii.gz"
    assert t1w.is_file()
    assert sorted(shape(t1w)) == [32, 64, 64]  # sagittal slab; axis order is the converter's
    assert "ShimSetting" in sidecar(t1w)


def test_bold_runs_are_4d(bids: Path) -> None:
    runs = sorted((bids / SES / "func").glob("*_bold.nii.gz"))
    assert [r.name for r in runs] == [Path(r).name for r in BOLD_RUNS]
    for run in runs:
        assert shape(run) == (32, 32, 12, 10)
        meta = sidecar(run)
        assert meta["RepetitionTime"] == 2 and meta["TaskName"]
        assert meta["PhaseEncodingDirection"] == "j-"
        assert len(meta["SliceTiming"]) == 12 and max(meta["SliceTiming"]) < 2


def test_fieldmaps_have_intended_for(bids: Path) -> None:
    bold_shims = sidecar(bids / SES / "func" / Path(BOLD_RUNS[0]).name)["ShimSetting"]
    for direction, polarity in (("AP", "j-"), ("PA", "j")):
        epi = bids / SES / "fmap" / f"sub-sub01_ses-01_dir-{direction}_epi.nii.gz"
        assert shape(epi) == (32, 32, 12, 2)
        meta = sidecar(epi)
        assert sorted(meta["IntendedFor"]) == BOLD_RUNS
        assert all((bids / "sub-sub01" / target).is_file() for target in meta["IntendedFor"])
        assert meta["PhaseEncodingDirection"] == polarity and meta["TotalReadoutTime"] > 0
        assert meta["ShimSetting"] == bold_shims


def test_bids_validator_reports_no_errors(bids: Path) -> None:
    validator = require("bids-validator-deno")
    done = subprocess.run([validator, "--format", "json", str(bids)], check=False, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    issues = report["issues"]["issues"]
    errors = [f"{i['code']} {i.get('subCode') or ''} {i.get('location', '')}" for i in issues
              if i["severity"] == "error"]
    warnings = sorted({f"{i['code']}:{i.get('subCode') or ''}" for i in issues if i["severity"] == "warning"})
    print("validator warnings:", ", ".join(warnings))
    assert done.returncode == 0 and not errors, errors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp on a free loopback port, stopped by its PID afterwards."""
    exe = "/usr/bin/storescp"
    if not os.access(exe, os.X_OK):
        pytest.skip("dcmtk storescp is not installed")
    port, out, log = free_port(), tmp_path / "received", tmp_path / "storescp.log"
    out.mkdir()
    with log.open("wb") as sink:
        proc = subprocess.Popen([exe, "--output-directory", str(out.resolve()), "-aet", "BIDSFLUX", str(port)],
                                env={**os.environ, "TCP_NODELAY": "1"}, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:  # poll until it accepts connections instead of sleeping a fixed time
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not start listening"
                time.sleep(0.02)
        yield port, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_send_study_delivers_every_instance(storescp: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    port, out = storescp
    nodelay: list[int] = []
    original = _send.set_nodelay

    def spy(event: Any) -> None:
        original(event)
        raw = event.assoc.dul.socket.socket
        nodelay.append(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(_send, "set_nodelay", spy)
    calls: list[tuple[int, int]] = []
    result = send_study(StudySpec(), "127.0.0.1", port, progress=lambda done, total: calls.append((done, total)))

    assert (result.sent, result.failed, result.series) == (323, 0, 6)
    assert result.bytes > 3_000_000
    assert calls[0] == (1, 323) and calls[-1] == (323, 323) and len(calls) == 323
    assert nodelay == [1]  # one association, and its socket had TCP_NODELAY
    received = {p.name for p in out.iterdir() if p.is_file()}
    assert received == {f"MR.{ds.SOPInstanceUID}" for ds in generate_study(StudySpec())}


def test_send_to_closed_port_names_the_peer() -> None:
    port = free_port()
    with pytest.raises(ScannerError, match=f"cannot reach DICOM peer 127.0.0.1:{port}") as info:
        send_study(StudySpec(), "127.0.0.1", port)
    assert info.value.hint and "listening" in info.value.hint


def test_rejected_association_names_the_ae_titles() -> None:
    from pynetdicom import AE, AllStoragePresentationContexts

    ae = AE(ae_title="SOMEONE_ELSE")
    ae.require_called_aet = True  # reject anything not addressed to SOMEONE_ELSE
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        port = server.server_address[1]
        with pytest.raises(ScannerError, match=f"127.0.0.1:{port} rejected the association"):
            send_study(StudySpec(), "127.0.0.1", port, called_aet="BIDSFLUX")
    finally:
        server.shutdown()


def test_implicit_only_peer_and_non_success_statuses_are_counted() -> None:
    from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage
    from pynetdicom import AE, evt
    from pynetdicom.dimse_primitives import C_STORE

    seen: list[str] = []

    def on_store(event: evt.Event) -> int:
        seen.append(event.context.transfer_syntax)
        # warn about the scout: a warning is not a clean store, so it counts as failed
        return 0xB000 if cast(C_STORE, event.request).AffectedSOPInstanceUID in scout else 0x0000

    scout = {ds.SOPInstanceUID for ds in generate_study(StudySpec()) if ds.SeriesNumber == 1}
    ae = AE(ae_title="BIDSFLUX")
    ae.add_supported_context(MRImageStorage, ImplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        result = send_study(StudySpec(), "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
    assert (result.sent, result.failed, result.series) == (320, 3, 6)
    assert set(seen) == {ImplicitVRLittleEndian}
