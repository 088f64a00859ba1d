"""The one redaction point: every string that leaves the process passes through here.

Secrets are registered by value (the API key whatever its shape, the database password,
tokens), so they are scrubbed wherever they appear. Archived ``raw`` bodies are the one
exception: they stay byte-exact.
"""

from __future__ import annotations

from dataclasses import replace

from archiver.logs import redact, register_secret
from archiver.outcomes import Outcome, Permanent, Retry, StopAll

__all__ = ["redact", "redact_bytes", "register_secret", "scrub_outcome"]


def redact_bytes(data: bytes) -> bytes:
    """``data`` with every registered secret replaced by ``***``."""
    return redact(data.decode("utf-8", errors="surrogateescape")).encode("utf-8", errors="surrogateescape")


def scrub_outcome(outcome: Outcome) -> Outcome:
    """The outcome with its reason and forensic body redacted (``Archived`` is left as it is)."""
    if isinstance(outcome, (Retry, Permanent)):
        body = redact_bytes(outcome.body) if outcome.body is not None else None
        return replace(outcome, reason=redact(outcome.reason), body=body)
    if isinstance(outcome, StopAll):
        return replace(outcome, reason=redact(outcome.reason))
    return outcome
