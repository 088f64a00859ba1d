"""Standard Webhooks verification: pure functions over headers, body and a clock.

The provider signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 under
the secret (base64 after the ``whsec_`` prefix) and sends ``v1,<base64 signature>`` in
``webhook-signature``, several space-separated when it rotates secrets. A delivery is
accepted when one ``v1`` entry matches (compared in constant time) and its timestamp is
within :data:`TOLERANCE_S` of now; :class:`SeenDeliveries` remembers accepted
``webhook-id`` values for that window, so a replayed delivery is acknowledged once and
does nothing. See https://www.standardwebhooks.com/.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from archiver.errors import ArchiverError

__all__ = [
    "SECRET_PREFIX",
    "TOLERANCE_S",
    "SeenDeliveries",
    "WebhookRejected",
    "decode_secret",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret
TOLERANCE_S = 300.0
"""How far a delivery's timestamp may be from now, either way (the spec's 5 minutes)."""


class WebhookRejected(ArchiverError):
    """The webhook delivery is not authentic."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery: its ``webhook-id`` and timestamp (unix seconds)."""

    webhook_id: str
    timestamp: int


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64, or base64 alone).

    Raises:
        ValueError: the secret is empty or not base64 (the message never quotes it).
    """
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not base64 after the whsec_ prefix") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery (for tests and senders).

    The id is signed as the bytes it came as: a header value that is not UTF-8 reaches us
    with lone surrogates (aiohttp decodes headers with ``surrogateescape``), which turn
    back into those bytes here instead of raising.
    """
    signed = webhook_id.encode("utf-8", "surrogateescape") + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(
    key: bytes, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float = TOLERANCE_S
) -> Delivery:
    """Check a delivery's headers and signature.

    Args:
        key: the secret's decoded bytes (:func:`decode_secret`).
        headers: the request headers (names case-insensitive, as aiohttp gives them).
        body: the request body, exactly as received.
        now: the current unix time.
        tolerance_s: how far the timestamp may be from ``now``.

    Returns:
        the delivery's id and timestamp.

    Raises:
        WebhookRejected: status 400 for missing or malformed headers, 401 for a stale
            timestamp or no matching signature.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    webhook_id = lowered.get("webhook-id", "")
    raw_timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (webhook_id and raw_timestamp and signatures):
        raise WebhookRejected("missing webhook-id, webhook-timestamp or webhook-signature header", status=400)
    timestamp = _timestamp(raw_timestamp)
    if abs(now - timestamp) > tolerance_s:
        raise WebhookRejected(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    expected = base64.b64decode(sign(key, webhook_id, timestamp, body).removeprefix("v1,"))
    matched = False
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        if version != "v1":
            continue  # a future scheme (v1a: asymmetric) this secret cannot check
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Compare every entry (no early exit): the time taken says nothing about which matched.
        matched |= hmac.compare_digest(given, expected)
    if not matched:
        raise WebhookRejected("no valid v1 signature in webhook-signature")
    return Delivery(webhook_id, timestamp)


_MAX_TIMESTAMP_DIGITS = 12
"""Unix seconds to the year 33658: more digits are no timestamp (and 400 of them overflow
the float clock they are compared with)."""


def _timestamp(raw: str) -> int:
    text = raw.strip()
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_TIMESTAMP_DIGITS):
        raise WebhookRejected("webhook-timestamp is not a whole number of seconds", status=400)
    return int(text)


class SeenDeliveries:
    """The ``webhook-id`` values accepted within the tolerance window, bounded in number.

    A delivery older than the window is refused by its timestamp anyway, so ids older
    than twice the window (a timestamp may also be up to the tolerance in the future)
    are forgotten. At most ``max_entries`` are kept; beyond that the oldest go first.
    In memory only: a restart forgets them, which is harmless because enqueueing an ID
    twice changes nothing.
    """

    def __init__(self, *, window_s: float = TOLERANCE_S, max_entries: int = 100_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, webhook_id: object) -> bool:
        return webhook_id in self._seen

    def add(self, webhook_id: str, now: float) -> None:
        """Remember an accepted delivery, and forget those past the window."""
        self._seen[webhook_id] = now
        self._seen.move_to_end(webhook_id)
        horizon = now - 2 * self.window_s
        while self._seen:
            oldest_id, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon and len(self._seen) <= self.max_entries:
                break
            del self._seen[oldest_id]
