"""The garbage collector around start-up: off while the modules import, then frozen.

Importing SQLAlchemy, aiohttp and the rest makes only long-lived objects (modules,
classes, functions), yet the collector walks them again and again while the heap grows:
~30 ms of a ~0.3 s start-up. Every later full collection walks them once more: in the
writer process of the cpu-bound benchmark, five full collections took 111 ms.
:func:`release` moves everything made so far into the collector's permanent generation
(:func:`gc.freeze`), so later collections walk only what the run itself makes.

Only process entry points call :func:`hold` (the console script and the writer
process); code that imports archiver as a library, tests included, never has its
collector turned off, and :func:`release` does nothing there. bench/README.md has the
measurements.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

_held = False


def hold() -> None:
    """Turn the collector off until :func:`release`; for process entry points only."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release() -> None:
    """Freeze the objects made so far and turn the collector back on.

    Call it once the imports are done, before the work starts. It does nothing unless
    :func:`hold` turned the collector off, so calling it from shared code is safe.
    """
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()


TRIM_AFTER_BYTES = 4 << 20
"""A body at least this large is followed by :func:`give_back`."""

_malloc_trim: Callable[[int], int] | bool | None = False  # False: not looked up yet


def give_back(body_bytes: int) -> None:
    """Hand the C heap's free memory back to the system after a body of ``body_bytes``
    was parsed and dropped, when it was large (:data:`TRIM_AFTER_BYTES` or more).

    Python returns its own small-object arenas when they empty, but the parse of a large
    body also grows glibc's heap (dict tables, list buffers), and glibc keeps what is
    freed at the top of that heap only: after a 16 MiB body of a million members the
    fetching process kept ~100 MiB it no longer used, while the writer process parsed
    the same body, and the two together passed README's memory bound. ``malloc_trim``
    gives it back (a few milliseconds). Elsewhere than glibc (musl, macOS) it does nothing.
    """
    global _malloc_trim
    if body_bytes < TRIM_AFTER_BYTES:
        return
    if _malloc_trim is False:
        _malloc_trim = _find_malloc_trim()
    if callable(_malloc_trim):
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:  # the process's own symbols: glibc's malloc_trim where the C library is glibc
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
