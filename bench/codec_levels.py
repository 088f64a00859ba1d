"""What the zstd level costs the writer: bytes and time per body, level 3 against the levels
``archiver.codec`` uses, with a dictionary trained the way the writer trains one.

    python bench/codec_levels.py [--corpus DIR] [--mock N] [--repeat N]

For the mock API's bodies and the recorded bodies of ../shared/corpus/responses, a
dictionary is trained on the first half of the bodies (``codec.train``) and the other half
is compressed, in the same run: with every body at level 3 (how archiver wrote them
before), with :meth:`archiver.codec.Codec.encode` (the level chosen by
``codec.level_for``), and, for reference, at a few fixed levels. Prints stored bytes per
body and the median over ``--repeat`` passes of microseconds per body, with their ratios
to level 3. Decompression is timed too (it does not depend on the level).

A second table puts the level in the writer's own work per body: normalizing the body
(``normalize_body``, what the writer process spends most of its time on besides SQL) and
encoding it, with ``SMALL_BODY_LEVEL`` at 3 (before) and at its value (after), in
alternating passes of the same run (medians), so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zstandard

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from archiver import codec  # noqa: E402
from archiver.mockapi import body_for, load_bodies  # noqa: E402
from archiver.normalize import normalize_body  # noqa: E402

CORPUS = BENCH.parent.parent / "shared" / "corpus" / "responses"


def _per_body_us(bodies: Sequence[bytes], compress: Callable[[bytes], bytes], repeat: int) -> float:
    """Median over ``repeat`` passes of the microseconds one body takes."""
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        for body in bodies:
            compress(body)
        passes.append((time.perf_counter() - start) / len(bodies) * 1e6)
    return statistics.median(passes)


def measure(label: str, bodies: list[bytes], repeat: int) -> list[str]:
    """Table rows for one set of bodies."""
    train_on, test = bodies[0::2], bodies[1::2]
    data = codec.train(train_on)
    dictionary = zstandard.ZstdCompressionDict(data)
    rows = []
    base_bytes = base_us = 0.0
    variants: list[tuple[str, Callable[[bytes], bytes]]] = []
    for level in (3, 6, 9, 12):
        compressor = zstandard.ZstdCompressor(level=level, dict_data=dictionary)
        variants.append((f"level {level}", compressor.compress))
    writer = codec.Codec({1: data})
    variants.insert(1, ("Codec.encode (archiver)", lambda body: writer.encode(body)[0]))
    for name, compress in variants:
        stored = sum(len(compress(body)) for body in test) / len(test)
        us = _per_body_us(test, compress, repeat)
        if name == "level 3":
            base_bytes, base_us = stored, us
        ratios = f"{stored / base_bytes:.3f} | {us:,.1f} | {us / base_us:.2f}"
        rows.append(f"| {label} | {name} | {stored:,.0f} | {ratios} |")
    frames = [writer.encode(body) for body in test]
    reader = codec.Codec({1: data})
    decode_us = _per_body_us(frames, lambda f: reader.decode(*f), repeat)  # type: ignore[arg-type]
    rows.append(f"| {label} | decode (any level) | | | {decode_us:,.1f} | |")
    return rows


def writer_work(label: str, bodies: list[bytes], repeat: int) -> list[str]:
    """Table rows: normalize + encode per body, level 3 against ``SMALL_BODY_LEVEL``."""
    data = codec.train(bodies[0::2])
    test = bodies[1::2]
    writer = codec.Codec({1: data})
    level = codec.SMALL_BODY_LEVEL

    def work(body: bytes) -> bytes:
        normalize_body(body)
        return writer.encode(body)[0]

    timings: dict[int, list[float]] = {3: [], level: []}
    for _ in range(repeat):
        for chosen in (3, level):
            codec.SMALL_BODY_LEVEL = chosen
            timings[chosen].append(_per_body_us(test, work, 1))
    codec.SMALL_BODY_LEVEL = level
    before, after = statistics.median(timings[3]), statistics.median(timings[level])
    return [
        f"| {label} | {before:,.1f} | {after:,.1f} | {after - before:+,.1f} | {after / before:.3f} |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS, help="directory of recorded bodies (*.json)")
    p.add_argument("--mock", type=int, default=2000, help="mock bodies (half train, half are measured)")
    p.add_argument("--repeat", type=int, default=5, help="timed passes per variant (median)")
    args = p.parse_args()
    sets: list[tuple[str, list[bytes]]] = []
    if args.mock:
        sets.append((f"mock ({args.mock // 2})", [body_for(f"resp_ok_l{i:06d}") for i in range(args.mock)]))
    if args.corpus.is_dir():
        corpus = list(load_bodies(args.corpus).values())
        small = [b for b in corpus if len(b) <= codec.SMALL_BODY_BYTES]
        sets.append((f"corpus <= 64 KiB ({len(small) // 2})", small))
        sets.append((f"corpus, all ({len(corpus) // 2})", corpus))
    print("| bodies | compression | stored B/body | ratio | us/body (median) | ratio |")
    print("|---|---|---|---|---|---|")
    for label, bodies in sets:
        for row in measure(label, bodies, args.repeat):
            print(row, flush=True)
    print()
    after = f"level {codec.SMALL_BODY_LEVEL}"
    print(f"| bodies | normalize + encode, level 3: us/body | {after} | difference | ratio |")
    print("|---|---|---|---|---|")
    for label, bodies in sets[:2]:
        for row in writer_work(label, bodies, 2 * args.repeat + 1):
            print(row, flush=True)


if __name__ == "__main__":
    main()
