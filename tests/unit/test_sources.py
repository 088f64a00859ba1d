"""Sources config: parsing, one-line errors (exit 2), how flags and the file combine."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from archiver.cli import main
from archiver.errors import ConfigError
from archiver.ids import IdLine, RejectedLine, parse_id_lines
from archiver.settings import Settings
from archiver.sources import SourceRouting, load_config, served_sources, source_settings

EXAMPLE = """
[sources.default]                      # rows without a source use this one
base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1"
api_key_env = "DASHSCOPE_API_KEY"      # or api_key_file = "/etc/archiver/dashscope.key"
provider = "dashscope"                 # optional, else by host
concurrency = 32                       # per process
max_rps = 50                           # for the whole fleet
include = []                           # default by provider
retention_days = 7                     # optional, else by provider
webhook_secret_file = "/etc/archiver/whsec"
[sources.openai-proj-a]
base_url = "https://api.openai.com/v1"
api_key_file = "KEYFILE"
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging onto capsys's stream, closed after the test: undo it."""
    saved, last_resort = structlog.get_config(), logging.lastResort
    yield
    structlog.configure(**saved)
    logging.lastResort = last_resort


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sources.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_readme_example_loads_and_makes_one_settings_per_source(tmp_path: Path) -> None:
    key_file = tmp_path / "proj-a.key"
    key_file.write_text("sk-proj-a-key\n")
    config = load_config(write(tmp_path, EXAMPLE.replace("KEYFILE", str(key_file))))
    assert list(config) == ["default", "openai-proj-a"]
    served = source_settings(Settings(), config, {"DASHSCOPE_API_KEY": "sk-dash"})
    default, proj = served["default"], served["openai-proj-a"]
    assert (default.source, default.api_key, default.profile) == ("default", "sk-dash", "dashscope")
    assert (default.concurrency, default.max_rps, default.include_values) == (32, 50.0, ())
    assert default.retention_days == 7.0
    assert default.webhook_secret_file == "/etc/archiver/whsec"  # noqa: S105 (a path)
    assert (proj.source, proj.api_key, proj.profile) == ("openai-proj-a", "sk-proj-a-key", "openai")
    # Nothing of default's leaks into another source: its own provider defaults apply.
    assert proj.max_rps is None and proj.webhook_secret_file is None and proj.retention_days is None
    assert "reasoning.encrypted_content" in proj.include_values
    assert proj.concurrency == Settings().concurrency


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sources.a]\nbase_url = 'https://x.example/v1'\napi_key = 'sk-123'\n", "api_key is refused"),
        ("[sources.a]\nbase_url = 'https://x.example/v1'\ncolour = 1\n", "unknown key 'colour'"),
        (
            "[sources.a]\nbase_url = 'https://x.example/v1'\nconcurrency = '8'\n",
            "concurrency must be a whole number",
        ),
        ("[sources.a]\nbase_url = 'https://x.example/v1'\nmax_rps = true\n", "max_rps must be a number"),
        ("[sources.a]\nbase_url = 'https://x.example/v1'\nmax_rps = -1\n", "max_rps must be positive"),
        ("[sources.a]\nbase_url = 'https://x.example/v1'\nprovider = 'acme'\n", "provider must be one of"),
        (
            "[sources.a]\nbase_url = 'https://x.example/v1'\ninclude = [1]\n",
            "include must be a list of strings",
        ),
        ("[sources.a]\nprovider = 'openai'\n", "base_url is required"),
        ("[sources.a]\nbase_url = 'x'\napi_key_env = 'A'\napi_key_file = 'f'\n", "not both"),
        ("[sources.a]\nbase_url = 'x'\napi_key_credential = 'k'\napi_key_file = 'f'\n", "not both"),
        ("[sources.a]\nbase_url = 'x'\napi_key_credential = '../k'\n", "must be a systemd credential name"),
        ("[sources.'bad name']\nbase_url = 'https://x.example/v1'\n", "the name must be"),
        ("[sources.a]\nbase_url = 'https://x.example/v1'\n[other]\n", "unknown key 'other'"),
        ("# nothing\n", "no [sources.NAME] table"),
        ("[sources.a]\nbase_url = 'https://x.example/v1\n", "TOML syntax error"),
    ],
)
def test_a_bad_config_is_one_line_naming_what_is_wrong(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert "sk-123" not in message


def test_a_key_by_credential_name_is_read_from_the_running_units_credentials(tmp_path: Path) -> None:
    """``api_key_credential`` names a systemd credential: the same config serves every unit
    that loads it (the daemon, a backfill), each from its own $CREDENTIALS_DIRECTORY."""
    config = load_config(
        write(tmp_path, "[sources.a]\nbase_url = 'https://x.example/v1'\napi_key_credential = 'a.key'\n")
    )
    for unit_name in ("archiver.service", "archiver-backfill@may.service"):
        directory = tmp_path / "credentials" / unit_name
        directory.mkdir(parents=True)
        (directory / "a.key").write_text(f"sk-{unit_name}\n")
        served = source_settings(Settings(), config, {"CREDENTIALS_DIRECTORY": str(directory)})
        assert served["a"].api_key == f"sk-{unit_name}"
    for env, why in (
        ({}, "this process has no systemd credentials ($CREDENTIALS_DIRECTORY is not set)"),
        ({"CREDENTIALS_DIRECTORY": str(tmp_path)}, f"not among this unit's credentials ({tmp_path})"),
    ):
        with pytest.raises(ConfigError) as caught:
            source_settings(Settings(), config, env)
        message = str(caught.value)
        assert why in message and "add LoadCredential=a.key:/etc/archiver/a.key to its unit" in message
    # Commands that need no key (status, check, enqueue) never look for it.
    assert source_settings(Settings(), config, {}, with_keys=False)["a"].api_key is None


def test_a_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    text = "[sources.a]\nbase_url = 'https://x.example/v1'\n\nconcurrency = = 3\n"
    with pytest.raises(ConfigError, match=r"line 4"):
        load_config(write(tmp_path, text))


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("command", ["status", "enqueue", "check", "run"])
def test_every_command_exits_2_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "[sources.a]\nbase_url = 'https://x.example/v1'\napi_key = 'sk-live-123'\n")
    assert main([command, "--config", path, "--database-url", f"sqlite:///{tmp_path}/a.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "api_key is refused" in err and "sk-live-123" not in err
    assert not (tmp_path / "a.db").exists()


def test_the_config_variable_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVER_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["status", "--database-url", f"sqlite:///{tmp_path}/a.db"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_a_per_source_flag_and_a_default_table_conflict(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[sources.default]\nbase_url = 'https://x.example/v1'\n"))
    flags = Settings(base_url="https://y.example/v1", explicit=frozenset({"base_url"}))
    with pytest.raises(ConfigError, match=r"--base-url and \[sources.default\].*both define"):
        source_settings(flags, config, {})
    with pytest.raises(ConfigError, match="--api-key-file"):
        source_settings(Settings(), config, {}, api_key_file="/k")


def test_flags_make_default_when_the_file_has_none(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[sources.a]\nbase_url = 'https://a.example/v1'\napi_key_env = 'KA'\n")
    )
    env = {"KA": "sk-a", "ARCHIVER_API_KEY": "sk-default"}
    flags = Settings(base_url="https://d.example/v1", explicit=frozenset({"base_url"}), api_key="sk-default")
    served = source_settings(flags, config, env)
    assert {name: s.base_url for name, s in served.items()} == {
        "default": "https://d.example/v1",
        "a": "https://a.example/v1",
    }
    assert served["default"].api_key == "sk-default" and served["a"].api_key == "sk-a"
    # Neither a base URL nor a key: `default` is not served, and status/check say so.
    assert list(source_settings(Settings(), config, {"KA": "sk-a"})) == ["a"]
    assert served_sources(Settings(), config, {}) == ["a"]
    assert served_sources(Settings(), None, {}) == ["default"]


def test_a_key_variable_that_is_not_set_is_named(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[sources.a]\nbase_url = 'https://a.example/v1'\napi_key_env = 'KA'\n")
    )
    with pytest.raises(ConfigError, match="source 'a': variable KA"):
        source_settings(Settings(), config, {})
    assert source_settings(Settings(), config, {}, with_keys=False)["a"].api_key is None


def test_a_bad_value_of_a_source_names_the_source(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[sources.a]\nbase_url = 'http://a.example/v1'\n"))
    with pytest.raises(ConfigError, match=r"source 'a': base URL .* plain http://"):
        source_settings(Settings(), config, {}, with_keys=False)


def test_json_lines_carry_their_source_and_routing_checks_it() -> None:
    lines = list(
        parse_id_lines(['{"id": "resp_1", "source": "a"}', "resp_2", '{"id": "resp_3", "source": "no way"}'])
    )
    assert lines[0] == IdLine(1, "resp_1", None, "a")
    assert lines[1] == IdLine(2, "resp_2")
    assert isinstance(lines[2], RejectedLine) and "source" in lines[2].reason
    routing = SourceRouting("b", frozenset({"default", "a", "b"}))
    assert routing.source_of(lines[0]) == "a"  # type: ignore[arg-type]
    assert routing.source_of(lines[1]) == "b"  # type: ignore[arg-type]
    unknown = routing.source_of(IdLine(7, "resp_7", None, "zz"))
    assert isinstance(unknown, RejectedLine) and "unknown source 'zz'" in unknown.reason
    assert SourceRouting("zz").source_of(lines[1]) == "zz"  # no config: any name


def test_enqueue_source_flag_and_variable_reach_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    db = tmp_path / "a.db"
    config = write(tmp_path, "[sources.a]\nbase_url = 'https://a.example/v1'\n")
    ids = tmp_path / "ids.txt"
    ids.write_text('resp_1\n{"id": "resp_2", "source": "default"}\n')
    url = f"sqlite:///{db}"
    assert main(["enqueue", "--config", config, "--source", "a", "--database-url", url, str(ids)]) == 0
    ids.write_text("resp_3\n")
    monkeypatch.setenv("ARCHIVER_SOURCE", "other")
    assert main(["enqueue", "--database-url", url, str(ids)]) == 0  # no config: any name
    assert main(["enqueue", "--config", config, "--database-url", url, str(ids)]) == 2
    assert "unknown source 'other'" in capsys.readouterr().err
    monkeypatch.setenv("ARCHIVER_SOURCE", "bad name")
    assert main(["enqueue", "--database-url", url, str(ids)]) == 2
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT id, source FROM archive_queue"))
    assert rows == {"resp_1": "a", "resp_2": "default", "resp_3": "other"}


def test_run_refuses_a_source_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ARCHIVER_API_KEY", "DASHSCOPE_API_KEY", "ARCHIVER_API_KEY_FILE", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    config = write(tmp_path, "[sources.proj-a]\nbase_url = 'https://api.openai.com/v1'\n")
    url = f"sqlite:///{tmp_path}/a.db"
    assert main(["run", "--once", "--config", config, "--database-url", url]) == 2
    assert "source 'proj-a': no API key" in capsys.readouterr().err
    assert not (tmp_path / "a.db").exists()
