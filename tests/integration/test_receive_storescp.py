"""Sites that keep their receiver: real dcmtk storescp (indexer/storescp-receive) and the mercure
module contract end in the same batch, route and ledger record as the native endpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from bidsflux.assemble import AssembleOptions, Assembler
from bidsflux.cli import main
from bidsflux.ledger import Ledger, State
from bidsflux.receive import Batch, Endpoint, EndpointOptions, Spool
from bidsflux.routing import rules_from_settings
from bidsflux.scanner import StudySpec, study_uid, write_study
from bidsflux.settings import Settings

from ..conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
RULES = "rules:\n  - name: demo\n    match: {StudyDescription: '^Doe'}\n    pipelines: [mriqc]\n    priority: 2\n"
DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    for path in write_study(StudySpec(seed=11), tmp_path_factory.mktemp("all")):
        if path.parent.name.startswith(("01-", "02-", "03-")):  # three series are enough
            shutil.copyfile(path, folder / f"{path.parent.name}-{path.name}")
    return folder


def _content(batch_dir: Path) -> dict[str, dict[str, bytes]]:
    """series -> SOP -> pixel data, and nothing else in the batch but route.json and batch.json."""
    assert sorted(p.name for p in batch_dir.iterdir() if p.is_file()) == ["batch.json", "route.json"]
    found: dict[str, dict[str, bytes]] = {}
    for path in batch_dir.glob("*/*.dcm"):
        ds = pydicom.dcmread(path)
        found.setdefault(path.parent.name, {})[ds.SOPInstanceUID] = ds.PixelData
    return found


def _native(study: Path, workdir: Path, rules_file: Path) -> Batch:
    spool = Spool(workdir / "spool", journal_segment_bytes=1 << 23, journal_spare=0)
    endpoint = Endpoint(spool, aet="BIDSFLUX", host="127.0.0.1", port=0, options=EndpointOptions(min_free_bytes=0))
    ledger = Ledger(workdir / "ledger.sqlite")
    settings = Settings().replace(routing_rules=rules_file, group_template="{ReferringPhysicianName}")
    rules = rules_from_settings(settings)  # as `bidsflux index` builds them from the same settings
    assembler = Assembler(spool, endpoint.state, ledger, 30, options=AssembleOptions(0.5, 3600, rules))
    try:
        sent = subprocess.run(["/usr/bin/storescu", "-aet", "SCANNER", "-aec", "BIDSFLUX", "+sd", "127.0.0.1",
                               str(endpoint.port), str(study)], env=DCMTK_ENV, capture_output=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while not (batches := assembler.tick()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        endpoint.stop(grace=2)
        ledger.close()
    [batch] = batches
    return batch


def test_storescp_exec_on_eostudy_gives_the_native_outcome(study: Path, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(RULES)
    workdir, port = tmp_path / "work", free_port()
    env = {**os.environ, "BIDSFLUX_WORKDIR": str(workdir), "STORESCP_PORT": str(port),
           "STORESCP_EOSTUDY_TIMEOUT": "1", "BIDSFLUX_ROUTING_RULES": str(rules_file),
           "GITLAB_INDEXER_GROUP_TEMPLATE": "{ReferringPhysicianName}"}
    receiver = subprocess.Popen([str(ROOT / "indexer" / "storescp-receive")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    uid = study_uid(StudySpec(seed=11))
    try:
        wait_for_port("127.0.0.1", port)
        sent = subprocess.run(["/usr/bin/storescu", "-aet", "SCANNER", "-aec", "BIDSFLUX", "+sd", "127.0.0.1",
                               str(port), str(study)], env=DCMTK_ENV, capture_output=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while not list((workdir / "spool" / "complete").glob(f"{uid}@*")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(receiver.pid, signal.SIGTERM)  # storescp, and an exec still running: the group it leads
        try:
            receiver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait(timeout=30)
    [imported] = (workdir / "spool" / "complete").glob(f"{uid}@*")
    assert not [p for p in (workdir / "storescp").rglob("*") if p.is_file()]  # --remove: nothing left behind

    native = _native(study, tmp_path / "native", rules_file)
    assert _content(imported) == _content(native.path)
    assert json.loads((imported / "route.json").read_text()) == json.loads((native.path / "route.json").read_text())
    assert json.loads((imported / "route.json").read_text())["rule"] == "demo"
    ledger = Ledger(workdir / "ledger.sqlite")
    record = ledger.require(uid)
    ledger.close()
    assert record.state is State.COMPLETE and record.instances == len(list(study.iterdir()))
    assert record.calling_aet == "SCANNER"  # from the files' meta information, never from the shell
    assert record.details["route"]["pipelines"] == ["mriqc"]


def test_mercure_module_contract(study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for path in study.iterdir():  # mercure names files <series UID>#<SOP UID>.dcm, flat
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        shutil.copyfile(path, in_dir / f"{ds.SeriesInstanceUID}#{ds.SOPInstanceUID}.dcm")
    task = {"id": "task-1", "info": {"uid": study_uid(StudySpec(seed=11)), "uid_type": "study",
                                     "applied_rule": "to-bidsflux", "sender_address": "10.1.2.3", "action": "process"},
            "process": {"module_name": "bidsflux", "settings": {}, "retain_input_images": False}}
    (in_dir / "task.json").write_text(json.dumps(task))
    monkeypatch.setenv("MERCURE_IN_DIR", str(in_dir))
    monkeypatch.setenv("MERCURE_OUT_DIR", str(out_dir))
    monkeypatch.setenv("BIDSFLUX_WORKDIR", str(tmp_path / "work"))
    assert main(["mercure-module"]) == 0
    result = json.loads((out_dir / "bidsflux-result.json").read_text())
    assert result["instances"] == len(list(study.iterdir())) and result["mercure_task"] == "task-1"
    assert json.loads((out_dir / "task.json").read_text())["id"] == "task-1"
    [batch] = (tmp_path / "work" / "spool" / "complete").iterdir()
    assert sum(len(v) for v in _content(batch).values()) == len(list(study.iterdir()))
    ledger = Ledger(tmp_path / "work" / "ledger.sqlite")
    record = ledger.require(study_uid(StudySpec(seed=11)))
    ledger.close()
    assert record.completion_reason == "imported from mercure" and record.peer == "10.1.2.3"
    assert record.details["associations"][0]["mercure_rule"] == "to-bidsflux"
    assert len(list(in_dir.iterdir())) == len(list(study.iterdir())) + 1  # mercure owns its input folder


def test_index_command_reports_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "readme.txt").write_text("hello")
    assert main(["index", str(tmp_path / "st"), "--workdir", str(tmp_path / "work")]) == 1
    assert "skipped" in capsys.readouterr().out
    assert main(["index", str(tmp_path / "missing"), "--workdir", str(tmp_path / "work")]) == 2
