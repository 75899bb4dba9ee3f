"""The neutral result: times held inside the audio."""

from __future__ import annotations

from rapl.transcript.transcription import Segment, Word, clamp


def test_clamp_holds_segments_and_words_inside_the_audio_in_order() -> None:
    segments = [Segment(-0.2, 4.0, "a", words=(Word("a", -0.2, 1.0), Word("b", 0.9, 4.5))),
                Segment(3.5, 11.12, "c", words=(Word("c", 3.5, 11.12),))]
    out = clamp(segments, 0.0, 11.0)
    assert [(s.start, s.end) for s in out] == [(0.0, 4.5), (4.5, 11.0)]
    assert [(w.start, w.end) for s in out for w in s.words] == [(0.0, 1.0), (1.0, 4.5), (4.5, 11.0)]


def test_clamp_starts_after_the_previous_piece() -> None:
    out = clamp([Segment(9.0, 12.0, "x")], 10.0, 20.0, after=10.5)
    assert (out[0].start, out[0].end) == (10.5, 12.0)
    assert clamp([Segment(25.0, 26.0, "late")], 10.0, 20.0)[0].start == 20.0
