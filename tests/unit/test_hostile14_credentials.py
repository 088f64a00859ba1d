"""``api_key_credential`` names only what systemd can load: ``LoadCredential=ID:PATH``
splits at the first colon, so a name with ``:`` is never a credential of any unit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from archiver.errors import ConfigError
from archiver.settings import Settings
from archiver.sources import load_config, source_settings


def _config(tmp_path: Path, name: str) -> str:
    path = tmp_path / "sources.toml"
    path.write_text(f"[sources.a]\nbase_url = 'https://x.example/v1'\napi_key_credential = '{name}'\n")
    return str(path)


def test_a_credential_name_with_a_colon_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    """'proj:a' was accepted; the line archiver then asks for,
    LoadCredential=proj:a:/etc/archiver/proj:a, is ignored by systemd ('Credential source
    "a:/etc/archiver/proj:a" not valid'), so the unit never has the key."""
    with pytest.raises(ConfigError, match="must be a systemd credential name"):
        load_config(_config(tmp_path, "proj:a"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_load_credential_line_archiver_asks_for_is_one_systemd_takes(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "proj-a.key"))
    with pytest.raises(ConfigError) as caught:
        source_settings(Settings(), config, {})
    line = str(caught.value).split("add ", 1)[1].split(" to its unit", 1)[0]
    assert line.startswith("LoadCredential=")
    unit = tmp_path / "h14.service"
    unit.write_text(f"[Unit]\nDescription=h14\n\n[Service]\nExecStart=/bin/true\n{line}\n")
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "not valid" not in out.stderr, out.stderr


def test_a_key_with_a_space_is_refused_saying_so(tmp_path: Path) -> None:
    """A key pasted with a space ('sk-abc def') was refused as having 'a line break, a
    control character or a character outside ASCII': none of which it has."""
    config = load_config(_config(tmp_path, "a.key"))
    (tmp_path / "a.key").write_text("sk-h14canary0123 4567\n")
    with pytest.raises(ConfigError) as caught:
        source_settings(Settings(), config, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    message = str(caught.value)
    assert "space" in message, message
    assert "h14canary" not in message
