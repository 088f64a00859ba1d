"""``--config`` files a careless operator or a hostile generator writes: every command
checks the file, and a bad one is one line and exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.timeout(60)

SOURCE = '[sources.a]\nbase_url = "http://127.0.0.1:9/v1"\n'


@pytest.mark.parametrize(
    "nested",
    [
        pytest.param("x = " + "[" * 5000 + "]" * 5000 + "\n", id="arrays"),
        pytest.param("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", id="inline-tables"),
    ],
)
@pytest.mark.parametrize("command", ["status", "check", "enqueue"])
def test_a_config_nested_past_the_parsers_depth_is_one_line(
    sqlite_cli: Cli, tmp_path: Path, nested: str, command: str
) -> None:
    config = tmp_path / "sources.toml"
    config.write_text(SOURCE + nested)
    assert sqlite_cli("migrate").returncode == 0
    done = sqlite_cli(command, "--config", str(config), input=b"")
    err = done.stderr.decode()
    assert "Traceback" not in err and "RecursionError" not in err, err[-2000:]
    assert done.returncode == 2, err
    assert err.startswith("archiver: error: config file ") and len(err.splitlines()) == 1, err
    assert str(config) in err


def test_a_config_saved_with_a_byte_order_mark_and_crlf_is_read(sqlite_cli: Cli, tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: the file looks right, and was refused as a
    'TOML syntax error: Invalid statement (at line 1, column 1)'."""
    config = tmp_path / "sources.toml"
    config.write_bytes(b"\xef\xbb\xbf" + SOURCE.replace("\n", "\r\n").encode())
    assert sqlite_cli("migrate").returncode == 0
    done = sqlite_cli("status", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr.decode()
