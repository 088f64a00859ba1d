"""constraints.txt pins every package the project declares, within the declared ranges.

`make install` (and so the test command and .ci/run) installs with `-c constraints.txt`
(README, Decisions). A dependency added to pyproject.toml without a pin would be tested
at whatever version is newest that day; a pin outside its range would make pip fail.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: not a name==version pin: {line!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("parquet", "test", "dev"):  # what `make install` installs ('.[dev]')
        reqs += [Requirement(r) for r in extras[extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "archiver"]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    declared = _declared()
    assert len(declared) > 10
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
        )


def test_the_install_uses_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert re.search(r"^\$\(STAMP\):.*constraints\.txt", makefile, re.M), "a changed pin must reinstall"
