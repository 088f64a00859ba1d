"""The parse of a large body (``jsontext.loads``) peaks within 14 times the body's size.

Found: orjson builds a document of its own (yyjson's) before the Python objects and holds
both until it returns. 16 MiB of objects of 256 repeated member names, each holding a
one-string array (within every limit of ``archiver.parse_limits``), peaked at 360 MiB
over the body (22.5 times it) while the objects left were 227-275 MiB; the dense
tool-listing control (a property per 22 bytes) peaked at 259 MiB (16.2 times). The
writer process parses each body it normalizes so, and with the fetching process beside
it ``archiver run --once`` passed README's 512 MiB (tests/acceptance/test_hostile13_memory.py).
Now :func:`archiver.jsontext.loads` parses text of 1 MiB or more with the standard
library: 194 and 205 MiB (12.1 and 12.8 times). Each parse runs in a child of its own,
which reports how far its resident memory rose above what it held before the parse (its
own high-water mark: see tests/peak_rss.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20

SCRIPT = r"""
import sys

import orjson

from archiver.jsontext import loads

MiB = 1 << 20
size = 16 * MiB - 1024


def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024


if sys.argv[1] == "members":
    names = [b"%02x" % i for i in range(256)]
    member_object = b"{" + b",".join(b'"' + name + b'":["y"]' for name in names) + b"},"
    head = b'{"id":"resp_1","object":"response","status":"completed","output":[],"x":['
    body = head + member_object * ((size - len(head) - 8) // len(member_object)) + b"0]}"
else:
    properties = {f"p{i}": {"type": "string"} for i in range(200)}
    tool = {"name": "t", "input_schema": {"type": "object", "properties": properties}}
    tools = [tool] * (size // len(orjson.dumps(tool)))
    listing = {"type": "mcp_list_tools", "server_label": "s", "tools": tools}
    body = orjson.dumps({"id": "resp_1", "output": [listing]})
    del listing, tools, tool, properties
before = status("VmRSS")
parsed = loads(body)
print(len(body), status("VmHWM") - before)
"""


@pytest.mark.parametrize("kind", ["members", "tool-listing"])
def test_the_parse_of_a_large_dense_body_peaks_within_14_times_its_size(kind: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, kind], capture_output=True, check=True, timeout=100)
    size, peak = map(int, done.stdout.split())
    print(f"{kind}: {size / MiB:.1f} MiB parsed, peak {peak / MiB:.0f} MiB over it ({peak / size:.1f}x)")
    assert peak < 14 * size, f"{peak / MiB:.0f} MiB, {peak / size:.1f} times the body"
