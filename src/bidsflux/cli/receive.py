"""Commands for sites that keep their own receiver, and for the routing rules.

``bidsflux index STUDY_DIR`` (from dcmtk ``storescp --exec-on-eostudy``),
``bidsflux mercure-module`` (a mercure processing module) and ``bidsflux
check-rules FILE``.  The two imports put the study into the spool as a
completed batch; ``bidsflux serve`` (``--no-endpoint`` when storescp or
mercure receives) then processes it like a study received natively.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._core import settings_from


def register(sub: Any) -> None:
    index = sub.add_parser("index", help="put a study folder written by another receiver (storescp) into the "
                                         "spool, as a completed study")
    index.add_argument("study_dir", type=Path, help="the folder (storescp --exec-on-eostudy: '#p')")
    index.add_argument("--remove", action="store_true", help="remove the imported files once they are safe")
    index.add_argument("--source", default="storescp", help="name of the receiver, for the ledger")
    index.add_argument("--calling-aet", help="the sender's AE title (storescp: #a)")
    index.add_argument("--peer", help="the sender's host (storescp: #r)")
    index.add_argument("--workdir", type=Path)
    index.set_defaults(func=cmd_index)

    mercure = sub.add_parser("mercure-module", help="run as a mercure processing module (task.json contract)")
    mercure.add_argument("--in", dest="in_dir", type=Path, help="input folder (default $MERCURE_IN_DIR)")
    mercure.add_argument("--out", dest="out_dir", type=Path, help="output folder (default $MERCURE_OUT_DIR)")
    mercure.add_argument("--workdir", type=Path)
    mercure.set_defaults(func=cmd_mercure)

    check = sub.add_parser("check-rules", help="check a routing rules file and show its rules")
    check.add_argument("rules_file", type=Path)
    check.set_defaults(func=cmd_check_rules)


def _import(args: argparse.Namespace, folder: Path, *, source: str, calling_aet: str | None, peer: str | None,
            remove: bool, note: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from ..assemble import import_folder
    from ..ledger import Ledger
    from ..receive import Spool
    from ..routing import rules_from_settings

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="give the study folder the receiver wrote")
    settings = settings_from(args, workdir=args.workdir)
    rules = rules_from_settings(settings)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    spool = Spool(settings.spool_dir, recover=False)  # the serve process owns recovery
    ledger = Ledger(settings.ledger_path)
    try:
        result = import_folder(spool, ledger, rules, folder.resolve(), source=source, calling_aet=calling_aet,
                               peer=peer, remove=remove, note=note)
    finally:
        ledger.close()
    for batch in result.batches:
        print(f"study {batch.study_uid}: batch {batch.batch_id} handed on")
    for path, why in result.skipped:
        print(f"skipped {path}: {why}")
    for path, kept in result.quarantined:
        print(f"quarantined {path} (kept at {kept})")
    print(f"{result.instances} instances imported, {result.duplicates} duplicates, {result.conflicts} conflicts, "
          f"{len(result.quarantined)} quarantined, {len(result.skipped)} skipped")
    summary = {"batches": [{"study": b.study_uid, "batch": b.batch_id} for b in result.batches],
               "instances": result.instances, "duplicates": result.duplicates, "conflicts": result.conflicts,
               "quarantined": result.quarantined, "skipped": result.skipped}
    return (0 if result.batches or not (result.quarantined or result.skipped) else 1), summary


def _unquote(value: str | None) -> str | None:
    # storescp puts its #a and #c values in double quotes.
    return value.strip().strip('"').strip() or None if value else None


def cmd_index(args: argparse.Namespace) -> int:
    code, _ = _import(args, args.study_dir, source=args.source, calling_aet=_unquote(args.calling_aet),
                      peer=_unquote(args.peer), remove=args.remove, note={})
    return code


def cmd_mercure(args: argparse.Namespace) -> int:
    in_dir = args.in_dir or (Path(os.environ["MERCURE_IN_DIR"]) if os.environ.get("MERCURE_IN_DIR") else None)
    out_dir = args.out_dir or (Path(os.environ["MERCURE_OUT_DIR"]) if os.environ.get("MERCURE_OUT_DIR") else None)
    if in_dir is None or out_dir is None:
        raise UsageError("mercure-module needs its input and output folders",
                         hint="mercure sets MERCURE_IN_DIR and MERCURE_OUT_DIR; or give --in and --out")
    try:
        task = json.loads((in_dir / "task.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {in_dir / 'task.json'}: {exc}", hint="mercure writes task.json into the "
                                                                            "input folder") from exc
    info = task.get("info") if isinstance(task.get("info"), dict) else {}
    note = {"mercure_task": str(task.get("id", ""))[:64], "mercure_rule": str(info.get("applied_rule") or "")[:64],
            "mercure_uid": str(info.get("uid", ""))[:64], "mercure_uid_type": str(info.get("uid_type", ""))[:16]}
    code, summary = _import(args, in_dir, source="mercure", calling_aet=None,
                            peer=str(info.get("sender_address") or "")[:128] or None, remove=False, note=note)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bidsflux-result.json").write_text(json.dumps({**summary, **note}, indent=1, sort_keys=True))
    if not (out_dir / "task.json").exists():
        shutil.copyfile(in_dir / "task.json", out_dir / "task.json")
    return code


def cmd_check_rules(args: argparse.Namespace) -> int:
    from ..routing import Route, load_rules

    rules = load_rules(args.rules_file, Route(rule="default"))
    for rule in rules.rules:
        shown = ", ".join(f"{p.keyword} {'!~' if p.negate else '~'} /{p.regex.pattern}/" for p in rule.patterns)
        print(f"{rule.name}: {shown} -> {json.dumps(rule.route.as_json(), sort_keys=True)}")
    print(f"default -> {json.dumps(rules.default.as_json(), sort_keys=True)}")
    return 0
