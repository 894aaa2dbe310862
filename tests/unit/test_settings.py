"""Settings: defaults, precedence of .env / environment / secret files, and error reporting.

Every test passes ``env_file`` and ``secrets_dir`` explicitly (or runs in an
empty working directory) so that neither the developer's ``./.env`` nor the
machine's ``/run/secrets`` can leak in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bidsflux.errors import SettingsError
from bidsflux.settings import Settings, load_settings, read_env_file, setting_names

SECRET = "glpat-s3cr3t-Value-XYZ"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def empty_secrets(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    return folder


def load(environ: dict[str, str], tmp_path: Path, **kwargs) -> Settings:
    kwargs.setdefault("secrets_dir", tmp_path / "no-secrets-here")
    return load_settings(environ, **kwargs)


# -- defaults -----------------------------------------------------------------

def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env to pick up
    settings = load({}, tmp_path)
    assert settings.storescp_aet == "BIDSFLUX"
    assert settings.storescp_port == 11112
    assert settings.quiet_period == 60.0
    assert settings.log_level == "INFO"
    assert settings.storage_type == "local"
    assert settings.forge_type == "local"
    assert settings.forge_token is None
    assert settings.bids_auto_merge is True
    assert settings.group_template == "{ReferringPhysicianName}/{StudyDescriptionPath[1]}"
    assert settings.workdir == (tmp_path / "bidsflux-work").resolve()
    assert settings.ledger_path == settings.workdir / "ledger.sqlite"
    assert settings.store_dir == settings.workdir / "store"


def test_default_env_file_in_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / ".env", "STORESCP_PORT=4242\n")
    monkeypatch.chdir(tmp_path)
    assert load({}, tmp_path).storescp_port == 4242


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load({}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.storescp_port = 1  # type: ignore[misc]


def test_setting_names_lists_every_variable_once() -> None:
    names = setting_names()
    assert len(names) == len(set(names)) == len(dataclasses.fields(Settings))
    for expected in ("BIDSFLUX_WORKDIR", "STORESCP_AET", "STORESCP_PORT", "BIDSFLUX_QUIET_PERIOD",
                     "GITLAB_INDEXER_GROUP_TEMPLATE", "S3_URL_PATTERN", "BIDSFLUX_STORAGE_TYPE",
                     "BIDSFLUX_FORGE_TOKEN"):
        assert expected in names


# -- precedence -----------------------------------------------------------------

def test_env_file_values_are_parsed_and_typed(tmp_path: Path) -> None:
    env_file = write(tmp_path / "x.env", "\n".join([
        "# a comment",
        "",
        "STORESCP_AET=SCANNER1",
        "export STORESCP_PORT=2000",
        'BIDSFLUX_QUIET_PERIOD="2.5"',
        "BIDSFLUX_AUTO_MERGE='no'",
        "BIDSFLUX_LOG_LEVEL=debug",
    ]) + "\n")
    settings = load({}, tmp_path, env_file=env_file)
    assert settings.storescp_aet == "SCANNER1"
    assert settings.storescp_port == 2000
    assert settings.quiet_period == 2.5
    assert settings.bids_auto_merge is False
    assert settings.log_level == "DEBUG"


def test_environment_overrides_env_file(tmp_path: Path) -> None:
    env_file = write(tmp_path / "x.env", "STORESCP_PORT=2000\nSTORESCP_AET=FROMFILE\n")
    settings = load({"STORESCP_PORT": "3000"}, tmp_path, env_file=env_file)
    assert settings.storescp_port == 3000
    assert settings.storescp_aet == "FROMFILE"


def test_overrides_win_over_environment(tmp_path: Path) -> None:
    settings = load({"STORESCP_PORT": "3000"}, tmp_path, env_file=write(tmp_path / "e.env", ""),
                    overrides={"storescp_port": 5000})
    assert settings.storescp_port == 5000


def test_read_env_file_returns_the_mapping(tmp_path: Path) -> None:
    env_file = write(tmp_path / "x.env", 'A=1\n  B = "two words"  \n#C=3\nexport D=\n')
    assert read_env_file(env_file) == {"A": "1", "B": "two words", "D": ""}


# -- secrets -------------------------------------------------------------------

def test_secret_from_name_file_variable(tmp_path: Path) -> None:
    secret_file = write(tmp_path / "token.txt", SECRET + "\n")
    settings = load({"BIDSFLUX_FORGE_TOKEN_FILE": str(secret_file)}, tmp_path,
                    env_file=write(tmp_path / "e.env", ""))
    assert settings.forge_token == SECRET


def test_secret_from_secrets_dir(tmp_path: Path, empty_secrets: Path) -> None:
    write(empty_secrets / "bidsflux_forge_token", f"  {SECRET}\n")
    settings = load({}, tmp_path, env_file=write(tmp_path / "e.env", ""), secrets_dir=empty_secrets)
    assert settings.forge_token == SECRET


def test_name_file_variable_wins_over_secrets_dir(tmp_path: Path, empty_secrets: Path) -> None:
    write(empty_secrets / "bidsflux_forge_token", "from-dir")
    secret_file = write(tmp_path / "token.txt", "from-file")
    settings = load({"BIDSFLUX_FORGE_TOKEN_FILE": str(secret_file)}, tmp_path,
                    env_file=write(tmp_path / "e.env", ""), secrets_dir=empty_secrets)
    assert settings.forge_token == "from-file"


def test_unreadable_secret_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "absent-token"
    with pytest.raises(SettingsError) as caught:
        load({"BIDSFLUX_FORGE_TOKEN_FILE": str(missing)}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    assert len(caught.value.problems) == 1
    assert "BIDSFLUX_FORGE_TOKEN_FILE" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_secret_never_in_repr(tmp_path: Path) -> None:
    settings = load({"BIDSFLUX_FORGE_TOKEN": SECRET}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    assert settings.forge_token == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "forge_token='***'" in repr(settings)
    # repr still shows the ordinary settings
    assert "storescp_port=11112" in repr(settings)


def test_secret_never_in_error_message(tmp_path: Path, empty_secrets: Path) -> None:
    write(empty_secrets / "bidsflux_forge_token", SECRET)
    with pytest.raises(SettingsError) as caught:
        load({"STORESCP_PORT": "nope"}, tmp_path, env_file=write(tmp_path / "e.env", ""),
             secrets_dir=empty_secrets)
    assert SECRET not in str(caught.value)
    assert all(SECRET not in problem for problem in caught.value.problems)
    assert "STORESCP_PORT" in str(caught.value)


# -- bad values, all at once ---------------------------------------------------

BAD = {
    "STORESCP_PORT": "70000",
    "BIDSFLUX_AUTO_MERGE": "maybe",
    "STORESCP_AET": "BAD\\AET",
    "BIDSFLUX_STORAGE_TYPE": "s3-but-not-supported",
    "BIDSFLUX_QUIET_PERIOD": "-5",
}


def test_every_bad_value_reported_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load(dict(BAD, BIDSFLUX_FORGE_TOKEN=SECRET), tmp_path, env_file=write(tmp_path / "e.env", ""))
    error = caught.value
    assert len(error.problems) == len(BAD)
    for name in BAD:
        assert sum(name in problem for problem in error.problems) == 1, name
        assert name in str(error)
    assert SECRET not in str(error)
    assert error.exit_code == 2


@pytest.mark.parametrize(("name", "value"), [
    ("STORESCP_PORT", "eleven"),
    ("STORESCP_PORT", "-1"),
    ("STORESCP_PORT", "65536"),
    ("STORESCP_PORT", ""),
    ("BIDSFLUX_AUTO_MERGE", "2"),
    ("STORESCP_AET", "A" * 17),
    ("STORESCP_AET", "X\\Y"),
    ("STORESCP_AET", ""),
    ("STORESCP_AET", "   "),
    ("STORESCP_AET", "ÄRZTE"),
    ("BIDSFLUX_STORAGE_TYPE", "minio"),
    ("BIDSFLUX_FORGE_TYPE", "gitlab-maybe"),
    ("BIDSFLUX_QUIET_PERIOD", "0"),
    ("BIDSFLUX_QUIET_PERIOD", "soon"),
    ("BIDSFLUX_QUIET_PERIOD", "nan"),
    ("BIDSFLUX_LOG_LEVEL", "LOUD"),
])
def test_single_bad_value_is_named(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({name: value}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(name)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("STORESCP_AET", "A" * 16, "A" * 16),
    ("STORESCP_PORT", "0", 0),
    ("STORESCP_PORT", "65535", 65535),
    ("BIDSFLUX_AUTO_MERGE", " ON ", True),
    ("BIDSFLUX_QUIET_PERIOD", "0.01", 0.01),
])
def test_edge_values_accepted(tmp_path: Path, name: str, value: str, expected: object) -> None:
    settings = load({name: value}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    field = next(f.name for f in dataclasses.fields(Settings) if f.metadata["env"] == name)
    assert getattr(settings, field) == expected


def test_malformed_env_line_reported_with_file_and_line(tmp_path: Path) -> None:
    env_file = write(tmp_path / "bad.env", "STORESCP_PORT=2000\n# fine\nthis line has no equals\n")
    with pytest.raises(SettingsError) as caught:
        read_env_file(env_file)
    assert caught.value.problems == [f"{env_file}:3: expected NAME=value"]


def test_malformed_env_line_reported_with_the_other_problems(tmp_path: Path) -> None:
    env_file = write(tmp_path / "bad.env", f"1BAD={SECRET}\nSTORESCP_AET=OK\n")
    with pytest.raises(SettingsError) as caught:
        load({"STORESCP_PORT": "x"}, tmp_path, env_file=env_file)
    problems = caught.value.problems
    assert len(problems) == 2
    assert any(f"{env_file}:1" in p for p in problems)
    assert any(p.startswith("STORESCP_PORT") for p in problems)
    assert SECRET not in str(caught.value)


def test_missing_env_file_is_a_settings_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.env"
    with pytest.raises(SettingsError) as caught:
        load({}, tmp_path, env_file=missing)
    assert str(missing) in str(caught.value)


# -- workdir -------------------------------------------------------------------

def test_relative_workdir_comes_back_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load({"BIDSFLUX_WORKDIR": "sub/../work"}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    assert settings.workdir.is_absolute()
    assert settings.workdir == tmp_path.resolve() / "work"
    assert settings.spool_dir == settings.workdir / "spool"


def test_workdir_override_comes_back_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load({}, tmp_path, env_file=write(tmp_path / "e.env", ""), overrides={"workdir": Path("w2")})
    assert settings.workdir == tmp_path.resolve() / "w2"


def test_workdir_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load({"BIDSFLUX_WORKDIR": "~/wd"}, tmp_path, env_file=write(tmp_path / "e.env", ""))
    assert settings.workdir == tmp_path.resolve() / "wd"
