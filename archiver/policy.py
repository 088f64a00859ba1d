"""What one HTTP exchange means: archive, retry, give up, or stop the whole run.

Pure functions over status code, headers and body (DESIGN.md, "Outcome rules"). Time
and randomness are passed in, so every decision is reproducible in a test.

Reason strings end up in the database and in logs. They are built only from the status
code, the provider's error body (``message``/``code``/``type``/``request_id``, with
anything that looks like a key redacted) and a few named headers (``retry-after*``,
``x-request-id``); no other header is ever read into a reason, so an
``Authorization`` header cannot leak through here.
"""

from __future__ import annotations

import datetime
import email.utils
import http
import math
import re
import socket
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from archiver.body_head import NotJson, read_head
from archiver.jsontext import MAX_NESTING, NestingTooDeep, TooManyContainers, loads
from archiver.outcomes import (
    Archived,
    Outcome,
    Permanent,
    Retry,
    StopAll,
    Symptom,
)

__all__ = [
    "NON_TERMINAL_RESPONSE_STATUSES",
    "InputItemsPage",
    "ProviderError",
    "ProviderProfile",
    "RetryPolicy",
    "backoff_delay",
    "classify_exception",
    "classify_input_items_page",
    "classify_response",
    "default_include",
    "parse_retry_after",
    "profile_for_base_url",
    "refused_for_one_id",
    "rejected_include_value",
    "repoll_delay",
    "retention_seconds",
]

ProviderProfile = Literal["dashscope", "openai", "generic"]

NON_TERMINAL_RESPONSE_STATUSES = frozenset({"queued", "in_progress"})
"""Response ``status`` values of a background response that is still running.

Any other status, or none, counts as terminal (outcomes.TERMINAL_RESPONSE_STATUSES lists
the documented ones): an unknown future status is archived rather than polled forever.
"""

_MAX_EXPONENT = 60  # 2**60 s is far past any cap; keeps the float math finite
_REASON_LIMIT = 300
_SNIPPET_LIMIT = 120
_ID_LIMIT = 80

# Codes (error.code, error.type or DashScope's top-level code) that mean the account
# itself is refused: every further request would fail the same way. Compared after
# lower-casing and dropping "_", "-" and "." so `InvalidApiKey` == `invalid_api_key`.
_KEY_CODES = frozenset({"invalidapikey", "incorrectapikey", "authenticationerror"})
_BILLING_CODES = frozenset(
    {
        "arrearage",
        "prepaidbilloverdue",
        "postpaidbilloverdue",
        "commoditynotpurchased",
        "billingnotactive",
        "accountdeactivated",
    }
)
# On OpenAI `insufficient_quota` means "no credit left"; on DashScope it is a
# per-minute token limit, i.e. a throttle.
_OPENAI_QUOTA_CODE = "insufficientquota"

_RETRYABLE_STATUSES = frozenset({408, 409, 425})
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*\Z")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}\Z")
# Anything that looks like a credential in provider text (OpenAI echoes a masked key in
# its 401 message). Replaced wholesale, never partially shown.
_SECRET = re.compile(r"(?i)\bbearer\s+\S+|\b(?:sk|xai|gsk)[-_][A-Za-z0-9*_.\-]{6,}|\bAIza[A-Za-z0-9_\-]{20,}")
_WHITESPACE = re.compile(r"\s+")
_INCLUDE_PARAM = re.compile(r"\s*include(?:\[\])?\[(\d{1,4})\]\s*\Z")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one response ID. All delays are in seconds.

    ``not_found_recheck_s``: a first 404 is re-checked once after this delay, because
    providers return transient 404s for IDs that exist. ``repoll_s``: base delay before
    re-polling a ``queued``/``in_progress`` response (grows like the backoff).
    ``max_server_wait_s`` caps one server-requested wait (``Retry-After``).
    """

    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    max_server_wait_s: float = 900.0
    not_found_recheck_s: float = 30.0
    repoll_s: float = 5.0


DEFAULT_RETENTION_DAYS: dict[str, float | None] = {"dashscope": 7.0, "openai": 30.0, "generic": None}
"""How long each provider keeps stored responses (documented: DashScope 7 days, OpenAI 30)."""


def retention_seconds(profile: ProviderProfile, override_days: float | None = None) -> float | None:
    """The retention period in seconds for a profile (``override_days`` wins); None if unknown."""
    days = override_days if override_days is not None else DEFAULT_RETENTION_DAYS.get(profile)
    return None if days is None or days <= 0 else days * 86400.0


OPENAI_INCLUDE: tuple[str, ...] = (
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.action.sources",
    "message.output_text.logprobs",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
)
"""Every ``include`` value OpenAI's retrieve endpoint documents: fields it returns only when asked."""

DEFAULT_INCLUDE: dict[str, tuple[str, ...]] = {"openai": OPENAI_INCLUDE, "dashscope": (), "generic": ()}
"""``include[]`` values sent by default per profile. None for DashScope and generic
providers until they are known to accept them (an unknown value may be a 400)."""


def default_include(profile: ProviderProfile) -> tuple[str, ...]:
    """The ``include[]`` values a profile sends unless ``--include`` says otherwise."""
    return DEFAULT_INCLUDE.get(profile, ())


def rejected_include_value(status_code: int, body: bytes, include: Sequence[str]) -> str | None:
    """The ``include[]`` value a 400 rejects, or None when it is about something else.

    A value counts as named when the error's ``param`` contains it, or is
    ``include[N]`` (its index in the request) with a message that is empty or contains
    it, else when the error message contains it. A
    message that lists the supported values after the rejected one (OpenAI: "Invalid
    value: 'x'. Supported values are: ...") names the value that comes first.

    Args:
        status_code: HTTP status (only a 400 can reject a value).
        body: the error body.
        include: the values the request carried, in order.
    """
    if status_code != 400 or not include:
        return None
    data = _loads_or_none(body)
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    fields = error if isinstance(error, dict) else data
    param = fields.get("param")
    message = fields.get("message")
    if not isinstance(message, str):
        message = error if isinstance(error, str) else ""
    if isinstance(param, str) and param:
        index = _INCLUDE_PARAM.match(param)
        if index is not None and int(index.group(1)) < len(include):
            value = include[int(index.group(1))]
            if not message or value in message:  # a message naming another value wins
                return value
        named = [value for value in include if value in param]
        if named:
            return max(named, key=len)  # "a.b.c" over "a.b" when both match
    found = [(message.find(value), -len(value), value) for value in include if value in message]
    return min(found)[2] if found else None


def profile_for_base_url(base_url: str) -> ProviderProfile:
    """Pick the provider profile whose error codes apply to ``base_url``.

    Args:
        base_url: e.g. ``https://dashscope-intl.aliyuncs.com/compatible-mode/v1``; a
            missing scheme is tolerated.

    Returns:
        ``"dashscope"`` for ``*.aliyuncs.com`` hosts (regions and workspace domains
        ``{WorkspaceId}.{region}.maas.aliyuncs.com``), ``dashscope*`` hosts and any host
        serving DashScope's ``/compatible-mode/`` path (a proxy, or the older
        ``/api/v2/apps/protocols/compatible-mode/v1``); ``"openai"`` for
        ``api.openai.com`` (and its regional ``*.api.openai.com``) and Azure OpenAI
        hosts, else ``"generic"``.
    """
    text = base_url.strip()
    if "://" not in text:
        text = "//" + text
    parts = urllib.parse.urlsplit(text)
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "aliyuncs.com" or host.endswith(".aliyuncs.com") or host.startswith("dashscope"):
        return "dashscope"
    if "/compatible-mode/" in parts.path.lower() + "/":
        return "dashscope"
    if (
        host == "api.openai.com"
        or host.endswith(".api.openai.com")
        or host.endswith(".openai.azure.com")
        or host.endswith(".cognitiveservices.azure.com")
    ):
        return "openai"
    return "generic"


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Exponential backoff with jitter: ``min(base * 2**(attempt-1), cap) * (1 - 0.25*rand)``.

    Args:
        attempt: 1-based number of the attempt that just failed (values below 1 count
            as 1).
        policy: base and cap.
        rand: a uniform random number in ``[0, 1)`` (clamped into that range), so the
            delay lies in ``(0.75 * d, d]``.

    Returns:
        The delay in seconds.
    """
    return _grow(policy.backoff_base_s, attempt, policy.backoff_cap_s, rand)


def repoll_delay(polls: int, policy: RetryPolicy, rand: float) -> float:
    """Delay before polling a ``queued``/``in_progress`` response again.

    Grows like the backoff from ``repoll_s``, capped by ``backoff_cap_s``: 5, 10, 20 ...
    seconds with the defaults, minus up to 25 % jitter.

    Args:
        polls: how many non-terminal snapshots of this ID have been seen, 1-based.
        policy: ``repoll_s`` and ``backoff_cap_s``.
        rand: a uniform random number in ``[0, 1)``.

    Returns:
        The delay in seconds.
    """
    return _grow(policy.repoll_s, polls, policy.backoff_cap_s, rand)


def _grow(base: float, step: int, cap: float, rand: float) -> float:
    exponent = min(max(step, 1) - 1, _MAX_EXPONENT)
    jitter = 1.0 - 0.25 * min(max(rand, 0.0), 1.0)
    return min(base * 2.0**exponent, cap) * jitter


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Read the wait a server asked for.

    ``retry-after-ms`` (milliseconds) wins over ``retry-after``, which may be seconds
    (``"120"``, ``"1.5"``) or an HTTP date. Header names are case-insensitive; a value
    that cannot be read falls through to the next header.

    Args:
        headers: response headers (a plain dict or aiohttp's case-insensitive mapping).
        now: current unix time, to turn an HTTP date into a delay.

    Returns:
        Seconds to wait (0 for negative values or dates in the past), or None when
        neither header is present and readable. Not capped here.
    """
    lookup = _HeaderLookup(headers)
    millis = lookup.get("retry-after-ms")
    if millis is not None and _NUMBER.match(millis):
        return max(float(millis) / 1000.0, 0.0)
    value = lookup.get("retry-after")
    if value is None:
        return None
    if _NUMBER.match(value):
        return max(float(value), 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown local zone
        when = when.replace(tzinfo=datetime.UTC)
    try:
        delay = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return max(delay, 0.0) if math.isfinite(delay) else None


@dataclass(frozen=True, slots=True)
class ProviderError:
    """The useful parts of an error body, read defensively.

    Understands ``{"error": {"message", "type", "code"}}`` (OpenAI and compatible
    modes), ``{"error": "text"}``, and DashScope's native
    ``{"code", "message", "request_id"}``. Text is cleaned (one line, bounded, anything
    key-like redacted) so it can go straight into a reason.
    """

    message: str | None
    code: str | None
    type: str | None
    request_id: str | None

    @classmethod
    def from_api(cls, body: bytes, headers: Mapping[str, str] | None = None) -> ProviderError:
        """Parse an error body; never raises.

        Args:
            body: the response body (JSON, HTML, empty ...).
            headers: response headers, only for ``x-request-id`` when the body has none.

        Returns:
            The parsed error; fields are None when absent.
        """
        message: str | None = None
        code: str | None = None
        type_: str | None = None
        request_id: str | None = None
        data = _loads_or_none(body)
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                message = _text(error.get("message"))
                code = _code(error.get("code"))
                type_ = _code(error.get("type"))
            elif isinstance(error, str):
                message = _text(error)
            message = message or _text(data.get("message")) or _text(data.get("detail"))
            code = code or _code(data.get("code"))
            request_id = _request_id(data.get("request_id")) or _request_id(data.get("requestId"))
        elif body:
            message = _snippet(body)
        if request_id is None and headers is not None:
            lookup = _HeaderLookup(headers)
            request_id = _request_id(lookup.get("x-request-id")) or _request_id(
                lookup.get("x-dashscope-request-id")
            )
        return cls(message=message, code=code, type=type_, request_id=request_id)

    @property
    def label(self) -> str | None:
        """``code``, else ``type``: the machine-readable name of the error."""
        return self.code or self.type

    def codes(self) -> tuple[str, ...]:
        """``code`` and ``type`` normalized for matching (lower case, no ``_ - .``)."""
        return tuple(_normalize_code(c) for c in (self.code, self.type) if c)


def classify_response(
    *,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    requested_id: str,
    attempt: int,
    previous_status_code: int | None,
    policy: RetryPolicy,
    profile: ProviderProfile,
    now: float,
    rand: float,
    include: Sequence[str] = (),
) -> Outcome:
    """Decide what one HTTP response to ``GET responses/{id}`` means.

    Args:
        status_code: HTTP status.
        headers: response headers.
        body: the complete body, exactly as received.
        requested_id: the ID that was asked for.
        attempt: 1-based number of the attempt that just happened (already spent).
        previous_status_code: status of the previous attempt for this ID, if any
            (a 404 is re-checked once, so a second 404 in a row is final).
        policy: limits and delays.
        profile: whose error codes apply (``insufficient_quota`` is billing on OpenAI
            but a per-minute throttle on DashScope).
        now: current unix time (for an HTTP-date ``Retry-After``).
        rand: a uniform random number in ``[0, 1)`` for jitter.
        include: the ``include[]`` values the request carried.

    Returns:
        ``Archived`` for a body of the requested response; ``Retry`` for transient
        faults; ``Permanent`` once the ID is done without a body (``not_found`` or
        ``failed``, also after ``max_attempts``); ``StopAll`` when the account is
        refused (bad key, no access, billing). A 400 that names one of ``include``
        is ``Permanent`` with ``rejected_include`` set: the caller drops the value and
        asks again without spending an attempt.
    """
    if status_code == 200:
        return _classify_body(body, requested_id, attempt, policy, rand)

    error = ProviderError.from_api(body, headers)
    stop = _account_stop(status_code, error, profile)
    if stop is not None:
        return stop
    rejected = rejected_include_value(status_code, body, include)
    if rejected is not None:
        return _include_rejected(rejected, error)

    should_retry = _HeaderLookup(headers).get("x-should-retry")
    force = should_retry.strip().lower() if should_retry is not None else None
    described = _describe(status_code, error)

    if 300 <= status_code <= 399:
        # Redirects are never followed (a redirect to another host would take the key
        # along); one on every ID means the base URL is wrong.
        location = _HeaderLookup(headers).get("location")
        where = f" to {_shorten(_clean(location))}" if location else ""
        retry = Retry(
            backoff_delay(attempt, policy, rand),
            f"{status_code} redirect{where} (redirects are not followed)",
            status_code,
            symptom="redirect",
        )
        return _retry_or_give_up(retry, attempt, policy)

    if status_code == 404 and not _is_error_envelope(body):
        # Not the provider's "Response with id ... not found": a plain 404 of an unknown
        # route (a base URL without /v1, a proxy). It says nothing about this ID.
        retry = Retry(
            backoff_delay(attempt, policy, rand),
            f"{described} (a plain 404, not the provider's JSON error)",
            status_code,
            symptom="plain_404",
        )
        return _retry_or_give_up(retry, attempt, policy)

    if status_code == 404:
        if force != "false" and attempt < policy.max_attempts:
            if previous_status_code != 404:
                return Retry(policy.not_found_recheck_s, "not found; re-checking once", status_code)
            if force == "true":
                return Retry(
                    _server_wait(headers, now, policy) or backoff_delay(attempt, policy, rand),
                    f"{described}; server asked to retry",
                    status_code,
                )
        return Permanent("not_found", described, status_code)

    throttled = status_code == 429
    transient = throttled or status_code in _RETRYABLE_STATUSES or 500 <= status_code <= 599
    if transient and force == "false":
        return Permanent("failed", f"{described}; server said not to retry", status_code)
    if not transient and force == "true" and 400 <= status_code <= 499:
        transient = True
        described = f"{described}; server asked to retry"
    if not transient:
        return Permanent("failed", described, status_code)

    if throttled:
        described = f"throttled ({described})"
    delay = _server_wait(headers, now, policy)
    if delay is None:
        delay = backoff_delay(attempt, policy, rand)
    symptom: Symptom | None = "5xx" if 500 <= status_code <= 599 else None
    return _retry_or_give_up(
        Retry(delay, described, status_code, throttled=throttled, symptom=symptom), attempt, policy
    )


def classify_exception(exc: BaseException, *, attempt: int, policy: RetryPolicy, rand: float) -> Outcome:
    """Decide what a failed exchange (no HTTP response) means.

    Timeouts and connection faults (``OSError``, ``TimeoutError``, aiohttp's
    ``ClientConnectionError``/``ServerDisconnectedError``/``ClientPayloadError``) are
    retried with backoff. Any other ``Exception`` is retried the same way with its
    class named in the reason, so one odd ID cannot crash the run; after
    ``max_attempts`` the ID is ``failed``.

    Args:
        exc: what the fetch raised.
        attempt: 1-based number of the attempt that just happened.
        policy: limits and delays.
        rand: a uniform random number in ``[0, 1)`` for jitter.

    Returns:
        ``Retry``, or ``Permanent("failed")`` after ``max_attempts``.

    Raises:
        BaseException: ``exc`` itself when it is not an ``Exception``
            (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``): those
            are shutdowns, not fetch outcomes.
    """
    if not isinstance(exc, Exception):
        raise exc
    name = type(exc).__name__
    text = _clean(str(exc))
    if _is_network_error(exc):
        reason = f"{'timed out' if _is_timeout(exc) else 'connection failed'} ({name}"
        reason += f": {text})" if text else ")"
    else:
        reason = f"{name}: {text}" if text else name
    symptom: Symptom | None = "connect" if _is_connect_error(exc) else None
    retry = Retry(backoff_delay(attempt, policy, rand), _bounded(reason), symptom=symptom)
    return _retry_or_give_up(retry, attempt, policy)


def refused_for_one_id(refusal: StopAll, *, attempt: int, policy: RetryPolicy, rand: float) -> Outcome:
    """A refusal (401/403/billing) on one ID while the same key works for other IDs.

    It is about this ID, not the account: retried with backoff like any per-ID fault,
    then ``failed`` after ``max_attempts``.
    """
    reason = _bounded(f"{refusal.reason} (refused for this ID only: the same key works for other IDs)")
    retry = Retry(backoff_delay(attempt, policy, rand), reason, refusal.status_code)
    return _retry_or_give_up(retry, attempt, policy)


# --- input items pages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputItemsPage:
    """One page of ``GET /responses/{id}/input_items``.

    ``envelope`` holds the page's fields other than the paging ones (``object``,
    ``data``, ``first_id``, ``last_id``, ``has_more``): DashScope's lists carry the
    response's ``id``, ``model``, ``created_at`` (in milliseconds) and
    ``previous_response_id`` there.
    """

    items: list[Any]
    has_more: bool
    last_id: str | None
    envelope: dict[str, Any] = field(default_factory=dict)


_PAGING_FIELDS = frozenset({"object", "data", "first_id", "last_id", "has_more"})


_INPUT_ITEMS_UNSUPPORTED = frozenset({400, 404, 405, 422, 501})


def classify_input_items_page(
    *,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    attempt: int,
    policy: RetryPolicy,
    profile: ProviderProfile,
    now: float,
    rand: float,
    include: Sequence[str] = (),
) -> InputItemsPage | Outcome:
    """What one input-items page means.

    Returns the page; or ``Permanent("failed", ...)`` when the provider does not offer
    input items for this response (400/404/405/422/501: the worker then archives the
    response without them); or the same Retry/StopAll the response itself would get
    for 401/403/429/5xx and transport-level trouble. A 400 that names one of
    ``include`` (the values the request carried) has ``rejected_include`` set.
    """
    if status_code == 200:
        try:
            data = loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return _bad_body("input items: " + _json_problem(body, exc), body, attempt, policy, rand)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return _bad_body("input items: body is not a list object", body, attempt, policy, rand)
        last_id = data.get("last_id")
        return InputItemsPage(
            data["data"],
            data.get("has_more") is True,
            last_id if isinstance(last_id, str) else None,
            {k: v for k, v in data.items() if k not in _PAGING_FIELDS},
        )
    rejected = rejected_include_value(status_code, body, include)
    if rejected is not None:
        return _include_rejected(rejected, ProviderError.from_api(body, headers))
    if status_code in _INPUT_ITEMS_UNSUPPORTED:
        error = ProviderError.from_api(body, headers)
        return Permanent("failed", f"input items unavailable: {_describe(status_code, error)}", status_code)
    return classify_response(
        status_code=status_code,
        headers=headers,
        body=body,
        requested_id="",
        attempt=attempt,
        previous_status_code=None,
        policy=policy,
        profile=profile,
        now=now,
        rand=rand,
    )


# --- 200 bodies -------------------------------------------------------------------------


def _classify_body(body: bytes, requested_id: str, attempt: int, policy: RetryPolicy, rand: float) -> Outcome:
    try:
        # Exact: a body accepted here is one the writer's parse accepts, with the same id and
        # status; a large one is checked without building it (archiver.body_head).
        head = read_head(body)
    except (ValueError, RecursionError) as exc:
        return _bad_body(_json_problem(body, exc), body, attempt, policy, rand)
    if head.kind != "object":
        return _bad_body(f"body is a JSON {head.kind}, not an object", body, attempt, policy, rand)
    if head.id != requested_id:
        if head.id_kind == "null":
            problem = "body has no 'id' field"
        elif head.id is None:
            problem = f"body 'id' is a {head.id_kind}, not a string"
        else:
            problem = f"body id {_shorten(head.id)!r} differs from requested {_shorten(requested_id)!r}"
        return _bad_body(problem, body, attempt, policy, rand)
    return Archived(
        raw=body,
        status_code=200,
        terminal=head.status not in NON_TERMINAL_RESPONSE_STATUSES,
        response_status=head.status,
        body=head.parsed,
    )


def _bad_body(problem: str, body: bytes, attempt: int, policy: RetryPolicy, rand: float) -> Outcome:
    # Retry with backoff: a truncated or mixed-up body is usually a proxy hiccup.
    delay = backoff_delay(attempt, policy, rand)
    return _retry_or_give_up(Retry(delay, _bounded(problem), 200, body=body), attempt, policy)


def _json_problem(body: bytes, exc: Exception) -> str:
    """Why ``body`` is not JSON, in orjson's words (the standard library's second opinion,
    which takes lone surrogate escapes, refused it too); or that it nests deeper than the
    archiver reads (valid JSON, maybe: see archiver.jsontext.MAX_NESTING)."""
    if not body.strip():
        return "body is empty"
    if isinstance(exc, NestingTooDeep):
        return (
            f"body nests deeper than the {MAX_NESTING} levels the archiver reads "
            f"({exc.depth:,} levels, {len(body)} bytes)"
        )
    if isinstance(exc, TooManyContainers):
        return f"body {exc} ({len(body)} bytes)"
    if isinstance(exc, NotJson):  # a large body, judged without its parse: msgspec's words
        return f"body is not valid JSON: {exc} ({len(body)} bytes)"
    if isinstance(exc, RecursionError):  # a backstop: NestingTooDeep comes first
        return f"body nests deeper than the JSON parser reaches ({len(body)} bytes)"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"body is not valid JSON: {exc} ({len(body)} bytes)"
    return f"body is not valid JSON ({len(body)} bytes)"


# --- error statuses ---------------------------------------------------------------------


def _include_rejected(value: str, error: ProviderError) -> Permanent:
    reason = _bounded(f"include value {_shorten(_clean(value))!r} rejected: {_describe(400, error)}")
    return Permanent("failed", reason, 400, rejected_include=value)


def _account_stop(status: int, error: ProviderError, profile: ProviderProfile) -> StopAll | None:
    codes = error.codes()
    label = error.label
    tag = f"{status} {label}" if label else str(status)
    details = _details(error)
    billing = next(
        (
            c
            for c in codes
            if c in _BILLING_CODES
            or c.endswith("billoverdue")
            or (c == _OPENAI_QUOTA_CODE and profile != "dashscope")
        ),
        None,
    )
    if billing is not None or status == 402:
        return StopAll(
            f"the provider account has a billing problem ({tag}){details}: "
            "settle the account or raise its quota, then run again",
            status,
            billing=True,
        )
    if any(c in _KEY_CODES for c in codes) or status == 401:
        return StopAll(
            f"the provider rejected the API key ({tag}){details}: check ARCHIVER_API_KEY "
            "and that the key belongs to the account and region of ARCHIVER_BASE_URL",
            status,
        )
    if status == 403 or any("accessdenied" in c for c in codes):
        return StopAll(
            f"the provider denied access ({tag}){details}: check the key's permissions, "
            "workspace and region (ARCHIVER_BASE_URL)",
            status,
        )
    return None


def _describe(status: int, error: ProviderError) -> str:
    head = f"{status} {error.label}" if error.label else f"{status} {_phrase(status)}".rstrip()
    text = f"{head}: {error.message}" if error.message else head
    if error.request_id:
        text += f" (request id {error.request_id})"
    return _bounded(text)


def _details(error: ProviderError) -> str:
    parts = []
    if error.message:
        parts.append(error.message)
    if error.request_id:
        parts.append(f"request id {error.request_id}")
    return f": {'; '.join(parts)}" if parts else ""


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _server_wait(headers: Mapping[str, str], now: float, policy: RetryPolicy) -> float | None:
    wait = parse_retry_after(headers, now)
    # "Retry-After: 0" (or a date in the past) on a throttle would mean hammering the
    # provider at once: treat it as no advice and use our own backoff.
    if wait is None or wait <= 0:
        return None
    return min(wait, policy.max_server_wait_s)


def _retry_or_give_up(retry: Retry, attempt: int, policy: RetryPolicy) -> Outcome:
    if attempt < policy.max_attempts:
        return retry
    return Permanent(
        "failed",
        _bounded(f"gave up after {attempt} attempts: {retry.reason}"),
        retry.status_code,
        retry.body,
        symptom=retry.symptom,
    )


def _is_error_envelope(body: bytes) -> bool:
    """Whether a body is a provider's JSON error: ``{"error": ...}`` or ``{"code", "message"}``."""
    data = _loads_or_none(body)
    if not isinstance(data, dict):
        return False
    return isinstance(data.get("error"), dict | str) or (
        isinstance(data.get("message"), str) and ("code" in data or "request_id" in data or "type" in data)
    )


# --- exceptions -------------------------------------------------------------------------

_NETWORK_CLASS_MARKERS = ("ClientConnection", "ServerDisconnected", "ClientPayloadError")


def _is_network_error(exc: BaseException) -> bool:
    # asyncio.TimeoutError is TimeoutError since Python 3.11.
    if isinstance(exc, OSError | TimeoutError):
        return True
    return _class_named(exc, _NETWORK_CLASS_MARKERS)


def _class_named(exc: BaseException, markers: tuple[str, ...]) -> bool:
    """Whether a class of ``exc`` (or a base) has a marker in its name: aiohttp's errors,
    recognised without importing aiohttp here."""
    return any(marker in cls.__name__ for cls in type(exc).__mro__ for marker in markers)


# No answer at all from the endpoint: refused, DNS, TLS, no connection within the connect
# timeout (dropped SYNs), or a connection closed or reset before any answer (a proxy
# without its backend). Each may be one flaky request: the breaker holds them and probes before it trips.
_CONNECT_CLASS_MARKERS = (
    "ClientConnectorError",
    "ClientSSLError",
    "ClientConnectorCertificateError",
    "ConnectionTimeoutError",
    "ServerDisconnectedError",
    "ClientOSError",
)


def _is_connect_error(exc: BaseException) -> bool:
    """No connection at all: refused, DNS, TLS (aiohttp's connector errors, by name: no import here)."""
    if isinstance(exc, ConnectionError | ssl.SSLError | socket.gaierror):
        return True
    return _class_named(exc, _CONNECT_CLASS_MARKERS)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


# --- small helpers ----------------------------------------------------------------------


class _HeaderLookup:
    """Case-insensitive header access for plain dicts and aiohttp's CIMultiDict alike."""

    __slots__ = ("_headers", "_lowered")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers
        self._lowered: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        value = self._headers.get(name)
        if value is None:
            if self._lowered is None:
                self._lowered = {str(k).lower(): v for k, v in self._headers.items()}
            value = self._lowered.get(name)
        return value if isinstance(value, str) else None


def _loads_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return _bounded(_clean(value))
    return None


def _code(value: object) -> str | None:
    # Numeric codes (OpenRouter) only echo the HTTP status, which reasons already show.
    if isinstance(value, str):
        return _clean(value)[:_ID_LIMIT] or None
    return None


def _request_id(value: object) -> str | None:
    if isinstance(value, str) and _REQUEST_ID.match(value):
        return value
    return None


def _normalize_code(code: str) -> str:
    return code.lower().replace("_", "").replace("-", "").replace(".", "")


def _snippet(body: bytes) -> str | None:
    text = _clean(body[: _SNIPPET_LIMIT * 4].decode("utf-8", errors="replace"))
    if not text:
        return None
    return text if len(text) <= _SNIPPET_LIMIT else text[: _SNIPPET_LIMIT - 3] + "..."


def _clean(text: str) -> str:
    """One line, no control characters, nothing that looks like a key."""
    text = _WHITESPACE.sub(" ", text).strip()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return _SECRET.sub("[redacted]", text)


def _bounded(text: str) -> str:
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def _shorten(text: str) -> str:
    return text if len(text) <= _ID_LIMIT else text[: _ID_LIMIT - 3] + "..."
