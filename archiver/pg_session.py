"""PostgreSQL session setup: settings each new connection of an engine makes for itself."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

IDLE_SETTING = "idle_in_transaction_session_timeout"
"""The server setting that ends a session left idle inside a transaction."""
_BOUND_IDLE_SQL = (
    f"SELECT set_config('{IDLE_SETTING}', $1, false) FROM pg_settings "
    f"WHERE name = '{IDLE_SETTING}' AND (setting::bigint = 0 OR setting::bigint > $2)"
)


def bound_idle_in_transaction(engine: Engine, limit_ms: int) -> None:
    """Each new connection ends a transaction left idle longer than ``limit_ms``, unless the
    server's own setting (a DBA's, for the database or the role) is already stricter."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_BOUND_IDLE_SQL, (str(limit_ms), limit_ms))
        finally:
            cursor.close()
        dbapi_connection.commit()  # a session setting made in a transaction rolled back is undone
