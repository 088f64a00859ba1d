"""Secret and config files that are not regular files: a FIFO nobody writes to, a pipe read twice.

Real FIFOs and pipes (``os.mkfifo``, ``os.pipe`` seen through ``/proc/self/fd``), read by the
one function every key, token, secret and config file goes through. The wait is shortened
by its argument; the CLI waits :data:`archiver.settings.SECRET_WAIT_S`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from archiver.errors import ConfigError
from archiver.secret_files import SECRET_WAIT_S, read_small_text
from archiver.settings import read_api_key


def test_a_fifo_nobody_writes_to_is_one_line_naming_it_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        read_small_text(fifo, "API key", 1024, wait_s=0.5)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert str(fifo) in message and "API key" in message and "0.5 s" in message, message
    assert "\n" not in message
    assert 5 <= SECRET_WAIT_S <= 120


def test_a_fifo_whose_writer_comes_late_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.3)
        with open(fifo, "w") as handle:
            handle.write("sk-late")
            handle.flush()
            time.sleep(0.2)  # a writer that writes in pieces
            handle.write("-key\n")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert read_small_text(fifo, "API key", 1024, wait_s=5).strip() == "sk-late-key"
    finally:
        thread.join()


def test_a_pipe_is_read_once_per_process_however_often_asked(tmp_path: Path) -> None:
    """``--api-key-file <(cmd)``: the settings, the redaction point and the source rules all ask."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"sk-from-a-pipe\n")
    os.close(write_end)
    path = f"/proc/self/fd/{read_end}"
    try:
        for _ in range(3):
            assert read_api_key({}, path) == "sk-from-a-pipe"
    finally:
        os.close(read_end)


def test_a_regular_file_changed_between_reads_is_read_again(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-one\n")
    assert read_api_key({}, str(key)) == "sk-one"
    key.write_text("sk-second\n")
    assert read_api_key({}, str(key)) == "sk-second"
