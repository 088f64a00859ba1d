"""Push ingestion on the daemon's HTTP listener: ``POST /v1/enqueue`` and ``POST /webhooks/{source}``.

Both routes live beside ``/metrics`` and ``/healthz`` (loopback unless configured
otherwise) and exist only when their secret file is configured:

- ``/v1/enqueue`` takes a bearer token (``--ingest-token-file``) and a JSON array or
  NDJSON of IDs or objects (``id``, optional ``source``, optional ``created_at``),
  validated as ``archiver enqueue`` validates lines (:mod:`archiver.ids`). It answers
  with the counts and the rejected items once the rows are committed.
- ``/webhooks/{source}`` takes Standard Webhooks deliveries for a source with a webhook
  secret (``--webhook-secret-file`` for ``default``, ``webhook_secret_file`` of a source
  in the config file; :mod:`archiver.webhooks`); a ``response.*`` event makes its
  ``data.id`` due now, for that source.

Bodies are read up to a cap (413 beyond it) without holding more. Every answer passes
the redaction point, and the token and secret are registered there when they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from archiver.errors import ConfigError, DatabaseVanished, first_line
from archiver.ids import IdLine, RejectedLine, json_type_name, parse_id_lines, response_id_problem
from archiver.jsontext import json_text
from archiver.logs import get_logger
from archiver.queue import QueueStore
from archiver.redaction import redact_value, register_secret
from archiver.settings import DEFAULT_SOURCE, Settings
from archiver.settings import read_secret_file as _read_secret_file
from archiver.webhooks import SECRET_PREFIX, SeenDeliveries, WebhookRejected, decode_secret, verify

__all__ = [
    "DEFAULT_SOURCE",
    "ENQUEUE_MAX_BYTES",
    "RESPONSE_EVENTS",
    "WEBHOOK_MAX_BYTES",
    "EnqueueBody",
    "IngestSecrets",
    "ingest_routes",
    "load_ingest_secrets",
    "parse_enqueue_body",
    "read_enqueue_body",
]

log = get_logger()

ENQUEUE_MAX_BYTES = 8 * 1024 * 1024
WEBHOOK_MAX_BYTES = 1024 * 1024
BODY_TIMEOUT_S = 30.0
"""Seconds a client may take to send one body (408 beyond: a trickled body holds a connection)."""
HELD_MAX_BYTES = 4 * ENQUEUE_MAX_BYTES
"""Bytes of request bodies the ingest routes hold at once, together: each request reserves
its ``Content-Length`` (its route's cap when it sends none) before reading, and one that
does not fit gets 503 with ``Retry-After`` at once. Webhook bodies are read before their
signature can be checked, so without this bound anyone able to connect sets the memory."""
HELD_MAX_BODIES = 128
"""Request bodies the ingest routes read at once, however small: half the listener's 256
connections (``archiver.metrics.LISTENER_MAX_CONNECTIONS``), so connections trickling
small bodies (30 s each) never fill the cap and keep ``/healthz`` and ``/metrics`` out;
one more gets 503 with ``Retry-After`` at once, like a body over the byte budget."""
MAX_REJECTED_SHOWN = 1000
"""Rejected items listed in one answer (the count covers all of them)."""
RESPONSE_EVENTS = frozenset(
    ("response.completed", "response.failed", "response.incomplete", "response.cancelled")
)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class IngestSecrets:
    """The bearer token of ``/v1/enqueue`` and the webhook HMAC keys (None / absent: off).

    ``webhook_key`` is the ``default`` source's; ``source_keys`` those of other sources.
    ``sources`` are the sources ``/v1/enqueue`` accepts (the ones this daemon serves).
    """

    token: str | None = field(default=None, repr=False)
    webhook_key: bytes | None = field(default=None, repr=False)
    source_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    sources: frozenset[str] = frozenset({DEFAULT_SOURCE})

    @property
    def any(self) -> bool:
        """Whether any endpoint is on."""
        return self.token is not None or self.webhook_key is not None or bool(self.source_keys)

    def key_of(self, source: str) -> bytes | None:
        """The webhook key of ``source`` (None: no webhook for it)."""
        return self.webhook_key if source == DEFAULT_SOURCE else self.source_keys.get(source)


def load_ingest_secrets(settings: Settings, sources: Mapping[str, Settings] | None = None) -> IngestSecrets:
    """Read the token and webhook secret files, and register them with the redaction point.

    Args:
        settings: the process's settings (``--ingest-token-file``, the listener).
        sources: the settings of each source served (default: ``settings`` as ``default``);
            each one's ``webhook_secret_file`` turns on ``/webhooks/{source}``.

    Without ``--metrics-port`` nothing is read: a sources config's ``webhook_secret_file``
    is then another process's (the daemon's; a backfill shares its config).

    Raises:
        ConfigError: a file is missing, unreadable or empty, the secret is not base64, or
            ``--ingest-token-file`` / ``--webhook-secret-file`` is given without
            ``--metrics-port`` (the endpoints need the listener).
    """
    sources = sources or {DEFAULT_SOURCE: settings}
    if settings.metrics_port is None:
        if settings.ingest_token_file or settings.webhook_secret_file:
            raise ConfigError(
                "--ingest-token-file and --webhook-secret-file serve on the metrics listener: "
                "set --metrics-port too"
            )
        # No listener, no endpoint: the webhook secrets of a sources config (shared by every
        # unit) belong to the process that serves them; a backfill beside it reads none.
        return IngestSecrets(None, None, {}, frozenset(sources))
    token = None
    if settings.ingest_token_file:
        token = _read_secret_file(settings.ingest_token_file, "ingest token")
        register_secret(token)
    keys: dict[str, bytes] = {}
    for name, source in sources.items():
        if source.webhook_secret_file:
            keys[name] = _webhook_key(source.webhook_secret_file)
    default_key = keys.pop(DEFAULT_SOURCE, None)
    return IngestSecrets(token, default_key, keys, frozenset(sources))


def _webhook_key(path: str) -> bytes:
    secret = _read_secret_file(path, "webhook secret")
    register_secret(secret)
    register_secret(secret.removeprefix(SECRET_PREFIX))
    try:
        return decode_secret(secret)
    except ValueError as exc:
        raise ConfigError(f"{exc}: {path}") from None


# --- the /v1/enqueue body ------------------------------------------------------------------


class BodyError(ValueError):
    """The request body cannot be read as IDs at all (400)."""


def parse_enqueue_body(
    body: bytes, sources: frozenset[str] = frozenset({DEFAULT_SOURCE})
) -> tuple[list[IdLine], list[RejectedLine]]:
    """The IDs in a ``/v1/enqueue`` body: a JSON array, else NDJSON (one ID or object a line).

    An array item is an ID string (checked as is) or an object read like a JSON line of
    ``archiver enqueue``; line numbers are 1-based item numbers. An object naming a
    ``source`` not in ``sources`` (the ones served) is rejected (``unknown source``), and
    so is an item naming none when ``default`` is not served.

    Returns every rejected item; :func:`read_enqueue_body` keeps only the first ones.

    Raises:
        BodyError: the body is not UTF-8, or starts like an array but is not valid JSON.
    """
    read = read_enqueue_body(body, sources, keep_rejected=None)
    return read.accepted, read.rejected


@dataclass
class EnqueueBody:
    """What a body holds: the accepted IDs, the first rejected items, how many were rejected."""

    accepted: list[IdLine]
    rejected: list[RejectedLine]
    rejected_count: int


def read_enqueue_body(
    body: bytes,
    sources: frozenset[str] = frozenset({DEFAULT_SOURCE}),
    *,
    keep_rejected: int | None = MAX_REJECTED_SHOWN,
) -> EnqueueBody:
    """:func:`parse_enqueue_body`, keeping at most ``keep_rejected`` rejected items (None:
    all) and counting the rest: an 8 MiB body of bad lines is millions of them.

    Raises:
        BodyError: as :func:`parse_enqueue_body`.
    """
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8 text") from None
    read = EnqueueBody([], [], 0)
    for item in _items(text, sources):
        if isinstance(item, IdLine) and item.source is None and DEFAULT_SOURCE not in sources:
            reason = "no source given, and this daemon does not serve the source 'default'"
            item = RejectedLine(item.line_no, reason, item.response_id)
        if isinstance(item, IdLine):
            read.accepted.append(item)
            continue
        read.rejected_count += 1
        if keep_rejected is None or len(read.rejected) < keep_rejected:
            read.rejected.append(item)
    return read


def _items(text: str, sources: frozenset[str]) -> Iterator[IdLine | RejectedLine]:
    if text.lstrip().startswith("["):
        try:
            values = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BodyError(f"the body starts with '[' but is not a JSON array: {exc}") from None
        if not isinstance(values, list):
            raise BodyError(f"the body is a JSON {json_type_name(values)}, not an array")
        for number, value in enumerate(values, 1):
            yield _array_item(number, value, sources)
        return
    for number, line in enumerate(text.splitlines(), 1):
        unknown = _unknown_source(line, sources)
        if unknown is not None:
            yield RejectedLine(number, unknown, _shorten(line.strip()))
            continue
        yield from parse_id_lines([line], start=number)


def _array_item(number: int, value: object, sources: frozenset[str]) -> IdLine | RejectedLine:
    if isinstance(value, str):
        problem = response_id_problem(value)
        if problem is None:
            return IdLine(number, value)
        return RejectedLine(number, f"invalid response ID: {problem}", _shorten(value))
    line = json_text(value)  # orjson writes 254 levels: an element may nest 1,024
    if not isinstance(value, dict):
        return RejectedLine(number, f"JSON {json_type_name(value)} is not an ID or an object", _shorten(line))
    unknown = _unknown_source(line, sources)
    if unknown is not None:
        return RejectedLine(number, unknown, _shorten(line))
    return next(iter(parse_id_lines([line], start=number)))


def _unknown_source(line: str, sources: frozenset[str]) -> str | None:
    """``unknown source 'x'`` for a JSON object line naming a source not served, else None."""
    if not line.lstrip().startswith("{"):
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # parse_id_lines says what is wrong with it
    if not isinstance(record, dict) or "source" not in record:
        return None
    source = record["source"]
    if isinstance(source, str) and source in sources:
        return None
    shown = repr(source) if isinstance(source, str) else f"({json_type_name(source)})"
    return f"unknown source {_shorten(shown)}"


def _event_type_text(value: object) -> str:
    """A webhook's ``type`` as text: a string or null as it is, another value by its JSON
    type (its repr recursed: a list nested 1,000 levels ran out of stack)."""
    return str(value) if value is None or isinstance(value, str) else f"({json_type_name(value)})"


def _shorten(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


# --- HTTP ------------------------------------------------------------------------------------


def _answer(status: int, payload: dict[str, Any], **headers: str) -> web.Response:
    """A JSON answer; every string in it passes the redaction point. ``Connection="close"``
    also tells aiohttp, so that it closes the connection (it kept it alive, and the
    listener's cap could not tell it from one serving a request)."""
    answer = web.Response(
        status=status,
        body=orjson.dumps(redact_value(payload)),
        content_type="application/json",
        headers=headers,
    )
    if headers.get("Connection") == "close":
        answer.force_close()
    return answer


class _Refused(Exception):
    """The body is not read: ``answer`` says why (413, 408, 503)."""

    def __init__(self, answer: web.Response) -> None:
        super().__init__(answer.status)
        self.answer = answer


class _BodyBudget:
    """The bytes (:data:`HELD_MAX_BYTES`) and number (:data:`HELD_MAX_BODIES`) of request
    bodies held at once, shared by the routes."""

    def __init__(self, max_bytes: int, max_bodies: int = HELD_MAX_BODIES) -> None:
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self.held = 0
        self.bodies = 0

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        if self.held + size > self.max_bytes or self.bodies >= self.max_bodies:
            raise _Refused(
                _answer(
                    503,
                    {"error": "too many request bodies are being read; retry later"},
                    **{"Retry-After": "1", "Connection": "close"},
                )
            )
        self.held += size
        self.bodies += 1
        try:
            yield
        finally:
            self.held -= size
            self.bodies -= 1


@dataclass(frozen=True)
class _BodyLimits:
    """How one route reads bodies: its cap, the budget all routes share, the time allowed."""

    cap: int
    budget: _BodyBudget
    timeout_s: float


@contextlib.asynccontextmanager
async def _body(request: web.Request, limits: _BodyLimits) -> AsyncIterator[bytes]:
    """The whole body, read within the time allowed and under the budget, held while the block runs.

    Raises:
        _Refused: longer than the cap (413, as soon as that is known), not all sent in time
            (408), or no room in the budget (503).
    """
    cap = limits.cap
    if request.content_length is not None and request.content_length > cap:
        raise _Refused(_too_large(cap))
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    # aiohttp inflates a compressed body before we read it: a few bytes on the wire may
    # become the whole cap, so such a body (or one of unknown length) reserves the cap.
    length = request.content_length
    with limits.budget.reserve(length if length is not None and encoding in ("", "identity") else cap):
        body = bytearray()
        try:
            async with asyncio.timeout(limits.timeout_s):
                async for chunk in request.content.iter_chunked(_CHUNK):
                    if len(body) + len(chunk) > cap:
                        raise _Refused(_too_large(cap))
                    body += chunk
        except TimeoutError:
            error = f"the request body was not sent within {limits.timeout_s:g} s"
            raise _Refused(_answer(408, {"error": error}, Connection="close")) from None
        except web.RequestPayloadError:  # aiohttp could not inflate it (or it was cut short)
            error = f"the request body cannot be read as Content-Encoding {encoding or 'identity'}"
            raise _Refused(_answer(400, {"error": error}, Connection="close")) from None
        except ConnectionError:  # the client went away mid-body: nobody to answer
            raise _Refused(_answer(400, {"error": "the client closed the connection"})) from None
        yield bytes(body)


def _too_large(cap: int) -> web.Response:
    return _answer(413, {"error": f"request body larger than {cap // 1024} KiB"}, Connection="close")


def _bearer_ok(request: web.Request, token: str) -> bool:
    import hashlib
    import hmac

    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes that are not UTF-8 come as lone surrogates: back to those bytes, never equal.
    # Digests of equal length are compared, so the time taken says nothing of the token's
    # length either (compare_digest returns at once for inputs of different lengths).
    given_digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given_digest, hashlib.sha256(token.encode()).digest())


def _rejected_json(rejected: list[RejectedLine]) -> list[dict[str, Any]]:
    return [{"line": r.line_no, "reason": r.reason, "text": r.text} for r in rejected[:MAX_REJECTED_SHOWN]]


def ingest_routes(
    queue: QueueStore,
    secrets: IngestSecrets,
    *,
    clock: Callable[[], float] = time.time,
    enqueue_max_bytes: int = ENQUEUE_MAX_BYTES,
    webhook_max_bytes: int = WEBHOOK_MAX_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    held_max_bytes: int = HELD_MAX_BYTES,
    on_vanished: Callable[[str], None] | None = None,
) -> list[web.RouteDef]:
    """The routes of the configured endpoints, for :func:`archiver.metrics.start_metrics_server`.

    Args:
        queue: where IDs go.
        secrets: which endpoints are on (:func:`load_ingest_secrets`).
        clock: unix time, for webhook timestamps.
        enqueue_max_bytes: the body cap of ``/v1/enqueue``.
        webhook_max_bytes: the body cap of a webhook delivery.
        body_timeout_s: how long a client may take to send a body (:data:`BODY_TIMEOUT_S`).
        held_max_bytes: request bodies held at once by both routes (:data:`HELD_MAX_BYTES`).
        on_vanished: called with the message when the SQLite archive file was deleted or
            replaced (the daemon stops: every later write would fail the same way).
    """
    budget = _BodyBudget(held_max_bytes)
    routes: list[web.RouteDef] = []
    if secrets.token is not None:
        limits = _BodyLimits(enqueue_max_bytes, budget, body_timeout_s)
        handler = _enqueue_handler(queue, secrets.token, limits, secrets.sources, on_vanished)
        routes.append(web.post("/v1/enqueue", handler))
    if secrets.webhook_key is not None or secrets.source_keys:
        limits = _BodyLimits(webhook_max_bytes, budget, body_timeout_s)
        handler = _webhook_handler(queue, secrets, clock, limits, on_vanished)
        routes.append(web.post("/webhooks/{source}", handler))
    return routes


def _write_failed(exc: Exception, event: str, on_vanished: Callable[[str], None] | None) -> web.Response:
    """The 503 of a write the database refused; the sender retries (the daemon stops when the
    archive file itself is gone)."""
    log.error(event, error=first_line(exc), error_type=type(exc).__name__)
    if isinstance(exc, DatabaseVanished) and on_vanished is not None:
        on_vanished(str(exc))
    return _answer(503, {"error": "the queue cannot be written now; retry later"})


def _enqueue_handler(
    queue: QueueStore,
    token: str,
    limits: _BodyLimits,
    sources: frozenset[str],
    on_vanished: Callable[[str], None] | None,
) -> Callable[[web.Request], Any]:
    async def enqueue(request: web.Request) -> web.Response:
        if not _bearer_ok(request, token):
            log.warning("archiver.ingest_refused", status_code=401, remote=request.remote)
            return _answer(401, {"error": "missing or wrong ingest token"}, **{"WWW-Authenticate": "Bearer"})
        try:
            async with _body(request, limits) as body:
                return await enqueue_body(body)
        except _Refused as refused:
            log.warning("archiver.ingest_refused", status_code=refused.answer.status, remote=request.remote)
            return refused.answer

    async def enqueue_body(body: bytes) -> web.Response:
        try:  # in a thread: millions of items would hold the event loop for seconds
            read = await asyncio.to_thread(read_enqueue_body, body, sources)
        except BodyError as exc:
            return _answer(400, {"error": str(exc)})
        accepted = read.accepted
        try:
            counts = await queue.enqueue(
                [line.response_id for line in accepted],
                created_at=[line.created_at for line in accepted],
                sources=[line.source or DEFAULT_SOURCE for line in accepted],
            )
        except Exception as exc:  # the database is down: the sender retries
            return _write_failed(exc, "archiver.ingest_failed", on_vanished)
        log.info(
            "archiver.ingest_enqueued",
            queued=counts.queued,
            already_known=counts.already_known,
            rejected=read.rejected_count,
        )
        return _answer(
            200,
            {
                "queued": counts.queued,
                "already_known": counts.already_known,
                "rejected": read.rejected_count,
                "rejected_lines": _rejected_json(read.rejected),
            },
        )

    return enqueue


def _webhook_handler(
    queue: QueueStore,
    secrets: IngestSecrets,
    clock: Callable[[], float],
    limits: _BodyLimits,
    on_vanished: Callable[[str], None] | None,
) -> Callable[[web.Request], Any]:
    seen = SeenDeliveries()

    async def webhook(request: web.Request) -> web.Response:
        source = request.match_info["source"]
        key = secrets.key_of(source)
        if key is None:
            return _answer(404, {"error": "unknown source, or no webhook secret for it"})
        try:
            async with _body(request, limits) as body:
                return await delivered(request, source, key, body)
        except _Refused as refused:
            log.warning("archiver.webhook_refused", status_code=refused.answer.status, remote=request.remote)
            return refused.answer

    async def delivered(request: web.Request, source: str, key: bytes, body: bytes) -> web.Response:
        now = clock()
        try:
            delivery = verify(key, request.headers, body, now=now)
        except WebhookRejected as exc:
            log.warning("archiver.webhook_refused", status_code=exc.status, error=str(exc))
            return _answer(exc.status, {"error": str(exc)})
        seen_id = f"{source}/{delivery.webhook_id}"  # webhook IDs are unique per sender
        if seen_id in seen:
            log.info("archiver.webhook_replayed", webhook_id=delivery.webhook_id)
            return _answer(200, {"duplicate": True, "queued": 0})
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _answer(400, {"error": "the body is not JSON"})
        event_type = event.get("type") if isinstance(event, dict) else None
        if not isinstance(event_type, str) or event_type not in RESPONSE_EVENTS:  # a list is unhashable
            seen.add(seen_id, now)
            shown = _event_type_text(event_type)
            log.info("archiver.webhook_ignored", webhook_id=delivery.webhook_id, event_type=shown)
            return _answer(200, {"ignored": True, "type": shown})
        data = event.get("data")
        response_id = data.get("id") if isinstance(data, dict) else None
        problem = response_id_problem(response_id)
        if problem is not None:
            return _answer(400, {"error": f"data.id: {problem}"})
        assert isinstance(response_id, str)
        try:
            counts = await queue.enqueue_due_now([response_id], source)
        except Exception as exc:  # not remembered as seen: the provider's retry is welcome
            return _write_failed(exc, "archiver.webhook_failed", on_vanished)
        seen.add(seen_id, now)
        log.info(
            "archiver.webhook_enqueued",
            source=source,
            webhook_id=delivery.webhook_id,
            event_type=event_type,
            response_id=response_id,
            queued=counts.queued,
            requeued=counts.requeued,
        )
        answer = {"type": event_type, "response_id": response_id}
        return _answer(200, {**answer, "queued": counts.queued, "requeued": counts.requeued})

    return webhook
