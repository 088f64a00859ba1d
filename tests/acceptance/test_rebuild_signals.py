"""renormalize and compact stopped by a signal while they start: the documented clean stop.

Found by hand: a SIGTERM in a command's first second (its imports and the opening of the
database) killed it (exit -15, nothing said), where README promises "stopped by SIGTERM:
run the same command again to finish" and exit 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import base_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("command", [["compact"], ["renormalize", "--all"]], ids=lambda c: c[0])
def test_a_sigterm_while_a_rebuild_starts_is_a_clean_stop(command: list[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    migrate = [sys.executable, "-m", "archiver", "migrate", "--database-url", url]
    subprocess.run(migrate, env=base_env(), cwd=tmp_path, capture_output=True, timeout=60, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", *command, "--database-url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base_env(),
        cwd=tmp_path,
    )
    time.sleep(0.5)  # past the interpreter's own start; archiver imports and opens the database
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, out, err[-1500:])
    assert b"Traceback" not in err, err
