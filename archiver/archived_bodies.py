"""Reading archived bodies back exactly as received (decoded with their dictionaries)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from archiver.archive_rows import in_chunks
from archiver.codec import Codec
from archiver.dictionaries import load_dictionaries
from archiver.schema import responses


async def read_bodies(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, bytes]:
    """The archived bodies of ``ids`` exactly as received, decoded (IDs not archived are left out).

    Raises:
        MissingDictionary: a body's dictionary is not in the database.
        DamagedBody: a body does not decode to the bytes received.
    """
    r = responses.c
    found: dict[str, tuple[bytes, str | None, int | None, str]] = {}
    for chunk in in_chunks(ids):
        result = await conn.execute(
            select(r.id, r.raw, r.raw_codec, r.raw_dict_id, r.raw_sha256).where(r.id.in_(chunk))
        )
        for rid, raw, raw_codec, dict_id, sha in result:
            found[rid] = (bytes(raw), raw_codec, dict_id, sha)
    wanted = {stored[2] for stored in found.values() if stored[2] is not None}
    reader = Codec(await load_dictionaries(conn, wanted) if wanted else None)
    return {rid: reader.decode_received(rid, *stored) for rid, stored in found.items()}
