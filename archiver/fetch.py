"""What one fetch of one queued ID comes to: HTTP, classification, expiry.

:class:`Fetcher` turns a leased :class:`~archiver.queue.Job` into a
:class:`~archiver.store.FetchResult`: the outcome the policy gives the HTTP answer, and
for an archived body its input items, when asked for. It does not normalize bodies (the
writer does, possibly in another process: see :mod:`archiver.writer`), except one that
echoes a registered secret (see :mod:`archiver.echoes`); it neither logs routine
outcomes nor touches the database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from archiver import heap
from archiver.budget import Reservation
from archiver.client import ERROR_BODY_LIMIT, BodyTooLarge, ResponsesClient
from archiver.echoes import echoes_secret, scrub_derived
from archiver.ids import response_id_problem
from archiver.jsontext import PARSED_BYTES_PER_WEIGHT, Tally, TooManyContainers
from archiver.logs import get_logger, redact
from archiver.normalize import normalize_input_items, normalize_input_list, scrub_surrogates
from archiver.outcomes import Archived, Outcome, Permanent, Retry, with_body_sample
from archiver.policy import (
    InputItemsPage,
    ProviderProfile,
    RetryPolicy,
    classify_exception,
    classify_input_items_page,
    classify_response,
    repoll_delay,
)
from archiver.queue import Job
from archiver.redaction import scrub_outcome
from archiver.row_budget import BYTES_PER_ROW, MIN_ROWS, ROW_BYTES, max_rows
from archiver.store import FetchResult

log = get_logger()

MAX_INPUT_ITEM_PAGES = 1000


class Fetcher:
    """Fetches jobs over one client with one retry policy.

    Args:
        client: the open HTTP client.
        policy: retry and re-poll rules.
        profile: whose error codes apply.
        retention_s: how long the provider keeps responses (None: unknown).
        with_input_items: also fetch every page of the response's input items.
        rand: jitter source in [0, 1).
        include: ``include[]`` values sent with every request (fields returned only when
            asked for). A value the provider rejects with a 400 naming it is dropped for
            the rest of the run, separately for responses and input items.
        pace: awaited before every request but the first of a fetch (the worker paces
            that one): a fleet-wide ``max_rps`` counts input-item pages, requests again
            without a rejected include value, and probes too.
    """

    def __init__(
        self,
        client: ResponsesClient,
        policy: RetryPolicy,
        profile: ProviderProfile,
        *,
        retention_s: float | None,
        with_input_items: bool,
        rand: Callable[[], float],
        include: Sequence[str] = (),
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.pace = pace
        self.policy = policy
        self.profile = profile
        self.retention_s = retention_s
        self.with_input_items = with_input_items
        self.rand = rand
        self.include = tuple(include)
        self.input_items_include = tuple(include)

    async def fetch(self, job: Job, reservation: Reservation | None = None) -> FetchResult:
        """One fetch. A :class:`StopAll` outcome means the account was refused.

        Every outcome leaves through :func:`_finish`: its forensic body cut to a sample and
        every registered secret scrubbed from its text, before anything stores or logs it.

        Args:
            job: the leased row.
            reservation: counts the bytes read against the byte budget (``--max-held-mb``).
        """
        started = time.monotonic()
        now = time.time()
        problem = response_id_problem(job.response_id)
        if problem is not None:
            # A row inserted by another application that archiver enqueue would have refused:
            # never sent, not even URL-quoted.
            outcome: Outcome = Permanent("failed", f"not a valid response ID: {problem}")
            return self._finish(job, outcome, started, requests=0)
        requests = 0
        while True:
            # Each pass drops one rejected include value, so this ends within len(include) + 1.
            include = self.include
            requests += 1
            if requests > 1:
                await self._pace()
            try:
                outcome = await self._ask(
                    job.response_id,
                    attempt=job.attempt,
                    previous_status_code=job.previous_status_code,
                    include=include,
                    reservation=reservation,
                    now=now,
                )
            except BodyTooLarge as exc:
                outcome = Permanent("failed", f"{exc} (read {exc.read} bytes, then stopped)", 200)
                return self._finish(job, outcome, started, requests=requests)
            if not (isinstance(outcome, Permanent) and outcome.rejected_include is not None):
                break
            self.drop_include(outcome.rejected_include, "responses", job.response_id, outcome.reason)
        outcome = self.expired_if_old(job, outcome, now)
        input_items: InputItemsPage | None = None
        next_delay = 0.0
        if isinstance(outcome, Archived):
            # The parse is dropped at once, whichever writer comes next: a result waiting
            # for it holds ``raw`` only (see Archived), and input-item pages may take a while.
            outcome = outcome.without_body()
            heap.give_back(len(outcome.raw))
            if not outcome.terminal:
                next_delay = repoll_delay(job.polls + 1, self.policy, self.rand())
            elif self.with_input_items:
                fetched, pages = await self._input_items(job, reservation)
                requests += pages
                if isinstance(fetched, InputItemsPage):
                    input_items = fetched
                elif isinstance(fetched, Permanent) and fetched.status_code != 200:
                    log.warning(
                        "archiver.input_items_unavailable",
                        response_id=job.response_id,
                        status_code=fetched.status_code,
                        error=redact(fetched.reason),
                    )
                else:  # Retry (fetch it all again later), StopAll, or a hostile list: failed
                    outcome = fetched
        return self._finish(
            job,
            outcome,
            started,
            requests=requests,
            input_items=normalize_input_items(job.response_id, input_items.items)
            if input_items is not None
            else None,
            input_list=normalize_input_list(job.response_id, input_items.envelope)
            if input_items is not None
            else None,
            next_delay=next_delay,
        )

    async def probe_endpoint(self) -> Outcome:
        """Ask the endpoint for an ID that cannot exist, and classify the answer.

        A working endpoint with an accepted key answers the provider's JSON not-found
        error (see :mod:`archiver.breaker`); a wrong base URL, a down host or a refused key
        answer it as they answer every ID. Nothing of it is archived.
        """
        probe_id = f"resp_archiver_probe_{uuid.uuid4().hex}"
        await self._pace()
        try:
            return await self._ask(probe_id, attempt=1, previous_status_code=404, max_bytes=ERROR_BODY_LIMIT)
        except BodyTooLarge as exc:
            return classify_exception(exc, attempt=1, policy=self.policy, rand=0.0)

    async def _pace(self) -> None:
        if self.pace is not None:
            await self.pace()

    async def _ask(
        self,
        response_id: str,
        *,
        attempt: int,
        previous_status_code: int | None,
        include: Sequence[str] = (),
        reservation: Reservation | None = None,
        max_bytes: int | None = None,
        now: float | None = None,
    ) -> Outcome:
        """GET one response and classify the answer (or the transport fault).

        Raises:
            BodyTooLarge: the body passed ``max_bytes`` (the caller says what that means).
        """
        try:
            exchange = await self.client.fetch(
                response_id, max_bytes=max_bytes, reservation=reservation, include=include
            )
        except (asyncio.CancelledError, BodyTooLarge):
            raise
        except Exception as exc:
            return classify_exception(exc, attempt=attempt, policy=self.policy, rand=self.rand())
        return classify_response(
            status_code=exchange.status_code,
            headers=exchange.headers,
            body=exchange.body,
            requested_id=response_id,
            attempt=attempt,
            previous_status_code=previous_status_code,
            policy=self.policy,
            profile=self.profile,
            now=time.time() if now is None else now,
            rand=self.rand(),
            include=include,
        )

    def _finish(
        self,
        job: Job,
        outcome: Outcome,
        started: float,
        *,
        requests: int,
        input_items: list[dict[str, Any]] | None = None,
        input_list: dict[str, Any] | None = None,
        next_delay: float = 0.0,
    ) -> FetchResult:
        result = FetchResult(
            job=job,
            outcome=outcome,
            fetched_at=datetime.now(UTC),
            input_items=input_items,
            input_list=input_list,
            next_delay_s=next_delay,
            duration_s=time.monotonic() - started,
            requests=requests,
        )
        if echoes_secret(result):  # normalized here, where the key is known, and scrubbed
            result = scrub_derived(result)
        return replace(result, outcome=scrub_outcome(with_body_sample(result.outcome)))

    async def _input_items(
        self, job: Job, reservation: Reservation | None
    ) -> tuple[InputItemsPage | Outcome, int]:
        """(every input item oldest first, or the outcome that stopped paging; pages fetched).

        The list comes back as one page: all items, and the envelope of the first page
        (DashScope's list fields).

        Pages are fetched one after another inside the caller's concurrency slot, so input
        items share the request budget with the responses. All pages of one response
        together may hold at most ``--max-body-mb``, and at most one item per 512 of their
        bytes (:func:`archiver.row_budget.max_rows`): past either the ID fails. Each item
        counts :data:`~archiver.row_budget.ROW_BYTES` against the byte budget besides the
        pages' bytes, from its page's parse until it is written: ``--max-held-mb`` then
        bounds the items waiting, not only their text.
        """
        items: list[Any] = []
        envelope: dict[str, Any] = {}
        after: str | None = None
        left = self.client.max_body_bytes
        tally = Tally()
        requests = 0
        for page_no in range(1, MAX_INPUT_ITEM_PAGES + 1):
            while True:  # again without an include value the provider rejected (ends: see fetch)
                include = self.input_items_include
                requests += 1
                await self._pace()
                try:
                    exchange = await self.client.fetch_input_items_page(
                        job.response_id, after, max_bytes=left, reservation=reservation, include=include
                    )
                except asyncio.CancelledError:
                    raise
                except BodyTooLarge as exc:
                    return Permanent(
                        "failed",
                        "input items: all pages together larger than --max-body-mb "
                        f"({self.client.max_body_bytes / (1 << 20):g} MiB after decompression; "
                        f"stopped at {exc.read} bytes of page {page_no})",
                        200,
                    ), requests
                except Exception as exc:
                    return classify_exception(
                        exc, attempt=job.attempt, policy=self.policy, rand=self.rand()
                    ), requests
                if exchange.status_code == 200:  # before the page's parse
                    weighed = tally.weight
                    too_dense = _past_limits(tally, exchange.body, page_no)
                    if too_dense is not None:
                        return too_dense, requests
                    if reservation is not None:  # the items wait parsed: their weight counts
                        await reservation.take((tally.weight - weighed) * PARSED_BYTES_PER_WEIGHT)
                page = classify_input_items_page(
                    status_code=exchange.status_code,
                    headers=exchange.headers,
                    body=exchange.body,
                    attempt=job.attempt,
                    policy=self.policy,
                    profile=self.profile,
                    now=time.time(),
                    rand=self.rand(),
                    include=include,
                )
                if not (isinstance(page, Permanent) and page.rejected_include is not None):
                    break
                self.drop_include(page.rejected_include, "input_items", job.response_id, page.reason)
            if not isinstance(page, InputItemsPage):
                return page, requests
            left -= len(exchange.body)
            if after is not None and page.last_id == after:
                # the same page again (a server that ignores `after`)
                return InputItemsPage(items, False, after, envelope), requests
            lone_surrogates = b"\\ud" in exchange.body or b"\\uD" in exchange.body
            items.extend(scrub_surrogates(page.items) if lone_surrogates else page.items)
            most = max_rows(self.client.max_body_bytes - left)
            if len(items) > most:
                return Permanent(
                    "failed",
                    f"input items: more than the {most:,} (one per {BYTES_PER_ROW} bytes of their "
                    f"pages, at least {MIN_ROWS:,}) the archiver builds ({len(items):,} by page {page_no})",
                    200,
                ), requests
            if reservation is not None:  # parsed, then rows: not the pages' bytes alone
                await reservation.take(len(page.items) * ROW_BYTES)
            for name, value in page.envelope.items():
                envelope.setdefault(name, scrub_surrogates(value) if lone_surrogates else value)
            if not page.has_more or page.last_id is None or page.last_id == after:
                return InputItemsPage(items, False, page.last_id, envelope), requests
            after = page.last_id
        return Permanent("failed", f"input items: more than {MAX_INPUT_ITEM_PAGES} pages", 200), requests

    def drop_include(self, value: str, endpoint: str, response_id: str, reason: str) -> None:
        """Stop sending ``value`` to ``endpoint`` (``responses`` or ``input_items``) for this run.

        Logged once per value and endpoint; a request still in flight with the value
        finds it gone and simply asks again.
        """
        current = self.include if endpoint == "responses" else self.input_items_include
        if value not in current:
            return
        kept = tuple(v for v in current if v != value)
        if endpoint == "responses":
            self.include = kept
        else:
            self.input_items_include = kept
        log.warning(
            "archiver.include_dropped",
            include=value,
            endpoint=endpoint,
            response_id=response_id,
            status_code=400,
            error=redact(reason),
            kept=list(kept),
        )

    def expired_if_old(self, job: Job, outcome: Outcome, now: float) -> Outcome:
        """A 404 for an ID older than the provider's retention is final: it expired."""
        if self.retention_s is None or job.created_at is None:
            return outcome
        is_404 = (isinstance(outcome, Retry) and outcome.status_code == 404) or (
            isinstance(outcome, Permanent) and outcome.state == "not_found"
        )
        age = now - job.created_at
        if not is_404 or age <= self.retention_s:
            return outcome
        return Permanent(
            "not_found",
            f"expired: the provider keeps stored responses {self.retention_s / 86400:g} days "
            f"and this one is {age / 86400:.1f} days old",
            404,
        )


def _past_limits(tally: Tally, page: bytes, page_no: int) -> Permanent | None:
    """Count an input-item page into ``tally``: the ID fails once all pages together are
    past the limits of one body (see :class:`~archiver.jsontext.Tally`), since the items
    of every page are kept parsed until the writer takes them."""
    try:
        tally.add(page)
    except TooManyContainers as exc:
        together = str(exc).removeprefix("holds ")
        problem = f"input items: all pages together hold {together} (page {page_no}, {tally.size:,} bytes)"
        return Permanent("failed", problem, 200)
    return None
