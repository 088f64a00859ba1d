"""Every secret a command can find, registered for redaction before anything logs.

:mod:`archiver.redaction` masks what is registered; this module knows where secrets come
from: the API key variables, a key file or systemd credential, the mock server's key, the
passwords in database and base URLs, and the sources of a ``--config`` file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from archiver.errors import ArchiverError
from archiver.logs import register_secret
from archiver.redaction import register_database_url
from archiver.settings import API_KEY_VARIABLES, read_api_key

if TYPE_CHECKING:
    from archiver.sources import SourceConfig


def register_secrets(
    env: Mapping[str, str], *, api_key_file: str | None, database_url: str | None, base_url: str | None
) -> None:
    """Register every secret this process can find, whatever the command.

    The API key (every variable, the key file, systemd credentials), the mock server's key,
    and the passwords in the database and base URLs. A key file that cannot be read fails
    only the commands that need the key, later, with their own message.

    Args:
        env: The process environment.
        api_key_file: ``--api-key-file``, if the command has it.
        database_url: ``--database-url``, if given.
        base_url: ``--base-url``, if the command has it.
    """
    for name in (*API_KEY_VARIABLES, "ARCHIVER_MOCK_API_KEY"):
        register_secret(env.get(name, "").strip())
    without_variables = {k: v for k, v in env.items() if k not in API_KEY_VARIABLES}
    with contextlib.suppress(ArchiverError, OSError, ValueError):
        register_secret(read_api_key(without_variables, api_key_file))
    for url in (database_url, env.get("ARCHIVER_DATABASE_URL"), base_url, env.get("ARCHIVER_BASE_URL")):
        register_database_url(url)


def register_source_secrets(config: Mapping[str, SourceConfig], env: Mapping[str, str]) -> None:
    """Register the keys and base-URL passwords of a ``--config`` file's sources."""
    for source in config.values():
        with contextlib.suppress(ArchiverError):
            register_secret(source.read_key(env))  # a key that cannot be read fails `run` later
        register_database_url(source.base_url)
