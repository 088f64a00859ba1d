"""Docs stay true: every command has help and a README mention; every variable is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from archiver.cli import COMMON_OPTIONS, HTTP_OPTIONS, RUN_OPTIONS, build_parser

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


@pytest.mark.parametrize("option", COMMON_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS, ids=lambda o: o[0])
def test_every_variable_is_in_help_and_readme(option: tuple) -> None:
    flag, env, *_ = option
    assert env in README, f"{env} missing from README"
    helps = [sub.format_help() for sub in _subcommands().values()]
    assert any(env in h and flag in h for h in helps), f"{env} not shown in --help"


def test_api_key_is_never_a_flag() -> None:
    for sub in _subcommands().values():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert "--api-key" not in flags
    assert "ARCHIVER_API_KEY" in README and "DASHSCOPE_API_KEY" in README
