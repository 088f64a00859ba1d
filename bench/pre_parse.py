"""What the fetcher's checks of a 200 body cost, against a baseline in the same run.

    python bench/pre_parse.py [--repeat N]

Two measurements that were once timed assertions in the unit tests (a noisy, shared
machine made them fail under load), now ratios printed here:

- the count of member names (``parse_limits.string_counts``) on 16 MiB of names of 300
  spellings, against the same size of one spelling: it was one pass over the text per
  kept spelling (4.3 s, about 14 times the baseline) and is one regex pass now;
- ``policy.classify_response`` of a 200 body and of a 429, per call, against
  ``orjson.loads`` of the same 200 body (the least any classification must do);
- the fetcher's check of a large body (``body_head``, msgspec) against the parse it
  replaced (``jsontext.loads``) on 16 MiB of dense member names.

Medians of ``--repeat`` runs (default 5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from archiver.jsontext import loads, string_counts
from archiver.policy import RetryPolicy, classify_response

MiB = 1 << 20
BODY = 16 * MiB - 1024
RID = "resp_bench_pre_parse"


def _median(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _names_body(spellings: int) -> bytes:
    unit = b"".join(b'"%03d":0,' % i for i in range(spellings))
    return b'{"id":"r","x":{' + unit * ((BODY - 30) // len(unit)) + b'"z":0}}'


def bench_names(repeat: int) -> None:
    few, many = _names_body(1), _names_body(300)
    base = _median(lambda: string_counts(few), repeat)
    spelled = _median(lambda: string_counts(many), repeat)
    print("member names, 16 MiB (parse_limits.string_counts)")
    print(f"  one spelling (baseline)   {base * 1000:9.1f} ms")
    print(f"  300 spellings             {spelled * 1000:9.1f} ms   ratio {spelled / base:5.2f}")


def bench_classify(repeat: int) -> None:
    raw = orjson.dumps({"id": RID, "status": "completed", "output": [{"type": "message"}] * 50})
    error = orjson.dumps({"error": {"code": "Throttling.RateQuota", "message": "rate limit exceeded"}})
    policy = RetryPolicy()
    calls = 10_000

    def classify(status_code: int, body: bytes, headers: dict[str, str]) -> object:
        return classify_response(
            status_code=status_code,
            headers=headers,
            body=body,
            requested_id=RID,
            attempt=1,
            previous_status_code=None,
            policy=policy,
            profile="dashscope",
            now=0.0,
            rand=0.0,
        )

    base = _median(lambda: [orjson.loads(raw) for _ in range(calls)], repeat) / calls
    ok = _median(lambda: [classify(200, raw, {}) for _ in range(calls)], repeat) / calls
    retry_after = {"Retry-After": "1"}
    throttled = _median(lambda: [classify(429, error, retry_after) for _ in range(calls)], repeat) / calls
    print(f"classification, per call ({len(raw)} B body)")
    print(f"  orjson.loads (baseline)   {base * 1e6:9.2f} us")
    print(f"  200                       {ok * 1e6:9.2f} us   ratio {ok / base:5.2f}")
    print(f"  429                       {throttled * 1e6:9.2f} us   ratio {throttled / base:5.2f}")


def bench_large_body(repeat: int) -> None:
    from archiver.body_head import read_head

    unit = b"".join(b'"%02x":["y"],' % i for i in range(256))
    body = b'{"id":"%s","object":"response","status":"completed","x":[' % RID.encode()
    body += b",".join([b"{" + unit[:-1] + b"}"] * ((BODY - len(body)) // (len(unit) + 2))) + b"]}"
    parse = _median(lambda: loads(body), max(1, repeat // 2))
    check = _median(lambda: read_head(body), repeat)
    print(f"a large body's check, {len(body) / MiB:.0f} MiB of members holding small arrays")
    print(f"  jsontext.loads (baseline) {parse * 1000:9.1f} ms")
    print(f"  body_head check           {check * 1000:9.1f} ms   ratio {check / parse:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench_names(args.repeat)
    bench_classify(args.repeat)
    bench_large_body(args.repeat)


if __name__ == "__main__":
    main()
