"""Cutting a byte stream into lines (archiver.ingest.LineSplitter): bounded, and exact about offsets."""

from __future__ import annotations

from archiver.ingest import EnqueueReport, LineSplitter, OverlongLine


def lines_of(pieces: list) -> list:
    out: list = []
    for piece in pieces:
        out.extend(piece if isinstance(piece, list) else [piece])
    return out


def test_lines_come_out_only_once_their_newline_arrives() -> None:
    s = LineSplitter()
    assert lines_of(s.feed(b"resp_a\nresp_")) == ["resp_a"]
    assert s.consumed == len(b"resp_a\n") and s.unfinished_bytes == len(b"resp_")
    assert lines_of(s.feed(b"b")) == []
    assert lines_of(s.feed(b"\n")) == ["resp_b"]
    assert s.consumed == len(b"resp_a\nresp_b\n") and s.unfinished_bytes == 0


def test_end_of_input_makes_the_unfinished_line_a_line() -> None:
    s = LineSplitter(start=100)
    assert lines_of(s.feed(b"x\ny")) == ["x"]
    assert lines_of(s.finish()) == ["y"]
    assert s.consumed == 103


def test_crlf_and_lone_cr_end_lines_and_bad_utf8_is_replaced() -> None:
    s = LineSplitter()
    assert lines_of(s.feed(b"a\r\nb\rc\n\xff\xfe\n")) == ["a", "b", "c", "\ufffd\ufffd"]


def test_a_line_over_the_limit_is_skipped_not_held() -> None:
    s = LineSplitter(max_line_bytes=10)
    assert lines_of(s.feed(b"ok\n0123456789AB")) == ["ok"]
    assert s.unfinished_bytes == 12  # counted, not held
    assert s._partial == b""
    assert lines_of(s.feed(b"C" * 1000)) == []
    out = lines_of(s.feed(b"DE\nnext\n"))
    assert out == [OverlongLine(1014, b"0123456789AB"), "next"]
    assert s.consumed == 3 + 1015 + 5


def test_a_line_over_the_limit_split_across_reads_is_caught_when_it_ends() -> None:
    s = LineSplitter(max_line_bytes=10)
    assert lines_of(s.feed(b"0123456")) == []
    assert lines_of(s.feed(b"789ABC\nok\n")) == [OverlongLine(13, b"0123456"), "ok"]
    exact = LineSplitter(max_line_bytes=10)
    assert lines_of(exact.feed(b"01234")) == []
    assert lines_of(exact.feed(b"56789\n")) == ["0123456789"]  # at the limit is fine


def test_a_nul_byte_ends_the_input_as_binary() -> None:
    s = LineSplitter()
    assert lines_of(s.feed(b"resp_a\nresp_b\nbin\0ary\nresp_c\n")) == ["resp_a", "resp_b"]
    assert s.binary_at == 17
    assert s.feed(b"resp_d\n") == [] and s.finish() == []
    assert s.consumed == 14  # the line holding the NUL is not consumed


def test_summary_keeps_its_form_and_counts_what_was_not_printed() -> None:
    report = EnqueueReport(queued=3, already_known=1, rejected=4)
    assert report.summary() == "queued 3, already known 1, rejected 4"
    report.unprinted = 2
    assert report.summary(refetch=True) == "queued 3, already known 1, rejected 4 (2 not printed), requeued 0"
    assert report.failed and not EnqueueReport(queued=1).failed
    assert EnqueueReport(binary_inputs=1).failed
