"""The one redaction point: every string that leaves the process passes through here.

Secrets are registered by value (the API key whatever its shape, the database password,
tokens, webhook secrets), so they are scrubbed wherever they appear: log lines, the CLI's
error line, ``last_error``/``last_body``, ``status``. Archived ``raw`` bodies are the one
exception: they stay byte-exact (a key inside a valid response is the user's own content).

Each secret is registered with the forms a server or a library may echo it in: URL-quoted,
JSON-escaped, base64 (also the part of it that does not depend on what the key is
embedded in, as in ``base64("user:KEY")``). A cut-off copy (a reason or a forensic body
truncated in the middle of the key) is scrubbed too when over half the key, or a
prefix of it right before ``...`` or the end of the text, is there. Prefix patterns for
well-known key shapes (``sk-``, ``hf_``, bearer tokens, ...) are a second layer for keys
that were never registered.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, AnyStr

from archiver.outcomes import Outcome, Permanent, Retry, StopAll

__all__ = [
    "MASK",
    "contains_secret",
    "database_passwords",
    "install_excepthook",
    "longest_needle",
    "redact",
    "redact_bytes",
    "redact_secrets",
    "redact_value",
    "register_database_url",
    "register_secret",
    "registered_variants",
    "scrub_outcome",
    "secret_variants",
]

MASK = "***"
"""What a secret is replaced by."""

MIN_SECRET_CHARS = 4
"""Shorter values are not registered: they would mask ordinary text everywhere."""

_MIN_DERIVED_CHARS = 8
# Fewer characters of a key's base64 inner part would be ordinary-looking alphanumerics.
_MIN_PARTIAL_CHARS = 6
# A cut-off copy: this many leading characters of a variant before "..." or the end.

# Second layer: key shapes worth masking even when nobody registered them. The bearer
# pattern keeps the word; the others replace the whole match.
_BEARER = r"(?i)(?<![A-Za-z0-9])(bearer\s+)[^\s'\"]+"
_KEY_SHAPES = (
    r"\b(?:sk|xai|gsk)[-_][A-Za-z0-9*_.+/\-]{6,}"
    r"|\bAIza[A-Za-z0-9_\-]{20,}"
    r"|\b(?:fw|hf|r8)_[A-Za-z0-9]{16,}"
    r"|\bnvapi-[A-Za-z0-9_\-]{16,}"
)
_BEARER_TEXT = re.compile(_BEARER)
_BEARER_BYTES = re.compile(_BEARER.encode())
_KEYS_TEXT = re.compile(_KEY_SHAPES)
_KEYS_BYTES = re.compile(_KEY_SHAPES.encode())
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_SPACES_TEXT = re.compile(r"\s+")
_SPACES_BYTES = re.compile(rb"\s+")
_ELLIPSES_TEXT = ("...", "\u2026")
_ELLIPSES_BYTES = (b"...", "\u2026".encode())

_lock = threading.Lock()
_secrets: list[str] = []
# Every variant of every registered secret, longest first, so a longer form is masked
# whole before a shorter one inside it. Replaced (never mutated) under the lock, so readers
# on other threads see one consistent tuple.
_text_variants: tuple[str, ...] = ()
_byte_variants: tuple[bytes, ...] = ()
# What contains_secret() looks for, by the byte a needle needs the data to hold (b"" for
# none): most bodies hold no "%" and many no backslash, so those needles are skipped.
_needles: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()


# --- variants ---------------------------------------------------------------------------------


def _base64_forms(data: bytes) -> list[str]:
    """The key in base64 (standard and URL-safe, padded and not), alone and embedded.

    Embedded at byte offset 0, 1 or 2 of a longer base64 string (``base64("user:" + key)``),
    only the 3-byte groups wholly inside the key encode the same whatever surrounds it;
    those inner parts are registered too.
    """
    forms: list[str] = []
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode("ascii")
        forms += [whole, whole.rstrip("=")]
        for offset in (0, 1, 2):
            encoded = encode(b"\0" * offset + data).decode("ascii")
            first_group = -(-offset // 3)  # the first group that starts inside the key
            end_group = (offset + len(data)) // 3  # groups before it end inside the key
            inner = encoded[first_group * 4 : end_group * 4]
            if len(inner) >= _MIN_DERIVED_CHARS:
                forms.append(inner)
    return forms


def secret_variants(secret: str) -> list[str]:
    """Every form of ``secret`` that is masked once it is registered, longest first.

    The value itself; URL-quoted (``quote`` with and without ``/`` safe, ``quote_plus``;
    uppercase and lowercase hex digits);
    JSON-escaped (ASCII and not, with ``/`` also as ``\\/``); every character
    percent-encoded or ``\\u``-escaped (either case of hex digits); base64 standard and URL-safe,
    padded and not, and the inner parts that stay the same when the key is embedded in a
    longer base64 string. Empty for a value shorter than :data:`MIN_SECRET_CHARS`.
    """
    if len(secret) < MIN_SECRET_CHARS:
        return []
    quoted = [
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret, safe=""),
    ]
    # RFC 3986 allows lowercase hex digits (%2f): servers that re-encode echo them so.
    forms = [secret, *quoted, *(_PERCENT.sub(lambda m: m[0].lower(), form) for form in quoted)]
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms += [escaped, escaped.replace("/", "\\/")]
    # Every character encoded, which no encoder does but an echoing server may.
    data = secret.encode("utf-8", errors="surrogatepass")
    utf16 = secret.encode("utf-16-be", errors="surrogatepass")
    units = [int.from_bytes(utf16[i : i + 2], "big") for i in range(0, len(utf16), 2)]
    for hex_format in ("%02X", "%02x"):
        forms.append("".join("%" + hex_format % byte for byte in data))
    for hex_format in ("\\u%04x", "\\u%04X"):
        forms.append("".join(hex_format % unit for unit in units))
    forms += _base64_forms(data)
    unique = {form for form in forms if len(form) >= MIN_SECRET_CHARS}
    return sorted(unique, key=lambda form: (-len(form), form))


def database_passwords(url: str | None) -> list[str]:
    """Every value a database URL's password could be read as, decoded and not.

    The password as :func:`urllib.parse.urlsplit` sees it, as split at the first ``@`` and
    at the last one, and the part between them (an unescaped ``@`` in a password makes
    parsers disagree: one that splits at the first shows the rest as the host), and every
    ``password=`` query parameter (name in any case).
    """
    if not url:
        return []
    url = url.strip()
    found: list[str] = []
    rest = url.partition("://")[2] if "://" in url else url
    for authority in (rest.partition("?")[0], rest):
        if "@" in authority and not authority.startswith("/"):  # sqlite:///a@b.db has no user info
            for userinfo in (authority.partition("@")[0], authority.rpartition("@")[0]):
                if ":" in userinfo:
                    found.append(userinfo.partition(":")[2])
            # What a parser that splits at the first "@" takes for the start of the host.
            found.append(authority[authority.find("@") + 1 : authority.rfind("@")])
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:  # e.g. a bad bracket: the splits above still count
        password = None
    if password:
        found.append(password)
    query = url.partition("?")[2]
    for pair in re.split(r"[&;]", query):
        name, sep, value = pair.partition("=")
        if sep and urllib.parse.unquote_plus(name).strip().lower() == "password":
            found.append(value)
    values: list[str] = []
    for value in found:
        for form in (value, urllib.parse.unquote(value), urllib.parse.unquote_plus(value)):
            if form and form not in values:
                values.append(form)
    return values


# --- the registry -----------------------------------------------------------------------------


def register_secret(secret: str | None) -> None:
    """Mask this value, in every form :func:`secret_variants` lists, from now on.

    Values shorter than :data:`MIN_SECRET_CHARS` are ignored; registering twice is harmless.
    """
    global _text_variants, _byte_variants, _needles
    if not secret or len(secret) < MIN_SECRET_CHARS:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.append(secret)
        variants = {v for s in _secrets for v in secret_variants(s)}
        ordered = sorted(variants, key=lambda form: (-len(form), form))
        _text_variants = tuple(ordered)
        _byte_variants = tuple(dict.fromkeys(v.encode("utf-8", errors="surrogatepass") for v in ordered))
        # In a body (JSON text) a form with a backslash is written with it doubled.
        in_json = (json.dumps(v, ensure_ascii=False)[1:-1] for v in ordered if "\\" in v)
        _needles = _by_gate(_halves([*ordered, *in_json]))


def _halves(variants: list[str]) -> tuple[bytes, ...]:
    """The first and the last half of every form (a short form whole), in UTF-8, shortest first.

    Any copy of a form, of over half of its characters from either end (what
    :func:`redact_secrets` masks anywhere), or of a form that one break cuts in two (a
    wrapped line: one piece is at least half of it) holds one of them.
    """
    needles: dict[str, None] = {}
    for variant in variants:
        if len(variant) < 2 * _MIN_PARTIAL_CHARS:
            needles[variant] = None
        else:
            half = max((len(variant) + 1) // 2, 8)
            needles[variant[:half]] = needles[variant[-half:]] = None
    kept: list[bytes] = []  # a needle that holds a shorter one adds nothing to the search
    for needle in sorted((n.encode("utf-8", errors="surrogatepass") for n in needles), key=len):
        if not any(shorter in needle for shorter in kept):
            kept.append(needle)
    return tuple(kept)


def _by_gate(needles: tuple[bytes, ...]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
    """``needles`` grouped by a byte each one holds, ``\\`` or ``%`` (``b""``: neither)."""
    groups: dict[bytes, list[bytes]] = {b"": [], b"\\": [], b"%": []}
    for needle in needles:
        gate = b"\\" if b"\\" in needle else b"%" if b"%" in needle else b""
        groups[gate].append(needle)
    return tuple((gate, tuple(group)) for gate, group in groups.items() if group)


def register_database_url(url: str | None) -> None:
    """Register the password of a database URL (see :func:`database_passwords`)."""
    for password in database_passwords(url):
        register_secret(password)


def registered_variants() -> tuple[str, ...]:
    """Every masked form of every registered secret, longest first."""
    return _text_variants


# --- masking ----------------------------------------------------------------------------------


def _mask_partials(data: AnyStr, variant: AnyStr, mask: AnyStr, ellipses: tuple[AnyStr, ...]) -> AnyStr:
    """Mask cut-off copies of ``variant``.

    A run of its leading characters is masked when it is over half of it (and 8 or more),
    or when it ends the text or runs into ``...``; likewise a run of its trailing
    characters that starts the text or follows ``...``.
    """
    half = max(len(variant) // 2 + 1, 8)
    head = variant[:_MIN_PARTIAL_CHARS]
    pieces: list[AnyStr] = []
    done = 0
    start = data.find(head)
    while start != -1:
        length = len(head)
        limit = min(len(variant), len(data) - start)
        while length < limit and data[start + length] == variant[length]:
            length += 1
        end = start + length
        if length >= half or end == len(data) or data.startswith(ellipses, end):
            pieces += [data[done:start], mask]
            done = end
        start = data.find(head, max(end, start + 1))
    if pieces:
        pieces.append(data[done:])
        data = data[:0].join(pieces)
    tail = variant[-_MIN_PARTIAL_CHARS:]
    pieces = []
    done = 0
    found = data.find(tail)
    while found != -1:
        end = found + len(tail)
        length = len(tail)
        limit = min(len(variant), end - done)
        while length < limit and data[end - length - 1] == variant[-length - 1]:
            length += 1
        start = end - length
        if length >= half or start == 0 or data.endswith(ellipses, 0, start):
            pieces += [data[done:start], mask]
            done = end
        found = data.find(tail, found + 1)
    if pieces:
        pieces.append(data[done:])
        data = data[:0].join(pieces)
    return data


@functools.lru_cache(maxsize=256)
def _spread(variant: AnyStr) -> re.Pattern[AnyStr]:
    """``variant`` with whitespace allowed between its characters."""
    if isinstance(variant, str):
        return re.compile(r"\s*".join(re.escape(char) for char in variant))
    return re.compile(rb"\s*".join(re.escape(variant[i : i + 1]) for i in range(len(variant))))


def _mask_spread(data: AnyStr, variants: Sequence[AnyStr], mask: AnyStr) -> AnyStr:
    """Mask copies of a form that whitespace cuts into pieces: a server that wraps its
    text puts a line break inside the key, and each piece alone may be no more than the
    half of it that :func:`_mask_partials` leaves (``sk-abc\ndef`` shows the whole key)."""
    spaces = _SPACES_TEXT if isinstance(data, str) else _SPACES_BYTES
    squeezed = spaces.sub(data[:0], data)
    if len(squeezed) == len(data):
        return data
    for variant in variants:
        if len(variant) >= 2 * _MIN_PARTIAL_CHARS and variant in squeezed:
            data = _spread(variant).sub(mask, data)
    return data


def _mask(data: AnyStr, variants: Sequence[AnyStr], mask: AnyStr, ellipses: tuple[AnyStr, ...]) -> AnyStr:
    # Whole copies of every form first: a cut-off copy of a longer form (the URL-quoted
    # key shares the key's first characters up to its first quoted one) must not eat the
    # head of a whole copy of a shorter form and leave its tail readable.
    for variant in variants:
        if variant in data:
            data = data.replace(variant, mask)
    data = _mask_spread(data, variants, mask)  # before a cut-off copy's mask hides a piece
    for variant in variants:
        if len(variant) >= 2 * _MIN_PARTIAL_CHARS and (
            variant[:_MIN_PARTIAL_CHARS] in data or variant[-_MIN_PARTIAL_CHARS:] in data
        ):
            data = _mask_partials(data, variant, mask, ellipses)
    return data


def contains_secret(data: bytes) -> bool:
    """Whether ``data`` holds a registered secret in one of its forms, whole or half of it.

    A byte search for the first and for the last half of every form (the pieces
    :func:`redact_secrets` masks wherever they are), so a cut-off copy of over half a form
    counts, and so does a copy one line break cuts in two (:func:`_mask_spread` masks it).
    A shorter cut-off copy (which :func:`redact` also masks at the end of a text or before
    ``...``) is not looked for: searching every form's first 6 characters would cost
    several times as much on every body.
    """
    return any(gate in data and any(needle in data for needle in group) for gate, group in _needles)


def longest_needle() -> int:
    """The length in bytes of the longest piece :func:`contains_secret` looks for (0: none
    registered): a search of a text a window at a time overlaps its windows by this much."""
    return max((len(needle) for _, group in _needles for needle in group), default=0)


def redact_secrets(text: str) -> str:
    """``text`` with every registered secret masked, whole or cut off (see :func:`redact`).

    Unlike :func:`redact`, text that merely looks like a key (``sk-...``, ``Bearer ...``)
    is kept: this is for the rows derived from archived bodies, where such text is the
    user's content (a model explaining API keys), not a secret this process holds.
    """
    return _mask(text, _text_variants, MASK, _ELLIPSES_TEXT)


def redact(text: str) -> str:
    """``text`` with every registered secret, bearer token and known key shape masked."""
    text = _mask(text, _text_variants, MASK, _ELLIPSES_TEXT)
    if "earer" in text or "EARER" in text:
        text = _BEARER_TEXT.sub(r"\1" + MASK, text)
    return _KEYS_TEXT.sub(MASK, text)


def redact_bytes(data: bytes) -> bytes:
    """``data`` (any bytes, UTF-8 or not) with every registered secret masked, as :func:`redact`."""
    mask = MASK.encode()
    data = _mask(data, _byte_variants, mask, _ELLIPSES_BYTES)
    if b"earer" in data or b"EARER" in data:
        data = _BEARER_BYTES.sub(rb"\1" + mask, data)
    return _KEYS_BYTES.sub(mask, data)


def redact_value(value: Any) -> Any:
    """``value`` with every string inside it redacted: dict values, lists, tuples, bytes, exceptions.

    Dict keys (field names) and other values (numbers, None, dates) are kept as they are.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact_bytes(value)
    if isinstance(value, Mapping):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(item) for item in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def scrub_outcome(outcome: Outcome) -> Outcome:
    """The outcome with its reason and forensic body redacted (``Archived`` is left as it is)."""
    if isinstance(outcome, (Retry, Permanent)):
        body = redact_bytes(outcome.body) if outcome.body is not None else None
        return replace(outcome, reason=redact(outcome.reason), body=body)
    if isinstance(outcome, StopAll):
        return replace(outcome, reason=redact(outcome.reason))
    return outcome


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(redact(text))
    sys.stderr.flush()


def install_excepthook() -> None:
    """Print an unexpected exception's traceback redacted (its messages may quote a server)."""
    sys.excepthook = _excepthook
