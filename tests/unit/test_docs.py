"""Docs stay true: every command has help and a README mention; every variable is documented."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from archiver.cli import build_parser
from archiver.options import COMMON_OPTIONS, ENQUEUE_OPTIONS, HTTP_OPTIONS, RUN_OPTIONS, Option
from archiver.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_has_help_and_a_readme_mention(name: str) -> None:
    sub = _subcommands()[name]
    assert sub.description, f"{name} has no description"
    assert f"archiver {name}" in README, f"README does not mention `archiver {name}`"
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{name} {action.option_strings} has no help"


@pytest.mark.parametrize(
    "option", COMMON_OPTIONS + ENQUEUE_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS, ids=lambda o: o[0]
)
def test_every_variable_is_in_help_and_readme(option: Option) -> None:
    flag, env, *_ = option
    assert env in README, f"{env} missing from README"
    helps = [sub.format_help() for sub in _subcommands().values()]
    assert any(env in h and flag in h for h in helps), f"{env} not shown in --help"


def test_api_key_is_never_a_flag() -> None:
    for sub in _subcommands().values():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert "--api-key" not in flags
    assert "ARCHIVER_API_KEY" in README and "DASHSCOPE_API_KEY" in README


# --- nothing documented that the CLI lacks; no setting that is not an option ----------------

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [
        REPO / "README.md",
        *(REPO / "docs").rglob("*.md"),
        *(p for p in (REPO / "systemd").iterdir() if p.is_file()),
    ]
)
OTHER_TOOLS_FLAGS = {
    "--now": "systemctl enable --now",
    "--failed": "systemctl --failed",
    "--autogenerate": "alembic revision --autogenerate (developers)",
    "--path": "systemd-escape --path (the archiver-follow@ instance name)",
    "--data-binary": "curl --data-binary (the push ingestion example: NDJSON keeps its newlines)",
}
OTHER_VARIABLES = {
    "ARCHIVER_TEST_PG_URL": "the test suite's PostgreSQL server, not the CLI's",
}
NOT_OPTIONS = {
    "api_key": "a secret: never a flag (ps shows flags); ARCHIVER_API_KEY, DASHSCOPE_API_KEY or a key file",
    "owner": "this process's lease owner name (host:pid), not configuration",
    "explicit": "bookkeeping: which fields a flag or variable set (sources.source_settings)",
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
VARIABLE = re.compile(r"\bARCHIVER_[A-Z0-9_]*[A-Z0-9]")


def _accepted_flags() -> set[str]:
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    for sub in _subcommands().values():
        flags |= {s for a in sub._actions for s in a.option_strings}
    return flags


def _accepted_variables() -> set[str]:
    """Every variable some ``--help`` names (each option's ``[env: ...]``, the key, the mock's key)."""
    return {v for sub in _subcommands().values() for v in VARIABLE.findall(sub.format_help())}


def _unknown_names(text: str) -> set[str]:
    flags = set(FLAG.findall(text)) - _accepted_flags() - set(OTHER_TOOLS_FLAGS)
    variables = set(VARIABLE.findall(text)) - _accepted_variables() - set(OTHER_VARIABLES)
    return flags | variables


def test_the_scan_finds_a_flag_and_a_variable_the_cli_lacks() -> None:
    text = "run `archiver run --max-rps 5 --no-such-flag` with ARCHIVER_NO_SUCH=1 and ARCHIVER_MAX_RPS=5"
    assert _unknown_names(text) == {"--no-such-flag", "ARCHIVER_NO_SUCH"}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documents_name_only_flags_and_variables_the_cli_accepts(path: Path) -> None:
    unknown = _unknown_names(path.read_text(encoding="utf-8"))
    assert not unknown, f"{path.relative_to(REPO)} names what the CLI does not accept: {sorted(unknown)}"


def test_the_documents_scanned_include_the_env_example_and_docs() -> None:
    names = {str(p.relative_to(REPO)) for p in DOCUMENTS}
    assert {"README.md", "docs/schema.md", "systemd/archiver.env.example"} <= names


def test_every_settings_field_is_a_flag_and_a_variable() -> None:
    options = {o[2] for o in COMMON_OPTIONS + ENQUEUE_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS}
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(NOT_OPTIONS) <= fields, "NOT_OPTIONS names a field Settings no longer has"
    missing = fields - options - set(NOT_OPTIONS)
    assert not missing, f"Settings fields with no flag and ARCHIVER_* variable: {sorted(missing)}"


@pytest.mark.parametrize(
    "option", COMMON_OPTIONS + ENQUEUE_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS, ids=lambda o: o[0]
)
def test_every_option_has_its_row_in_the_readme_configuration_table(option: Option) -> None:
    flag, env, *_ = option
    section = README.split("### Configuration", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert any(f"`{flag}`" in row and f"`{env}`" in row for row in rows), (
        f"no row of README's configuration table names both `{flag}` and `{env}`"
    )


def test_every_archive_meta_row_the_code_writes_is_documented() -> None:
    """docs/schema.md's `archive_meta` table names every row archiver writes there
    (``rebuild_running`` was missing when the rebuild lock added it)."""
    from archiver.projection import MODE_KEY, PROJECTION_KEY
    from archiver.rebuild_lock import META_KEY
    from archiver.renormalize import POSITION_KEY
    from archiver.tool_sets import SWEPT_KEY

    schema_md = (REPO / "docs" / "schema.md").read_text(encoding="utf-8")
    section = schema_md.split("### `archive_meta`", 1)[1].split("\n## ", 1)[0]
    for key in (MODE_KEY, PROJECTION_KEY, META_KEY, POSITION_KEY, SWEPT_KEY):
        assert f"| `{key}` |" in section, key
