"""Synthetic meetings for the speaker tests and `python -m bench.meetings`: turns by espeak-ng voices and the
two real speakers of ../shared/audio, with the truth of who spoke when, and the diarization error rate.

A meeting is a list of turns, each 1 to 10 s of one voice, one after another with pauses of
0.15 to 2.5 s and no overlap. The espeak-ng voices are the ones resemblyzer tells apart best
(measured on two sentences each: 0.48 to 0.59 alike across these voices, 0.92 to 0.96 within
one; most other espeak-ng voices score 0.65 to 0.90 against each other, as alike as one real
voice with itself): en-us pitched down (the audio resampled by 0.8, which lowers pitch and
formants as a larger speaker's would), en-us+f3, and en+klatt (0.52 to 0.55 against the other
two). The real speakers' turns are phrases of JFK (en_jfk.flac) and of the Mandarin speaker
(zh_sample.wav), cut at their pauses.
"""

from __future__ import annotations

import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000
COLLAR = 0.25  # seconds either side of a true turn boundary that are not scored (as NIST's md-eval does)

# Voice name -> espeak-ng arguments and the resampling factor (pitch and formants times this).
ESPEAK_VOICES: dict[str, tuple[list[str], float]] = {
    "low": (["-v", "en-us"], 0.8),
    "f3": (["-v", "en-us+f3"], 1.0),
    "klatt": (["-v", "en+klatt"], 1.0),
}
LINES = [
    "Yes, I think so too.",
    "I agree with that.",
    "Let us look at the numbers first.",
    "The budget for the spring is almost spent already.",
    "We moved the launch to March because the tests are not finished yet.",
    "Could you send me the report before Friday, so that I can read it over the weekend?",
    "The new office opens in April, and the team from the north building will move there first.",
    "I talked to the suppliers this morning and they promised the parts by the end of next week.",
    "Fine, let us do that then.",
    "That sounds good to me, but we should ask the others too.",
    "Our customers asked for a darker colour and a smaller box, and both are easy to make.",
    "No, the meeting is on Thursday.",
]


@dataclass(frozen=True)
class Turn:
    """One speaker's turn: where its speech is in the meeting, in seconds."""

    speaker: str
    start: float
    end: float
    text: str
    spans: tuple[tuple[float, float], ...] = ()  # where inside it there is voice (its own pauses left out)


def espeak_voice(voice: str, text: str, work: Path) -> np.ndarray:
    """``text`` in one of :data:`ESPEAK_VOICES`, 16 kHz float32."""
    import soxr

    from rapl import audio

    args, factor = ESPEAK_VOICES[voice]
    path = work / f"{voice}-{zlib.crc32(text.encode()):08x}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", *args, "-s", "160", "-w", str(path), text], check=True, timeout=60)
    pcm = audio.decode(path.read_bytes())
    if factor != 1.0:
        pcm = soxr.resample(pcm, RATE, RATE / factor).astype(np.float32)
    return trimmed(pcm)


def trimmed(pcm: np.ndarray, level: float = 0.01) -> np.ndarray:
    """``pcm`` without its leading and trailing quiet (below ``level``)."""
    loud = np.flatnonzero(np.abs(pcm) > level)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm[:0]


def loud(pcm: np.ndarray, pause: float = 0.25) -> list[tuple[int, int]]:
    """(start, end) sample ranges of voice in ``pcm``, split where it is quiet for ``pause`` seconds or more."""
    frame = RATE // 100
    on = np.array([np.abs(pcm[i:i + frame]).max() > 0.02 for i in range(0, len(pcm) - frame + 1, frame)])
    pieces, start, quiet = [], None, 0
    for i, voiced in enumerate(on):
        if voiced:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * frame >= pause * RATE:
                pieces.append((start * frame, (i - quiet + 1) * frame))
                start, quiet = None, 0
    if start is not None:
        pieces.append((start * frame, len(on) * frame))
    return pieces


def phrases(pcm: np.ndarray, pause: float = 0.25, shortest: float = 1.0) -> list[np.ndarray]:
    """A real clip cut at its pauses (``pause`` seconds of quiet), into phrases of at least ``shortest`` s."""
    joined: list[list[int]] = []
    for a, b in loud(pcm, pause):  # join short phrases to the next until each is long enough
        if joined and joined[-1][1] - joined[-1][0] < shortest * RATE:
            joined[-1][1] = b
        else:
            joined.append([a, b])
    if len(joined) > 1 and joined[-1][1] - joined[-1][0] < shortest * RATE:
        joined[-2][1] = joined.pop()[1]
    return [trimmed(pcm[a:b]) for a, b in joined]


def build(turns: list[tuple[str, np.ndarray, str]], seed: int) -> tuple[np.ndarray, list[Turn]]:
    """The turns (speaker, speech, text) one after another with pauses of 0.15 to 2.5 s, and the truth."""
    rng = np.random.default_rng(seed)
    pieces, truth, at = [np.zeros(RATE // 2, dtype=np.float32)], [], RATE // 2
    for speaker, pcm, text in turns:
        spans = tuple(((at + a) / RATE, (at + b) / RATE) for a, b in loud(pcm))
        truth.append(Turn(speaker, at / RATE, (at + len(pcm)) / RATE, text, spans))
        pieces.append(pcm.astype(np.float32))
        at += len(pcm)
        gap = int(rng.choice([0.15, 0.2, 0.3, 0.5, 1.0, 2.5]) * RATE)
        pieces.append(np.zeros(gap, dtype=np.float32))
        at += gap
    return np.concatenate(pieces), truth


def meetings(shared_audio: Path, work: Path, count: int = 6,
             turns: int = 10) -> list[tuple[str, np.ndarray, list[Turn]]]:
    """``count`` meetings of ``turns`` turns: 2, 3 and 4 voices, espeak-ng voices and the real speakers mixed.

    Returns (name, 16 kHz audio, truth) per meeting; the same each run (fixed seeds)."""
    from rapl import audio

    real = {"jfk": phrases(audio.decode((shared_audio / "en_jfk.flac").read_bytes())),
            "zh": phrases(audio.decode((shared_audio / "zh_sample.wav").read_bytes()))}
    casts = [["low", "f3"], ["jfk", "zh"], ["low", "f3", "klatt"], ["jfk", "f3", "zh"],
             ["low", "f3", "klatt", "jfk"], ["jfk", "zh", "low", "klatt"]]
    out = []
    for n in range(count):
        cast = casts[n % len(casts)]
        rng = np.random.default_rng(100 + n)
        order, used = [], {s: 0 for s in cast}
        for t in range(turns):
            choices = [s for s in cast if not order or s != order[-1]]
            order.append(cast[t] if t < len(cast) else str(rng.choice(choices)))
        parts = []
        for t, speaker in enumerate(order):
            if speaker in real:
                clips = real[speaker]
                pcm = clips[used[speaker] % len(clips)]
                used[speaker] += 1
                parts.append((speaker, pcm, ""))
            else:
                text = LINES[(3 * n + t) % len(LINES)]
                parts.append((speaker, espeak_voice(speaker, text, work), text))
        pcm, truth = build(parts, seed=n)
        out.append((f"{len(cast)} voices: {'+'.join(cast)}", pcm, truth))
    return out


def error_rate(truth: list[Turn], said: list[tuple[float, float, str]], collar: float = COLLAR) -> float:
    """Diarization error rate: the share of the true speech time not given its speaker.

    ``said``: (start, end, label) per answered segment. Labels are matched to the true speakers
    one to one so as to agree the most (the Hungarian algorithm); speech that no segment covers,
    or that a segment gives another speaker, is an error. Only voice is scored (a turn's own
    pauses of 0.25 s or more are not speech), less ``collar`` seconds at each end of each
    stretch of voice (segment times are never exact to the sample).
    """
    from scipy.optimize import linear_sum_assignment

    step = 0.01
    end = max([t.end for t in truth] + [s[1] for s in said]) + 1
    frames = int(end / step)
    ref = np.full(frames, -1)
    people = sorted({t.speaker for t in truth})
    for t in truth:
        for start, stop in t.spans or ((t.start, t.end),):
            a, b = int((start + collar) / step), int((stop - collar) / step)
            ref[a:max(a, b)] = people.index(t.speaker)
    hyp = np.full(frames, -1)
    labels = sorted({s[2] for s in said})
    for start, stop, label in said:
        hyp[int(start / step):int(stop / step)] = labels.index(label)
    scored = ref >= 0
    overlap = np.zeros((len(people), max(len(labels), 1)))
    for p in range(len(people)):
        for q in range(len(labels)):
            overlap[p, q] = np.sum((ref == p) & (hyp == q))
    rows, cols = linear_sum_assignment(-overlap)
    right = sum(overlap[r, c] for r, c in zip(rows, cols, strict=True))
    return 1.0 - right / max(int(scored.sum()), 1)
