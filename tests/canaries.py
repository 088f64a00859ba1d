"""What a leaked secret looks like, for tests that search outputs and databases for one.

The forms are computed here, independently of :mod:`archiver.redaction`, so a form the
module forgets is still found.
"""

from __future__ import annotations

import base64
import json
import urllib.parse


def forms(key: str) -> list[bytes]:
    """The key as a server or a library could echo it (computed here, not by archiver)."""
    raw = key.encode()
    texts = {
        key,
        urllib.parse.quote(key, safe=""),
        urllib.parse.quote(key),
        urllib.parse.quote_plus(key),
        json.dumps(key)[1:-1],
        json.dumps(key)[1:-1].replace("/", "\\/"),
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        texts |= {encode(raw).decode(), encode(raw).decode().rstrip("=")}
        for prefix in (b"user:", b"Bearer ", b"x:"):  # offsets 2, 1, 2 modulo 3 ...
            encoded = encode(prefix + raw).decode()
            start = -(-len(prefix) // 3) * 4
            texts.add(encoded[start : (len(prefix) + len(raw)) // 3 * 4])
    return sorted((t.encode() for t in texts if len(t) >= 8), key=len, reverse=True)


def pieces(key: str) -> list[bytes]:
    """Every run of 8 characters of the key: a cut-off copy still gives much of it away."""
    raw = key.encode()
    return [raw[i : i + 8] for i in range(len(raw) - 8 + 1)]


def leaks(data: bytes, key: str) -> list[bytes]:
    """The forms of the key and the pieces of it found in ``data``."""
    return [f for f in forms(key) if f in data] + [p for p in pieces(key) if p in data]
