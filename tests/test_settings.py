"""Settings: defaults, digest.toml, DIGEST_* variables, errors that name the key and file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.edges.cli import cli
from digest.errors import ConfigError
from digest.settings import declared, load_settings, settings_toml

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_work_without_a_file(tmp_path: Path) -> None:
    loaded = load_settings(env={}, cwd=tmp_path)
    assert loaded.config_path is None
    assert loaded.settings.database_url == "sqlite:///digest.db"
    assert loaded.settings.transport == "outbox"
    assert loaded.settings.lookback_days == 7


def test_layers_file_then_environment_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text(
        'transport = "locmem"\nlookback_days = 10\nfrom_email = "file@x.example"\n'
        'keyword_order = ["Syria", "Iran"]\n[keyword_aliases]\n"Türkiye" = "Turkey"\n',
        encoding="utf-8")
    env = {"DIGEST_LOOKBACK_DAYS": "14", "DIGEST_FROM_EMAIL": "env@x.example",
           "DIGEST_DATABASE_URL": "sqlite:///env.db", "DIGEST_OUTBOX_DIR": "/tmp/ob",
           "DIGEST_BASE_URL": "https://n.example", "DIGEST_SECRET_KEY": "s3cret",
           "DIGEST_TRANSPORT": "outbox"}
    loaded = load_settings(env=env, cwd=tmp_path, overrides={"from_email": "flag@x.example"})
    s = loaded.settings
    assert s.lookback_days == 14 and loaded.sources["lookback_days"] == "env DIGEST_LOOKBACK_DAYS"
    assert s.from_email == "flag@x.example"
    assert (s.database_url, s.outbox_dir, s.base_url, s.secret_key, s.transport) == (
        "sqlite:///env.db", "/tmp/ob", "https://n.example", "s3cret", "outbox")
    assert s.keyword_order == ["Syria", "Iran"]
    assert s.keyword_aliases == {"Türkiye": "Turkey"}


def test_config_from_option_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text("lookback_days = 3\n", encoding="utf-8")
    assert load_settings(path, env={}).settings.lookback_days == 3
    assert load_settings(env={"DIGEST_CONFIG": str(path)}).settings.lookback_days == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text('databse_url = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert "databse_url" in str(info.value)
    assert str(tmp_path / "digest.toml") in str(info.value)
    assert info.value.hint and "database_url" in info.value.hint


@pytest.mark.parametrize(("line", "key"), [
    ('lookback_days = "seven"', "lookback_days"),
    ("from_email = 3", "from_email"),
    ('transport = "pigeon"', "transport"),
    ('keyword_order = "Syria"', "keyword_order"),
    ("batch_size = 5000", "batch_size"),
])
def test_wrong_type_names_key_and_file(tmp_path: Path, line: str, key: str) -> None:
    (tmp_path / "digest.toml").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert key in str(info.value) and "digest.toml" in str(info.value)


def test_wrong_type_in_environment_names_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DIGEST_FETCH_TIMEOUT"):
        load_settings(env={"DIGEST_FETCH_TIMEOUT": "soon"}, cwd=tmp_path)


def test_broken_toml_names_file(tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text("lookback_days = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={}, cwd=tmp_path)


def test_config_command_masks_secrets(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text('smtp_password = "hunter2"\n', encoding="utf-8")
    result = runner.invoke(cli, ["config"], env={"DIGEST_SECRET_KEY": "topsecret",
                                                 "SENDGRID_API_KEY": "SG.abc"})
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "topsecret" not in result.output
    assert "SG.abc" not in result.output
    assert result.output.count("********") >= 3
    assert "smtp_password" in result.output


def test_config_command_reports_bad_file_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "digest.toml").write_text("nonsense = 1\n", encoding="utf-8")
    result = runner.invoke(cli, ["config"])
    assert result.exit_code == 1
    assert "nonsense" in result.output and "Traceback" not in result.output


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", doc, re.MULTILINE))
    names = {info.name for info in declared()}
    assert names - documented == set(), "add these to docs/settings.md"
    assert documented - names == set(), "docs/settings.md lists settings that do not exist"
    for info in declared():
        assert info.help, info.name


def test_settings_written_as_toml_read_back_the_same(tmp_path: Path) -> None:
    values = {
        "from_name": 'The "Recap" Desk \\ back\tslash\nline\x7f\x01',
        "lookback_days": 14, "fetch_timeout": 2.5, "keyword_order": ["Syria", "إيران"],
        "keyword_aliases": {"Türkiye": "Turkey", "a b": "c", "x.y": "z", "": "empty"},
        "keyword_rules": {"Israel": ["Golan", "Knesset"], "Iran": []},
    }
    (tmp_path / "digest.toml").write_text(settings_toml(values, comment="one\ntwo"),
                                          encoding="utf-8")
    loaded = load_settings(env={}, cwd=tmp_path).settings
    for key, value in values.items():
        assert getattr(loaded, key) == value, key
    with pytest.raises(ConfigError, match="lookback_dayz"):
        settings_toml({"lookback_dayz": 1})
