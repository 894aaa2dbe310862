""".env.example documents every setting, and only settings that exist (or deployment variables)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bidsflux.settings import Settings, load_settings, read_env_file, setting_names

from .test_deploy_env import compose_variables, script_variables

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata.get("secret")}


def _documented() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    # Active lines and commented-out examples (optional settings, secrets' *_FILE).
    names = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    return {name.removesuffix("_FILE") if name.removesuffix("_FILE") in SECRETS else name for name in names}


def test_every_setting_is_documented_and_nothing_else() -> None:
    settings = set(setting_names())
    deployment_only = (compose_variables() | script_variables()) - settings
    assert _documented() - deployment_only == settings


def test_the_example_file_loads_as_it_is(tmp_path: Path) -> None:
    values = read_env_file(ROOT / ".env.example")
    settings = load_settings({}, env_file=ROOT / ".env.example", secrets_dir=tmp_path)
    assert settings.storescp_aet == values["STORESCP_AET"]
    assert settings.store_dir == settings.workdir / "store"
