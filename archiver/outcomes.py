"""What one fetch of one response ID came to.

A fetcher turns each HTTP exchange into exactly one of these; the writer turns it into
database changes. They are plain frozen records so policy code stays pure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal

TERMINAL_RESPONSE_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
"""Response ``status`` values after which the body never changes again."""

PermanentState = Literal["not_found", "failed"]

Symptom = Literal["plain_404", "redirect", "connect", "5xx"]
"""What an answer says about the endpoint rather than about one ID (see :mod:`archiver.breaker`):
a plain (non-JSON) 404 of an unknown route, a redirect, a failed connection (refused,
DNS, TLS), a server error."""


@dataclass(frozen=True, slots=True)
class Archived:
    """A valid Response body. ``terminal`` is False for ``queued``/``in_progress`` snapshots.

    ``body`` is the parsed object while the fetch checks it; the fetch drops it before the
    result waits for the writer, which parses ``raw`` again (in either writer: a parse
    held while waiting is not bounded by ``--max-held-mb``, which counts bytes, and 400
    small dense bodies waiting for the inline writer held 701-893 MiB).
    """

    raw: bytes
    status_code: int
    terminal: bool
    response_status: str | None
    body: Any = field(default=None, compare=False, repr=False)

    def without_body(self) -> Archived:
        """The same outcome without the parsed object (``raw`` keeps everything)."""
        return Archived(self.raw, self.status_code, self.terminal, self.response_status)

    def __reduce__(self) -> tuple[Any, ...]:
        # ``body`` stays behind when pickled (to the writer process): parsing ``raw``
        # again there is cheaper than pickling the parsed object here.
        return (Archived, (self.raw, self.status_code, self.terminal, self.response_status))


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again no earlier than ``delay_s`` seconds from now.

    ``body`` keeps bytes of a bad body for forensics: once past the fetcher, at most
    :data:`FORENSIC_PREFIX_BYTES` of it, with ``body_bytes`` (the whole length) and
    ``body_sha256`` (of the whole body) beside it (see :func:`with_body_sample`).
    ``throttled`` marks a provider rate-limit signal (it pauses the whole pool).
    ``spend_attempt`` is False for waits
    that are not the ID's fault (e.g. a transient 404 re-check is still an attempt,
    but a shutdown release is not). ``symptom`` marks an answer that may be about the
    endpoint rather than the ID: the worker holds it back until it knows which.
    """

    delay_s: float
    reason: str
    status_code: int | None = None
    body: bytes | None = None
    throttled: bool = False
    spend_attempt: bool = True
    body_bytes: int | None = None
    body_sha256: str | None = None
    symptom: Symptom | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    """The ID is done without an archived body: ``not_found`` or ``failed``.

    ``rejected_include``: a 400 that names one of the ``include[]`` values the request
    carried. It is about that value, not the ID: the fetcher drops the value and asks
    again at once, and this outcome is never stored.
    """

    state: PermanentState
    reason: str
    status_code: int | None = None
    body: bytes | None = None
    body_bytes: int | None = None
    body_sha256: str | None = None
    symptom: Symptom | None = None
    rejected_include: str | None = None


@dataclass(frozen=True, slots=True)
class StopAll:
    """The provider refuses this account (bad key, no access, billing): stop the run.

    The row is released untouched: no attempt is spent.
    """

    reason: str
    status_code: int | None = None
    billing: bool = False
    """A billing problem (arrears, no credit): about the account by definition, never one ID."""


Outcome = Archived | Retry | Permanent | StopAll

FORENSIC_PREFIX_BYTES = 64 * 1024
"""How much of a bad body is kept in ``archive_queue.last_body`` (the rest is counted and hashed)."""


def with_body_sample(outcome: Outcome) -> Outcome:
    """The outcome with its forensic body cut to a prefix, its length and SHA-256 recorded.

    Idempotent: an outcome whose ``body_bytes`` is set is returned as it is.
    """
    if not isinstance(outcome, (Retry, Permanent)) or outcome.body is None or outcome.body_bytes is not None:
        return outcome
    body = outcome.body
    return replace(
        outcome,
        body=body[:FORENSIC_PREFIX_BYTES],
        body_bytes=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
    )


def held_bytes(outcome: Outcome) -> int:
    """Bytes of response body an outcome keeps until it is written (0 when none)."""
    if isinstance(outcome, Archived):
        return len(outcome.raw)
    if isinstance(outcome, (Retry, Permanent)) and outcome.body is not None:
        return len(outcome.body)
    return 0
