"""archiver.rebuild.RebuildReport: the summary line of renormalize and compact."""

from __future__ import annotations

from archiver.rebuild import RebuildReport


def test_the_summary_line_counts_against_the_total_counted_at_the_start() -> None:
    line = RebuildReport(total=1200, done=1200, rewritten=1200).summary_line("renormalized")
    assert line.startswith("renormalized 1,200 of 1,200 responses in ")
    assert RebuildReport(done=3).summary_line("compacted").startswith("compacted 3 responses in ")


def test_more_done_than_counted_at_the_start_does_not_read_as_n_of_fewer() -> None:
    """Found: beside a daemon, renormalize printed "renormalized 3,150 of 187 responses"
    (187 counted at its start; the daemon wrote the rest while it ran)."""
    line = RebuildReport(total=187, done=3150, rewritten=3150).summary_line("renormalized")
    assert line.startswith("renormalized 3,150 responses (187 when it started) in "), line
