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
