"""Durable files in an export directory: atomic writes, the manifest, and clean-up.

A file appears under its final name only whole: written under ``.NAME.tmp`` in its
directory, fsynced, renamed into place, and the directory fsynced. The manifest
(``_batches/{cursor}-{batch:08d}.json``) is written last and publishes its batch; a batch
that must not stay published is removed again, manifest first. The temporary files of an
export stopped midway, and the data files of a batch that never got its manifest, are
removed by the next export into the directory (under its directory lock).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from archiver.export_schema import BATCHES_DIR, FORMATS, SCHEMA_FILE, export_tables


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it, rename it into place, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_manifest(
    out_dir: Path, paths: list[Path], manifest_path: Path, manifest: bytes, schema: bytes
) -> None:
    """Write ``_schema.json``, then the manifest, which publishes the batch.

    When either cannot be written (a full disk, a read-only directory), the batch's data
    files, already in place, are removed again: data files without a manifest would be
    read by a loader that globs them, and the next run writes that batch again.
    """
    try:
        write_atomic(out_dir / SCHEMA_FILE, schema)
        write_atomic(manifest_path, manifest)
    except BaseException:
        unpublish([*paths, manifest_path])
        raise


_LEFTOVER_DATA = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*-\d{8}\.(?:jsonl|parquet|csv)\.tmp$")
"""The temporary name of a batch's data file, in its table's directory (see
``archiver.export_writers._Sink.temp``)."""
_LEFTOVER_MANIFEST = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*-\d{8}\.json\.tmp$")
"""The temporary name of a manifest, in ``_batches``."""


def remove_leftovers(out_dir: Path) -> None:
    """Remove the temporary files of earlier exports that were stopped midway.

    SIGTERM (systemd's timeout) or SIGKILL leaves a half-written batch as hidden ``.tmp``
    files; a run of the same cursor and format overwrote them, any other never did. Only
    called under the directory lock, so no other export is writing into ``out_dir``.
    """
    # Each directory holds only its own kind: a user's ``.sales-20261201.csv.tmp`` in
    # the top level is not ours.
    (out_dir / f".{SCHEMA_FILE}.tmp").unlink(missing_ok=True)
    kinds = [(out_dir / BATCHES_DIR, _LEFTOVER_MANIFEST)]
    kinds += [(out_dir / t.name, _LEFTOVER_DATA) for t in export_tables()]
    for directory, ours in kinds:
        for leftover in directory.glob(".*.tmp"):
            if ours.match(leftover.name):
                leftover.unlink(missing_ok=True)


def remove_unfinished(out_dir: Path, cursor: str, batch: int) -> None:
    """Remove the data files of a batch that has no manifest, in any format.

    A kill between the renames of the data files and the manifest leaves them; the next
    run writes that batch again, but in another format it would leave them beside it.
    """
    name = f"{cursor}-{batch:08d}"
    for table in export_tables():
        for fmt in FORMATS:
            (out_dir / table.name / f"{name}.{fmt}").unlink(missing_ok=True)


def unpublish(paths: list[Path]) -> None:
    """Remove the published files of a batch that must not stay published, manifest first."""
    # Each file on its own: one that cannot be removed (a read-only directory) keeps no other.
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    for directory in {path.parent for path in paths}:
        with contextlib.suppress(OSError):
            fsync_path(directory)
