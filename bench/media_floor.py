"""How small the real corpus could be: the floor that base64 images set, with the best
lossless image codecs at hand.

Issue 17 asks for at most 0.5 times the raw JSON on ``../shared/corpus/responses`` with
``--normalize summary``. Three of the 150 bodies carry a base64 PNG (an image generation
result), and those strings are 94% of the corpus's bytes. This prints, per image and for
the corpus:

- ``b64``: the base64 text as archived; ``png``: its decoded bytes (0.75 of it);
- ``zstd19``: the base64 text at zstd level 19 (what any byte-level codec gets, about
  the PNG's size: deflate has already taken what zstd would);
- ``chunks``: the PNG's other chunks (IHDR, a C2PA ``caBX`` manifest of 60-80 KB, IEND)
  at zstd level 19: a pixel codec does not hold them;
- ``jxl7`` / ``jxl9``: the decoded pixels as lossless JPEG XL at effort 7 and 9, and
  ``webp``: lossless WebP at method 6 (checked to decode to the same pixels), each plus
  ``chunks``. Rebuilding
  the exact PNG bytes from pixels would also need the PNG's own deflate stream rebuilt
  bit for bit (its encoder is not zlib at any level), so these sizes are below anything a
  byte-exact archive could store;
- ``rest``: every other byte of the corpus, each body with its images cut out, at zstd
  level 19 as one stream (below what per-body compression with a dictionary gets).

The floor is ``(best image size + rest) / raw``: the archive's file can only be bigger
(rows, indexes, pages).

    pip install imagecodecs pillow numpy   # not dependencies of archiver
    python bench/media_floor.py [--corpus DIR]
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import sys
import time
from pathlib import Path
from typing import Any

import zstandard

_BASE64_PNG = re.compile(rb'"(iVBORw0KGgo[A-Za-z0-9+/]{1000,}={0,2})"')


def _codecs() -> Any:
    try:
        import imagecodecs
        import numpy
        from PIL import Image
    except ImportError as exc:
        sys.exit(f"media_floor: needs {exc.name} (pip install imagecodecs pillow numpy)")
    return imagecodecs, numpy, Image


def _image_sizes(b64: bytes) -> dict[str, int]:
    imagecodecs, numpy, image = _codecs()
    png = base64.b64decode(b64)
    pixels = numpy.asarray(image.open(io.BytesIO(png)))
    sizes = {"b64": len(b64), "png": len(png), "zstd19": len(zstandard.compress(b64, 19))}
    chunks = len(zstandard.compress(_without_pixels(png), 19))
    sizes["chunks"] = chunks
    for effort in (7, 9):
        encoded = imagecodecs.jpegxl_encode(pixels, lossless=True, effort=effort)
        assert (imagecodecs.jpegxl_decode(encoded) == pixels).all(), "JPEG XL was not lossless"
        sizes[f"jxl{effort}"] = len(encoded) + chunks
    out = io.BytesIO()
    image.fromarray(pixels).save(out, "WEBP", lossless=True, quality=100, method=6)
    assert (numpy.asarray(image.open(io.BytesIO(out.getvalue()))) == pixels).all()
    sizes["webp"] = len(out.getvalue()) + chunks
    return sizes


def _without_pixels(png: bytes) -> bytes:
    """The PNG's chunks other than IDAT (the compressed pixels), as they are."""
    kept, at = [png[:8]], 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        end = at + 12 + length
        if png[at + 4 : at + 8] != b"IDAT":
            kept.append(png[at:end])
        at = end
    return b"".join(kept)


def main() -> None:
    """Print the table and the floor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "responses"
    parser.add_argument("--corpus", type=Path, default=default)
    args = parser.parse_args()
    _codecs()
    raw_total, rest = 0, []
    totals: dict[str, int] = {}
    started = time.perf_counter()
    for path in sorted(args.corpus.glob("*.json")):
        body = path.read_bytes()
        raw_total += len(body)
        rest.append(_BASE64_PNG.sub(b'""', body))
        for match in _BASE64_PNG.finditer(body):
            sizes = _image_sizes(match.group(1))
            print(path.name, "  ".join(f"{k} {v:,}" for k, v in sizes.items()))
            for key, value in sizes.items():
                totals[key] = totals.get(key, 0) + value
    rest_size = len(zstandard.compress(b"\n".join(rest), 19))
    print(f"corpus raw {raw_total:,} B; images {totals.get('b64', 0) / raw_total:.1%} of it")
    print(f"rest (no images) at zstd-19 as one stream: {rest_size:,} B")
    for key in ("zstd19", "jxl7", "jxl9", "webp"):
        if key in totals:
            floor = (totals[key] + rest_size) / raw_total
            print(
                f"floor with images as {key}: {floor:.3f}x the raw JSON "
                f"(images at {totals[key] / totals['b64']:.3f} of their base64)"
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
