"""What the echoed-secret check costs every archived body, against the work it guards.

    python bench/secret_check.py [--repeat N]

Every fetched 200 body passes :func:`archiver.echoes.echoes_secret` in the fetching
process (a byte search per registered form of each secret; bodies with ``\\u`` or ``\\/``
escapes are serialized again and searched once more). This times it, with a key and a
database password registered, on the recorded corpus and on the mock API's bodies, and
prints it as a ratio of what a writer spends on the same body anyway (``orjson.loads`` and
:func:`archiver.normalize.normalize_body`). It also times the slow path (normalizing and
masking in the fetching process) for a body that echoes the key, as a ratio of the same.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from archiver.echoes import echoes_secret, scrub_derived
from archiver.mockapi import body_for
from archiver.normalize import normalize_body
from archiver.outcomes import Archived
from archiver.queue import Job
from archiver.redaction import register_secret
from archiver.store import FetchResult

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "responses"
KEY = "Zq9-bench/7Hk2+pW4xLm8eRt5-not-a-real-key"


def _result(raw: bytes) -> FetchResult:
    body = orjson.loads(raw)
    job = Job(body["id"], 1, 0, None, "lease")
    return FetchResult(job, Archived(raw, 200, True, "completed", body), datetime.now(UTC))


def _time(label: str, work: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    print(f"  {label:<44} {best * 1000:9.2f} ms")
    return best


def bench(name: str, bodies: list[bytes], repeat: int) -> None:
    results = [_result(raw) for raw in bodies]
    escaped = sum(1 for raw in bodies if b"\\u" in raw or b"\\/" in raw)
    size = sum(map(len, bodies))
    print(f"{name}: {len(bodies)} bodies, {size / 1e6:.1f} MB, {escaped} with \\u or \\/ escapes")
    flagged = [r for r in results if echoes_secret(r)]
    assert not flagged, f"{len(flagged)} bodies flagged without the key in them"
    check = _time("echoes_secret (fast path)", lambda: [echoes_secret(r) for r in results], repeat)
    write = _time(
        "orjson.loads + normalize_body (the writer)",
        lambda: [normalize_body(raw, orjson.loads(raw)) for raw in bodies],
        repeat,
    )
    print(f"  check / writer's parse+normalize: {check / write:.3f}")


def bench_slow_path(repeat: int) -> None:
    bodies = [
        body_for(f"resp_bench_echo_{i:04d}").replace(b'"status"', f'"user":"{KEY}","status"'.encode(), 1)
        for i in range(200)
    ]
    results = [_result(raw) for raw in bodies]
    assert all(echoes_secret(r) for r in results)
    print(f"slow path: {len(bodies)} mock bodies that echo the key")
    slow = _time(
        "echoes_secret + scrub_derived",
        lambda: [scrub_derived(r) for r in results if echoes_secret(r)],
        repeat,
    )
    write = _time(
        "orjson.loads + normalize_body (the writer)",
        lambda: [normalize_body(raw, orjson.loads(raw)) for raw in bodies],
        repeat,
    )
    print(f"  slow path / writer's parse+normalize: {slow / write:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    register_secret(KEY)
    register_secret("pg-password-for-the-bench")
    if CORPUS.is_dir():
        bench("corpus", [p.read_bytes() for p in sorted(CORPUS.glob("*.json"))], args.repeat)
    bench("mock", [body_for(f"resp_bench_{i:05d}") for i in range(2000)], args.repeat)
    bench_slow_path(args.repeat)


if __name__ == "__main__":
    main()
