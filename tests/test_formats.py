"""formats.py: what `transcribe` prints and `serve` answers (text, JSON, SRT, WebVTT)."""
from __future__ import annotations

from speechtune.formats import to_srt, to_vtt
from speechtune.runtimes import Segment


def test_srt_and_vtt_format():
    segs = [Segment(0.0, 2.5, "hello"), Segment(2.5, 3661.25, "world")]
    assert to_srt(segs) == "1\n00:00:00,000 --> 00:00:02,500\nhello\n\n2\n00:00:02,500 --> 01:01:01,250\nworld\n"
    assert to_vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello\n")


def test_cues_never_run_past_the_audio_or_end_before_they_start():
    # a back end placed the last segment past the end of an 11 s file: `00:00:12,880 --> 00:00:11,000` was seen
    segs = [Segment(0.0, 6.0, "one"), Segment(12.88, 14.0, "two")]
    srt = to_srt(segs, duration=11.0)
    assert "00:00:11,000 --> 00:00:11,000\ntwo" in srt and "12,880" not in srt
    assert "00:00:11.000 --> 00:00:11.000" in to_vtt(segs, duration=11.0)
    assert "00:00:12,880 --> 00:00:14,000" in to_srt(segs)  # length unknown: as given
