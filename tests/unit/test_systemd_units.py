"""The systemd units in systemd/: hardened, consistent with the CLI and the settings, and valid
according to systemd itself (``systemd-analyze verify``, when it is installed; CI installs it)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.cli import build_parser
from archiver.dburl import normalize_database_url
from archiver.deadline import EXIT_MARGIN_S
from archiver.errors import ConfigError, StopRun
from archiver.options import COMMON_OPTIONS, HTTP_OPTIONS, RUN_OPTIONS
from archiver.settings import CREDENTIAL_NAME, Settings

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
IN_CI = os.environ.get("CI", "").lower() == "true"
INSTALLED_ARCHIVER = "/usr/local/bin/archiver"

SERVICES = sorted(p.name for p in UNIT_DIR.glob("*.service"))
UNITS = sorted(p.name for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer"))

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> (key, value) in order. Units repeat keys (ExecStart=, SystemCallFilter=),
    so configparser's dict-of-keys model does not fit."""
    sections: Unit = {}
    current: str | None = None
    carried = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not carried and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            carried += line[:-1] + " "
            continue
        line, carried = carried + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{path.name}:{number}: not KEY=VALUE in a section: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every assignment of ``key``, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def last(unit: Unit, section: str, key: str) -> str | None:
    """The effective value of a single-valued key (the last assignment wins)."""
    found = values(unit, section, key)
    return found[-1] if found else None


def unit(name: str) -> Unit:
    return parse_unit(UNIT_DIR / name)


def seconds(value: str) -> float:
    """A systemd time span like ``45``, ``45s``, ``2min``, ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


HARDENING = {
    "DynamicUser": "yes",
    "User": "archiver",
    "WorkingDirectory": "/var/lib/archiver",
    "UMask": "0077",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
}


def test_the_expected_units_exist() -> None:
    assert set(UNITS) >= {
        "archiver.service",
        "archiver-backfill@.service",
        "archiver-check.service",
        "archiver-check.timer",
    }
    assert (UNIT_DIR / "archiver.env.example").is_file()


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_hardened(name: str) -> None:
    u = unit(name)
    wrong = {
        key: last(u, "Service", key) for key, want in HARDENING.items() if last(u, "Service", key) != want
    }
    assert not wrong, f"{name}: hardening options missing or different: {wrong}"
    filters = values(u, "Service", "SystemCallFilter")
    assert filters and filters[0] == "@system-service", filters
    assert all(f.startswith("~") for f in filters[1:]), "later filters may only take calls away"
    assert (last(u, "Service", "StateDirectory") or "").split()[0] == "archiver"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_reads_the_same_settings(name: str) -> None:
    u = unit(name)
    assert values(u, "Service", "EnvironmentFile") == ["-/etc/archiver/archiver.env"]
    env = dict(v.split("=", 1) for v in values(u, "Service", "Environment"))
    url = env["ARCHIVER_DATABASE_URL"]
    assert url == "sqlite:////var/lib/archiver/archive.db"
    parsed = normalize_database_url(url)
    # The database lives in the state directory, the one writable place.
    assert parsed.database is not None and parsed.database.startswith("/var/lib/archiver/")
    for key in ("ExecStartPre", "ExecStart"):
        for command in values(u, "Service", key):
            assert shlex.split(command)[0] == INSTALLED_ARCHIVER, command


@pytest.mark.parametrize("name", SERVICES)
def test_every_command_line_is_one_the_cli_accepts(name: str) -> None:
    parser = build_parser()
    u = unit(name)
    commands = [c for key in ("ExecStartPre", "ExecStart") for c in values(u, "Service", key)]
    assert commands
    for command in commands:
        argv = [a.replace("%i", "ids.txt") for a in shlex.split(command)[1:]]
        parser.parse_args(argv)  # exits (SystemExit) on an unknown command or flag


def test_daemon_unit() -> None:
    u = unit("archiver.service")
    s = "Service"
    assert last(u, s, "Type") == "notify"
    assert last(u, s, "NotifyAccess") == "main"
    assert values(u, s, "ExecStartPre") == [f"{INSTALLED_ARCHIVER} migrate"]
    assert values(u, s, "ExecStart") == [f"{INSTALLED_ARCHIVER} run"]
    assert last(u, s, "WatchdogSec") == "60"
    assert last(u, s, "Restart") == "on-failure"
    assert last(u, s, "RestartSec") == "5"
    assert last(u, s, "KillSignal") == "SIGTERM"
    # Restarting cannot fix a bad configuration or a refused key / billing stop.
    prevented = set((last(u, s, "RestartPreventExitStatus") or "").split())
    assert {str(ConfigError.exit_code), str(StopRun.exit_code)} <= prevented
    assert values(u, "Install", "WantedBy") == ["multi-user.target"]
    assert "network-online.target" in (last(u, "Unit", "After") or "")


@pytest.mark.parametrize(
    ("name", "grace"),
    [("archiver.service", True), ("archiver-backfill@.service", True), ("archiver-follow@.service", False)],
)
def test_stop_timeout_outlasts_the_stop_bound(name: str, grace: bool) -> None:
    """The most a stop takes (README "Stopping"), with a margin for a loaded host."""
    u = unit(name)
    stop = last(u, "Service", "TimeoutStopSec")
    assert stop is not None, f"{name}: TimeoutStopSec= missing"
    s = Settings()
    bound = (s.grace_seconds if grace else 0) + s.final_write_seconds + EXIT_MARGIN_S
    assert seconds(stop) >= bound + 10, f"{name}: TimeoutStopSec={stop}, a stop may take {bound} s"


@pytest.mark.parametrize("name", ["archiver.service", "archiver-backfill@.service"])
def test_api_key_comes_as_a_credential(name: str) -> None:
    u = unit(name)
    assert values(u, "Service", "LoadCredential") == [f"{CREDENTIAL_NAME}:/etc/archiver/api_key"]
    text = (UNIT_DIR / name).read_text(encoding="utf-8")
    assert not re.search(r"^\s*Environment=.*(API_KEY|sk-)", text, re.MULTILINE)


def test_backfill_template() -> None:
    u = unit("archiver-backfill@.service")
    s = "Service"
    assert last(u, s, "Type") == "oneshot"  # two ExecStart= lines need it
    assert values(u, s, "ExecStart") == [
        f"{INSTALLED_ARCHIVER} enqueue /var/lib/archiver/backfill/%i",
        f"{INSTALLED_ARCHIVER} run --once",
    ]
    assert last(u, s, "TimeoutStartSec") == "infinity"  # a backfill runs for hours
    assert last(u, s, "KillSignal") == "SIGTERM"
    assert last(u, s, "Restart") in (None, "no")


def test_check_service_and_timer() -> None:
    u = unit("archiver-check.service")
    assert last(u, "Service", "Type") == "oneshot"
    assert values(u, "Service", "ExecStart") == [f"{INSTALLED_ARCHIVER} check"]
    assert not values(u, "Service", "LoadCredential")  # it never calls the provider
    t = unit("archiver-check.timer")
    assert last(t, "Timer", "Unit") == "archiver-check.service"
    assert seconds(last(t, "Timer", "OnUnitActiveSec") or "") == 300
    assert values(t, "Install", "WantedBy") == ["timers.target"]


# --- archiver.env.example ----------------------------------------------------------------


def _readme_configuration_variables() -> set[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Configuration", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {name for row in rows for name in re.findall(r"`(ARCHIVER_[A-Z0-9_]+)`", row)}


def _env_example() -> dict[str, str]:
    found = {}
    for line in (UNIT_DIR / "archiver.env.example").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"#([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_env_example_lists_every_readme_variable() -> None:
    readme = _readme_configuration_variables()
    assert len(readme) >= 15, readme
    missing = readme - set(_env_example())
    assert not missing, f"archiver.env.example lacks {sorted(missing)}"


def test_env_example_sets_nothing_and_holds_no_secret() -> None:
    lines = (UNIT_DIR / "archiver.env.example").read_text(encoding="utf-8").splitlines()
    assert all(not line.strip() or line.startswith("#") for line in lines), "copying it must change nothing"
    example = _env_example()
    for name in ("ARCHIVER_API_KEY", "DASHSCOPE_API_KEY", "ARCHIVER_API_KEY_FILE"):
        assert example.get(name) == "", f"{name} must have no value in the example"


@pytest.mark.parametrize(
    "option",
    [o for o in COMMON_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS if o[1] != "ARCHIVER_DATABASE_URL"],
    ids=lambda o: o[1],
)
def test_env_example_shows_the_real_defaults(option: tuple) -> None:
    _, env_name, field_name, type_, _ = option
    shown = _env_example()[env_name]
    default = getattr(Settings(), field_name)
    value = type_(shown) if shown else None  # an empty value: no default (off, or by provider)
    assert value == default, f"{env_name}={shown} is not the default ({default!r})"


# --- systemd itself ------------------------------------------------------------------------


def _need(what: str, reason: str) -> None:
    message = f"{what}: {reason}"
    if IN_CI:
        pytest.fail(message + " (CI must install Debian's `systemd` package)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        _need("systemd-analyze not found", "apt-get install systemd")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def archiver_script() -> str:
    """The real console script: verify insists that ExecStart= binaries exist."""
    candidates = [Path(sys.executable).parent / "archiver", Path(sys.prefix) / "bin" / "archiver"]
    which = shutil.which("archiver")
    candidates += [Path(which)] if which else []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    pytest.fail(f"the archiver console script is not installed (looked at {candidates})")


@pytest.fixture
def installed_units(tmp_path: Path, archiver_script: str) -> Path:
    """Copies of every unit whose commands point at the real archiver."""
    for path in UNIT_DIR.iterdir():
        if path.suffix in (".service", ".timer"):
            text = path.read_text(encoding="utf-8").replace(INSTALLED_ARCHIVER, archiver_script)
            (tmp_path / path.name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, systemd_analyze: str, installed_units: Path) -> None:
    out = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(installed_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = (out.stdout + out.stderr).strip()
    # verify exits 0 on unknown keys and unparsable values, only printing them.
    ours = [line for line in report.splitlines() if any(u.split("@")[0].split(".")[0] in line for u in UNITS)]
    assert out.returncode == 0 and not ours, f"systemd-analyze verify {name}:\n{report}"


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_security_exposure(name: str, systemd_analyze: str, installed_units: Path) -> None:
    out = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(installed_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "offline" in out.stderr.lower() and out.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {out.stderr.strip()[:200]}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    assert match, f"no exposure level in:\n{out.stdout}\n{out.stderr}"
    # 1.4 with systemd 252; only PrivateNetwork= (it must reach the provider), PrivateUsers=,
    # IPAddressDeny= (provider addresses are not fixed), ProcSubset= and the rtc device remain.
    assert float(match.group(1)) <= 2.0, out.stdout


# --- what the services read as their own (dynamic) user --------------------------------------

CREDENTIAL_PATH = re.compile(r"/run/credentials/([^/\s\"'`]+)/")


def _env_file_readers() -> list[str]:
    return [
        name
        for name in SERVICES
        if "-/etc/archiver/archiver.env" in values(unit(name), "Service", "EnvironmentFile")
    ]


def test_the_shared_env_file_points_into_no_single_units_credentials() -> None:
    """archiver.env is read by every service: a path into one unit's credentials directory
    (``/run/credentials/archiver.service/...``, e.g. key files named by ``ARCHIVER_CONFIG``'s
    sources) exists in that unit only, so every other unit that reads the file fails."""
    readers = _env_file_readers()
    assert len(readers) >= 3, readers
    text = (UNIT_DIR / "archiver.env.example").read_text(encoding="utf-8")
    for match in CREDENTIAL_PATH.finditer(text):
        others = [name for name in readers if name != match.group(1)]
        assert not others, f"archiver.env.example points at {match.group(0)}..., which {others} cannot read"


def test_the_sources_config_is_readable_by_the_service_user() -> None:
    """The services run as a dynamic user (no group of root's): the config file
    (ARCHIVER_CONFIG, read by that user, not by systemd) must sit in a directory the
    install steps leave traversable by others, and secrets beside it are 0600 files."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "ARCHIVER_CONFIG=/etc/archiver/sources.toml" in readme
    sources = [readme, *((UNIT_DIR / name).read_text(encoding="utf-8") for name in SERVICES)]
    modes = [m for text in sources for m in re.findall(r"install -d -m (0?\d{3,4}) /etc/archiver\b", text)]
    assert modes, "no install step creates /etc/archiver"
    for mode in modes:
        assert int(mode, 8) & 0o001, (
            f"install -d -m {mode} /etc/archiver: the service user cannot reach sources.toml"
        )
    for text in sources:
        for mode, path in re.findall(r"install -m (0?\d{3,4}) \S+ (/etc/archiver/\S+)", text):
            if path.endswith(("api_key", "archiver.env")) or "key" in path:
                assert int(mode, 8) & 0o077 == 0, f"install -m {mode} ... {path}: a secret others can read"


def _readme_block(lang: str, first_line_start: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"```{lang}\n(.*?)```", readme, re.DOTALL)
    found = [b for b in blocks if b.startswith(first_line_start)]
    assert len(found) == 1, f"README: {len(found)} ```{lang} blocks starting {first_line_start!r}"
    return found[0]


def _sources_drop_in() -> str:
    return _readme_block("ini", "# systemctl edit archiver.service")


def test_the_readme_sources_config_names_keys_every_fetching_unit_loads() -> None:
    """README's systemd sources example: keys by credential name (never a path into one
    unit's credentials), the config named in the shared env file, and the drop-in that
    loads the keys applied to every unit that fetches (runs ``archiver run``)."""
    toml = _readme_block("toml", "# /etc/archiver/sources.toml")
    assert not CREDENTIAL_PATH.search(toml), toml
    names = re.findall(r'api_key_credential = "([^"]+)"', toml)
    assert names, toml
    drop_in = _sources_drop_in()
    loaded = {v.split(":", 1)[0] for v in re.findall(r"^LoadCredential=(.+)$", drop_in, re.MULTILINE)}
    assert set(names) <= loaded, (names, loaded)
    assert "ARCHIVER_CONFIG" not in drop_in  # in the env file every unit reads
    assert "ARCHIVER_CONFIG=/etc/archiver/sources.toml" in _readme_block("sh", "# /etc/archiver/archiver.env")
    fetching = [
        name for name in SERVICES if any(" run" in c for c in values(unit(name), "Service", "ExecStart"))
    ]
    assert fetching == ["archiver-backfill@.service", "archiver.service"]
    first_line = drop_in.splitlines()[0]
    for name in fetching:
        assert f"systemctl edit {name}" in first_line, f"README's drop-in is not applied to {name}"


@pytest.mark.parametrize("name", ["archiver.service", "archiver-backfill@.service"])
def test_systemd_analyze_verify_with_the_readme_sources_drop_in(
    name: str, systemd_analyze: str, installed_units: Path
) -> None:
    drop_ins = installed_units / f"{name}.d"
    drop_ins.mkdir()
    (drop_ins / "override.conf").write_text(_sources_drop_in(), encoding="utf-8")
    target = installed_units / name
    if "@" in name:  # verify loads an instance of a template
        instance = installed_units / name.replace("@", "@may-ids.txt")
        target.rename(instance)
        drop_ins.rename(installed_units / f"{instance.name}.d")
        target = instance
    out = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(target)], capture_output=True, text=True, timeout=60
    )
    report = (out.stdout + out.stderr).strip()
    ours = [line for line in report.splitlines() if "archiver" in line]
    assert out.returncode == 0 and not ours, f"systemd-analyze verify {name} + README drop-in:\n{report}"


LISTENER_VARIABLES = {"ARCHIVER_METRICS_PORT", "ARCHIVER_INGEST_TOKEN_FILE", "ARCHIVER_WEBHOOK_SECRET_FILE"}
"""The daemon's HTTP listener and its secrets: one process per port."""


def test_only_the_daemon_takes_the_listener_of_the_shared_env_file() -> None:
    """archiver.env offers ARCHIVER_METRICS_PORT (and the ingest secrets): set there, a
    backfill's ``run --once`` beside the daemon tried to bind the daemon's port and exited 2
    ("address already in use"). Every other unit that runs the pipeline unsets them
    (UnsetEnvironment= applies after EnvironmentFile=)."""
    example = _env_example()
    assert set(example) >= LISTENER_VARIABLES
    for name in SERVICES:
        u = unit(name)
        runs = any(shlex.split(c)[1:2] == ["run"] for c in values(u, "Service", "ExecStart"))
        if name == "archiver.service" or not runs:
            continue
        unset = {v for line in values(u, "Service", "UnsetEnvironment") for v in line.split()}
        assert unset >= LISTENER_VARIABLES, (
            f"{name}: runs the pipeline and may bind the daemon's port: {unset}"
        )
